//! The `scopegate` subcommands. `main.rs` parses; everything here is plain functions that
//! return what they print, so tests can call them.

pub mod demo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::config::{self, Config};
use crate::keys::store::{self, Store};
use crate::scopes::{scopes_for_use, KeyUse};

/// A reverse-proxy authorization gateway: verifies each request's JWT against
/// per-organization keys, enforces the scopes each route requires, and forwards what is
/// allowed with verified identity headers.
#[derive(Debug, Parser)]
#[command(name = "scopegate", version, propagate_version = true)]
pub struct Cli {
    /// Config file. Defaults to $SCOPEGATE_CONFIG, then ./scopegate.toml.
    #[arg(long, global = true, env = "SCOPEGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM/SIGINT; reloads config and keys as they change.
    ///
    /// Environment: SCOPEGATE_WORKERS=N worker threads (default: one per core; each serves
    /// its connections on its own single-threaded runtime; 1 when pinned to one core),
    /// SCOPEGATE_LOG=FILTER (default info; warn drops the per-request access line),
    /// SCOPEGATE_LOG_FORMAT=json for JSON log lines.
    Serve,
    /// Run a gateway and a built-in demo upstream with throw-away keys, and print curls to try.
    Demo,
    /// Validate the config and its key files, print the route table; non-zero exit on errors.
    Check,
    /// Manage organizations.
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Manage keys. A running gateway picks up changes without a restart.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Make tokens the way State Backed's token library does.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Identity providers whose tokens an organization accepts for token exchange.
    #[command(subcommand)]
    Idps(IdpsCommand),
    /// Token providers: which key signs exchanged tokens for a service, and with which claims.
    #[command(subcommand, name = "token-providers")]
    TokenProviders(TokenProvidersCommand),
    /// Anonymous sessions (State Backed's anonymous-statebacked-dev service).
    #[command(subcommand)]
    Anonymous(AnonymousCommand),
    /// Show how the gateway would decide a request, step by step, without any network call.
    /// Exits 0 when the request would be allowed, 1 when refused.
    Explain(ExplainArgs),
}

