//! Forwarding an authorized request upstream, streaming both ways.
//!
//! Each upstream has one pooled keep-alive client, over plain TCP or over rustls (the ring
//! provider the listener uses, TLS 1.2+, certificates always verified against the system's
//! roots or the upstream's `ca_file`), speaking HTTP/1.1 or HTTP/2 as configured.
//!
//! Header hygiene follows RFC 9110 §7.6.1: hop-by-hop fields, and every field the
//! `Connection` header names, are removed in both directions. Identity headers are removed
//! from the inbound request in every spelling before the verified ones are added, so an
//! upstream can trust them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use hyper::body::{Body as _, Incoming};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::{Builder as ClientBuilder, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Notify;

use super::authorize::{Permit, ACT_HEADER};
use super::pool::H1Pool;
pub use super::pool::UpstreamBody;
use super::ClientBody;
use crate::config::{TrustRoots, UpstreamProtocol, UpstreamSettings};
use crate::error::GatewayError;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, RFC 9112 §9.6),
/// with the non-standard ones that mean the same: `Keep-Alive`, `Proxy-Connection`, and
/// `HTTP2-Settings` (connection-specific by definition, RFC 7540 §3.2.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];
const HOP_BY_HOP_EXTRA: &[&str] = &["keep-alive", "proxy-connection", "http2-settings"];
/// [`HOP_BY_HOP`] and [`HOP_BY_HOP_EXTRA`] as text, for names read off the wire in any case.
const HOP_BY_HOP_TEXT: &[&str] = &[
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
    "http2-settings",
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Headers some frameworks read to serve another method or path than the request line's
/// (Symfony/Zend `X-Original-URL`, `X-Rewrite-URL`; method overrides in Rails, Express,
/// Spring, ASP.NET): the upstream must serve what was authorized, so they never reach it.
const OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Why an upstream's client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "upstream '{upstream}': no usable root certificates in the system's store ({reason}); \
         install the system's CA certificates or give the upstream a ca_file"
    )]
    SystemRoots { upstream: String, reason: String },
}

/// One upstream with its pooled keep-alive client.
#[derive(Debug)]
pub struct Upstream {
    pub settings: UpstreamSettings,
    client: Transport,
}

/// The client of one upstream. Plain HTTP/1.1 (the common case) goes through our own pool
/// of hyper connections ([`super::pool`]); h2c and TLS upstreams through hyper's pooled client.
#[derive(Debug)]
enum Transport {
    H1(H1Pool),
    Plain(Client<HttpConnector, RequestBody>),
    Tls(Client<HttpsConnector<HttpConnector>, RequestBody>),
}

impl Upstream {
    /// Builds the upstream's client. Connects lazily: nothing is dialled until a request. Fails
    /// only when an https upstream without `ca_file` finds no usable system root certificates.
    pub fn new(settings: UpstreamSettings) -> Result<Self, ClientError> {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(settings.connect_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle)
            // h2c needs prior knowledge; over TLS it matches the only ALPN protocol offered.
            .http2_only(settings.protocol == UpstreamProtocol::H2);
        let client = match &settings.tls {
            None if settings.protocol == UpstreamProtocol::Http1 => {
                Transport::H1(H1Pool::new(&settings))
            }
            None => {
                tcp.enforce_http(true);
                Transport::Plain(builder.build(tcp))
            }
            Some(roots) => {
                // The URL's scheme is https: hyper-rustls checks it, not HttpConnector.
                tcp.enforce_http(false);
                Transport::Tls(tls_client(&builder, &settings, roots, tcp)?)
            }
        };
        Ok(Upstream { settings, client })
    }

