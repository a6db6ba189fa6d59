//! State Backed's keys API, answered by the gateway itself on the main listener:
//!
//! - `POST /keys` `{"name", "use"?, "scopes"?}` → 200 `{"id", "key"}` (the secret, once);
//! - `GET /keys[?cursor=…]` → 200 `{"keys": [{"id", "name", "scopes", "created_at"}], "cursor"?}`;
//! - `DELETE /keys/{id}` → 204.
//!
//! The route table already required `org-keys.write` and checked the organization headers;
//! here every action is confined to the calling key's organization, a key of another
//! organization is a 404 (ids don't leak), and a key cannot grant scopes it does not hold.
//! Writes go through the same locked, atomic store the CLI uses, and the key folder is rescanned
//! before answering, so a created key works — and a deleted one is refused — at once.

use std::sync::Arc;

use crate::pipeline::ClientBody;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};

use crate::config::Builtin;
use crate::error::{json_body, GatewayError};
use crate::gateway::{Gateway, Snapshot};
use crate::keys::store::{KeyInfo, Store, StoreError};
use crate::pipeline::authorize::{Identity, Permit};
use crate::pipeline::path;
use crate::scopes::{scopes_for_use, KeyUse, ScopeSet};

/// Request bodies are tiny; anything larger is refused before it is read whole.
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_NAME_CHARS: usize = 128;

#[derive(Debug, Deserialize)]
struct CreateKey {
    name: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    scopes: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct Created<'a> {
    id: &'a str,
    key: &'a str,
}

#[derive(Debug, Serialize)]
struct Listed<'a> {
    id: &'a str,
    name: &'a str,
    scopes: &'a [String],
    created_at: &'a str,
}

#[derive(Debug, Serialize)]
struct Page<'a> {
    keys: Vec<Listed<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

pub async fn handle(
    gateway: &Arc<Gateway>,
    snapshot: &Snapshot,
    builtin: Builtin,
    permit: Permit,
    parts: Parts,
    body: ClientBody,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let identity = permit.identity.ok_or(GatewayError::Internal)?;
    let config = &snapshot.config;
    let store = Store::new(&config.keys.dir, config.auth.catalog.clone());
    match builtin {
        Builtin::KeysCreate => create(gateway, snapshot, store, &identity, body).await,
        Builtin::KeysList => list(store, &identity, &parts, config.keys_api.page_size).await,
        Builtin::KeysDelete => delete(gateway, store, &identity, &parts).await,
        Builtin::Dashboard | Builtin::TokenExchange => Err(GatewayError::Internal),
    }
}

/// Runs a store operation off the async threads (it takes a file lock and fsyncs).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::BadInput(format!(
            "the key store task failed: {e}"
        )))
    })
}

fn store_failure(e: StoreError) -> GatewayError {
    match e {
        StoreError::NotFound(_) => GatewayError::KeyNotFound,
        StoreError::BadInput(message) => GatewayError::InvalidRequest(message),
        other => {
            tracing::error!(error = %other, "the key store failed");
            GatewayError::Internal
        }
    }
}

async fn create(
    gateway: &Arc<Gateway>,
    snapshot: &Snapshot,
    store: Store,
    identity: &Identity,
    body: ClientBody,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(GatewayError::PayloadTooLarge)
        }
        Err(_) => {
            return Err(GatewayError::InvalidRequest(
                "the request body could not be read".into(),
            ))
        }
    };
    let request: CreateKey = serde_json::from_slice(&bytes).map_err(|_| {
        GatewayError::InvalidRequest(
            "the body must be a JSON object: {\"name\": \"…\", \"use\"?: \"production\" | \"ci\" | \"admin\", \"scopes\"?: [\"…\"]}".into(),
        )
    })?;
    let name = request
        .name
        .ok_or_else(|| GatewayError::InvalidRequest("name is required".into()))?;
    if name.trim().is_empty() {
        return Err(GatewayError::InvalidRequest(
            "name must not be empty".into(),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(GatewayError::InvalidRequest(format!(
            "name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(GatewayError::InvalidRequest(
            "name must not contain control characters".into(),
        ));
    }
    let catalog = &snapshot.config.auth.catalog;
    let requested: Vec<String> = match (request.key_use, request.scopes) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidRequest(
                "give either use or scopes, not both".into(),
            ))
        }
        (Some(u), None) => {
            let key_use = match u.as_str() {
                "production" => KeyUse::Production,
                "ci" => KeyUse::Ci,
                "admin" => KeyUse::Admin,
                _ => {
                    return Err(GatewayError::InvalidRequest(
                        "use must be one of production, ci, admin".into(),
                    ))
                }
            };
            scopes_for_use(key_use)
                .iter()
                .map(|s| s.to_string())
                .collect()
        }
        (None, Some(scopes)) => {
            if scopes.is_empty() {
                return Err(GatewayError::InvalidRequest(
                    "scopes must list at least one scope".into(),
                ));
            }
            if let Some(unknown) = scopes.iter().find(|s| !catalog.contains(s)) {
                let shown: String = unknown.chars().take(64).collect();
                return Err(GatewayError::InvalidRequest(format!(
                    "unknown scope '{shown}'"
                )));
            }
            scopes
        }
        // State Backed's default: a production key.
        (None, None) => scopes_for_use(KeyUse::Production)
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let wanted = ScopeSet::from_names(&requested);
    let missing: Vec<&str> = wanted.missing_from(identity.effective()).collect();
    if !missing.is_empty() {
        gateway
            .metrics
            .key_changes
            .with_label_values(&["create", "refused"])
            .inc();
        return Err(GatewayError::ScopeEscalation {
            missing: missing.join(" "),
        });
    }
    let org = identity.key().org.to_string();
    let scopes: Vec<String> = wanted.iter().map(str::to_owned).collect();
    let key_name = name.clone();
    let created = blocking(move || {
        store.create_key(&org, &key_name, &scopes, jsonwebtoken::Algorithm::HS256)
    })
    .await
    .map_err(store_failure)?;
    gateway.rescan_keys();
    audit(
        gateway,
        identity,
        "create",
        &created.id,
        &created.scopes.join(" "),
    );
    let body = serde_json::to_string(&Created {
        id: &created.id,
        key: &created.secret,
    })
    .expect("JSON serializes");
    Ok(json_body(StatusCode::OK, body))
}

