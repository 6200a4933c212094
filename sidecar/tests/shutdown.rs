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
