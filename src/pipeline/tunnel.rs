//! Protocol upgrades (WebSocket, RFC 6455 over HTTP/1.1 `Upgrade`, RFC 9110 §7.8).
//!
//! An upgrade request is authorized like any other request; only then is it forwarded with its
//! `Connection: upgrade` and `Upgrade` headers put back (they are hop-by-hop and stripped with
//! the rest). If the upstream switches protocols (101), the client gets the 101 and both
//! connections are spliced: bytes are copied both ways until either side closes, which closes
//! the other. Tunnels are tracked by the gateway so a drain can wait for them, then cut them.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::gateway::Gateway;

/// The `Upgrade` value when the request asks to switch to WebSocket: `Upgrade: websocket` and
/// `upgrade` among the `Connection` options.
///
/// Only WebSocket is tunnelled. An `h2c` upgrade (RFC 7540 §3.2) accepted by the upstream would
/// hand the client an HTTP/2 connection straight to it, on which every later request bypasses
/// the gateway ("h2c smuggling"); other protocols are just as unknown. Their `Upgrade` goes with
/// the other hop-by-hop headers and the request is forwarded as a plain one.
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers
        .get(UPGRADE)
        .filter(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))?;
    let asks = headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| upgrade.clone())
}

/// Puts back the two headers that ask for (or confirm) the switch.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Joins the client and the upstream once both have switched protocols.
pub fn splice(gateway: &Gateway, client: OnUpgrade, upstream: OnUpgrade) {
    let open = gateway.metrics.open_tunnels.clone();
    gateway.spawn_tunnel(async move {
        let (client, upstream) = tokio::join!(client, upstream);
        let (Ok(client), Ok(upstream)) = (client, upstream) else {
            tracing::debug!("a protocol switch did not complete");
            return;
        };
        open.inc();
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        }
        open.dec();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&h), None);
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested(&h).unwrap(), "websocket");
        h.remove(UPGRADE);
        assert_eq!(requested(&h), None);
    }

    #[test]
    fn only_websocket_is_tunnelled() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        for other in ["h2c", "websocket, h2c", "TLS/1.2", "HTTP/2.0"] {
            h.insert(UPGRADE, HeaderValue::from_static(other));
            assert_eq!(requested(&h), None, "{other}");
        }
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(requested(&h).unwrap(), "WebSocket");
    }
}