#[derive(Debug, Subcommand)]
pub enum IdpsCommand {
    /// Add an identity provider, or replace the one with the same audience and issuer.
    Upsert(IdpUpsert),
    /// List identity providers (shared secrets are never shown).
    List {
        #[arg(long)]
        org: String,
    },
    /// Delete the identity provider with this audience and issuer.
    Delete {
        #[arg(long)]
        org: String,
        #[arg(long)]
        audience: Option<String>,
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("verification").required(true).args(["key", "public_key", "jwks_file", "jwks_url"])))]
pub struct IdpUpsert {
    #[arg(long)]
    pub org: String,
    /// Subject tokens whose `aud` names this.
    #[arg(long)]
    pub audience: Option<String>,
    /// Subject tokens whose `iss` is this.
    #[arg(long)]
    pub issuer: Option<String>,
    /// An accepted algorithm (repeatable): HS256, RS256, PS256, ES256, EdDSA, …
    #[arg(long = "algorithm", required = true)]
    pub algorithms: Vec<String>,
    /// A shared secret (HS*); also read from $SCOPEGATE_IDP_SECRET.
    #[arg(long, env = "SCOPEGATE_IDP_SECRET", hide_env_values = true)]
    pub key: Option<String>,
    /// A PEM public key file (RS*, PS*, ES*, EdDSA).
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    /// A JWKS file.
    #[arg(long, value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched and cached by the gateway.
    #[arg(long)]
    pub jwks_url: Option<String>,
    /// Verified claims → intermediate claims: a JSON object, `.$` keys take JSONPaths.
    #[arg(long, default_value = r#"{"sub.$": "$.sub"}"#)]
    pub mapping: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenProvidersCommand {
    /// Add a token provider, or replace the one for the same service.
    Upsert {
        #[arg(long)]
        org: String,
        #[arg(long)]
        service: String,
        /// The key that signs (sbk_…); its scopes bound the tokens'.
        #[arg(long, value_name = "sbk_…")]
        key: String,
        /// Intermediate claims → the token's `act`: a JSON object, `.$` keys take JSONPaths.
        #[arg(long, default_value = r#"{"sub.$": "$.sub"}"#)]
        mapping: String,
        /// Lifetime of minted tokens, like 15m or 1h (at most 1 day).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Narrow minted tokens below the key's scopes (comma-separated).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
    },
    List {
        #[arg(long)]
        org: String,
    },
    Delete {
        #[arg(long)]
        org: String,
        #[arg(long)]
        service: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AnonymousCommand {
    /// Let anyone exchange an anonymous session token for a production-scoped token.
    Enable {
        #[arg(long)]
        org: String,
        /// The production-use key that signs; by default the first key with every production
        /// scope.
        #[arg(long, value_name = "sbk_…")]
        key: Option<String>,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
    Disable {
        #[arg(long)]
        org: String,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The bearer token (also read from $SCOPEGATE_TOKEN, which keeps it out of shell history).
    #[arg(long, env = "SCOPEGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request path, with its query if any: /machines/m/i/i?x=1
    #[arg(long)]
    pub path: String,
    /// Extra request headers, like `--header 'x-statebacked-org-id: org_…'` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an organization (prints its id).
    Create {
        #[arg(long)]
        name: String,
    },
    /// List organizations.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key. Its secret is printed once and never again.
    Create(KeysCreate),
    /// List keys (never their secrets).
    List {
        /// Only this organization's keys.
        #[arg(long)]
        org: Option<String>,
    },
    /// Delete a key; gateways refuse its tokens within a second.
    Delete {
        #[arg(long, value_name = "sbk_…")]
        key: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("grant").required(true).args(["key_use", "scopes"])))]
pub struct KeysCreate {
    /// The organization that owns the key.
    #[arg(long)]
    pub org: String,
    /// Grant the scopes of a use: production (events.write state.read instances.write
    /// indexes.read), ci (machines.* machine-versions.*), admin (org.write org-keys.write
    /// org-members.write).
    #[arg(long = "use", value_enum)]
    pub key_use: Option<KeyUse>,
    /// Grant exactly these scopes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// A name to recognize the key by.
    #[arg(long)]
    pub name: String,
    /// HS256 (State Backed's), HS384 or HS512.
    #[arg(long, default_value = "HS256")]
    pub algorithm: String,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Sign a token with a key: header {alg, kid}, payload {act, aud, exp, iss, iat}.
    Generate(TokensGenerate),
}

#[derive(Debug, Args)]
pub struct TokensGenerate {
    #[arg(long, value_name = "sbk_…")]
    pub key: String,
    #[arg(
        long,
        value_name = "sbsec_…",
        env = "SCOPEGATE_SECRET",
        hide_env_values = true
    )]
    pub secret: String,
    /// End-user claims (a JSON object), placed under `act`.
    #[arg(long, default_value = "{}")]
    pub claims: String,
    /// Lifetime, like 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub expires_in: Duration,
    /// `aud`; defaults to the config's first audience, else State Backed's.
    #[arg(long)]
    pub audience: Option<String>,
    /// `iss`; defaults to https://<key>.client.statebacked.dev/ like State Backed's library.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Narrow the token below the key's scopes (space- or comma-separated).
    #[arg(long)]
    pub scope: Option<String>,
    /// HS256, HS384 or HS512; defaults to the stored key's, else HS256.
    #[arg(long)]
    pub algorithm: Option<String>,
}

/// Loads the config named on the command line (or its default), with a helpful error.
pub fn load_config(flag: Option<&Path>) -> anyhow::Result<(PathBuf, Config)> {
    let path = config::config_path(flag);
    let config = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((path, config))
}

fn store_of(config: &Config) -> Store {
    Store::new(&config.keys.dir, config.auth.catalog.clone())
}

/// What a command prints: text for people, JSON for machines, and a note for stderr.
pub struct Output {
    pub text: String,
    pub json: Value,
    pub warning: Option<String>,
}

impl Output {
    pub fn print(&self, json: bool) {
        if let Some(w) = &self.warning {
            eprintln!("{w}");
        }
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&self.json).expect("JSON serializes")
            );
        } else {
            print!("{}", self.text);
        }
    }
}

