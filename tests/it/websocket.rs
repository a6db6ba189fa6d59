//! WebSockets through the gateway with real peers (tokio-tungstenite on both ends): the token
//! rides in `?token=` as State Backed's realtime client sends it, frames flow both ways, the
//! upstream never sees the token, a close on either side closes the other, and a drain lets an
//! open WebSocket finish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, mint, RecordingUpstream, TestGateway};

/// What the WebSocket upstream saw and does.
struct WsUpstream {
    addr: std::net::SocketAddr,
    /// The request target of each handshake.
    targets: Arc<Mutex<Vec<String>>>,
    /// Messages the upstream received, in order; `None` when a client closed.
    received: mpsc::UnboundedReceiver<Option<String>>,
    /// Sends a message from the upstream to the most recent client; "close" closes it.
    push: mpsc::UnboundedSender<String>,
}

#[allow(clippy::result_large_err)] // tungstenite's handshake callback signature
async fn ws_upstream() -> WsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let (seen_tx, received) = mpsc::unbounded_channel();
    let (push, mut pushes) = mpsc::unbounded_channel::<String>();
    let t = targets.clone();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let t2 = t.clone();
        let ws =
            tokio_tungstenite::accept_hdr_async(stream, move |req: &Request, res: Response| {
                t2.lock().unwrap().push(req.uri().to_string());
                Ok(res)
            })
            .await
            .unwrap();
        let (mut tx, mut rx) = ws.split();
        loop {
            tokio::select! {
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let text = text.to_string();
                        let _ = seen_tx.send(Some(text.clone()));
                        let _ = tx.send(Message::text(format!("echo:{text}"))).await;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        let _ = seen_tx.send(None);
                        return;
                    }
                    Some(Ok(_)) => {}
                },
                Some(out) = pushes.recv() => {
                    if out == "close" {
                        let _ = tx.send(Message::Close(None)).await;
                        let _ = tx.close().await;
                        // Wait for the client's side of the closing handshake (or EOF).
                        while let Some(Ok(m)) = rx.next().await { if m.is_close() { break; } }
                        return;
                    }
                    let _ = tx.send(Message::text(out)).await;
                }
            }
        }
    });
    WsUpstream {
        addr,
        targets,
        received,
        push,
    }
}

async fn gateway_for(ws: &WsUpstream, up: &RecordingUpstream, grace: u64) -> TestGateway {
    TestGateway::builder()
        .shutdown_grace(grace)
        .routes(&format!(
            "[[routes]]\nmethods = [\"GET\"]\npath = \"/rt\"\nscopes = [\"state.read\"]\nupstream = \"ws\"\ntoken_query_param = \"token\"\n\n[upstreams.ws]\nurl = \"http://{}\"\n",
            ws.addr
        ))
        .spawn(up)
        .await
}

async fn next_text<S>(stream: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a frame within 5 s")
            .expect("the stream is open")
            .expect("a valid frame");
        if let Message::Text(t) = msg {
            return t.to_string();
        }
    }
}

#[tokio::test]
async fn frames_flow_both_ways_and_the_upstream_never_sees_the_token() {
    let up = RecordingUpstream::start().await;
    let mut ws = ws_upstream().await;
    let gw = gateway_for(&ws, &up, 5).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();
    let url = format!(
        "ws://{}/rt?token={token}&x-statebacked-org-id={}",
        gw.addr(),
        gw.org
    );
    let (client, response) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(response.status(), 101);
    let (mut tx, mut rx) = client.split();

    tx.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut rx).await, "echo:hello");
    assert_eq!(ws.received.recv().await.unwrap().as_deref(), Some("hello"));
    ws.push.send("from-upstream".into()).unwrap();
    assert_eq!(next_text(&mut rx).await, "from-upstream");

    let targets = ws.targets.lock().unwrap().clone();
    assert_eq!(targets.len(), 1);
    assert!(
        !targets[0].contains(&token),
        "the token reached the upstream: {}",
        targets[0]
    );
    assert!(!targets[0].contains("token="), "{}", targets[0]);
    assert!(targets[0].starts_with("/rt?"), "{}", targets[0]);

    // A close from the client closes the upstream's side.
    tx.send(Message::Close(None)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), ws.received.recv())
        .await
        .unwrap();
    assert_eq!(closed, Some(None));
}

