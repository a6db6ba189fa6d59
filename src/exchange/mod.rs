//! Token exchange (RFC 8693) at `POST /tokens`, State Backed style: an app trades a token from
//! its identity provider — or an anonymous session token — for a scopegate token signed by one
//! of its organization's keys, so the app never holds a key.
//!
//! ```text
//! grant_type=urn:ietf:params:oauth:grant-type:token-exchange
//! audience=https://tokens.statebacked.dev/{orgId}/{service}
//! subject_token=…   requested_token_type=urn:ietf:params:oauth:token-type:access_token
//! ```
//!
//! The organization's identity providers (`[[idps]]` in its key file) say which subject tokens
//! to trust and how to verify them, and map their claims to intermediate claims; the service's
//! token provider (`[[token_providers]]`) names the signing key — which bounds the scopes — and
//! maps the intermediate claims to the minted token's `act`. Errors are RFC 6749 §5.2 JSON.

pub mod jwks;
pub mod mapping;
pub mod org;
pub mod records;

use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::ClientBody;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::{json_body, GatewayError};
use crate::gateway::{Gateway, Snapshot};
use crate::keys::{Key, KeySet};
use crate::scopes::{scopes_for_use, KeyUse, ScopeSet};
use org::{Idp, IdpKey, OrgExchange};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// State Backed's service name for anonymous sessions.
pub const ANONYMOUS_SERVICE: &str = "anonymous-statebacked-dev";
const MAX_FORM_BYTES: usize = 64 * 1024;

/// An RFC 6749 §5.2 error.
fn oauth(error: &'static str, description: impl Into<String>) -> GatewayError {
    GatewayError::TokenExchange {
        error,
        description: description.into(),
    }
}

fn invalid_request(d: impl Into<String>) -> GatewayError {
    oauth("invalid_request", d)
}
fn invalid_grant(d: impl Into<String>) -> GatewayError {
    oauth("invalid_grant", d)
}
fn invalid_target(d: impl Into<String>) -> GatewayError {
    oauth("invalid_target", d)
}

#[derive(Serialize)]
struct Issued<'a> {
    access_token: &'a str,
    issued_token_type: &'a str,
    token_type: &'a str,
    expires_in: u64,
}

/// The claims of a minted token, in State Backed's order.
#[derive(Serialize)]
struct Minted<'a> {
    act: &'a Map<String, Value>,
    aud: &'a str,
    exp: u64,
    iss: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

pub async fn handle(
    gateway: &Arc<Gateway>,
    snapshot: &Snapshot,
    parts: Parts,
    body: ClientBody,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let result = exchange(gateway, snapshot, &parts, body).await;
    let (kind, outcome) = match &result {
        Ok((kind, _)) => (*kind, "success"),
        Err((kind, GatewayError::TokenExchange { error, .. })) => (*kind, *error),
        Err((kind, _)) => (*kind, "invalid_request"),
    };
    gateway
        .metrics
        .token_exchanges
        .with_label_values(&[kind, outcome])
        .inc();
    result.map(|(_, r)| r).map_err(|(_, e)| e)
}

type Outcome = Result<(&'static str, Response<Full<Bytes>>), (&'static str, GatewayError)>;

