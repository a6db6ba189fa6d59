//! The config file exactly as written: serde shapes with no meaning attached yet.
//!
//! Every struct denies unknown fields: a misspelled key (say `scope = [...]` for `scopes`)
//! must fail loudly, not leave a route unprotected. Defaults are named constants so the README,
//! `--help` and the code cannot disagree about them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_IDENTITY_PREFIX: &str = "x-scopegate-";
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
pub const DEFAULT_KEYS_DIR: &str = "keys";
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 250;
pub const DEFAULT_AUDIENCE: &str = "https://api.statebacked.dev/";
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 1024;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_POOL_IDLE_TIMEOUT_SECONDS: u64 = 90;
pub const DEFAULT_POOL_MAX_IDLE: usize = 256;
/// HTTP/1.1 to upstreams unless one says `protocol = "h2"`.
pub const DEFAULT_UPSTREAM_PROTOCOL: &str = "http1";
pub const DEFAULT_KEYS_PAGE_SIZE: usize = 100;
pub const DEFAULT_EXCHANGE_AUDIENCE_BASE: &str = "https://tokens.statebacked.dev";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub keys: RawKeys,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub keys_api: RawKeysApi,
    #[serde(default)]
    pub dashboard: RawDashboard,
    #[serde(default)]
    pub token_exchange: RawTokenExchange,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: Spanned<String>,
    /// Prefix of the verified identity headers; inbound headers with it are always dropped.
    pub identity_header_prefix: Spanned<String>,
    /// How long in-flight requests may run after SIGTERM/SIGINT before they are cut.
    pub shutdown_grace_seconds: u64,
    /// A client that has not sent its whole request head within this time is disconnected.
    pub header_read_timeout_seconds: u64,
    /// Keep a client-sent X-Forwarded-For and append to it (only behind a trusted proxy).
    pub trust_forwarded_headers: bool,
    /// Forward the bearer token upstream on every route (routes may override).
    pub forward_token: bool,
    /// Terminate TLS with this certificate chain and key (PEM), reloaded when they change.
    pub tls: Option<RawTls>,
    /// Connections served at once; beyond it the gateway stops accepting until one closes.
    pub max_connections: Spanned<usize>,
    /// Request head (request line + headers) larger than this → 431.
    pub max_header_bytes: Spanned<usize>,
    /// Request target longer than this → 414.
    pub max_uri_bytes: Spanned<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: Spanned::new(0..0, DEFAULT_LISTEN.to_owned()),
            identity_header_prefix: Spanned::new(0..0, DEFAULT_IDENTITY_PREFIX.to_owned()),
            shutdown_grace_seconds: DEFAULT_SHUTDOWN_GRACE_SECONDS,
            header_read_timeout_seconds: DEFAULT_HEADER_READ_TIMEOUT_SECONDS,
            trust_forwarded_headers: false,
            forward_token: false,
            tls: None,
            max_connections: Spanned::new(0..0, DEFAULT_MAX_CONNECTIONS),
            max_header_bytes: Spanned::new(0..0, DEFAULT_MAX_HEADER_BYTES),
            max_uri_bytes: Spanned::new(0..0, DEFAULT_MAX_URI_BYTES),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeys {
    /// Folder of per-organization key files, relative to the config file's folder.
    pub dir: Spanned<String>,
    /// How often the folder is rescanned even when no file event arrives.
    pub poll_interval_ms: u64,
}

impl Default for RawKeys {
    fn default() -> Self {
        RawKeys {
            dir: Spanned::new(0..0, DEFAULT_KEYS_DIR.to_owned()),
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
        }
    }
}

/// State Backed's keys API (`POST /keys`, `GET /keys`, `DELETE /keys/{id}`), served by the
/// gateway itself on the main listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeysApi {
    pub enabled: bool,
    /// Keys per `GET /keys` page; clients follow `cursor` for the rest.
    pub page_size: Spanned<usize>,
}

impl Default for RawKeysApi {
    fn default() -> Self {
        RawKeysApi {
            enabled: true,
            page_size: Spanned::new(0..0, DEFAULT_KEYS_PAGE_SIZE),
        }
    }
}