    /// Sends the request. The response head must arrive within the response timeout,
    /// counted from the moment the request body has been sent in full: a slow upload is the
    /// client's pace, not the upstream's. A request without a body counts from its start (the
    /// thread's latest clock reading, microseconds before it is written).
    ///
    /// With `max_body` set, the body is counted as it streams: once it passes the limit the
    /// upload is cut and the answer is 413 (unless the upstream already answered).
    ///
    /// The request is `parts` (left as sent, or emptied for a hyper client) and `body`: taken
    /// apart, it is not moved through every layer down to the socket.
    pub async fn send(
        &self,
        parts: &mut http::request::Parts,
        body: ClientBody,
        max_body: Option<u64>,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        // Most requests have no body: no signal to wait for, and no counter.
        let sent = (!body.is_end_stream()).then(|| Arc::new(Notify::new()));
        let exceeded = max_body.map(|_| Arc::new(AtomicBool::new(false)));
        let body = RequestBody::new(body, sent.clone(), max_body, exceeded.clone());
        let timeout = self.settings.response_timeout;
        let deadline = async {
            match &sent {
                Some(sent) => {
                    sent.notified().await;
                    tokio::time::sleep(timeout).await;
                }
                // Sent at once: counted from the request's start, microseconds earlier.
                None => {
                    let start = tokio::time::Instant::from_std(crate::clock::latest().instant);
                    tokio::time::sleep_until(start + timeout).await;
                }
            }
        };
        let too_large = || exceeded.as_ref().is_some_and(|e| e.load(Ordering::Acquire));
        let failed = |e: &dyn std::error::Error| {
            if too_large() {
                return GatewayError::PayloadTooLarge;
            }
            // Refused connections, TLS failures (an unknown CA, a name mismatch) and broken
            // connections alike: the upstream could not be used, a 502.
            tracing::debug!(
                upstream = %self.settings.name,
                error = %error_chain(e),
                "upstream request failed"
            );
            GatewayError::UpstreamUnavailable
        };
        match &self.client {
            Transport::H1(pool) => tokio::select! {
                result = pool.send(parts, body, upgrade) => result.map_err(|e| failed(&e)),
                () = deadline => Err(GatewayError::UpstreamTimeout),
            },
            Transport::Plain(client) => {
                let request = Request::from_parts(take_parts(parts), body);
                self.via_legacy(request, |r| client.request(r), deadline, failed)
                    .await
            }
            Transport::Tls(client) => {
                let request = Request::from_parts(take_parts(parts), body);
                self.via_legacy(request, |r| client.request(r), deadline, failed)
                    .await
            }
        }
    }

    /// [`Upstream::send`] through hyper's pooled client (h2c and TLS upstreams).
    async fn via_legacy<F>(
        &self,
        mut request: Request<RequestBody>,
        send: impl FnOnce(Request<RequestBody>) -> F,
        deadline: impl std::future::Future<Output = ()>,
        failed: impl Fn(&dyn std::error::Error) -> GatewayError,
    ) -> Result<Response<UpstreamBody>, GatewayError>
    where
        F: std::future::Future<
            Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>,
        >,
    {
        let mut connection = capture_connection(&mut request);
        let response = send(request);
        // The connect timeout bounds getting a connection, TLS handshake included: the
        // TCP connector's own timeout stops at the TCP handshake, and a request body is not
        // sent (so the response timeout does not start) until the connection is up.
        let connecting = async {
            let connect = connection.wait_for_connection_metadata();
            if tokio::time::timeout(self.settings.connect_timeout, connect)
                .await
                .is_ok()
            {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = response => match result {
                Err(e) => Err(failed(&e)),
                // The caller strips hop-by-hop headers: a 101 needs its Upgrade first.
                Ok(response) => Ok(response.map(UpstreamBody::unpooled)),
            },
            () = connecting => {
                tracing::debug!(
                    upstream = %self.settings.name,
                    timeout = ?self.settings.connect_timeout,
                    "no connection (TCP and TLS) within the connect timeout"
                );
                Err(GatewayError::UpstreamUnavailable)
            }
            () = deadline => Err(GatewayError::UpstreamTimeout),
        }
    }
}

/// A client for an https upstream: rustls with the gateway's crypto provider, TLS 1.2 and 1.3,
/// certificates verified against `roots`, ALPN `h2` or none (HTTP/1.1) as configured.
fn tls_client(
    builder: &ClientBuilder,
    settings: &UpstreamSettings,
    roots: &TrustRoots,
    tcp: HttpConnector,
) -> Result<Client<HttpsConnector<HttpConnector>, RequestBody>, ClientError> {
    let versions = rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let config = match roots {
        TrustRoots::System => {
            versions
                .with_native_roots()
                .map_err(|e| ClientError::SystemRoots {
                    upstream: settings.name.clone(),
                    reason: e.to_string(),
                })?
        }
        TrustRoots::CaFile { certs, .. } => {
            let mut store = rustls::RootCertStore::empty();
            // Every certificate was checked to be a usable anchor when the config was loaded.
            store.add_parsable_certificates(certs.iter().cloned());
            versions.with_root_certificates(store)
        }
    }
    .with_no_client_auth();
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = match settings.protocol {
        UpstreamProtocol::Http1 => https.enable_http1().wrap_connector(tcp),
        UpstreamProtocol::H2 => https.enable_http2().wrap_connector(tcp),
    };
    Ok(builder.build(connector))
}

/// An error and its causes, `a: b: c`: hyper's own message ("client error (Connect)") says
/// nothing of the certificate that was refused.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The client's request body on its way upstream; tells `send` when it has been sent whole,
/// and cuts it when it grows past the route's limit.
pub struct RequestBody {
    inner: ClientBody,
    sent: Option<Arc<Notify>>,
    limit: Option<u64>,
    seen: u64,
    exceeded: Option<Arc<AtomicBool>>,
}

/// The body grew past the route's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the route allows")]
pub struct BodyTooLarge;

impl RequestBody {
    fn new(
        inner: ClientBody,
        sent: Option<Arc<Notify>>,
        limit: Option<u64>,
        exceeded: Option<Arc<AtomicBool>>,
    ) -> Self {
        let mut body = RequestBody {
            inner,
            sent,
            limit,
            seen: 0,
            exceeded,
        };
        // An empty body may never be polled at all.
        body.check_end();
        body
    }

