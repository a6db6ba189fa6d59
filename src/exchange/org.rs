//! An organization's token-exchange settings, checked and prepared once per load: identity
//! providers with their verification keys, token providers with their signing keys, and
//! whether anonymous sessions are on.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::mapping::Mapping;
use super::records::{AnonymousRecord, IdpRecord, TokenProviderRecord};
use crate::keys::Key;
use crate::scopes::{scopes_for_use, Catalog, KeyUse, ScopeSet};

/// Longest lifetime a minted token may have.
pub const MAX_LIFETIME_SECONDS: u64 = 86_400;
/// Shortest HMAC secret accepted for an identity provider (RFC 7518 §3.2).
const MIN_IDP_SECRET_BYTES: usize = 32;

#[derive(Debug, Default)]
pub struct OrgExchange {
    pub idps: Vec<Idp>,
    pub providers: HashMap<String, Provider>,
    pub anonymous: Option<Anonymous>,
}

#[derive(Debug)]
pub struct Idp {
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: IdpKey,
    pub mapping: Mapping,
}

/// How an identity provider's tokens are verified.
pub enum IdpKey {
    /// A shared secret or a PEM public key.
    Static(Box<DecodingKey>),
    /// A JWKS document stored with the provider.
    Set(Arc<Vec<JwkEntry>>),
    /// A JWKS URL, fetched and cached by [`super::jwks::JwksCache`].
    Url(String),
}

impl std::fmt::Debug for IdpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdpKey::Static(_) => f.write_str("Static(..)"),
            IdpKey::Set(keys) => write!(f, "Set({} keys)", keys.len()),
            IdpKey::Url(url) => write!(f, "Url({url})"),
        }
    }
}

/// One key of a JWKS.
pub struct JwkEntry {
    pub kid: Option<String>,
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
}

#[derive(Debug)]
pub struct Provider {
    pub service: String,
    pub key: Arc<Key>,
    pub mapping: Mapping,
    pub lifetime: Duration,
    /// Set when the provider narrows the key's scopes: minted tokens carry it as `scope`.
    pub scopes: Option<ScopeSet>,
}

#[derive(Debug)]
pub struct Anonymous {
    pub key: Arc<Key>,
    pub lifetime: Duration,
}

/// Turns a JWKS document into keys. Symmetric (`oct`) keys are refused: a public document
/// must not hold a shared secret.
pub fn jwk_entries(text: &str) -> Result<Vec<JwkEntry>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a JWKS key is unusable: {e}"))?;
        if key.family() == AlgorithmFamily::Hmac {
            return Err("a JWKS must not hold symmetric (oct) keys".into());
        }
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        out.push(JwkEntry {
            kid: jwk.common.key_id.clone(),
            alg,
            family: key.family(),
            key,
        });
    }
    if out.is_empty() {
        return Err("the JWKS holds no key".into());
    }
    Ok(out)
}

fn idp(record: &IdpRecord) -> Result<Idp, String> {
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    if blank(&record.audience) && blank(&record.issuer) {
        return Err("an identity provider needs an audience, an issuer, or both".into());
    }
    if record.algorithms.is_empty() {
        return Err("an identity provider needs at least one algorithm".into());
    }
    let mut algorithms = Vec::new();
    for a in &record.algorithms {
        let alg = Algorithm::from_str(a).map_err(|_| format!("unknown algorithm {a:?}"))?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    let families: Vec<AlgorithmFamily> = algorithms.iter().map(|a| a.family()).collect();
    let one_family = |what: &str| -> Result<AlgorithmFamily, String> {
        let first = families[0];
        if families.iter().any(|f| *f != first) {
            return Err(format!("{what}: all algorithms must be of one family"));
        }
        Ok(first)
    };
    let key = match (
        &record.secret,
        &record.public_key,
        &record.jwks,
        &record.jwks_url,
    ) {
        (Some(secret), None, None, None) => {
            if one_family("secret")? != AlgorithmFamily::Hmac {
                return Err("a shared secret verifies HS256/HS384/HS512 only".into());
            }
            if secret.len() < MIN_IDP_SECRET_BYTES {
                return Err(format!(
                    "the shared secret is shorter than {MIN_IDP_SECRET_BYTES} bytes"
                ));
            }
            IdpKey::Static(Box::new(DecodingKey::from_secret(secret.as_bytes())))
        }
        (None, Some(pem), None, None) => {
            let pem = pem.as_bytes();
            let key = match one_family("public key")? {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
                AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
                AlgorithmFamily::Hmac => {
                    return Err("a public key cannot verify HS* algorithms".into())
                }
            }
            .map_err(|e| format!("the public key does not parse for its algorithms: {e}"))?;
            IdpKey::Static(Box::new(key))
        }
        (None, None, Some(jwks), None) => {
            if families.contains(&AlgorithmFamily::Hmac) {
                return Err("a JWKS verifies asymmetric algorithms only".into());
            }
            IdpKey::Set(Arc::new(jwk_entries(jwks)?))
        }
        (None, None, None, Some(url)) => {
            if families.contains(&AlgorithmFamily::Hmac) {
                return Err("a JWKS URL verifies asymmetric algorithms only".into());
            }
            let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("https") | Some("http")) || uri.host().is_none() {
                return Err(format!("{url:?} is not an http(s) URL"));
            }
            IdpKey::Url(url.clone())
        }
        _ => {
            return Err(
                "an identity provider needs exactly one of secret, public_key, jwks, jwks_url"
                    .into(),
            )
        }
    };
    Ok(Idp {
        audience: record.audience.clone().filter(|s| !s.trim().is_empty()),
        issuer: record.issuer.clone().filter(|s| !s.trim().is_empty()),
        algorithms,
        key,
        mapping: Mapping::parse(&record.mapping)?,
    })
}

