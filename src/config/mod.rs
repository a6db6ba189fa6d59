//! Configuration: load a TOML file, validate it, and hand out an immutable [`Config`].
//!
//! `raw` holds the serde shapes, `validate` turns them into typed runtime settings. Loading
//! never touches live state, so `scopegate check`, `serve` and every reload run the same code.

pub mod raw;
mod routes;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use routes::{Builtin, Lookup, Methods, Route, RouteMatch, RouteTable, Target};
pub use validate::validate;

use crate::scopes::Catalog;

/// Where `--config` points when it is not given and `$SCOPEGATE_CONFIG` is unset.
pub const DEFAULT_CONFIG_FILE: &str = "scopegate.toml";

/// A validated configuration. Built once per (re)load, then shared read-only.
#[derive(Debug)]
pub struct Config {
    /// The file this was loaded from; relative paths inside it are resolved against its folder.
    pub source: PathBuf,
    /// A hash of the file's text: a reload of identical text changes nothing.
    pub digest: u64,
    pub server: ServerSettings,
    pub admin: Option<AdminSettings>,
    pub keys: KeySettings,
    pub auth: AuthSettings,
    pub keys_api: KeysApiSettings,
    /// Serve the dashboard at `/dashboard`.
    pub dashboard: bool,
    pub token_exchange: TokenExchangeSettings,
    pub upstreams: Vec<UpstreamSettings>,
    pub routes: RouteTable,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Lower-case, ends with `-`.
    pub identity_prefix: String,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub trust_forwarded_headers: bool,
    pub tls: Option<TlsSettings>,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
}

/// Certificate chain and private key files (PEM), resolved against the config's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    pub dir: PathBuf,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub audiences: Vec<String>,
    pub leeway_seconds: u64,
    pub require_exp: bool,
    pub max_token_bytes: usize,
    /// Verified tokens each worker thread remembers (0: none); see `pipeline::token_cache`.
    pub token_cache_entries: usize,
    pub catalog: Catalog,
}

#[derive(Debug, Clone)]
pub struct TokenExchangeSettings {
    pub enabled: bool,
    /// Without a trailing `/`.
    pub audience_base: String,
    pub jwks: crate::exchange::jwks::JwksSettings,
}

#[derive(Debug, Clone)]
pub struct KeysApiSettings {
    pub enabled: bool,
    pub page_size: usize,
}

/// One upstream as configured. Equal settings mean the same client: a reload that leaves an
/// upstream's settings alone keeps its pooled connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub name: String,
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prepended to every forwarded path; empty or starts with `/` and has no trailing `/`.
    pub path_prefix: String,
    pub protocol: UpstreamProtocol,
    /// For `https` upstreams, whom to trust; `None` for `http`.
    pub tls: Option<TrustRoots>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

/// The HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one request at a time per pooled connection.
    Http1,
    /// HTTP/2 only: ALPN `h2` over https, prior knowledge (h2c) over http.
    H2,
}

impl UpstreamProtocol {
    /// The spelling of the config file.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// The certificate authorities an `https` upstream's certificate must chain to. Verification
/// is always on; there is no way to turn it off.
#[derive(Clone, PartialEq, Eq)]
pub enum TrustRoots {
    /// The operating system's store, read when the upstream's client is built.
    System,
    /// The certificates of `ca_file`, read and checked when the config is loaded. Compared by
    /// content, so a reload after the bundle changed builds a new client.
    CaFile {
        path: PathBuf,
        certs: std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>,
    },
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustRoots::System => f.write_str("System"),
            TrustRoots::CaFile { path, certs } => f
                .debug_struct("CaFile")
                .field("path", path)
                .field("certificates", &certs.len())
                .finish(),
        }
    }
}

impl Config {
    /// Where a route sends what it allows, as `check` and `explain` print it.
    pub fn target_name(&self, route: &Route) -> String {
        match route.target {
            Target::Upstream(i) => self.upstreams[i].name.clone(),
            Target::Builtin(b) => format!("(built-in {})", b.name()),
        }
    }
}

/// Everything wrong with a config file, each with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem: where (1-based line, when known), which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
                None => write!(f, "{}: ", self.file.display())?,
            }
            if p.field.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.field, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn single(file: &Path, field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                line: None,
                field: field.to_owned(),
                message: message.into(),
            }],
        }
    }
}

/// Resolves `--config`: the flag, then `$SCOPEGATE_CONFIG` (clap fills it in), then
/// `./scopegate.toml`.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE))
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single(path, "", format!("cannot read config: {e}")))?;
    parse(path, &text)
}

/// Validates config text as if it had been read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        file: path.to_owned(),
        problems: vec![Problem {
            line: e.span().map(|s| line_of(text, s.start)),
            field: String::new(),
            message: e.message().trim().to_owned(),
        }],
    })?;
    validate(path, text, raw)
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