    fn check_end(&mut self) {
        if self.inner.is_end_stream() {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if let Some(sent) = self.sent.take() {
            // Stores a permit if `send` is not waiting yet.
            sent.notify_one();
        }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(limit), Some(data)) = (self.limit, frame.data_ref()) {
                    self.seen += data.len() as u64;
                    if self.seen > limit {
                        if let Some(e) = &self.exceeded {
                            e.store(true, Ordering::Release);
                        }
                        self.finish();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                self.check_end();
            }
            Poll::Pending => {}
        }
        polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Identity header names, built once per config from the prefix.
#[derive(Debug, Clone)]
pub struct IdentityNames {
    pub prefix: String,
    pub org: HeaderName,
    pub key: HeaderName,
    pub scopes: HeaderName,
    pub sub: HeaderName,
    pub claims: HeaderName,
}

impl IdentityNames {
    pub fn new(prefix: &str) -> Self {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .expect("the prefix is validated header-safe")
        };
        IdentityNames {
            prefix: prefix.to_owned(),
            org: name("org"),
            key: name("key"),
            scopes: name("scopes"),
            sub: name("sub"),
            claims: name("claims"),
        }
    }

    /// Does this inbound header name claim to be an identity header, in any spelling?
    fn matches(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        let prefix = self.prefix.as_bytes();
        name.len() >= prefix.len()
            && name[..prefix.len()].iter().zip(prefix).all(|(&a, &b)| {
                let a = a.to_ascii_lowercase();
                a == b || (a == b'_' && b == b'-')
            })
    }
}

/// What the handler tells `prepare` about the client side of the request.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The client's IP (see [`ip_header`]).
    pub peer_ip: &'a HeaderValue,
    pub proto: &'static str,
    pub trust_forwarded: bool,
    pub host: Option<&'a HeaderValue>,
}

/// Rewrites inbound headers into the upstream's: removes hop-by-hop and spoofable fields, sets
/// `X-Forwarded-*`, adds the permit's identity.
///
/// One pass over the request's field names decides what goes (usually just `Authorization`
/// and `Host`), rather than one hash lookup per name that might be there.
pub fn prepare_headers(
    headers: &mut HeaderMap,
    permit: &Permit,
    names: &IdentityNames,
    client: ClientSide<'_>,
    keep_authorization: bool,
) {
    let listed = ConnectionListed::of(headers);
    let trust = client.trust_forwarded;
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            if listed.contains(name) {
                return true;
            }
            if *name == header::AUTHORIZATION {
                return !keep_authorization;
            }
            // The gateway answers `100-continue` itself when it starts reading the body; the
            // upstream just receives the body. Host is the upstream's own.
            if *name == header::HOST || *name == header::EXPECT || is_hop_by_hop(name) {
                return true;
            }
            if !trust
                && (*name == header::FORWARDED
                    || *name == X_FORWARDED_HOST
                    || *name == X_FORWARDED_PROTO)
            {
                return true;
            }
            let text = name.as_str();
            // Names with `_` are dropped, as nginx does by default (`underscores_in_headers
            // off`): CGI-style upstreams read `_` and `-` alike (RFC 3875 §4.1.18), so
            // `x_statebacked_act`, `x_forwarded_for` or `transfer_encoding` would carry past
            // the gateway what it checks, replaces or strips under the `-` spelling.
            text.contains('_')
                || *name == ACT_HEADER
                || OVERRIDES.contains(&text)
                || names.matches(name)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    // Room for the X-Forwarded-* and identity fields, so the map grows at most once.
    headers.reserve(8);

    let peer = client.peer_ip.clone();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(existing) if trust => {
            let mut joined = existing.as_bytes().to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or(peer)
        }
        _ => peer,
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    if !trust || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    }
    if let Some(host) = client.host {
        if !trust || !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }

