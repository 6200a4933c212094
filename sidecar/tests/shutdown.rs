//! The sidecar binary's graceful stop, on real sockets and a real PostgreSQL: a request the
//! app is still working on when the pod is told to stop must finish, and the write it makes
//! through the session API must land.

use std::time::Duration;

use serde_json::json;
use stickyfarm_testkit::{Browser, TestDb, Unit};

#[tokio::test]
async fn a_request_in_flight_at_sigterm_still_writes_through_the_session_api() {
    let db = TestDb::new().await;
    let mut unit = Unit::start("u1", &db.url, &["--shutdown-grace", "15s"]).await;
    let mut shopper = Browser::new();
    // The session exists before the slow request, as a shopper's does.
    let first = shopper.get(&unit.sidecar.url("/cart")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let sid = shopper.cookie("sf_session").unwrap().to_owned();

    // The app takes 1.5 s before it reads and writes the cart; the pod is stopped meanwhile.
    let url = unit.sidecar.url("/cart/add?item=late&delay_ms=1500");
    let slow = tokio::spawn(async move { shopper.post(&url).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stopping = tokio::task::spawn_blocking(move || {
        let clean = unit.sidecar.terminate(Duration::from_secs(30));
        (clean, unit)
    });

    let answer = slow.await.unwrap();
    assert_eq!(
        answer.status, 200,
        "the request in flight at SIGTERM failed: {}",
        answer.body
    );
    assert_eq!(answer.json()["items"], json!(["late"]));
    assert_eq!(db.table(&sid, "cart").await, Some((1, json!(["late"]))));

    let (clean, unit) = stopping.await.unwrap();
    assert!(
        clean,
        "the sidecar did not stop cleanly:\n{}",
        unit.sidecar.log_text()
    );
}

/// A gateway keeps idle keep-alive connections to a unit. If the sidecar closed them at the
/// stop, a request written on one at that moment would fail after it was sent, and a POST
/// cannot then be replayed safely. Instead the connection stays open for a moment, and a
/// request on it is refused as "unit stopping" (nothing reached the app), which a gateway
/// replays on a backup; `Connection: close` then ends the connection.
#[tokio::test]
async fn a_request_on_a_kept_alive_connection_after_sigterm_is_refused_replayably_not_dropped() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper::body::Bytes;

    let db = TestDb::new().await;
    let mut unit = Unit::start("u1", &db.url, &["--shutdown-grace", "15s"]).await;
    let stream = tokio::net::TcpStream::connect(unit.sidecar.public)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(conn);
    let request = |method: &str, path: &str, cookie: Option<&str>| {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "shop.test");
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        b.body(Empty::<Bytes>::new()).unwrap()
    };
    let first = sender
        .send_request(request("GET", "/cart", None))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let cookie = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("sf_session="))
        .expect("a session cookie");
    first.into_body().collect().await.unwrap();
    let sid = cookie.trim_start_matches("sf_session=").to_owned();

    // The connection is idle, as a gateway's pooled one; the pod is told to stop.
    let stopping = tokio::task::spawn_blocking(move || {
        let clean = unit.sidecar.terminate(Duration::from_secs(30));
        (clean, unit)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let late = sender
        .send_request(request("POST", "/cart/add?item=late", Some(&cookie)))
        .await
        .expect("the request on the kept-alive connection gets an answer, not a closed connection");
    assert_eq!(late.status(), 503);
    assert_eq!(
        late.headers()
            .get("x-stickyfarm-unit-unavailable")
            .map(|v| v.to_str().unwrap()),
        Some("stopping"),
        "the refusal says nothing reached the app, so a gateway may replay it"
    );
    assert_eq!(
        late.headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close")
    );
    late.into_body().collect().await.unwrap();
    assert_eq!(db.table(&sid, "cart").await, None, "the app never saw it");
    connection.await.unwrap().unwrap();

    let (clean, unit) = stopping.await.unwrap();
    assert!(
        clean,
        "the sidecar did not stop cleanly:\n{}",
        unit.sidecar.log_text()
    );
}
