//! Key material: the immutable [`KeySet`] the request path reads, and the on-disk [`store`]
//! that the CLI (and later the keys API) writes and the gateway hot-reloads.

pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use hmac::{Hmac, Mac as _};
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use sha2::{Sha256, Sha384, Sha512};

use crate::scopes::ScopeSet;

/// One verified-ready key: everything the request path needs, prepared once per load.
pub struct Key {
    pub id: Arc<str>,
    pub org: Arc<str>,
    pub name: String,
    pub scopes: ScopeSet,
    pub algorithm: Algorithm,
    /// HMAC key material, prepared once from the secret's UTF-8 bytes.
    pub mac: Mac,
    /// The same secret for signing, when token exchange mints with this key.
    pub(crate) signing: jsonwebtoken::EncodingKey,
    /// `scopes.joined()` as a header value, for the common case of no `scope` claim.
    pub scopes_header: HeaderValue,
    /// `id` and `org` as header values, for the identity headers.
    pub id_header: HeaderValue,
    pub org_header: HeaderValue,
    pub created_at: String,
}

impl Key {
    pub fn signing(&self) -> &jsonwebtoken::EncodingKey {
        &self.signing
    }
}

impl std::fmt::Debug for Key {
    // The decoding key holds the secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("org", &self.org)
            .field("name", &self.name)
            .field("scopes", &self.scopes.joined())
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// An HMAC key prepared once: the key's inner and outer pad blocks are hashed when it is
/// loaded, so checking a signature hashes only the token (RFC 2104 §4's precomputation).
#[derive(Clone)]
pub enum Mac {
    Hs256(Hmac<Sha256>),
    Hs384(Hmac<Sha384>),
    Hs512(Hmac<Sha512>),
}

impl Mac {
    /// The prepared key for an HMAC `algorithm`; `None` for any other algorithm.
    pub fn new(algorithm: Algorithm, secret: &[u8]) -> Option<Self> {
        Some(match algorithm {
            Algorithm::HS256 => Mac::Hs256(Hmac::new_from_slice(secret).ok()?),
            Algorithm::HS384 => Mac::Hs384(Hmac::new_from_slice(secret).ok()?),
            Algorithm::HS512 => Mac::Hs512(Hmac::new_from_slice(secret).ok()?),
            _ => return None,
        })
    }

    /// Whether `tag` is this key's MAC of `message`: the whole tag, compared in constant time.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        fn check<M: hmac::Mac + Clone>(mac: &M, message: &[u8], tag: &[u8]) -> bool {
            let mut mac = mac.clone();
            mac.update(message);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            Mac::Hs256(m) => check(m, message, tag),
            Mac::Hs384(m) => check(m, message, tag),
            Mac::Hs512(m) => check(m, message, tag),
        }
    }
}

impl std::fmt::Debug for Mac {
    // Holds the secret's pads: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac(..)")
    }
}

/// All keys of one organization, as loaded from its file, with its token-exchange settings.
#[derive(Debug)]
pub struct OrgKeys {
    pub org: Arc<str>,
    pub name: String,
    pub keys: Vec<Arc<Key>>,
    pub exchange: Arc<crate::exchange::org::OrgExchange>,
}

/// The keys the gateway accepts right now, by `kid`. Immutable; replaced whole on reload.
#[derive(Debug, Default)]
pub struct KeySet {
    by_id: HashMap<Arc<str>, Arc<Key>>,
    orgs: usize,
    exchange: HashMap<Arc<str>, Arc<crate::exchange::org::OrgExchange>>,
}

impl KeySet {
    /// Builds a set from per-organization key lists. A key id that appears in two
    /// organizations is ambiguous and kept for neither; its id is returned so the caller can
    /// report it.
    pub fn build<'a>(orgs: impl IntoIterator<Item = &'a OrgKeys>) -> (KeySet, Vec<Arc<str>>) {
        let mut by_id: HashMap<Arc<str>, Arc<Key>> = HashMap::new();
        let mut clashes = Vec::new();
        let mut count = 0;
        let mut exchange = HashMap::new();
        for org in orgs {
            count += 1;
            exchange.insert(org.org.clone(), org.exchange.clone());
            for key in &org.keys {
                if let Some(existing) = by_id.get(&key.id) {
                    if existing.org != key.org {
                        clashes.push(key.id.clone());
                    }
                    continue;
                }
                by_id.insert(key.id.clone(), key.clone());
            }
        }
        for id in &clashes {
            by_id.remove(id);
        }
        (
            KeySet {
                by_id,
                orgs: count,
                exchange,
            },
            clashes,
        )
    }

    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.by_id.get(kid)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// An organization's token-exchange settings, if the organization is loaded.
    pub fn exchange(&self, org: &str) -> Option<Arc<crate::exchange::org::OrgExchange>> {
        self.exchange.get(org).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn org_count(&self) -> usize {
        self.orgs
    }
}