pub fn orgs(config: &Config, cmd: &OrgsCommand) -> anyhow::Result<Output> {
    let store = store_of(config);
    match cmd {
        OrgsCommand::Create { name } => {
            let org = store.create_org(name)?;
            Ok(Output {
                text: format!("created organization {} ({})\n", org.id, org.name),
                json: json!({ "id": org.id, "name": org.name }),
                warning: None,
            })
        }
        OrgsCommand::List => {
            let orgs = store.list_orgs()?;
            let mut text = String::new();
            for o in &orgs {
                text.push_str(&format!("{}\t{}\t{}\n", o.id, o.name, o.created_at));
            }
            if orgs.is_empty() {
                text.push_str("no organizations yet: scopegate orgs create --name NAME\n");
            }
            Ok(Output {
                text,
                json: serde_json::to_value(&orgs)?,
                warning: None,
            })
        }
    }
}

pub fn keys(config: &Config, cmd: &KeysCommand) -> anyhow::Result<Output> {
    let store = store_of(config);
    match cmd {
        KeysCommand::Create(args) => {
            let scopes: Vec<String> = match (&args.key_use, &args.scopes) {
                (Some(u), None) => scopes_for_use(*u).iter().map(|s| s.to_string()).collect(),
                (None, Some(list)) => list.iter().map(|s| s.trim().to_owned()).collect(),
                _ => bail!("give either --use or --scopes"),
            };
            let algorithm = store::parse_algorithm(&args.algorithm)
                .with_context(|| format!("unknown algorithm {}", args.algorithm))?;
            let key = store.create_key(&args.org, &args.name, &scopes, algorithm)?;
            Ok(Output {
                text: format!(
                    "key id:  {}\nsecret:  {}\nscopes:  {}\n",
                    key.id,
                    key.secret,
                    key.scopes.join(" ")
                ),
                json: json!({ "id": key.id, "key": key.secret }),
                warning: Some(
                    "warning: this secret will never be shown again; store it safely now.".into(),
                ),
            })
        }
        KeysCommand::List { org } => {
            let keys = store.list_keys(org.as_deref())?;
            let mut text = String::new();
            for k in &keys {
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    k.id,
                    k.org,
                    k.name,
                    k.scopes.join(" "),
                    k.created_at
                ));
            }
            Ok(Output {
                text,
                json: serde_json::to_value(&keys)?,
                warning: None,
            })
        }
        KeysCommand::Delete { key } => {
            let org = store.delete_key(key)?;
            Ok(Output {
                text: format!("deleted key {key} of {org}\n"),
                json: json!({ "id": key, "org": org, "deleted": true }),
                warning: None,
            })
        }
    }
}

/// The payload State Backed's token library signs, in its field order.
#[derive(Debug, Serialize)]
struct TokenPayload<'a> {
    act: &'a Map<String, Value>,
    aud: &'a str,
    exp: u64,
    iss: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// What to sign: State Backed's token shape, with the knobs `tokens generate` offers.
#[derive(Debug, Clone)]
pub struct TokenSpec<'a> {
    pub key_id: &'a str,
    pub algorithm: Algorithm,
    pub act: &'a Map<String, Value>,
    pub audience: &'a str,
    /// Defaults to `https://<key id>.client.statebacked.dev/`, as State Backed's library does.
    pub issuer: Option<&'a str>,
    pub scope: Option<String>,
    pub lifetime: Duration,
    /// Seconds since the epoch.
    pub now: u64,
}