/// Opaque to clients: base64url of `created_at \n id` of the last key on the page.
fn encode_cursor(k: &KeyInfo) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\n{}", k.created_at, k.id))
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (created_at, id) = raw.split_once('\n')?;
    Some((created_at.to_owned(), id.to_owned()))
}

async fn list(
    store: Store,
    identity: &Identity,
    parts: &Parts,
    page_size: usize,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let taken = path::take_query_param(parts.uri.query(), "cursor");
    if taken.ambiguous {
        return Err(GatewayError::InvalidRequest(
            "give cursor at most once".into(),
        ));
    }
    let after = match taken.value.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| GatewayError::InvalidRequest("cursor is not valid".into()))?,
        ),
    };
    let org = identity.key().org.to_string();
    let mut keys = blocking(move || store.list_keys(Some(&org)))
        .await
        .map_err(store_failure)?;
    keys.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    let start = match &after {
        None => 0,
        Some((created_at, id)) => {
            keys.partition_point(|k| (&k.created_at, &k.id) <= (created_at, id))
        }
    };
    let page: Vec<&KeyInfo> = keys[start..].iter().take(page_size).collect();
    let cursor = (start + page.len() < keys.len())
        .then(|| page.last().map(|k| encode_cursor(k)))
        .flatten();
    let body = serde_json::to_string(&Page {
        keys: page
            .iter()
            .map(|k| Listed {
                id: &k.id,
                name: &k.name,
                scopes: &k.scopes,
                created_at: &k.created_at,
            })
            .collect(),
        cursor,
    })
    .expect("JSON serializes");
    Ok(json_body(StatusCode::OK, body))
}

async fn delete(
    gateway: &Arc<Gateway>,
    store: Store,
    identity: &Identity,
    parts: &Parts,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    // The route matched `/keys/{key}` on the normalized path; read the id from the same path.
    let normalized = path::normalize(parts.uri.path()).map_err(|_| GatewayError::BadPath)?;
    let id = normalized
        .strip_prefix("/keys/")
        .ok_or(GatewayError::KeyNotFound)?
        .to_owned();
    let org = identity.key().org.to_string();
    let target = id.clone();
    let result = blocking(move || store.delete_key_in_org(&org, &target)).await;
    if let Err(e) = result {
        let outcome = if matches!(e, StoreError::NotFound(_)) {
            "not-found"
        } else {
            "failed"
        };
        gateway
            .metrics
            .key_changes
            .with_label_values(&["delete", outcome])
            .inc();
        return Err(store_failure(e));
    }
    // Deleting the calling key itself is allowed; it stops working before we answer.
    gateway.rescan_keys();
    audit(gateway, identity, "delete", &id, "");
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// One audit line per change — never the secret — and one count.
fn audit(gateway: &Gateway, identity: &Identity, action: &'static str, key: &str, scopes: &str) {
    tracing::info!(
        target: "scopegate::audit",
        action,
        org = %identity.key().org,
        actor_key = %identity.key().id,
        actor_sub = identity.sub_text(),
        key,
        scopes,
        "key {action}d"
    );
    gateway
        .metrics
        .key_changes
        .with_label_values(&[action, "success"])
        .inc();
}
