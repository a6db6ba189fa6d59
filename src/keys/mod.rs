//! Key material: the immutable [`KeySet`] the request path reads, and the on-disk [`store`]
//! that the CLI (and later the keys API) writes and the gateway hot-reloads.

pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::scopes::ScopeSet;

/// One verified-ready key: everything the request path needs, prepared once per load.
pub struct Key {
    pub id: Arc<str>,
    pub org: Arc<str>,
    pub name: String,
    pub scopes: ScopeSet,
    pub algorithm: Algorithm,
    /// HMAC key material, built once from the secret's UTF-8 bytes.
    pub decoding: DecodingKey,
    /// The same secret for signing, when token exchange mints with this key.
    pub(crate) signing: jsonwebtoken::EncodingKey,
    /// `scopes.joined()` as a header value, for the common case of no `scope` claim.
    pub scopes_header: HeaderValue,
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