#[tokio::test]
async fn a_close_from_the_upstream_closes_the_client() {
    let up = RecordingUpstream::start().await;
    let ws = ws_upstream().await;
    let gw = gateway_for(&ws, &up, 5).await;
    let key = gw.key(&["state.read"]).await;
    let url = format!("ws://{}/rt?token={}", gw.addr(), mint(&key).sign());
    let (client, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (_tx, mut rx) = client.split();
    ws.push.send("close".into()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true));
}

#[tokio::test]
async fn an_upgrade_without_a_valid_token_never_reaches_the_upstream() {
    let up = RecordingUpstream::start().await;
    let ws = ws_upstream().await;
    let gw = gateway_for(&ws, &up, 5).await;
    let key = gw.key(&["machines.read"]).await;
    for url in [
        format!("ws://{}/rt", gw.addr()),
        format!("ws://{}/rt?token=not.a.jwt", gw.addr()),
        format!("ws://{}/rt?token={}", gw.addr(), mint(&key).sign()),
    ] {
        let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(res) => {
                assert!(
                    matches!(res.status().as_u16(), 401 | 403),
                    "{url}: {}",
                    res.status()
                )
            }
            other => panic!("{url}: {other}"),
        }
    }
    assert!(ws.targets.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_drain_lets_an_open_websocket_finish() {
    let up = RecordingUpstream::start().await;
    let mut ws = ws_upstream().await;
    let mut gw = gateway_for(&ws, &up, 10).await;
    let key = gw.key(&["state.read"]).await;
    let url = format!("ws://{}/rt?token={}", gw.addr(), mint(&key).sign());
    let (client, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut tx, mut rx) = client.split();
    tx.send(Message::text("before")).await.unwrap();
    assert_eq!(next_text(&mut rx).await, "echo:before");
    assert_eq!(ws.received.recv().await, Some(Some("before".to_owned())));

    let addr = gw.addr();
    let running = gw.running.take().unwrap();
    let gateway = running.gateway.clone();
    let drain = tokio::spawn(running.shutdown());
    assert!(eventually(Duration::from_secs(5), || async { !gateway.is_ready() }).await);
    // New connections are refused; the open WebSocket keeps working.
    assert!(
        eventually(Duration::from_secs(5), || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    );
    tx.send(Message::text("during")).await.unwrap();
    assert_eq!(next_text(&mut rx).await, "echo:during");
    assert!(
        !drain.is_finished(),
        "the drain must wait for the WebSocket"
    );
    // The client finishes; the drain completes well before the grace period.
    tx.send(Message::Close(None)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), ws.received.recv())
        .await
        .unwrap();
    assert_eq!(seen, Some(Some("during".to_owned())));
    let closed = tokio::time::timeout(Duration::from_secs(5), ws.received.recv())
        .await
        .unwrap();
    assert_eq!(
        closed,
        Some(None),
        "the client's close reached the upstream"
    );
    // The client sees the connection end (the upstream closed its side) and lets it go.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = rx.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the client's stream must end");
    drop((tx, rx));
    tokio::time::timeout(Duration::from_secs(8), drain)
        .await
        .expect("the drain ends once the WebSocket closed")
        .unwrap();
}

#[tokio::test]
async fn a_websocket_outliving_the_grace_period_is_cut() {
    let up = RecordingUpstream::start().await;
    let ws = ws_upstream().await;
    let mut gw = gateway_for(&ws, &up, 1).await;
    let key = gw.key(&["state.read"]).await;
    let url = format!("ws://{}/rt?token={}", gw.addr(), mint(&key).sign());
    let (client, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (_tx, mut rx) = client.split();
    let running = gw.running.take().unwrap();
    tokio::time::timeout(Duration::from_secs(6), running.shutdown())
        .await
        .expect("shutdown ends after the 1 s grace period");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true), "the cut WebSocket must end for the client");
}