/// Token exchange (`POST /tokens`, RFC 8693) and anonymous sessions, served by the gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokenExchange {
    pub enabled: bool,
    /// Exchange audiences are `<audience_base>/{orgId}/{service}`.
    pub audience_base: Spanned<String>,
    /// How long a JWKS URL may take to answer.
    pub jwks_timeout_ms: u64,
    /// How long fetched JWKS keys are used before they are fetched again.
    pub jwks_refresh_seconds: u64,
    /// At most one fetch per JWKS URL within this time, however many unknown `kid`s arrive.
    pub jwks_refetch_cooldown_seconds: u64,
}

impl Default for RawTokenExchange {
    fn default() -> Self {
        RawTokenExchange {
            enabled: true,
            audience_base: Spanned::new(0..0, DEFAULT_EXCHANGE_AUDIENCE_BASE.to_owned()),
            jwks_timeout_ms: 5_000,
            jwks_refresh_seconds: 600,
            jwks_refetch_cooldown_seconds: 30,
        }
    }
}

/// The web dashboard at `/dashboard` on the main listener. Follows `[keys_api] enabled`
/// unless set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDashboard {
    pub enabled: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// A token passes if its `aud` (string or array) names at least one of these.
    pub audiences: Spanned<Vec<String>>,
    pub leeway_seconds: Spanned<u64>,
    /// Refuse tokens without `exp`. Turning this off lets a leaked token live forever.
    pub require_exp: bool,
    pub max_token_bytes: Spanned<usize>,
    /// Verified tokens each worker thread remembers; 0 verifies every request in full.
    pub token_cache_entries: Spanned<usize>,
    /// Scope names this deployment adds to State Backed's catalogue.
    pub extra_scopes: Vec<Spanned<String>>,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            audiences: Spanned::new(0..0, vec![DEFAULT_AUDIENCE.to_owned()]),
            leeway_seconds: Spanned::new(0..0, DEFAULT_LEEWAY_SECONDS),
            require_exp: true,
            max_token_bytes: Spanned::new(0..0, DEFAULT_MAX_TOKEN_BYTES),
            token_cache_entries: Spanned::new(0..0, DEFAULT_TOKEN_CACHE_ENTRIES),
            extra_scopes: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://host:port[/prefix]` or `https://host:port[/prefix]`.
    pub url: Spanned<String>,
    /// PEM bundle of the certificate authorities an `https` upstream's certificate must chain
    /// to, relative to the config file's folder. Without it, the system's roots.
    pub ca_file: Option<Spanned<String>>,
    /// `"http1"` or `"h2"` (over https negotiated by ALPN, over http with prior knowledge).
    pub protocol: Option<Spanned<String>>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for the upstream's response head once the request is sent.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    #[serde(default = "default_pool_idle_timeout_seconds")]
    pub pool_idle_timeout_seconds: u64,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
}

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_response_timeout_ms() -> u64 {
    DEFAULT_RESPONSE_TIMEOUT_MS
}
fn default_pool_idle_timeout_seconds() -> u64 {
    DEFAULT_POOL_IDLE_TIMEOUT_SECONDS
}
fn default_pool_max_idle() -> usize {
    DEFAULT_POOL_MAX_IDLE
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// HTTP methods, or `["*"]` for any. A route allowing GET also answers HEAD.
    pub methods: Spanned<Vec<Spanned<String>>>,
    /// A matchit template: `/machines/{machine}`, `/orgs/{org}/members/{*rest}`.
    pub path: Spanned<String>,
    /// Every scope here must be held by the key (and the token's `scope` claim, if any).
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    pub upstream: Spanned<String>,
    /// No token needed. Spoofed identity headers are still dropped.
    #[serde(default)]
    pub public: bool,
    /// Also accept the token from this query parameter (removed before forwarding).
    pub token_query_param: Option<Spanned<String>>,
    /// The path parameter that names the organization; it must equal the key's.
    pub org_param: Option<Spanned<String>>,
    /// Override `[server] forward_token` for this route.
    pub forward_token: Option<bool>,
    /// Larger request bodies get 413 (checked on Content-Length, and counted as they stream).
    pub max_body_bytes: Option<Spanned<u64>>,
}
