//! `scopegate demo`: the gateway on the embedded `config/statebacked.toml`, in front of a
//! built-in echo upstream, with a throw-away organization and keys, plus curls to paste.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map};
use tokio::net::TcpListener;

use crate::keys::store::Store;
use crate::scopes::{scopes_for_use, KeyUse};

/// The example config, compiled in so `demo` runs anywhere.
pub const EMBEDDED_CONFIG: &str = include_str!("../../config/statebacked.toml");

/// Answers every request with a JSON echo of what arrived: method, path, query, headers
/// (identity headers included) and body size.
pub async fn echo_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                let (parts, body) = req.into_parts();
                let size = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(0);
                let headers: BTreeMap<&str, &str> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("<binary>")))
                    .collect();
                let echo = json!({
                    "upstream": "scopegate demo echo",
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "headers": headers,
                    "body_bytes": size,
                });
                let mut r = Response::new(Full::new(Bytes::from(
                    serde_json::to_string_pretty(&echo).unwrap_or_default() + "\n",
                )));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    "application/json".parse().unwrap(),
                );
                Ok::<_, Infallible>(r)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn bind_preferring(port: u16) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        Err(_) => Ok(TcpListener::bind("127.0.0.1:0").await?),
    }
}

/// Writes the demo config (embedded config, retargeted) into `dir` and returns its path.
pub fn write_config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
) -> anyhow::Result<std::path::PathBuf> {
    let mut table: toml::Table = toml::from_str(EMBEDDED_CONFIG).context("embedded config")?;
    let set = |table: &mut toml::Table, section: &str, key: &str, value: String| {
        if let Some(toml::Value::Table(t)) = table.get_mut(section) {
            t.insert(key.to_owned(), toml::Value::String(value));
        }
    };
    set(&mut table, "server", "listen", listen.to_string());
    set(&mut table, "admin", "listen", admin.to_string());
    set(&mut table, "keys", "dir", "keys".to_owned());
    if let Some(toml::Value::Table(ups)) = table.get_mut("upstreams") {
        if let Some(toml::Value::Table(m)) = ups.get_mut("machines") {
            m.insert(
                "url".into(),
                toml::Value::String(format!("http://{upstream}")),
            );
        }
    }
    let path = dir.join("scopegate.toml");
    std::fs::write(&path, toml::to_string(&table)?)?;
    Ok(path)
}

pub async fn run() -> anyhow::Result<()> {
    // Handle Ctrl-C and SIGTERM from the very start: a signal that arrived before the handlers
    // existed would kill the process with its default action and leave the temporary keys
    // behind (the curls below are printed before the wait begins).
    let terminated = crate::server::termination();

    let upstream_listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream_listener.local_addr()?;
    tokio::spawn(echo_upstream(upstream_listener));

    // Find free ports for the gateway, preferring the documented ones.
    let main = bind_preferring(8080).await?;
    let admin = bind_preferring(9090).await?;
    let (listen, admin_addr) = (main.local_addr()?, admin.local_addr()?);
    drop((main, admin));

    let dir = tempfile::Builder::new()
        .prefix("scopegate-demo-")
        .tempdir()?;
    let config_path = write_config(dir.path(), listen, admin_addr, upstream_addr)?;
    let config = crate::config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::new(&config.keys.dir, config.auth.catalog.clone());
    let org = store.create_org("demo")?;
    let scopes = |u| {
        scopes_for_use(u)
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let alg = jsonwebtoken::Algorithm::HS256;
    let production =
        store.create_key(&org.id, "demo production", &scopes(KeyUse::Production), alg)?;
    let ci = store.create_key(&org.id, "demo ci", &scopes(KeyUse::Ci), alg)?;
    let audience = config.auth.audiences[0].clone();

    let running = crate::server::start(config, config_path).await?;
    let now = crate::pipeline::now_seconds();
    let mut act = Map::new();
    act.insert("sub".into(), "demo-user".into());
    let token = |key_id: &str, secret: &str| {
        let spec = super::TokenSpec {
            key_id,
            algorithm: alg,
            act: &act,
            audience: &audience,
            issuer: None,
            scope: None,
            lifetime: Duration::from_secs(3600),
            now,
        };
        super::sign_token(&spec, secret)
    };
    let prod_token = token(&production.id, &production.secret)?;
    let ci_token = token(&ci.id, &ci.secret)?;
    let base = format!("http://{}", running.addr);
    println!(
        r#"scopegate demo — gateway on {base}, admin on http://{admin_addr}, echo upstream on http://{upstream_addr}
Organization {org_id}: key {prod_id} (production use), key {ci_id} (ci use). Keys in {keys}.

PROD={prod_token}
CI={ci_token}

# 200: a production key reads an instance's state (state.read); the echo shows the identity headers
curl -i {base}/machines/demo-machine/i/instance-1 -H "authorization: Bearer $PROD"

# 403 missing-scope: a production key cannot create machines (machines.write is a ci scope)
curl -i -X POST {base}/machines -H "authorization: Bearer $PROD" -H 'content-type: application/json' -d '{{"slug":"m"}}'

# 200: the ci key can
curl -i -X POST {base}/machines -H "authorization: Bearer $CI" -H 'content-type: application/json' -d '{{"slug":"m"}}'

# 401 missing-token, and 401 invalid-token
curl -i {base}/machines
curl -i {base}/machines -H "authorization: Bearer $CI.tampered"

# metrics
curl -s http://{admin_addr}/metrics | grep scopegate_requests_total

Press Ctrl-C to stop (the temporary keys are deleted)."#,
        org_id = org.id,
        prod_id = production.id,
        ci_id = ci.id,
        keys = dir.path().join("keys").display(),
    );
    terminated.await;
    running.shutdown().await;
    drop(dir);
    Ok(())
}