async fn exchange(
    gateway: &Arc<Gateway>,
    snapshot: &Snapshot,
    parts: &Parts,
    body: ClientBody,
) -> Outcome {
    let mut kind = "unknown";
    let result = async {
        let form = read_form(parts, body).await?;
        let get = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let grant = get("grant_type").ok_or_else(|| invalid_request("grant_type is required"))?;
        if grant != GRANT_TYPE {
            return Err(oauth(
                "unsupported_grant_type",
                format!("only {GRANT_TYPE} is supported"),
            ));
        }
        if let Some(t) = get("requested_token_type") {
            if t != ACCESS_TOKEN_TYPE {
                return Err(invalid_request(format!(
                    "requested_token_type must be {ACCESS_TOKEN_TYPE}"
                )));
            }
        }
        let subject = get("subject_token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid_request("subject_token is required"))?;
        let audience = get("audience")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid_request("audience is required"))?;
        let settings = &snapshot.config.token_exchange;
        let (org, service) =
            parse_audience(&settings.audience_base, audience).ok_or_else(|| {
                invalid_target(format!(
                    "audience must be {}/{{orgId}}/{{service}}",
                    settings.audience_base
                ))
            })?;
        if subject.len() > snapshot.config.auth.max_token_bytes {
            return Err(invalid_grant("the subject token is too large"));
        }
        let keys = gateway.keys.load_full();
        let exchange = keys
            .exchange(org)
            .ok_or_else(|| invalid_target("no such organization"))?;
        let leeway = snapshot.config.auth.leeway_seconds;
        let now = crate::pipeline::now_seconds();
        let (signing_key, act, scope, lifetime) = if service == ANONYMOUS_SERVICE {
            kind = "anonymous";
            let anon = exchange.anonymous.as_ref().ok_or_else(|| {
                invalid_target("anonymous sessions are not enabled for this organization")
            })?;
            let act = anonymous_claims(org, subject, leeway)?;
            // Exactly the production scopes, even if the signing key holds more.
            let production = ScopeSet::from_names(scopes_for_use(KeyUse::Production));
            let scope =
                (production != anon.key.scopes).then(|| production.intersect(&anon.key.scopes));
            (anon.key.clone(), act, scope, anon.lifetime)
        } else {
            kind = "idp";
            let provider = exchange
                .providers
                .get(service)
                .ok_or_else(|| invalid_target("no token provider for this service"))?;
            let verified = verify_with_idps(gateway, &exchange, subject, leeway).await?;
            let act = provider
                .mapping
                .apply(&Value::Object(verified))
                .map_err(|e| invalid_grant(format!("the token provider mapping failed: {e}")))?;
            (
                provider.key.clone(),
                act,
                provider.scopes.clone(),
                provider.lifetime,
            )
        };
        let token = mint(
            &keys,
            &signing_key,
            &act,
            snapshot,
            audience,
            scope,
            lifetime,
            now,
        )?;
        tracing::info!(
            target: "scopegate::audit",
            action = "token.exchange",
            org,
            service,
            key = %signing_key.id,
            "token minted"
        );
        let body = serde_json::to_string(&Issued {
            access_token: &token,
            issued_token_type: ACCESS_TOKEN_TYPE,
            token_type: "Bearer",
            expires_in: lifetime.as_secs(),
        })
        .expect("JSON serializes");
        let mut response = json_body(StatusCode::OK, body);
        response.headers_mut().insert(
            http::header::PRAGMA,
            http::HeaderValue::from_static("no-cache"),
        );
        Ok(response)
    }
    .await;
    match result {
        Ok(r) => Ok((kind, r)),
        Err(e) => Err((kind, e)),
    }
}

async fn read_form(parts: &Parts, body: ClientBody) -> Result<Vec<(String, String)>, GatewayError> {
    let form_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    if !form_type {
        return Err(invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let bytes = match Limited::new(body, MAX_FORM_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(GatewayError::PayloadTooLarge)
        }
        Err(_) => return Err(invalid_request("the request body could not be read")),
    };
    let mut form: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(&bytes) {
        // RFC 6749 §3.1: parameters must not be included more than once.
        if form.iter().any(|(seen, _)| *seen == k) {
            return Err(invalid_request(format!("{k} is given more than once")));
        }
        form.push((k.into_owned(), v.into_owned()));
    }
    Ok(form)
}

/// `{base}/{org}/{service}` → (org, service).
fn parse_audience<'a>(base: &str, audience: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = audience.strip_prefix(base)?.strip_prefix('/')?;
    let (org, service) = rest.split_once('/')?;
    (crate::keys::store::valid_org_id(org) && org::valid_service(service)).then_some((org, service))
}

/// State Backed's anonymous session token: HS256 over the org id's UTF-8 bytes, `aud` and `iss`
/// both `https://{org}.anonymous.auth.statebacked.dev`, with `sid` and `did`. The minted `act`
/// is exactly `{sid, did, auth: "anonymous"}` — nothing else from the token survives.
fn anonymous_claims(
    org: &str,
    token: &str,
    leeway: u64,
) -> Result<Map<String, Value>, GatewayError> {
    let expected = format!("https://{org}.anonymous.auth.statebacked.dev");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = leeway;
    validation.set_audience(&[&expected]);
    validation.set_issuer(&[&expected]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    let data = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(org.as_bytes()),
        &validation,
    )
    .map_err(|e| invalid_grant(format!("the anonymous session token is not valid: {e}")))?;
    let id = |name: &str| -> Result<Value, GatewayError> {
        match data.claims.get(name) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => {
                Ok(Value::String(s.clone()))
            }
            _ => Err(invalid_grant(format!(
                "the anonymous session token needs a string {name}"
            ))),
        }
    };
    let mut act = Map::new();
    act.insert("sid".into(), id("sid")?);
    act.insert("did".into(), id("did")?);
    act.insert("auth".into(), json!("anonymous"));
    Ok(act)
}

