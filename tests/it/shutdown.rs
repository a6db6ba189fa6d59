//! Graceful shutdown: stop accepting at once, turn unready, let in-flight requests finish —
//! but no longer than the grace period.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::support::{eventually, mint, RecordingUpstream, Req, TestGateway};

const STATE: &str = "/machines/m1/i/i1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_request_and_refuses_new_ones() {
    let up = RecordingUpstream::start().await;
    // A grace period far longer than the request: the drain, not the timer, must end it.
    let mut gw = TestGateway::builder().shutdown_grace(30).spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let (addr, admin) = (gw.addr(), gw.admin_addr());
    let delay = Duration::from_secs(1);
    up.set_delay(delay);

    let sent_at = Instant::now();
    let in_flight = tokio::spawn(gw.get(STATE).bearer(&mint(&key).sign()).try_send());
    assert!(
        eventually(Duration::from_secs(5), || async { up.count() == 1 }).await,
        "the request never reached the upstream"
    );

    let running = gw.running.take().unwrap();
    let gateway = running.gateway.clone();
    let shutdown = tokio::spawn(async move {
        running.shutdown().await;
        Instant::now()
    });

    // Draining: unready, and the listener no longer takes connections.
    assert!(
        eventually(Duration::from_secs(5), || async { !gateway.is_ready() }).await,
        "still ready while draining"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            TcpStream::connect(addr).await.is_err()
        })
        .await,
        "the gateway still accepts connections after shutdown started"
    );
    // The admin listener answers 503 or is closed: either way no balancer sends traffic.
    if let Ok(res) = Req::new("GET", format!("http://{admin}/readyz"))
        .try_send()
        .await
    {
        assert_eq!(res.status, 503, "/readyz during the drain: {}", res.text());
    }

    let res = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight request never finished")
        .unwrap()
        .expect("the in-flight request was cut by the shutdown");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["ok"], true);

    let done = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown did not complete after the drain (it waited for the 30 s grace)")
        .unwrap();
    // The upstream held the response for `delay` after it was sent: shutdown cannot have
    // finished earlier without abandoning it.
    assert!(
        done.duration_since(sent_at) >= delay,
        "shutdown finished {:?} after the request was sent, before its response",
        done.duration_since(sent_at)
    );
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_running_past_the_grace_period_is_cut() {
    let up = RecordingUpstream::start().await;
    let grace = Duration::from_secs(1);
    let mut gw = TestGateway::builder()
        .shutdown_grace(grace.as_secs())
        .spawn(&up)
        .await;
    let key = gw.key(&["state.read"]).await;
    up.set_delay(Duration::from_secs(60));

    let in_flight = tokio::spawn(gw.get(STATE).bearer(&mint(&key).sign()).try_send());
    assert!(
        eventually(Duration::from_secs(5), || async { up.count() == 1 }).await,
        "the request never reached the upstream"
    );
    let started = Instant::now();
    let running = gw.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());

    let outcome = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the request outlived the grace period by far: it was never cut")
        .unwrap();
    let cut_after = started.elapsed();
    match outcome {
        Err(_) => {}
        Ok(res) => panic!(
            "the request got an answer instead of being cut: {} {}",
            res.status,
            res.text()
        ),
    }
    assert!(
        cut_after >= grace,
        "cut after {cut_after:?}, before the {grace:?} grace period"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown never completed")
        .unwrap();
}
