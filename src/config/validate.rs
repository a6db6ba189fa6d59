//! Raw config → typed [`Config`]. Reads nothing but the text it is given, and the CA bundles
//! upstreams name (`ca_file`), so that a missing or broken bundle is a load-time error with
//! its line, from `scopegate check` as from `serve` and every reload.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use toml::Spanned;

use super::raw::RawConfig;
use super::routes::{Builtin, Methods, Route, RouteTable, Target};
use super::{
    line_of, AdminSettings, AuthSettings, Config, ConfigError, KeySettings, KeysApiSettings,
    Problem, ServerSettings, TlsSettings, TokenExchangeSettings, TrustRoots, UpstreamProtocol,
    UpstreamSettings,
};
use crate::scopes::{Catalog, ScopeSet};

/// Headers that requests or the gateway itself depend on. Every inbound header that starts
/// with the identity prefix is dropped, so the prefix must not cover any of these.
const HEADERS_THE_GATEWAY_NEEDS: &[&str] = &[
    "accept",
    "authorization",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "cookie",
    "expect",
    "host",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-version",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-statebacked-act",
    "x-statebacked-org-id",
];

/// Clock skew beyond a day is a misconfiguration, not skew.
const MAX_LEEWAY_SECONDS: u64 = 86_400;
/// At 4 KiB a token (the most a cache keeps), 64 MiB per worker.
const MAX_TOKEN_CACHE_ENTRIES: usize = 16_384;