/// The unverified `aud` and `iss` of a token, only to pick the identity provider that will
/// verify it.
fn peek_routing_claims(token: &str) -> Option<(Vec<String>, Option<String>)> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let aud = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let iss = claims.get("iss").and_then(Value::as_str).map(str::to_owned);
    Some((aud, iss))
}

fn matches(idp: &Idp, aud: &[String], iss: Option<&str>) -> bool {
    idp.audience
        .as_ref()
        .is_none_or(|a| aud.iter().any(|t| t == a))
        && idp.issuer.as_deref().is_none_or(|i| iss == Some(i))
}

async fn verify_with_idps(
    gateway: &Gateway,
    exchange: &OrgExchange,
    token: &str,
    leeway: u64,
) -> Result<Map<String, Value>, GatewayError> {
    let (aud, iss) = peek_routing_claims(token)
        .ok_or_else(|| invalid_grant("the subject token is not a JWT"))?;
    // The most specific provider wins: one naming both audience and issuer before one naming
    // only one of them.
    let mut candidates: Vec<&Idp> = exchange
        .idps
        .iter()
        .filter(|i| matches(i, &aud, iss.as_deref()))
        .collect();
    candidates.sort_by_key(|i| !(i.audience.is_some() && i.issuer.is_some()));
    let idp = candidates.first().ok_or_else(|| {
        invalid_grant(
            "no identity provider of this organization matches the subject token's aud/iss",
        )
    })?;
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| invalid_grant("the subject token's header is not valid"))?;
    if !idp.algorithms.contains(&header.alg) {
        return Err(invalid_grant(format!(
            "the identity provider does not accept {:?}",
            header.alg
        )));
    }
    let key: DecodingKey = match &idp.key {
        IdpKey::Static(k) => (**k).clone(),
        IdpKey::Set(keys) => pick(keys, header.kid.as_deref(), header.alg)?,
        IdpKey::Url(url) => {
            let keys = gateway
                .jwks
                .keys(url, header.kid.as_deref())
                .await
                .map_err(|e| oauth("temporarily_unavailable", e.0))?;
            pick(&keys, header.kid.as_deref(), header.alg)?
        }
    };
    // The header's alg was checked against the provider's list above; the key decides the rest.
    let mut validation = Validation::new(header.alg);
    validation.leeway = leeway;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    match &idp.audience {
        Some(a) => validation.set_audience(&[a]),
        None => validation.validate_aud = false,
    }
    if let Some(i) = &idp.issuer {
        validation.set_issuer(&[i]);
    }
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| invalid_grant(format!("the subject token is not valid: {e}")))?;
    let mapped = idp
        .mapping
        .apply(&data.claims)
        .map_err(|e| invalid_grant(format!("the identity provider mapping failed: {e}")))?;
    Ok(mapped)
}

fn pick(
    keys: &[org::JwkEntry],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<DecodingKey, GatewayError> {
    let entry = match kid {
        Some(kid) => keys.iter().find(|e| e.kid.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .ok_or_else(|| {
        invalid_grant("no key of the identity provider matches the subject token's kid")
    })?;
    if entry.alg.is_some_and(|a| a != alg) || entry.family != alg.family() {
        return Err(invalid_grant(
            "the subject token's alg does not fit its key",
        ));
    }
    Ok(entry.key.clone())
}

#[allow(clippy::too_many_arguments)]
fn mint(
    keys: &KeySet,
    key: &Key,
    act: &Map<String, Value>,
    snapshot: &Snapshot,
    issuer: &str,
    scope: Option<ScopeSet>,
    lifetime: Duration,
    now: u64,
) -> Result<String, GatewayError> {
    // The key must still be live: a provider whose key was deleted mints nothing.
    if keys.get(&key.id).is_none() {
        return Err(invalid_target("the token provider's key no longer exists"));
    }
    let audience = snapshot
        .config
        .auth
        .audiences
        .first()
        .ok_or(GatewayError::Internal)?;
    let mut header = Header::new(key.algorithm);
    header.typ = None;
    header.kid = Some(key.id.to_string());
    let claims = Minted {
        act,
        aud: audience,
        exp: now + lifetime.as_secs(),
        iss: issuer,
        iat: now,
        scope: scope.map(|s| s.joined()),
    };
    jsonwebtoken::encode(&header, &claims, key.signing()).map_err(|e| {
        tracing::error!(error = %e, "minting a token failed");
        GatewayError::Internal
    })
}

/// Used by `Key::signing`.
pub(crate) fn signing_key(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}
