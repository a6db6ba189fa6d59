//! Token-exchange settings as stored in an organization's key file, next to its keys:
//! `[[idps]]`, `[[token_providers]]` and `[anonymous]`. The CLI writes them; the gateway
//! hot-reloads them with the keys.

use serde::{Deserialize, Serialize};

/// An identity provider: which subject tokens it vouches for and how to verify them.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdpRecord {
    /// Subject tokens whose `aud` names this (string or array)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// …and/or whose `iss` is this. At least one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `alg` values (RS256, ES256, EdDSA, HS256, …).
    pub algorithms: Vec<String>,
    /// Exactly one verification key: a shared secret (HS*)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// …a PEM public key (RS*, PS*, ES*, EdDSA)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// …a JWKS document…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// …or a JWKS URL, fetched and cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Verified claims → intermediate claims (a JSON object; `.$` keys take JSONPaths).
    pub mapping: String,
}

impl std::fmt::Debug for IdpRecord {
    // A shared secret must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpRecord")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("algorithms", &self.algorithms)
            .field("key", &self.key_kind())
            .finish_non_exhaustive()
    }
}

impl IdpRecord {
    /// Which kind of verification key this provider has, for listings.
    pub fn key_kind(&self) -> &'static str {
        match (&self.secret, &self.public_key, &self.jwks, &self.jwks_url) {
            (Some(_), None, None, None) => "secret",
            (None, Some(_), None, None) => "public-key",
            (None, None, Some(_), None) => "jwks",
            (None, None, None, Some(_)) => "jwks-url",
            _ => "invalid",
        }
    }

    /// Two records describe the same provider when they match the same tokens.
    pub fn same_provider(&self, other: &IdpRecord) -> bool {
        self.audience == other.audience && self.issuer == other.issuer
    }
}

/// A token provider: a service name, the key that signs its tokens, and the claims to mint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenProviderRecord {
    pub service: String,
    /// The signing key (`sbk_…`, of this organization); its scopes bound the token's.
    pub key: String,
    /// Intermediate claims → the minted token's `act` (a JSON object; `.$` keys take JSONPaths).
    pub mapping: String,
    #[serde(default = "default_lifetime")]
    pub lifetime_seconds: u64,
    /// Narrow the minted tokens below the key's scopes (a `scope` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// Anonymous sessions (State Backed's `anonymous-statebacked-dev` service).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnonymousRecord {
    pub enabled: bool,
    /// The production-use key that signs; by default the organization's first key holding
    /// every production scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default = "default_lifetime")]
    pub lifetime_seconds: u64,
}

pub fn default_lifetime() -> u64 {
    3600
}