/// Collects problems so one `check` run reports all of them.
struct Problems<'t> {
    text: &'t str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let line = (span != (0..0)).then(|| line_of(self.text, span.start));
        self.list.push(Problem {
            line,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Validates a parsed config. `path` names the file in errors and anchors relative paths.
pub fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let mut p = Problems {
        text,
        list: Vec::new(),
    };
    let base = path.parent().unwrap_or(Path::new("."));

    let listen = socket_addr(&mut p, &raw.server.listen, "server.listen");
    let prefix = raw
        .server
        .identity_header_prefix
        .get_ref()
        .to_ascii_lowercase();
    if prefix.len() < 3
        || !prefix.ends_with('-')
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        p.at(
            raw.server.identity_header_prefix.span(),
            "server.identity_header_prefix",
            "must be at least 3 characters of letters, digits and '-', ending with '-'",
        );
    } else if let Some(taken) = HEADERS_THE_GATEWAY_NEEDS
        .iter()
        .find(|h| h.starts_with(prefix.as_str()))
    {
        // Inbound headers with the prefix are dropped: this one would never arrive.
        p.at(
            raw.server.identity_header_prefix.span(),
            "server.identity_header_prefix",
            format!(
                "'{prefix}' would drop the client's '{taken}' header; choose a prefix of \
                 your own, like x-scopegate-"
            ),
        );
    }
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| socket_addr(&mut p, &a.listen, "admin.listen"))
        .map(|listen| AdminSettings { listen });

    let mut catalog_extra = Vec::new();
    for s in &raw.auth.extra_scopes {
        if !valid_scope_name(s.get_ref()) {
            p.at(
                s.span(),
                "auth.extra_scopes",
                format!(
                    "'{}' is not a valid scope name (letters, digits, '.', '-', '_')",
                    s.get_ref()
                ),
            );
        }
        catalog_extra.push(s.get_ref().as_str());
    }
    let catalog = Catalog::new(catalog_extra);
    if raw.auth.audiences.get_ref().is_empty() {
        p.at(
            raw.auth.audiences.span(),
            "auth.audiences",
            "at least one audience is required: tokens without a matching `aud` are refused",
        );
    }
    if raw
        .auth
        .audiences
        .get_ref()
        .iter()
        .any(|a| a.trim().is_empty())
    {
        p.at(
            raw.auth.audiences.span(),
            "auth.audiences",
            "an audience must not be empty",
        );
    }
    if *raw.auth.leeway_seconds.get_ref() > MAX_LEEWAY_SECONDS {
        p.at(
            raw.auth.leeway_seconds.span(),
            "auth.leeway_seconds",
            format!("must be at most {MAX_LEEWAY_SECONDS} (one day)"),
        );
    }
    if *raw.auth.max_token_bytes.get_ref() < 64 {
        p.at(
            raw.auth.max_token_bytes.span(),
            "auth.max_token_bytes",
            "must be at least 64",
        );
    }
    if *raw.auth.token_cache_entries.get_ref() > MAX_TOKEN_CACHE_ENTRIES {
        p.at(
            raw.auth.token_cache_entries.span(),
            "auth.token_cache_entries",
            format!("must be at most {MAX_TOKEN_CACHE_ENTRIES}"),
        );
    }
    let keys_dir = base.join(raw.keys.dir.get_ref());
    if lexical(&keys_dir) == lexical(base) {
        p.at(
            raw.keys.dir.span(),
            "keys.dir",
            format!(
                "'{}' is the config file's own folder, so the config would be read as a key \
                 file; use a folder of its own, like \"keys\"",
                raw.keys.dir.get_ref()
            ),
        );
    }

    let mut upstreams = Vec::new();
    for (name, up) in &raw.upstreams {
        let span = up.span();
        let up = up.get_ref();
        if let Some(settings) = upstream(&mut p, base, name, span, up) {
            upstreams.push(settings);
        }
    }

    let mut routes = Vec::new();
    let mut path_ok = Vec::new();
    for (i, spanned) in raw.routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        let line = line_of(text, spanned.span().start);
        let r = spanned.get_ref();
        let template = r.path.get_ref();
        if !template.starts_with('/') {
            p.at(
                r.path.span(),
                format!("{field}.path"),
                "must start with '/'",
            );
        }
        let path_problem = template_problem(template);
        if let Some(message) = &path_problem {
            p.at(r.path.span(), format!("{field}.path"), message);
        }
        path_ok.push(template.starts_with('/') && path_problem.is_none());
        let params = template_params(template);
        let methods = methods(&mut p, &field, &r.methods);
        let mut scopes = Vec::new();
        for s in &r.scopes {
            match catalog.resolve(s.get_ref()) {
                Some(name) => scopes.push(name),
                None => p.at(
                    s.span(),
                    format!("{field}.scopes"),
                    format!(
                        "unknown scope '{}' (declare it in [auth] extra_scopes)",
                        s.get_ref()
                    ),
                ),
            }
        }
        if r.public && !r.scopes.is_empty() {
            p.at(
                spanned.span(),
                &field,
                "a public route cannot require scopes: it accepts requests without a token",
            );
        }
        if r.public && r.token_query_param.is_some() {
            p.at(
                spanned.span(),
                &field,
                "a public route takes no token, so token_query_param makes no sense",
            );
        }
        if r.public && r.org_param.is_some() {
            p.at(
                spanned.span(),
                &field,
                "a public route has no key, so org_param cannot be checked",
            );
        }
        if let Some(q) = &r.token_query_param {
            if q.get_ref().is_empty()
                || !q
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                p.at(
                    q.span(),
                    format!("{field}.token_query_param"),
                    "must be a non-empty name of letters, digits, '_' and '-'",
                );
            }
        }
        if let Some(o) = &r.org_param {
            if !params.iter().any(|n| n == o.get_ref()) {
                p.at(
                    o.span(),
                    format!("{field}.org_param"),
                    format!("'{}' is not a parameter of path '{template}'", o.get_ref()),
                );
            }
        }
        let upstream = match upstreams
            .iter()
            .position(|u| u.name == *r.upstream.get_ref())
        {
            Some(idx) => idx,
            None => {
                if !raw.upstreams.contains_key(r.upstream.get_ref()) {
                    p.at(
                        r.upstream.span(),
                        format!("{field}.upstream"),
                        format!("unknown upstream '{}'", r.upstream.get_ref()),
                    );
                }
                0
            }
        };
        routes.push(Route {
            template: Arc::from(template.as_str()),
            methods,
            scopes: ScopeSet::from_names(scopes.iter().map(|s| &**s)),
            target: Target::Upstream(upstream),
            public: r.public,
            token_query_param: r.token_query_param.as_ref().map(|q| q.get_ref().clone()),
            org_param: r.org_param.as_ref().map(|o| o.get_ref().clone()),
            forward_token: r.forward_token.unwrap_or(raw.server.forward_token),
            max_body_bytes: r.max_body_bytes.as_ref().map(|m| *m.get_ref()),
            line,
        });
    }

    // Two routes on one template must not both claim a method: which one wins would be an
    // accident of file order.
    for (i, a) in routes.iter().enumerate() {
        if let Some(b) = routes[..i]
            .iter()
            .find(|b| b.template == a.template && b.methods.overlaps(&a.methods))
        {
            p.at(
                raw.routes[i].span(),
                format!("routes[{i}]"),
                format!(
                    "'{}' with methods {:?} conflicts with the route at line {}",
                    a.template,
                    a.methods.names(),
                    b.line
                ),
            );
        }
    }

    for (value, field, min, max) in [
        (
            &raw.server.max_connections,
            "server.max_connections",
            1,
            1_000_000,
        ),
        // hyper cannot read a head in less than 8 KiB of buffer.
        (
            &raw.server.max_header_bytes,
            "server.max_header_bytes",
            8 * 1024,
            1024 * 1024,
        ),
        (
            &raw.server.max_uri_bytes,
            "server.max_uri_bytes",
            256,
            64 * 1024,
        ),
    ] {
        if !(min..=max).contains(value.get_ref()) {
            p.at(
                value.span(),
                field,
                format!("must be between {min} and {max}"),
            );
        }
    }
    if let Some(tls) = &raw.server.tls {
        for (value, field) in [(&tls.cert, "server.tls.cert"), (&tls.key, "server.tls.key")] {
            if value.get_ref().trim().is_empty() {
                p.at(value.span(), field, "must name a PEM file");
            }
        }
    }

    // The gateway's own endpoints take their paths first; a configured route on the same
    // path and method would never be reached, so it is a mistake worth a clear message.
    let keys_api_enabled = raw.keys_api.enabled;
    let dashboard = match &raw.dashboard.enabled {
        Some(on) if *on.get_ref() && !keys_api_enabled => {
            p.at(
                on.span(),
                "dashboard.enabled",
                "the dashboard needs the keys API: set [keys_api] enabled = true",
            );
            false
        }
        Some(on) => *on.get_ref(),
        None => keys_api_enabled,
    };
    if *raw.keys_api.page_size.get_ref() == 0 || *raw.keys_api.page_size.get_ref() > 1000 {
        p.at(
            raw.keys_api.page_size.span(),
            "keys_api.page_size",
            "must be between 1 and 1000",
        );
    }
    let exchange = &raw.token_exchange;
    let audience_base = exchange
        .audience_base
        .get_ref()
        .trim_end_matches('/')
        .to_owned();
    let base_ok = audience_base
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme().is_some() && u.host().is_some() && u.query().is_none());
    if !base_ok {
        p.at(
            exchange.audience_base.span(),
            "token_exchange.audience_base",
            "must be an absolute URL like https://tokens.statebacked.dev",
        );
    }
    if exchange.jwks_timeout_ms == 0 {
        p.at(
            0..0,
            "token_exchange.jwks_timeout_ms",
            "must be greater than zero",
        );
    }
    let builtins = builtin_routes(keys_api_enabled, dashboard, exchange.enabled, &catalog);
    for (i, a) in routes.iter().enumerate() {
        if let Some(b) = builtins
            .iter()
            .find(|b| same_shape(&b.template, &a.template) && b.methods.overlaps(&a.methods))
        {
            let Target::Builtin(kind) = b.target else {
                continue;
            };
            p.at(
                raw.routes[i].span(),
                format!("routes[{i}]"),
                format!(
                    "'{}' is served by the gateway's built-in {}; remove this route or turn \
                     the built-in off ([keys_api] / [dashboard] / [token_exchange] enabled = false)",
                    a.template,
                    kind.name()
                ),
            );
        }
    }

    // matchit's own refusals (`/a/{x}` next to `/a/{y}`, malformed parameters) are found by
    // building the table, from the routes whose paths passed the checks above, so that they
    // are reported together with every other problem.
    let (index, mut kept): (Vec<usize>, Vec<Route>) = routes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| path_ok[*i])
        .unzip();
    kept.extend(builtins);
    let table = match RouteTable::build(kept) {
        Ok(table) => Some(table),
        Err(errors) => {
            for (j, message) in errors {
                match index.get(j) {
                    Some(&i) => p.at(
                        raw.routes[i].get_ref().path.span(),
                        format!("routes[{i}].path"),
                        message,
                    ),
                    None => p.at(
                        0..0,
                        "keys_api",
                        format!("a configured route collides with a built-in one: {message}"),
                    ),
                }
            }
            None
        }
    };
    let routes = match table {
        Some(table) if p.list.is_empty() => table,
        _ => {
            // In file order, as an editor would walk them; problems without a line first.
            p.list.sort_by_key(|problem| problem.line);
            return Err(ConfigError {
                file: path.to_owned(),
                problems: p.list,
            });
        }
    };

    Ok(Config {
        source: path.to_owned(),
        digest: {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            h.finish()
        },
        server: ServerSettings {
            listen: listen.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
            identity_prefix: prefix,
            shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_seconds),
            header_read_timeout: Duration::from_secs(raw.server.header_read_timeout_seconds.max(1)),
            trust_forwarded_headers: raw.server.trust_forwarded_headers,
            tls: raw.server.tls.as_ref().map(|t| TlsSettings {
                cert: base.join(t.cert.get_ref()),
                key: base.join(t.key.get_ref()),
            }),
            max_connections: *raw.server.max_connections.get_ref(),
            max_header_bytes: *raw.server.max_header_bytes.get_ref(),
            max_uri_bytes: *raw.server.max_uri_bytes.get_ref(),
        },
        admin,
        keys: KeySettings {
            dir: keys_dir,
            poll_interval: Duration::from_millis(raw.keys.poll_interval_ms.clamp(10, 60_000)),
        },
        auth: AuthSettings {
            audiences: raw.auth.audiences.into_inner(),
            leeway_seconds: raw.auth.leeway_seconds.into_inner(),
            require_exp: raw.auth.require_exp,
            max_token_bytes: raw.auth.max_token_bytes.into_inner(),
            token_cache_entries: raw.auth.token_cache_entries.into_inner(),
            catalog,
        },
        keys_api: KeysApiSettings {
            enabled: keys_api_enabled,
            page_size: *raw.keys_api.page_size.get_ref(),
        },
        dashboard,
        token_exchange: TokenExchangeSettings {
            enabled: raw.token_exchange.enabled,
            audience_base,
            jwks: crate::exchange::jwks::JwksSettings {
                timeout: Duration::from_millis(raw.token_exchange.jwks_timeout_ms.max(1)),
                refresh: Duration::from_secs(raw.token_exchange.jwks_refresh_seconds),
                cooldown: Duration::from_secs(raw.token_exchange.jwks_refetch_cooldown_seconds),
            },
        },
        upstreams,
        routes,
    })
}