    if let Some(id) = &permit.identity {
        headers.insert(names.org.clone(), id.key().org_header.clone());
        headers.insert(names.key.clone(), id.key().id_header.clone());
        headers.insert(names.scopes.clone(), id.scopes().clone());
        if let Some(sub) = &id.sub {
            headers.insert(names.sub.clone(), sub.clone());
        }
        if let Some(claims) = &id.claims {
            headers.insert(names.claims.clone(), claims.clone());
        }
    }
}

/// An IP address as a header value.
pub fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("IPs are header-safe")
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name) || HOP_BY_HOP_EXTRA.contains(&name.as_str())
}

/// Where `name` is in [`HOP_BY_HOP`], then [`HOP_BY_HOP_EXTRA`] (numbered on from the first);
/// `None` when it is not hop-by-hop.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| h == name).or_else(|| {
        HOP_BY_HOP_EXTRA
            .iter()
            .position(|h| *h == name.as_str())
            .map(|i| HOP_BY_HOP.len() + i)
    })
}

/// The field names the `Connection` header lists (RFC 9110 §7.6.1), read in place: usually
/// just `keep-alive` or `close`, so nothing is allocated to check a name against them.
struct ConnectionListed<'a> {
    values: http::header::GetAll<'a, HeaderValue>,
}

impl<'a> ConnectionListed<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        ConnectionListed {
            values: headers.get_all(header::CONNECTION),
        }
    }

    fn contains(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.values.iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
        })
    }

    /// Does `Connection` list a field that is not hop-by-hop anyway? Not for the usual
    /// `keep-alive`: every field it could name goes as hop-by-hop whatever it lists.
    fn names_others(&self) -> bool {
        self.values
            .iter()
            .any(|value| names_others(value.as_bytes()))
    }
}

/// Is `name`, in any case, a hop-by-hop field's? For names not made [`HeaderName`]s.
pub(super) fn is_hop_by_hop_text(name: &[u8]) -> bool {
    HOP_BY_HOP_TEXT
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
}

/// Does this `Connection` value list a field that is not hop-by-hop anyway?
pub(super) fn names_others(connection: &[u8]) -> bool {
    connection.split(|&b| b == b',').any(|token| {
        let token = token.trim_ascii();
        // An empty token names no field.
        !token.is_empty() && !is_hop_by_hop_text(token)
    })
}

