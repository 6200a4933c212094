//! The pooled connections upstream (`stickyfarm_api::upstream`, shared by the gateway and the
//! sidecar), against `testkit`'s fake unit on loopback (a hyper server that can close idle
//! connections after a header read timeout, as a sidecar does). Here rather than in the api
//! crate, which cannot depend on the testkit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use stickyfarm_api::upstream::{Checkout, Pool, Sender, UpstreamBody, connect, returning};
use stickyfarm_testkit::FakeUnit;

/// Longer than any test here takes between two requests.
const REUSE: Duration = Duration::from_secs(20);

fn get() -> http::Request<UpstreamBody> {
    http::Request::get("/cart")
        .header(http::header::HOST, "shop")
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// One request over `sender`, its body read; the connection goes back to `pool`. The
/// fake unit echoes the path it got.
async fn exchange(pool: &Pool, mut sender: Sender) {
    let answer = sender.try_send_request(get()).await.expect("answered");
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.expect("body").to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/cart");
    pool.put_back(sender);
}

async fn checkout(pool: &Pool, unit: &FakeUnit) -> Checkout {
    pool.checkout(&unit.addr.to_string(), Duration::from_secs(5), false, false)
        .await
        .expect("connected")
}

#[tokio::test]
async fn a_connection_whose_answer_was_read_is_reused() {
    let unit = FakeUnit::start("web-0").await;
    let pool = Pool::new(4, REUSE);
    for round in 0..3 {
        let c = checkout(&pool, &unit).await;
        assert_eq!(c.reused, round > 0, "round {round}");
        exchange(&pool, c.sender).await;
    }
    assert_eq!(unit.connections_accepted(), 1);
    assert_eq!(unit.count("GET"), 3);
}

#[tokio::test]
async fn an_idle_connection_the_unit_closed_is_never_handed_out() {
    let unit = FakeUnit::closing_idle_after("web-0", Duration::from_millis(30)).await;
    let pool = Pool::new(4, REUSE);
    let c = checkout(&pool, &unit).await;
    exchange(&pool, c.sender).await;
    // The unit closes it while it idles in the pool; the close arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = checkout(&pool, &unit).await;
    assert!(!c.reused, "the closed connection was handed out");
    exchange(&pool, c.sender).await;
    assert_eq!(unit.connections_accepted(), 2);
}

#[tokio::test]
async fn a_connection_idle_past_the_reuse_window_is_dropped_though_still_open() {
    // The unit would keep it (no idle close); the window is what ends its reuse, before an
    // upstream with a shorter keep-alive than it says could close it under a request.
    let unit = FakeUnit::start("web-0").await;
    let pool = Pool::new(4, Duration::from_millis(100));
    let c = checkout(&pool, &unit).await;
    exchange(&pool, c.sender).await;
    let c = checkout(&pool, &unit).await;
    assert!(c.reused, "inside the window");
    exchange(&pool, c.sender).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = checkout(&pool, &unit).await;
    assert!(
        !c.reused,
        "a connection idle past the window was handed out"
    );
    exchange(&pool, c.sender).await;
    assert_eq!(unit.connections_accepted(), 2);

    // A zero window never keeps one.
    let never = Pool::new(4, Duration::ZERO);
    for _ in 0..2 {
        let c = checkout(&never, &unit).await;
        assert!(!c.reused);
        exchange(&never, c.sender).await;
    }
    assert_eq!(unit.connections_accepted(), 4);
}

#[tokio::test]
async fn a_request_into_a_connection_found_closed_comes_back_unsent() {
    // Closes every connection before any request head arrives.
    let unit = FakeUnit::closing_idle_after("web-0", Duration::ZERO).await;
    let mut sender = Sender::Http1(
        connect(&unit.addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut e = sender
        .try_send_request(get())
        .await
        .expect_err("the unit closed the connection");
    let request = e
        .take_message()
        .expect("the request comes back: it was never written");
    assert_eq!(request.uri(), "/cart");
    assert_eq!(unit.count("GET"), 0);
}

#[tokio::test]
async fn a_connection_goes_back_only_once_its_answer_was_read_to_the_end() {
    let unit = FakeUnit::start("web-0").await;
    let pool = Arc::new(Pool::new(4, REUSE));

    // The client went away before the answer's body was read: its connection is not reused,
    // or the next request would read the rest of this answer as its own.
    let mut sender = checkout(&pool, &unit).await.sender;
    let answer = sender.try_send_request(get()).await.expect("answered");
    drop(returning(answer.into_body(), sender, pool.clone()));
    let c = checkout(&pool, &unit).await;
    assert!(!c.reused, "a connection with an unread answer was reused");

    // Read to the end: back in the pool, and the next request goes over it.
    let mut sender = c.sender;
    let answer = sender.try_send_request(get()).await.expect("answered");
    let body = returning(answer.into_body(), sender, pool.clone());
    let echo = body.collect().await.expect("body").to_bytes();
    assert!(!echo.is_empty());
    let c = checkout(&pool, &unit).await;
    assert!(
        c.reused,
        "a connection whose answer was read was not reused"
    );
    assert_eq!(unit.connections_accepted(), 2);
}