fn socket_addr(p: &mut Problems, value: &Spanned<String>, field: &str) -> Option<SocketAddr> {
    match value.get_ref().parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.at(
                value.span(),
                field,
                format!(
                    "'{}' is not an IP:port address (e.g. 127.0.0.1:8080)",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

fn valid_scope_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// What makes a template unable to match any normalized request path (see
/// `pipeline::path`), if anything. Parameters (`{name}`, `{*name}`) are left to matchit.
fn template_problem(template: &str) -> Option<String> {
    let mut depth = 0usize;
    for c in template.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            '%' => {
                return Some(
                    "contains '%': write paths unescaped; request paths are normalized before \
                     matching"
                        .into(),
                )
            }
            c if c.is_ascii_alphanumeric() || "-._~!$&'()*+,=:@/".contains(c) => {}
            c => {
                return Some(format!(
                    "contains {c:?}, which never appears in a normalized path"
                ))
            }
        }
    }
    let mut segments = template.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return Some(
                "has an empty or dot segment ('//', '/./', '/../'); requests with one are \
                 refused with 400, so this route could never match"
                    .into(),
            );
        }
    }
    None
}

/// The path with `.` components dropped and `..` applied, without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Parameter names of a matchit template (`{name}` and `{*name}`).
fn template_params(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        out.push(
            rest[start + 1..start + end]
                .trim_start_matches('*')
                .to_owned(),
        );
        rest = &rest[start + end + 1..];
    }
    out
}