/// Signs a State Backed-style token: `{"alg","kid"}` header, claims under `act`, the
/// secret's UTF-8 bytes as the HMAC key.
pub fn sign_token(spec: &TokenSpec<'_>, secret: &str) -> anyhow::Result<String> {
    let mut header = Header::new(spec.algorithm);
    header.typ = None;
    header.kid = Some(spec.key_id.to_owned());
    let issuer = spec
        .issuer
        .map(str::to_owned)
        .unwrap_or_else(|| format!("https://{}.client.statebacked.dev/", spec.key_id));
    let payload = TokenPayload {
        act: spec.act,
        aud: spec.audience,
        exp: spec.now + spec.lifetime.as_secs(),
        iss: &issuer,
        iat: spec.now,
        scope: spec.scope.clone(),
    };
    Ok(jsonwebtoken::encode(
        &header,
        &payload,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

pub fn tokens(config: Option<&Config>, cmd: &TokensCommand) -> anyhow::Result<Output> {
    let TokensCommand::Generate(args) = cmd;
    let act: Map<String, Value> = match serde_json::from_str(&args.claims) {
        Ok(Value::Object(map)) => map,
        _ => bail!("--claims must be a JSON object, like '{{\"sub\":\"user-1\"}}'"),
    };
    let algorithm = match &args.algorithm {
        Some(name) => store::parse_algorithm(name)
            .with_context(|| format!("unknown algorithm {name} (HS256, HS384, HS512)"))?,
        None => config
            .and_then(|c| store_of(c).find_key(&args.key).ok().flatten())
            .and_then(|(_, k)| store::parse_algorithm(&k.algorithm))
            .unwrap_or(Algorithm::HS256),
    };
    let audience = args
        .audience
        .clone()
        .or_else(|| config.and_then(|c| c.auth.audiences.first().cloned()))
        .unwrap_or_else(|| config::raw::DEFAULT_AUDIENCE.to_owned());
    let scope = args.scope.as_ref().map(|s| {
        s.split([' ', ','])
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let token = sign_token(
        &TokenSpec {
            key_id: &args.key,
            algorithm,
            act: &act,
            audience: &audience,
            issuer: args.issuer.as_deref(),
            scope,
            lifetime: args.expires_in,
            now: crate::pipeline::now_seconds(),
        },
        &args.secret,
    )?;
    Ok(Output {
        text: format!("{token}\n"),
        json: json!({ "token": token, "expires_in": args.expires_in.as_secs() }),
        warning: None,
    })
}

/// `scopegate check`: the config, its key files, and the route table. The flag is false when
/// a key file has problems (a broken config is an `Err`, like everywhere else).
pub fn check(flag: Option<&Path>) -> anyhow::Result<(Output, bool)> {
    let (path, config) = load_config(flag)?;
    // Build the upstream clients as `serve` would (nothing is dialled): an https upstream
    // without ca_file needs usable root certificates in the system's store.
    for settings in &config.upstreams {
        crate::pipeline::forward::Upstream::new(settings.clone())?;
    }
    let mut problems = Vec::new();
    let mut warning = None;
    let mut loaded = Vec::new();
    if config.keys.dir.is_dir() {
        let files = store::org_files(&config.keys.dir)
            .with_context(|| format!("reading the key folder {}", config.keys.dir.display()))?;
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    continue;
                }
            };
            match store::parse_org_file(&file, &text, &config.auth.catalog) {
                Ok(org) => loaded.push(org),
                Err(e) => problems.push(e.to_string()),
            }
        }
    } else {
        // Not an error: `serve` creates the folder, and a config can be checked before any
        // organization exists (`scopegate check --config config/statebacked.toml`).
        warning = Some(format!(
            "warning: {}: the key folder does not exist yet (scopegate orgs create makes it)",
            config.keys.dir.display()
        ));
    }
    // The gateway refuses a key id that two organizations claim: so does `check`.
    let (_, clashes) = crate::keys::KeySet::build(&loaded);
    for id in clashes {
        problems.push(format!(
            "{}: key id '{id}' appears in more than one organization; the gateway accepts it for none",
            config.keys.dir.display()
        ));
    }
    let orgs = loaded.len();
    let keys: usize = loaded.iter().map(|o| o.keys.len()).sum();
    let mut text = format!("{}: ok\n", path.display());
    text.push_str(&format!(
        "keys: {} organizations, {} keys in {}\n\n",
        orgs,
        keys,
        config.keys.dir.display()
    ));
    let rows: Vec<[String; 4]> = config
        .routes
        .routes()
        .iter()
        .map(|r| {
            [
                r.methods.names().join(","),
                r.template.to_string(),
                if r.public {
                    "(public)".to_owned()
                } else if r.scopes.is_empty() {
                    "(any valid token)".to_owned()
                } else {
                    r.scopes.joined()
                },
                config.target_name(r),
            ]
        })
        .collect();
    let header = ["METHODS", "PATH", "SCOPES", "UPSTREAM"].map(String::from);
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    let json = json!({
        "config": path,
        "ok": problems.is_empty(),
        "problems": problems,
        "organizations": orgs,
        "keys": keys,
        "routes": config.routes.routes().iter().map(|r| json!({
            "methods": r.methods.names(),
            "path": &*r.template,
            "scopes": r.scopes.iter().collect::<Vec<_>>(),
            "public": r.public,
            "upstream": config.target_name(r),
        })).collect::<Vec<_>>(),
    });
    if !problems.is_empty() {
        // Problems go to stderr (and into the JSON); the caller exits non-zero.
        let mut lines = warning.map(|w| vec![w]).unwrap_or_default();
        lines.extend(problems.iter().cloned());
        return Ok((
            Output {
                text: String::new(),
                json,
                warning: Some(lines.join("\n")),
            },
            false,
        ));
    }
    Ok((
        Output {
            text,
            json,
            warning,
        },
        true,
    ))
}

/// `scopegate explain`: the same `decide` that `serve` runs, with every step printed. The
/// flag is whether the request would be allowed.
pub fn explain(flag: Option<&Path>, args: &ExplainArgs) -> anyhow::Result<(Output, bool)> {
    use crate::pipeline::trace::Steps;
    use crate::pipeline::{decide_traced, Action};

    let (_, config) = load_config(flag)?;
    let method = http::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("{:?} is not an HTTP method", args.method))?;
    let uri: http::Uri = args
        .path
        .parse()
        .with_context(|| format!("{:?} is not a request path", args.path))?;
    anyhow::ensure!(
        uri.scheme().is_none() && args.path.starts_with('/'),
        "--path takes a path like /machines/m1, not a URL"
    );
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?} must look like 'name: value'"))?;
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("{name:?} is not a header name"))?,
            http::HeaderValue::from_str(value.trim())
                .with_context(|| format!("{value:?} is not a header value"))?,
        );
    }
    if let Some(token) = &args.token {
        headers.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token contains characters a header cannot carry")?,
        );
    }
    let metrics = crate::metrics::Metrics::new();
    let (_, keys) = crate::reload::initial_keys(&config.keys, &config.auth.catalog, &metrics);
    let snapshot = crate::gateway::Snapshot::build(std::sync::Arc::new(config), None)?;
    let mut steps = Steps::default();
    let now = crate::pipeline::now_seconds();
    let outcome = decide_traced(&snapshot, &keys, &method, &uri, &headers, now, &mut steps);
    let (allowed, status, code, reason, detail) = match &outcome.result {
        Ok(decision) => {
            let detail = match &decision.action {
                Action::Forward { upstream, uri } => format!(
                    "forwarded to upstream {} as {uri}",
                    snapshot.config.upstreams[*upstream].name
                ),
                Action::Builtin(b) => format!("answered by the built-in {}", b.name()),
            };
            (true, None, None, None, detail)
        }
        Err(e) => (
            false,
            Some(e.status().as_u16()),
            Some(e.code()),
            Some(e.reason()),
            format!("{} {} ({})", e.status().as_u16(), e.code(), e.reason()),
        ),
    };
    steps.0.push((
        "decision",
        if allowed {
            format!("allow: {detail}")
        } else {
            format!("deny: {detail}")
        },
    ));
    let width = steps.0.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut text = format!("{} {}\n", method, args.path);
    for (name, detail) in &steps.0 {
        text.push_str(&format!("  {name:width$}  {detail}\n"));
    }
    let json = json!({
        "method": method.as_str(),
        "path": args.path,
        "allow": allowed,
        "status": status,
        "code": code,
        "reason": reason,
        "steps": steps.0.iter().map(|(step, detail)| json!({"step": step, "detail": detail})).collect::<Vec<_>>(),
    });
    Ok((
        Output {
            text,
            json,
            warning: None,
        },
        allowed,
    ))
}