/// Removes hop-by-hop fields and those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = ConnectionListed::of(headers);
    if !listed.names_others() {
        // The common case (`Connection: keep-alive`, or none): only fixed names go, so they
        // are noted by their place in the lists instead of cloned into a vector, and nothing
        // is checked against `Connection`. Removed in the order of the keys, as below: a
        // removal moves the last field into the gap, so the order decides the order the
        // client gets the rest in.
        let mut doomed = [0u8; HOP_BY_HOP.len() + HOP_BY_HOP_EXTRA.len()];
        let mut count = 0;
        for name in headers.keys() {
            if let Some(index) = hop_by_hop_index(name) {
                doomed[count] = index as u8;
                count += 1;
            }
        }
        for &index in &doomed[..count] {
            match HOP_BY_HOP.get(usize::from(index)) {
                Some(name) => headers.remove(name),
                None => headers.remove(HOP_BY_HOP_EXTRA[usize::from(index) - HOP_BY_HOP.len()]),
            };
        }
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name) || listed.contains(name))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The upstream URL for a normalized path and the query left after taking out the token.
pub fn upstream_uri(
    settings: &UpstreamSettings,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, GatewayError> {
    let mut pq = String::with_capacity(
        settings.path_prefix.len() + path.len() + 1 + query.map_or(0, str::len),
    );
    pq.push_str(&settings.path_prefix);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    Uri::builder()
        .scheme(settings.scheme.clone())
        .authority(settings.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::BadPath)
}

/// Forwards an authorized request: rewrites its headers, sends it, and — for a protocol
/// upgrade the upstream accepts — splices the two connections.
///
/// `parts` is rewritten in place into the upstream request.
#[allow(clippy::too_many_arguments)] // the request in its two parts
pub async fn forward(
    gateway: &crate::gateway::Gateway,
    snapshot: &crate::gateway::Snapshot,
    (upstream, uri): (usize, Uri),
    permit: &Permit,
    route: &crate::config::Route,
    parts: &mut http::request::Parts,
    body: ClientBody,
    client: ClientSide<'_>,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let upstream_client = &snapshot.upstreams[upstream];
    // An HTTP/1.1 Upgrade can only be relayed to an upstream that speaks HTTP/1.1 too; to an
    // h2 upstream the request goes as a plain one, its Upgrade stripped as hop-by-hop.
    let upgrade = match (parts.version, upstream_client.settings.protocol) {
        (http::Version::HTTP_11, UpstreamProtocol::Http1) => {
            super::tunnel::requested(&parts.headers)
        }
        _ => None,
    };
    let client_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    prepare_headers(
        &mut parts.headers,
        permit,
        &snapshot.identity,
        client,
        route.forward_token,
    );
    if let (Some(protocol), Some(_)) = (&upgrade, &client_upgrade) {
        super::tunnel::restore(&mut parts.headers, protocol.clone());
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let mut response = send_timed(
        upstream_client,
        parts,
        body,
        route.max_body_bytes,
        client_upgrade.is_some(),
        &gateway.metrics,
    )
    .await?;
    match client_upgrade {
        Some(client_upgrade) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let protocol = response.headers().get(header::UPGRADE).cloned();
            strip_hop_by_hop(response.headers_mut());
            if let Some(protocol) = protocol {
                super::tunnel::restore(response.headers_mut(), protocol);
            }
            super::tunnel::splice(gateway, client_upgrade, upstream_upgrade);
        }
        _ if response.body().hop_by_hop_removed() => {}
        _ => strip_hop_by_hop(response.headers_mut()),
    }
    Ok(response)
}

/// Times the upstream round trip into the upstream histogram.
pub async fn send_timed(
    upstream: &Upstream,
    parts: &mut http::request::Parts,
    body: ClientBody,
    max_body: Option<u64>,
    upgrade: bool,
    metrics: &crate::metrics::Metrics,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let started = Instant::now();
    let result = upstream.send(parts, body, max_body, upgrade).await;
    metrics
        .upstream_timer(&upstream.settings.name)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Takes `parts` out of its place, leaving the parts of an empty `GET /` (no allocation).
pub(super) fn take_parts(parts: &mut http::request::Parts) -> http::request::Parts {
    std::mem::replace(parts, Request::new(()).into_parts().0)
}

/// The response body type of the gateway: a streamed upstream body or a small local one.
pub type Body = http_body_util::Either<UpstreamBody, http_body_util::Full<Bytes>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_match_every_spelling() {
        let names = IdentityNames::new("x-scopegate-");
        for n in [
            "x-scopegate-org",
            "x_scopegate_org",
            "x-scopegate_sub",
            "x_scopegate-anything",
        ] {
            assert!(
                names.matches(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
        for n in ["x-scopegat", "x-scopegateorg", "scopegate-org"] {
            assert!(
                !names.matches(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret ,keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn the_hop_by_hop_lists_agree() {
        let names: Vec<&str> = HOP_BY_HOP
            .iter()
            .map(HeaderName::as_str)
            .chain(HOP_BY_HOP_EXTRA.iter().copied())
            .collect();
        assert_eq!(names, HOP_BY_HOP_TEXT);
        for name in &names {
            assert!(is_hop_by_hop_text(name.to_ascii_uppercase().as_bytes()));
        }
        assert!(!is_hop_by_hop_text(b"x-kept"));
        assert!(!names_others(b" Keep-Alive, ,TE"));
        assert!(names_others(b"keep-alive, close"));
        assert!(names_others(b"x-secret"));
    }

    /// The fields left keep the order they would have with the names removed one by one in
    /// the order of the keys (a removal moves the last field into the gap).
    #[test]
    fn stripping_keeps_the_order_of_removal_by_key() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("te", "trailers"),
            ("connection", "Keep-Alive, "),
            ("x-c", "1"),
            ("keep-alive", "timeout=5"),
            ("x-d", "2"),
            ("upgrade", "h2c"),
            ("x-e", "3"),
            ("x-f", "4"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        let mut expected = h.clone();
        let listed = ConnectionListed::of(&h);
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|name| is_hop_by_hop(name) || listed.contains(name))
            .cloned()
            .collect();
        for name in doomed {
            expected.remove(name);
        }
        strip_hop_by_hop(&mut h);
        let fields = |m: &HeaderMap| {
            m.iter()
                .map(|(n, v)| format!("{n}: {v:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&h), fields(&expected));
        assert_eq!(h.len(), 4);
    }
}