fn methods(p: &mut Problems, field: &str, spanned: &Spanned<Vec<Spanned<String>>>) -> Methods {
    let raw = spanned.get_ref();
    if raw.is_empty() {
        p.at(
            spanned.span(),
            format!("{field}.methods"),
            "list at least one method, or \"*\" for any",
        );
        return Methods::Any;
    }
    if raw.iter().any(|m| m.get_ref() == "*") {
        if raw.len() > 1 {
            p.at(
                spanned.span(),
                format!("{field}.methods"),
                "\"*\" already means every method; list nothing else",
            );
        }
        return Methods::Any;
    }
    let mut list = Vec::new();
    for m in raw {
        let upper = m.get_ref().to_ascii_uppercase();
        let ok = !upper.is_empty() && upper.bytes().all(|b| b.is_ascii_uppercase());
        match Method::from_bytes(upper.as_bytes()) {
            Ok(method) if ok => {
                if !list.contains(&method) {
                    list.push(method);
                }
            }
            _ => p.at(
                m.span(),
                format!("{field}.methods"),
                format!("'{}' is not an HTTP method", m.get_ref()),
            ),
        }
    }
    list.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Methods::List(list)
}

fn upstream(
    p: &mut Problems,
    base: &Path,
    name: &str,
    span: Range<usize>,
    raw: &super::raw::RawUpstream,
) -> Option<UpstreamSettings> {
    let field = format!("upstreams.{name}");
    let url = raw.url.get_ref();
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            p.at(
                raw.url.span(),
                format!("{field}.url"),
                format!("'{url}' is not a URL: {e}"),
            );
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        p.at(
            raw.url.span(),
            format!("{field}.url"),
            format!("'{url}' needs a scheme and a host, like http://127.0.0.1:3000"),
        );
        return None;
    };
    let https = *scheme == http::uri::Scheme::HTTPS;
    if !https && *scheme != http::uri::Scheme::HTTP {
        p.at(
            raw.url.span(),
            format!("{field}.url"),
            format!("scheme '{scheme}' is not supported; use http:// or https://"),
        );
        return None;
    }
    if uri.query().is_some() || authority.as_str().contains('@') {
        p.at(
            raw.url.span(),
            format!("{field}.url"),
            "must not carry a query or user info",
        );
        return None;
    }
    if raw.connect_timeout_ms == 0 || raw.response_timeout_ms == 0 {
        p.at(span, &field, "timeouts must be greater than zero");
    }
    let protocol = match raw.protocol.as_ref().map(|s| (s.get_ref().as_str(), s)) {
        None | Some(("http1", _)) => UpstreamProtocol::Http1,
        Some(("h2", _)) => UpstreamProtocol::H2,
        Some((other, spanned)) => {
            p.at(
                spanned.span(),
                format!("{field}.protocol"),
                format!("'{other}' is not a protocol; use \"http1\" or \"h2\""),
            );
            UpstreamProtocol::Http1
        }
    };
    let tls = match (&raw.ca_file, https) {
        (None, false) => None,
        (None, true) => Some(TrustRoots::System),
        (Some(ca), false) => {
            p.at(
                ca.span(),
                format!("{field}.ca_file"),
                format!("only https:// upstreams use a CA file, and '{url}' is plain http"),
            );
            None
        }
        (Some(ca), true) => {
            let path = base.join(ca.get_ref());
            match ca_bundle(ca.get_ref(), &path) {
                Ok(certs) => Some(TrustRoots::CaFile { path, certs }),
                Err(message) => {
                    p.at(ca.span(), format!("{field}.ca_file"), message);
                    None
                }
            }
        }
    };
    Some(UpstreamSettings {
        name: name.to_owned(),
        scheme: scheme.clone(),
        authority: authority.clone(),
        path_prefix: uri.path().trim_end_matches('/').to_owned(),
        protocol,
        tls,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
        response_timeout: Duration::from_millis(raw.response_timeout_ms),
        pool_idle_timeout: Duration::from_secs(raw.pool_idle_timeout_seconds),
        pool_max_idle: raw.pool_max_idle,
    })
}

