//! Releasing an idle session for rebalancing (`x-stickyfarm-release-if-idle`): only when the
//! gateway asks, only an idle session, never while PostgreSQL is unreachable; and nothing is
//! lost. A real sidecar and PostgreSQL (through a proxy the test can cut).

use std::time::Duration;

use serde_json::json;
use stickyfarm_testkit::*;

/// Reads the cart with `headers` added; returns the status and the unit-unavailable signal.
async fn read_with(
    unit: &Unit,
    shopper: &Browser,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let mut req = reqwest::Client::new()
        .get(unit.sidecar.url("/cart"))
        .header("cookie", shopper.cookie_header());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let signal = r
        .headers()
        .get("x-stickyfarm-unit-unavailable")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = r.status().as_u16();
    (status, signal)
}

/// A unit on `database_url` whose listener is connected, and a shopper with a fig in its cart
/// there.
async fn unit_with_a_cart(database_url: &str) -> (Unit, Browser) {
    let a = Unit::start("web-0", database_url, &[]).await;
    let mut shopper = Browser::new();
    assert_eq!(
        shopper
            .post(&a.sidecar.url("/cart/add?item=fig"))
            .await
            .status,
        200
    );
    eventually(Duration::from_secs(5), "the listener connected", || async {
        a.sidecar
            .metric("stickyfarm_sidecar_invalidation_listener_connected", "")
            .await
            == 1.0
    })
    .await;
    (a, shopper)
}

async fn released(unit: &Unit) -> f64 {
    unit.sidecar
        .metric("stickyfarm_sidecar_flushes_total", "reason=\"released\"")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_released_only_when_the_gateway_asks_it_is_idle_and_postgresql_is_there() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(db.pg_addr()).await;
    let (a, mut shopper) = unit_with_a_cart(&db.url_via(proxy.port)).await;
    let token = ("x-stickyfarm-gateway-token", GATEWAY_TOKEN);
    let now = ("x-stickyfarm-release-if-idle", "0");

    // A client cannot make a unit drop a session: without the farm's gateway token, or with a
    // wrong one, the request is simply served.
    let forged = (
        "x-stickyfarm-gateway-token",
        "not-the-farms-token-0123456789abcdef0123",
    );
    assert_eq!(read_with(&a, &shopper, &[now]).await, (200, None));
    assert_eq!(read_with(&a, &shopper, &[forged, now]).await, (200, None));
    // A session used within the idle time stays.
    let minute = ("x-stickyfarm-release-if-idle", "60000");
    assert_eq!(read_with(&a, &shopper, &[token, minute]).await, (200, None));
    assert_eq!(released(&a).await, 0.0);

    // While PostgreSQL is unreachable nothing is released: this unit still serves the session
    // from its cache, another could not load it.
    proxy.cut();
    eventually(Duration::from_secs(10), "the listener noticed", || async {
        a.sidecar
            .metric("stickyfarm_sidecar_invalidation_listener_connected", "")
            .await
            == 0.0
    })
    .await;
    // (Served from the cache as a rule; should the listener's reconnect attempts have
    // dropped the cache meanwhile, the read is refused as "store unavailable", never released.)
    let (_, signal) = read_with(&a, &shopper, &[token, now]).await;
    assert_eq!(signal, None, "not released while PostgreSQL is unreachable");
    assert_eq!(released(&a).await, 0.0);
    proxy.restore();
    eventually(
        Duration::from_secs(15),
        "the listener reconnected",
        || async {
            a.sidecar
                .metric("stickyfarm_sidecar_invalidation_listener_connected", "")
                .await
                == 1.0
        },
    )
    .await;

    // Asked by the gateway, idle: released (the sidecar's own answer); the copy is gone, and the
    // next request loads the session, whole, from PostgreSQL.
    let p = shopper.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["fig"]));
    let misses = a
        .sidecar
        .metric("stickyfarm_sidecar_cache_misses_total", "")
        .await;
    assert_eq!(
        read_with(&a, &shopper, &[token, now]).await,
        (503, Some("released".to_owned()))
    );
    assert_eq!(released(&a).await, 1.0);
    let p = shopper.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.json()["items"], json!(["fig"]));
    assert_eq!(
        a.sidecar
            .metric("stickyfarm_sidecar_cache_misses_total", "")
            .await,
        misses + 1.0,
        "loaded again"
    );
}

/// A session with another request in flight here is not released, however long it was idle
/// before: that request may still write, and two units would serve the session at once (a
/// drain asks to release every session at once, with no idle time). Once the request is
/// done the session is released, and what it wrote is what the next unit loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_a_request_in_flight_is_not_released() {
    let db = TestDb::new().await;
    let (a, shopper) = unit_with_a_cart(&db.url).await;
    let token = ("x-stickyfarm-gateway-token", GATEWAY_TOKEN);
    let now = ("x-stickyfarm-release-if-idle", "0");

    // A slow write through the gateway's path (it names a backup, as the gateway does on
    // every request of a session while the farm has another unit).
    let slow = {
        let url = a.sidecar.url("/cart/add?item=tea&delay_ms=800");
        let cookies = shopper.cookie_header();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("cookie", cookies)
                .header("x-stickyfarm-gateway-token", GATEWAY_TOKEN)
                .header("x-stickyfarm-backup", "web-1")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        read_with(&a, &shopper, &[token, now]).await,
        (200, None),
        "served here while its write is in flight"
    );
    assert_eq!(released(&a).await, 0.0);
    assert_eq!(slow.await.unwrap(), 200);

    assert_eq!(
        read_with(&a, &shopper, &[token, now]).await,
        (503, Some("released".to_owned()))
    );
    assert_eq!(released(&a).await, 1.0);
    let (_, doc) = db
        .table(shopper.cookie("sf_session").unwrap(), "cart")
        .await
        .unwrap();
    assert_eq!(doc, json!(["fig", "tea"]), "the write in flight was kept");
}