fn read_file_arg(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn done(text: String, json: Value) -> anyhow::Result<Output> {
    Ok(Output {
        text,
        json,
        warning: None,
    })
}

pub fn idps(config: &Config, cmd: &IdpsCommand) -> anyhow::Result<Output> {
    use crate::exchange::records::IdpRecord;
    let store = store_of(config);
    match cmd {
        IdpsCommand::Upsert(a) => {
            let record = IdpRecord {
                audience: a.audience.clone(),
                issuer: a.issuer.clone(),
                algorithms: a.algorithms.clone(),
                secret: a.key.clone(),
                public_key: a
                    .public_key
                    .as_deref()
                    .map(|p| read_file_arg(p, "public key"))
                    .transpose()?,
                jwks: a
                    .jwks_file
                    .as_deref()
                    .map(|p| read_file_arg(p, "JWKS file"))
                    .transpose()?,
                jwks_url: a.jwks_url.clone(),
                mapping: a.mapping.clone(),
            };
            let kind = record.key_kind();
            store.upsert_idp(&a.org, record)?;
            done(
                format!("identity provider saved for {} ({kind})\n", a.org),
                json!({ "org": a.org, "audience": a.audience, "issuer": a.issuer, "key": kind }),
            )
        }
        IdpsCommand::List { org } => {
            let file = store.org_file(org)?;
            let rows: Vec<Value> = file
                .idps
                .iter()
                .map(|i| {
                    json!({
                        "audience": i.audience, "issuer": i.issuer, "algorithms": i.algorithms,
                        "key": i.key_kind(), "jwks_url": i.jwks_url, "mapping": i.mapping,
                    })
                })
                .collect();
            let mut text = String::new();
            for i in &file.idps {
                text.push_str(&format!(
                    "aud={}\tiss={}\t{}\t{}\t{}\n",
                    i.audience.as_deref().unwrap_or("-"),
                    i.issuer.as_deref().unwrap_or("-"),
                    i.algorithms.join(","),
                    i.key_kind(),
                    i.mapping
                ));
            }
            done(text, Value::Array(rows))
        }
        IdpsCommand::Delete {
            org,
            audience,
            issuer,
        } => {
            store.delete_idp(org, audience.as_deref(), issuer.as_deref())?;
            done(
                format!("identity provider deleted from {org}\n"),
                json!({ "org": org, "deleted": true }),
            )
        }
    }
}

pub fn token_providers(config: &Config, cmd: &TokenProvidersCommand) -> anyhow::Result<Output> {
    use crate::exchange::records::TokenProviderRecord;
    let store = store_of(config);
    match cmd {
        TokenProvidersCommand::Upsert {
            org,
            service,
            key,
            mapping,
            lifetime,
            scopes,
        } => {
            store.upsert_token_provider(
                org,
                TokenProviderRecord {
                    service: service.clone(),
                    key: key.clone(),
                    mapping: mapping.clone(),
                    lifetime_seconds: lifetime.as_secs(),
                    scopes: scopes.clone(),
                },
            )?;
            let audience = format!("{}/{org}/{service}", config.token_exchange.audience_base);
            done(
                format!(
                    "token provider {service} saved for {org}; exchange audience: {audience}\n"
                ),
                json!({ "org": org, "service": service, "audience": audience }),
            )
        }
        TokenProvidersCommand::List { org } => {
            let file = store.org_file(org)?;
            let mut text = String::new();
            for p in &file.token_providers {
                text.push_str(&format!(
                    "{}\t{}\t{}s\t{}\n",
                    p.service, p.key, p.lifetime_seconds, p.mapping
                ));
            }
            done(text, serde_json::to_value(&file.token_providers)?)
        }
        TokenProvidersCommand::Delete { org, service } => {
            store.delete_token_provider(org, service)?;
            done(
                format!("token provider {service} deleted from {org}\n"),
                json!({ "org": org, "service": service, "deleted": true }),
            )
        }
    }
}

pub fn anonymous(config: &Config, cmd: &AnonymousCommand) -> anyhow::Result<Output> {
    use crate::exchange::records::AnonymousRecord;
    let store = store_of(config);
    match cmd {
        AnonymousCommand::Enable { org, key, lifetime } => {
            store.set_anonymous(
                org,
                Some(AnonymousRecord {
                    enabled: true,
                    key: key.clone(),
                    lifetime_seconds: lifetime.as_secs(),
                }),
            )?;
            done(
                format!("anonymous sessions enabled for {org}\n"),
                json!({ "org": org, "anonymous": true }),
            )
        }
        AnonymousCommand::Disable { org } => {
            store.set_anonymous(org, None)?;
            done(
                format!("anonymous sessions disabled for {org}\n"),
                json!({ "org": org, "anonymous": false }),
            )
        }
    }
}