/// Reads a PEM bundle of CA certificates (`ca_file` as written, and resolved). Every
/// certificate must be one rustls can use as a trust anchor: a bundle that silently trusts
/// fewer CAs than it lists would turn into 502s much later, far from the cause.
fn ca_bundle(
    written: &str,
    path: &Path,
) -> Result<Arc<[rustls::pki_types::CertificateDer<'static>]>, String> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::CertificateDer;

    if written.trim().is_empty() {
        return Err("must name a PEM file of CA certificates".into());
    }
    let shown = path.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| match e {
            pem::Error::Io(e) => format!("cannot read '{shown}': {e}"),
            e => format!("'{shown}' is not a PEM bundle: {e}"),
        })?;
    if certs.is_empty() {
        return Err(format!("'{shown}' holds no PEM certificate"));
    }
    for (i, cert) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| {
                format!(
                    "certificate {} of '{shown}' is not a usable CA certificate: {e}",
                    i + 1
                )
            })?;
    }
    Ok(certs.into())
}

/// The routes of the gateway's own endpoints. The keys API requires `org-keys.write` like any
/// configured route would; the dashboard is static and public (it calls the keys API with the
/// token its user pastes).
fn builtin_routes(
    keys_api: bool,
    dashboard: bool,
    exchange: bool,
    catalog: &Catalog,
) -> Vec<Route> {
    let keys_scope = ScopeSet::from_names(
        catalog
            .resolve(crate::scopes::ORG_KEYS_WRITE)
            .map(|s| s.to_string()),
    );
    let route = |methods: &[Method], template: &str, builtin: Builtin, public: bool| Route {
        template: Arc::from(template),
        methods: Methods::List(methods.to_vec()),
        scopes: if public {
            ScopeSet::default()
        } else {
            keys_scope.clone()
        },
        target: Target::Builtin(builtin),
        public,
        token_query_param: None,
        org_param: None,
        forward_token: false,
        max_body_bytes: None,
        line: 0,
    };
    let mut out = Vec::new();
    if keys_api {
        out.push(route(&[Method::GET], "/keys", Builtin::KeysList, false));
        out.push(route(&[Method::POST], "/keys", Builtin::KeysCreate, false));
        out.push(route(
            &[Method::DELETE],
            "/keys/{key}",
            Builtin::KeysDelete,
            false,
        ));
    }
    if exchange {
        // The subject token is the credential: no bearer token is asked for.
        out.push(route(
            &[Method::POST],
            "/tokens",
            Builtin::TokenExchange,
            true,
        ));
    }
    if dashboard {
        out.push(route(
            &[Method::GET],
            "/dashboard",
            Builtin::Dashboard,
            true,
        ));
        out.push(route(
            &[Method::GET],
            "/dashboard/{asset}",
            Builtin::Dashboard,
            true,
        ));
    }
    out
}

/// Do two templates match the same paths (parameter names aside)?
fn same_shape(a: &str, b: &str) -> bool {
    fn shape(t: &str) -> String {
        let mut out = String::with_capacity(t.len());
        let mut in_param = false;
        for c in t.chars() {
            match c {
                '{' => {
                    in_param = true;
                    out.push('{');
                }
                '}' => {
                    in_param = false;
                    out.push('}');
                }
                '*' if in_param => out.push('*'),
                _ if in_param => {}
                _ => out.push(c),
            }
        }
        out
    }
    shape(a) == shape(b)
}