/// A safe service name: it becomes the last segment of the exchange audience.
pub fn valid_service(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn lifetime(seconds: u64) -> Result<Duration, String> {
    if !(1..=MAX_LIFETIME_SECONDS).contains(&seconds) {
        return Err(format!(
            "lifetime_seconds must be between 1 and {MAX_LIFETIME_SECONDS}"
        ));
    }
    Ok(Duration::from_secs(seconds))
}

impl OrgExchange {
    /// Checks the records of one organization against its keys.
    pub fn build(
        idps: &[IdpRecord],
        providers: &[TokenProviderRecord],
        anonymous: Option<&AnonymousRecord>,
        keys: &[Arc<Key>],
        catalog: &Catalog,
    ) -> Result<Self, String> {
        let mut out = OrgExchange::default();
        for (i, record) in idps.iter().enumerate() {
            if idps[..i].iter().any(|other| other.same_provider(record)) {
                return Err("two identity providers have the same audience and issuer".into());
            }
            out.idps
                .push(idp(record).map_err(|e| format!("identity provider {}: {e}", i + 1))?);
        }
        for p in providers {
            let at = |e: String| format!("token provider {:?}: {e}", p.service);
            if !valid_service(&p.service) {
                return Err(at(
                    "the service name must be 1-64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if out.providers.contains_key(&p.service) {
                return Err(at("appears twice".into()));
            }
            // A deleted key takes its providers with it: deleting a key must never be held
            // back by a provider that names it (the file would otherwise stop loading and its
            // last good version — with the key — would stay live).
            let Some(key) = keys.iter().find(|k| *k.id == *p.key) else {
                tracing::warn!(service = %p.service, key = %p.key, "token provider skipped: its key is gone");
                continue;
            };
            let scopes = match &p.scopes {
                None => None,
                Some(list) => {
                    if let Some(bad) = list.iter().find(|s| !catalog.contains(s)) {
                        return Err(at(format!("unknown scope {bad:?}")));
                    }
                    let set = ScopeSet::from_names(list);
                    if let Some(extra) = set.missing_from(&key.scopes).next() {
                        return Err(at(format!(
                            "the key does not hold {extra}, so it cannot grant it"
                        )));
                    }
                    (set != key.scopes).then_some(set)
                }
            };
            out.providers.insert(
                p.service.clone(),
                Provider {
                    service: p.service.clone(),
                    key: key.clone(),
                    mapping: Mapping::parse(&p.mapping).map_err(at)?,
                    lifetime: lifetime(p.lifetime_seconds).map_err(at)?,
                    scopes,
                },
            );
        }
        if let Some(a) = anonymous.filter(|a| a.enabled) {
            let production = ScopeSet::from_names(scopes_for_use(KeyUse::Production));
            let key = match &a.key {
                Some(id) => keys.iter().find(|k| *k.id == **id),
                None => keys.iter().find(|k| production.is_subset_of(&k.scopes)),
            };
            let Some(key) = key else {
                // A deleted key switches anonymous sessions off rather than making the file
                // unloadable (which would keep the deleted key alive in its last good version).
                tracing::warn!("anonymous sessions are off: no production-use key to sign with");
                return Ok(out);
            };
            if !production.is_subset_of(&key.scopes) {
                return Err(format!(
                    "anonymous: key {} does not hold every production scope",
                    key.id
                ));
            }
            out.anonymous = Some(Anonymous {
                key: key.clone(),
                lifetime: lifetime(a.lifetime_seconds)?,
            });
        }
        Ok(out)
    }
}
