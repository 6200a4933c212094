//! The gateway against real sidecars (and scriptable fake units) on loopback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use stickyfarm_testkit::*;

async fn three_units(db: &TestDb) -> Vec<Unit> {
    let mut units = Vec::new();
    for name in ["web-0", "web-1", "web-2"] {
        units.push(Unit::start(name, &db.url, &[]).await);
    }
    units
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_requests_spread_and_follow_ups_stay_on_their_unit() {
    let db = TestDb::new().await;
    let units = three_units(&db).await;
    let gw = GatewayProc::start(&unit_flags(&units), &["--slow-start", "0s"]).await;
    gw.wait_up(3).await;

    // First requests: spread over every unit by the policy.
    let mut clients = Vec::new();
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let mut b = Browser::new();
        let p = b.get(&gw.url("/echo")).await;
        assert_eq!(p.status, 200);
        let unit = p.json()["x-stickyfarm-unit"].as_str().unwrap().to_owned();
        // The app is told the unit's own address for its links, and the client gets the
        // routing cookie.
        assert_eq!(
            p.json()["x-stickyfarm-unit-url"],
            format!("http://{}/_unit/{unit}", gw.addr)
        );
        assert_eq!(b.cookie("sf_unit"), Some(unit.as_str()));
        *seen.entry(unit.clone()).or_insert(0) += 1;
        clients.push((b, unit));
    }
    assert_eq!(
        seen.len(),
        3,
        "first requests must reach every unit: {seen:?}"
    );

    // 1000 follow-ups, by unit address and by cookie alternately: zero strays.
    let mut strays = 0;
    for i in 0..1000 {
        let (b, unit) = &mut clients[i % 10];
        let url = if i % 2 == 0 {
            gw.url(&format!("/_unit/{unit}/echo"))
        } else {
            gw.url("/echo")
        };
        let p = b.get(&url).await;
        assert_eq!(p.status, 200);
        if p.json()["x-stickyfarm-unit"] != unit.as_str() {
            strays += 1;
        }
    }
    assert_eq!(strays, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_unit_loses_no_get_and_the_session_continues_on_a_backup() {
    let db = TestDb::new().await;
    let mut units = three_units(&db).await;
    let gw = GatewayProc::start(&unit_flags(&units), &[]).await;
    gw.wait_up(3).await;

    let mut b = Browser::new();
    let first = b.get(&gw.url("/echo")).await.json();
    let home = first["x-stickyfarm-unit"].as_str().unwrap().to_owned();
    // The sidecar believed the gateway's unit URL (it came with the farm's gateway token).
    assert_eq!(
        first["x-stickyfarm-unit-url"],
        gw.url(&format!("/_unit/{home}"))
    );
    for item in ["apple", "pear", "plum"] {
        let p = b
            .post(&gw.url(&format!("/_unit/{home}/cart/add?item={item}")))
            .await;
        assert_eq!(p.status, 200);
    }
    let sid = b.cookie("sf_session").unwrap().to_owned();

    // The client follows its unit's links; the unit's process dies mid-loop.
    let mut failed = 0;
    let mut served_by = Vec::new();
    let mut url = gw.url(&format!("/_unit/{home}/cart"));
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..150 {
        assert!(Instant::now() < deadline, "loop took too long");
        if i == 30 {
            let victim = units.iter_mut().find(|u| u.sidecar.unit == home).unwrap();
            victim.sidecar.kill();
        }
        let p = b.get(&url).await;
        if p.status != 200 {
            failed += 1;
            continue;
        }
        let cart = p.json();
        assert_eq!(cart["session"], sid.as_str(), "the session must continue");
        assert_eq!(cart["items"], json!(["apple", "pear", "plum"]));
        served_by.push(cart["unit"].as_str().unwrap().to_owned());
        // Follow the links the app builds from its unit address.
        url = format!("{}/cart", cart["unit_url"].as_str().unwrap());
    }
    assert_eq!(failed, 0, "no GET may fail");
    assert!(served_by[..30].iter().all(|u| *u == home));
    let backup = served_by.last().unwrap().clone();
    assert_ne!(backup, home);
    assert!(
        served_by[31..].iter().all(|u| *u == backup),
        "the client stays on one backup"
    );
    assert_eq!(b.cookie("sf_unit"), Some(backup.as_str()));
    assert!(url.contains(&format!("/_unit/{backup}/")), "{url}");
    let dead = gw.unit_status(&home).await;
    assert_eq!(dead["state"], "down");
    assert!(
        gw.metric("stickyfarm_gateway_passive_failures_total", &home)
            .await
            >= 1.0
    );
}

/// The database goes away: every sidecar fails its health check at once (it pings
/// PostgreSQL), so no unit is in service. The gateway does not refuse everything: each session
/// goes on to its own unit (the last resort), whose cache still answers reads, while writes are
/// refused by the sidecar with 503 and nothing unstored is acknowledged. With the database
/// back, the units come back into service and the carts go on where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_gone_every_unit_is_out_yet_carts_are_still_read() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(db.pg_addr()).await;
    let url = db.url_via(proxy.port);
    let mut units = Vec::new();
    for name in ["web-0", "web-1"] {
        units.push(Unit::start(name, &url, &["--db-acquire-timeout", "500ms"]).await);
    }
    let gw = GatewayProc::start(&unit_flags(&units), &["--fall", "2", "--rise", "2"]).await;
    gw.wait_up(2).await;
    let mut shoppers = Vec::new();
    for item in ["apple", "pear", "plum", "fig"] {
        let (b, home) = gw.shopper(item).await;
        shoppers.push((b, home, item));
    }

    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(20);
    for unit in ["web-0", "web-1"] {
        loop {
            let row = gw.unit_status(unit).await;
            if row["state"] == "down" {
                assert!(
                    row["last_error"]
                        .as_str()
                        .unwrap()
                        .contains("database: not answering"),
                    "the sidecar says why: {row}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "{unit} never went down: {row}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (b, home, item) in &mut shoppers {
        // By the unit's link and by the routing cookie alone: its own unit answers.
        for path in [format!("/_unit/{home}/cart"), "/cart".to_owned()] {
            let p = b.get(&gw.url(&path)).await;
            assert_eq!(p.status, 200, "{path}: {}", p.body);
            assert_eq!(p.json()["unit"], home.as_str());
            assert_eq!(p.json()["items"], json!([item]));
        }
        let p = b
            .post(&gw.url(&format!("/_unit/{home}/cart/add?item=unstored")))
            .await;
        assert_eq!(p.status, 503, "the write is refused: {}", p.body);
        assert!(
            !p.body.contains("no unit available"),
            "by the sidecar, not the gateway: {}",
            p.body
        );
    }
    let newcomer = Browser::new().get(&gw.url("/echo")).await;
    assert_eq!(newcomer.status, 200, "a new client is served too");
    assert!(
        gw.metric("stickyfarm_gateway_last_resort_total", "").await >= 13.0,
        "every request above went by the last resort"
    );

    proxy.restore();
    gw.wait_up(2).await;
    for (b, home, item) in &mut shoppers {
        let p = b
            .post(&gw.url(&format!("/_unit/{home}/cart/add?item=more")))
            .await;
        assert_eq!(p.status, 200, "{}", p.body);
        let sid = b.cookie("sf_session").unwrap();
        assert_eq!(
            db.table(sid, "cart").await.map(|(_, cart)| cart),
            Some(json!([item, "more"])),
            "the refused write was never stored"
        );
    }
}

/// A unit's pod is stopped (SIGTERM: a rolling update, a scale-down) while its shoppers keep
/// adding to their carts, each a POST the gateway may not replay once it could have reached
/// the app. Requests that arrive during the stop are refused by the sidecar as "unit
/// stopping" — on its kept-alive connections too — and the gateway sends them to a backup:
/// no shopper sees an error and every acknowledged item is in the cart in PostgreSQL. (The
/// race a closed idle connection used to lose, rare on loopback, is shown deterministically in
/// `sidecar/tests/shutdown.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_unit_under_writes_fails_no_post_and_loses_no_item() {
    let db = TestDb::new().await;
    let mut units = three_units(&db).await;
    let gw = GatewayProc::start(&unit_flags(&units), &[]).await;
    gw.wait_up(3).await;

    // Shoppers whose sessions live on one unit, the one that is stopped.
    let mut first = Browser::new();
    let home = first.get(&gw.url("/echo")).await.json()["x-stickyfarm-unit"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut shoppers = vec![first];
    for _ in 0..3 {
        let mut b = Browser::new();
        b.cookies.insert("sf_unit".into(), home.clone());
        b.get(&gw.url("/echo")).await;
        shoppers.push(b);
    }
    const ADDS: usize = 40;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for (n, mut b) in shoppers.into_iter().enumerate() {
        let url = gw.url("/cart/add");
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..ADDS {
                assert!(
                    Instant::now() < deadline,
                    "shopper {n}: the loop took too long"
                );
                let p = b.post(&format!("{url}?item=s{n}-{i}")).await;
                if p.status != 200 {
                    failures.push(format!("add {i}: {} {}", p.status, p.body));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (b, failures)
        }));
    }
    // A third of the way in, the shoppers' unit is told to stop.
    tokio::time::sleep(Duration::from_millis(ADDS as u64 * 25 / 3)).await;
    let victim = units.iter().position(|u| u.sidecar.unit == home).unwrap();
    let mut unit = units.remove(victim);
    let stopped = tokio::task::spawn_blocking(move || {
        let clean = unit.sidecar.terminate(Duration::from_secs(30));
        (clean, unit)
    });

    for (n, task) in tasks.into_iter().enumerate() {
        let (b, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "shopper {n}: {failures:?}");
        let sid = b.cookie("sf_session").unwrap();
        let expected: Vec<String> = (0..ADDS).map(|i| format!("s{n}-{i}")).collect();
        assert_eq!(
            db.table(sid, "cart").await.map(|(_, cart)| cart),
            Some(json!(expected)),
            "shopper {n}: every acknowledged item, once, in order"
        );
        assert_ne!(
            b.cookie("sf_unit"),
            Some(home.as_str()),
            "shopper {n} moved to a backup"
        );
    }
    let (clean, unit) = stopped.await.unwrap();
    assert!(
        clean,
        "{} did not stop cleanly:\n{}",
        home,
        unit.sidecar.log_text()
    );
}

/// The unit closes a kept-alive connection once it has idled a while (a sidecar does after
/// its header read timeout). A POST that comes later must not be written into that closed
/// connection: it could not be replayed, and with one unit the shopper would get a 502.
/// Every POST is answered, and the unit got each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_after_the_unit_closed_its_idle_connections_are_each_delivered_once() {
    let unit = FakeUnit::closing_idle_after("web-0", Duration::from_millis(100)).await;
    let gw = GatewayProc::start(&[unit.flag()], &[]).await;
    gw.wait_up(1).await;
    let client = reqwest::Client::new();
    const POSTS: usize = 8;
    for i in 0..POSTS {
        let r = client
            .post(gw.url("/cart/add"))
            .body(format!("item-{i}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "post {i}: {}", r.text().await.unwrap());
        // Long enough for the unit to close the gateway's idle connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(unit.count("POST"), POSTS);
}

/// A unit's connection carries one request after another, whatever their method and body:
/// the gateway reads each answer to its end and uses the connection again, rather than
/// opening one per request (a connect and a unit-side accept each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unit_connection_carries_request_after_request() {
    let unit = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(&[unit.flag()], &["--check-interval", "1h"]).await;
    gw.wait_up(1).await;
    let before = unit.connections_accepted();
    let client = reqwest::Client::new();
    const ROUNDS: usize = 5;
    for i in 0..ROUNDS {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::HEAD,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let r = client
                .request(method.clone(), gw.url("/_unit/web-0/cart"))
                .body(if method == reqwest::Method::POST {
                    format!("item-{i}")
                } else {
                    String::new()
                })
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{method} {i}");
            r.bytes().await.unwrap();
        }
    }
    for method in ["GET", "POST", "HEAD", "PUT", "DELETE"] {
        assert_eq!(unit.count(method), ROUNDS, "{method}");
    }
    assert_eq!(unit.connections_accepted() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_rise_and_fall_thresholds() {
    let fake = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(&[fake.flag()], &["--rise", "2", "--fall", "3"]).await;
    gw.wait_up(1).await;

    // Record every distinct row the status table shows while the answer goes wrong and back.
    let record = |steps: &mut Vec<(String, u64, u64)>, row: &serde_json::Value| {
        let step = (
            row["state"].as_str().unwrap().to_owned(),
            row["consecutive_ok"].as_u64().unwrap(),
            row["consecutive_fail"].as_u64().unwrap(),
        );
        if steps.last() != Some(&step) {
            steps.push(step);
        }
    };
    let mut steps = Vec::new();
    fake.healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = gw.unit_status("web-0").await;
        record(&mut steps, &row);
        if row["state"] == "down" {
            assert!(
                row["last_error"].as_str().unwrap().contains("lacks"),
                "{row}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never went down: {steps:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        let row = gw.unit_status("web-0").await;
        record(&mut steps, &row);
        if row["state"] == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "never came back: {steps:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = |st: &str, ok, fail| (st.to_owned(), ok, fail);
    let tail: Vec<_> = steps.iter().skip_while(|x| x.2 == 0).cloned().collect();
    assert_eq!(
        tail,
        vec![
            s("up", 0, 1),
            s("up", 0, 2),
            s("down", 0, 3),
            s("down", 1, 0),
            s("up", 2, 0)
        ],
        "every step of the status table: {steps:?}"
    );
    assert!(
        gw.metric("stickyfarm_gateway_unit_state_changes_total", "web-0")
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_others_keep_being_served() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let gw = GatewayProc::start(
        &[a.flag(), b.flag()],
        &["--header-read-timeout", "1s", "--max-body-size", "1KiB"],
    )
    .await;
    gw.wait_up(2).await;
    let client = reqwest::Client::new();
    let t = Duration::from_secs(3);

    // Slowloris: a client that never finishes its headers is cut off.
    let slow = tokio::spawn({
        let addr = gw.addr;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 256];
            loop {
                // Trickle a header byte now and then; the server must still close.
                if s.write_all(b"X").await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "slowloris connection kept open"
                );
            }
            started.elapsed()
        }
    });

    // Oversized headers: 431.
    let r = client
        .get(gw.url("/"))
        .header("x-big", "a".repeat(20_000))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request(), "{e}"), // or the connection is closed
    }
    // Malformed or missing Host: 400.
    let r = raw_http(gw.addr, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", t).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw_http(gw.addr, b"GET / HTTP/1.1\r\nHost: u@evil\r\n\r\n", t).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // The host an absolute target names is held to the same rules as `Host`; a quote would
    // end `Forwarded`'s quoted host and a port of letters is no port.
    for head in [
        &b"GET http://u@evil/ HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: shop\";for=1.2.3.4\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop:http\r\nConnection: close\r\n\r\n",
    ] {
        let r = raw_http(gw.addr, head, t).await;
        assert!(
            r.starts_with("HTTP/1.1 400"),
            "{}: {r}",
            String::from_utf8_lossy(head)
        );
    }
    let r = raw_http(gw.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", t).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Path traversal in unit addresses: 400, and nothing reached a unit.
    for path in [
        "/_unit/web-0/../web-1/x",
        "/_unit/web-0/%2e%2e/web-1/x",
        "/_unit/web-0/a%2Fb",
        "/_unit/../x",
        "/_unit/Web-0/x",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
        let r = raw_http(gw.addr, req.as_bytes(), t).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{path}: {r}");
    }
    assert_eq!(a.count("GET") + b.count("GET"), 0);
    // Unknown unit names: 404 for a new client; a returning client (with a session) fails over.
    let r = raw_http(
        gw.addr,
        b"GET /_unit/web-9/x HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
        t,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let sid = stickyfarm_api::SessionId::generate();
    let req = format!(
        "GET /_unit/web-9/x HTTP/1.1\r\nHost: shop\r\nCookie: sf_session={sid}\r\nConnection: close\r\n\r\n"
    );
    let r = raw_http(gw.addr, req.as_bytes(), t).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // A body over the limit: 413, not forwarded.
    let posts = a.count("POST") + b.count("POST");
    let r = client
        .post(gw.url("/x"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(a.count("POST") + b.count("POST"), posts);

    // Meanwhile everybody else is served.
    for _ in 0..20 {
        assert_eq!(
            client.get(gw.url("/ok")).send().await.unwrap().status(),
            200
        );
    }
    let held = slow.await.unwrap();
    assert!(
        held < Duration::from_secs(5),
        "slowloris held a connection for {held:?}"
    );
    assert_eq!(
        client.get(gw.url("/ok")).send().await.unwrap().status(),
        200
    );
    assert!(
        gw.metric("stickyfarm_gateway_refused_total", "bad_unit_address")
            .await
            >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_and_hop_by_hop_headers_removed() {
    let a = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(&[a.flag()], &[]).await;
    gw.wait_up(1).await;
    let r = reqwest::Client::new()
        .get(gw.url("/_unit/web-0/p?q=1"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-stickyfarm-unit-url", "http://evil")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = r.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(echo["path"], "/p?q=1", "the unit prefix is stripped");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "a client's own X-Forwarded-For is not trusted"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["host"], gw.addr.to_string());
    assert!(
        h["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=127.0.0.1;")
    );
    assert!(
        h.get("x-private").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(
        h["x-stickyfarm-unit-url"],
        format!("http://{}/_unit/web-0", gw.addr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_keeps_sessions_and_disabling_fails_them_over() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let gw = GatewayProc::start(&[a.flag(), b.flag()], &["--slow-start", "0s"]).await;
    gw.wait_up(2).await;
    let mut client = Browser::new();
    client.cookies.insert("sf_unit".into(), "web-0".into());
    assert_eq!(client.get(&gw.url("/")).await.json()["unit"], "web-0");

    assert_eq!(gw.admin("web-0", "drain").await, 204);
    for _ in 0..40 {
        let p = Browser::new().get(&gw.url("/")).await;
        assert_eq!(
            p.json()["unit"],
            "web-1",
            "a draining unit gets no new sessions"
        );
    }
    for _ in 0..10 {
        assert_eq!(
            client.get(&gw.url("/")).await.json()["unit"],
            "web-0",
            "but keeps its own"
        );
    }
    assert_eq!(gw.unit_status("web-0").await["admin"], "draining");

    assert_eq!(gw.admin("web-0", "disable").await, 204);
    let p = client.get(&gw.url("/")).await;
    assert_eq!(p.json()["unit"], "web-1");
    assert_eq!(
        client.cookie("sf_unit"),
        Some("web-1"),
        "the client is handed the backup"
    );
    // Stay (the default): it keeps the backup after its unit is back.
    assert_eq!(gw.admin("web-0", "enable").await, 204);
    assert_eq!(client.get(&gw.url("/")).await.json()["unit"], "web-1");
    assert_eq!(gw.admin("web-9", "drain").await, 404);
    assert_eq!(gw.admin("web-0", "explode").await, 404);
}

/// Anyone who reaches the gateway's admin ports tries to switch the farm off: without the
/// admin token nothing changes, and the read-only admin port takes no actions at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_actions_need_the_admin_token() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let gw = GatewayProc::start(&[a.flag(), b.flag()], &["--slow-start", "0s"]).await;
    gw.wait_up(2).await;
    let wrong = "wrong-admin-token-0123456789abcdef0123456789abcdef";
    let mut attempts = 0;
    for unit in ["web-0", "web-1"] {
        for action in ["disable", "drain"] {
            assert_eq!(gw.unit_action(unit, action, None).await, 401);
            assert_eq!(gw.unit_action(unit, action, Some(wrong)).await, 401);
            // The token's prefix, or the token in another scheme, is no token.
            assert_eq!(
                gw.unit_action(unit, action, Some(&ADMIN_TOKEN[..40])).await,
                401
            );
            attempts += 3;
        }
    }
    // Without the token nothing about the port is revealed: unknown paths answer 401 too.
    let probe = reqwest::Client::new()
        .get(format!("http://{}/anything", gw.control))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 401);
    attempts += 1;
    let basic = reqwest::Client::new()
        .post(format!("http://{}/units/web-0/disable", gw.control))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert!(
        basic.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    attempts += 1;
    // The read-only port has no action routes.
    let read_only = reqwest::Client::new()
        .post(format!("http://{}/units/web-0/disable", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(read_only.status().as_u16(), 404 | 405),
        "{}",
        read_only.status()
    );

    for unit in ["web-0", "web-1"] {
        assert_eq!(gw.unit_status(unit).await["admin"], "enabled", "{unit}");
    }
    for _ in 0..20 {
        let p = Browser::new().get(&gw.url("/")).await;
        assert_eq!(p.status, 200, "honest traffic goes on");
    }
    assert_eq!(
        gw.metric("stickyfarm_gateway_control_refused_total", "")
            .await,
        attempts as f64
    );
    assert!(
        !gw.log_text().contains(wrong) && !gw.log_text().contains(ADMIN_TOKEN),
        "tokens are never logged"
    );

    // The right token acts.
    assert_eq!(gw.admin("web-0", "disable").await, 204);
    assert_eq!(gw.unit_status("web-0").await["admin"], "disabled");
    for _ in 0..10 {
        assert_eq!(
            Browser::new().get(&gw.url("/")).await.json()["unit"],
            "web-1"
        );
    }
}

/// A secure farm's routing cookie is `__Host-sf_unit`; a bare `sf_unit` (which a sibling
/// subdomain could plant) routes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_routing_cookies_are_host_only() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let gw = GatewayProc::start(
        &[a.flag(), b.flag()],
        &["--slow-start", "0s", "--cookie-secure", "true"],
    )
    .await;
    gw.wait_up(2).await;
    let first = Browser::new().get(&gw.url("/")).await;
    let set = first.set_cookies();
    let routing = set
        .iter()
        .find(|c| c.starts_with("__Host-sf_unit="))
        .unwrap_or_else(|| panic!("no __Host-sf_unit in {set:?}"));
    assert!(
        routing.contains("Secure") && routing.contains("Path=/") && !routing.contains("Domain")
    );

    let mut pinned = Browser::new();
    pinned
        .cookies
        .insert("__Host-sf_unit".into(), "web-1".into());
    for _ in 0..10 {
        let p = pinned.get(&gw.url("/")).await;
        assert_eq!(p.json()["unit"], "web-1");
        assert!(
            p.set_cookies().is_empty(),
            "already routed: {:?}",
            p.set_cookies()
        );
    }
    let mut planted = Browser::new();
    planted.cookies.insert("sf_unit".into(), "web-1".into());
    let p = planted.get(&gw.url("/")).await;
    assert!(
        p.set_cookies()
            .iter()
            .any(|c| c.starts_with("__Host-sf_unit=")),
        "a bare sf_unit is no routing cookie: the client is routed afresh"
    );
}

/// Without an admin token file the control port is not opened: no credential, no actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_unit_actions_are_off() {
    use clap::Parser as _;
    let a = FakeUnit::start("web-0").await;
    let config = stickyfarm_gateway::config::Config::try_parse_from([
        "stickyfarm-gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--control-listen",
        "127.0.0.1:0",
        "--unit",
        &a.flag(),
    ])
    .unwrap();
    let gw = stickyfarm_gateway::Gateway::start(config).await.unwrap();
    assert_eq!(gw.control_addr, None);
    gw.shutdown().await;

    // A token file that could be guessed is refused at start, naming the file, not the content.
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("admin-token");
    std::fs::write(&weak, "admin\n").unwrap();
    let config = stickyfarm_gateway::config::Config::try_parse_from([
        "stickyfarm-gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        weak.to_str().unwrap(),
        "--unit",
        &a.flag(),
    ])
    .unwrap();
    let e = stickyfarm_gateway::Gateway::start(config)
        .await
        .err()
        .expect("a weak token is refused")
        .to_string();
    assert!(e.contains("admin-token") && e.contains("too short"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_failback_sends_clients_home_once_their_unit_recovers() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let gw = GatewayProc::start(&[a.flag(), b.flag()], &["--failback", "return"]).await;
    gw.wait_up(2).await;
    let mut client = Browser::new();
    client.cookies.insert("sf_unit".into(), "web-0".into());
    client.cookies.insert(
        "sf_session".into(),
        stickyfarm_api::SessionId::generate().to_string(),
    );
    assert_eq!(gw.admin("web-0", "disable").await, 204);
    for _ in 0..5 {
        let p = client.get(&gw.url("/")).await;
        assert_eq!(p.json()["unit"], "web-1");
        // Links still name the home unit, and the cookie is not changed.
        assert_eq!(
            p.json()["headers"]["x-stickyfarm-unit-url"],
            format!("http://{}/_unit/web-0", gw.addr)
        );
        assert!(p.set_cookies().iter().all(|c| !c.starts_with("sf_unit=")));
    }
    assert_eq!(gw.admin("web-0", "enable").await, 204);
    assert_eq!(client.get(&gw.url("/")).await.json()["unit"], "web-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_method_rules() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    // Short ejections: this test is about which requests are replayed, not how long units stay out.
    let gw = GatewayProc::start(
        &[a.flag(), b.flag()],
        &["--rise", "1", "--ejection-time", "1s"],
    )
    .await;
    gw.wait_up(2).await;
    let client = reqwest::Client::new();

    // A POST that reached the unit, which then dropped the connection: not replayed.
    let r = client
        .post(gw.url("/_unit/web-0/reset"))
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(a.count("POST"), 1);
    assert_eq!(
        b.count("POST"),
        0,
        "a non-idempotent request is never replayed"
    );
    gw.wait_up(2).await; // the passive failure took web-0 out; its checks bring it back

    // A GET after the same failure is retried on a backup.
    let r = client
        .get(gw.url("/_unit/web-0/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "the backup resets too: /reset is reset everywhere"
    );
    assert_eq!(a.count("GET"), 1);
    assert_eq!(
        b.count("GET"),
        1,
        "an idempotent request is retried on a backup"
    );
    gw.wait_up(2).await;

    // A unit that stopped accepting connections: even a POST goes to a backup, since
    // nothing was sent.
    a.stop();
    let r = client
        .post(gw.url("/_unit/web-0/order"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["unit"], "web-1");
    assert_eq!(echo["body_len"], 1);
    assert_eq!(gw.unit_status("web-0").await["state"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_behind_a_unit_is_recorded_as_replaced() {
    let a = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(&[a.flag()], &[]).await;
    gw.wait_up(1).await;
    let first = a.instance.lock().unwrap().clone();
    eventually(Duration::from_secs(5), "instance recorded", || async {
        gw.unit_status("web-0").await["instance"] == first.as_str()
    })
    .await;
    let second = uuid::Uuid::new_v4().to_string();
    *a.instance.lock().unwrap() = second.clone();
    eventually(Duration::from_secs(5), "replacement recorded", || async {
        gw.unit_status("web-0").await["instance"] == second.as_str()
    })
    .await;
    assert_eq!(
        gw.metric("stickyfarm_gateway_unit_replacements_total", "web-0")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_replicas_route_a_session_to_the_same_unit_and_speak_http2() {
    let units = [
        FakeUnit::start("web-0").await,
        FakeUnit::start("web-1").await,
        FakeUnit::start("web-2").await,
    ];
    let flags: Vec<String> = units.iter().map(FakeUnit::flag).collect();
    let g1 = GatewayProc::start(&flags, &[]).await;
    let g2 = GatewayProc::start(&flags, &[]).await;
    g1.wait_up(3).await;
    g2.wait_up(3).await;
    for _ in 0..10 {
        let mut b = Browser::new();
        let home = b.get(&g1.url("/")).await.json()["unit"].clone();
        for _ in 0..5 {
            assert_eq!(b.get(&g2.url("/")).await.json()["unit"], home);
            assert_eq!(b.get(&g1.url("/")).await.json()["unit"], home);
        }
    }
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(g1.url("/_unit/web-2/x")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["unit"], "web-2");
    assert_eq!(echo["headers"]["host"], g1.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_file_changes_apply_without_a_restart() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("units.yaml");
    std::fs::write(
        &file,
        format!("units:\n  - name: web-0\n    address: \"{}\"\n", a.addr),
    )
    .unwrap();
    let gw = GatewayProc::start(&[], &["--units-file", file.to_str().unwrap()]).await;
    gw.wait_up(1).await;
    std::fs::write(
        &file,
        format!(
            "units:\n  - name: web-1\n    address: \"{}\"\n  - name: web-0\n    address: \"{}\"\n    admin: draining\n",
            b.addr, a.addr
        ),
    )
    .unwrap();
    gw.wait_up(2).await;
    assert_eq!(gw.unit_status("web-0").await["admin"], "draining");
    // A broken file is reported and the last good list stays.
    std::fs::write(&file, "units: [ {name: BAD").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.status().await["units"].as_array().unwrap().len(), 2);
    assert!(gw.log_text().contains("keeping the last good unit list"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_style_unit_addresses() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let gw = GatewayProc::start(
        &[a.flag(), b.flag()],
        &["--farm-host", "shop.test", "--unit-addressing", "host"],
    )
    .await;
    gw.wait_up(2).await;
    let port = gw.addr.port();
    for unit in ["web-0", "web-1", "web-1", "web-0"] {
        let req = format!(
            "GET /cart HTTP/1.1\r\nHost: {unit}.shop.test:{port}\r\nConnection: close\r\n\r\n"
        );
        let r = raw_http(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(echo["unit"], unit);
        assert_eq!(echo["path"], "/cart");
        assert_eq!(
            echo["headers"]["x-stickyfarm-unit-url"],
            format!("http://{unit}.shop.test:{port}")
        );
    }
    // A host under the farm host that names no unit, from a new client: 404.
    let req =
        format!("GET / HTTP/1.1\r\nHost: web-7.shop.test:{port}\r\nConnection: close\r\n\r\n");
    let r = raw_http(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_stops() {
    let a = FakeUnit::start("web-0").await;
    let mut gw = GatewayProc::start(&[a.flag()], &[]).await;
    gw.wait_up(1).await;
    let url = gw.url("/slow");
    let slow = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = gw.addr;
    let exited = tokio::task::spawn_blocking(move || gw.terminate(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request completes"
    );
    assert!(exited, "exit 0 after SIGTERM");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_unit_list_and_kubernetes_discovery_needs_its_farm() {
    // Static discovery publishes at once: ready.
    let unit = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(&[format!("web-0={}", unit.addr)], &[]).await;
    let ready = reqwest::get(format!("http://{}/readyz", gw.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Kubernetes discovery without a farm: refused with the flags to give.
    let out = std::process::Command::new(binary("stickyfarm-gateway"))
        .args(["--discovery", "kubernetes", "--listen", "127.0.0.1:0"])
        .env_remove("STICKYFARM_FARM")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--farm and --namespace"), "{err}");

    // An API server that does not answer: the gateway serves its admin port but is not
    // ready, and says why.
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{dead}'}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u, namespace: shop}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut cmd = std::process::Command::new(binary("stickyfarm-gateway"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args([
            "--discovery",
            "kubernetes",
            "--farm",
            "shop",
            "--namespace",
            "shop",
        ])
        .env("KUBECONFIG", &kubeconfig);
    let proc = ChildProc::spawn("gateway-k8s", cmd);
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    eventually(
        Duration::from_secs(20),
        "the admin port answers",
        || async { reqwest::get(&readyz).await.is_ok() },
    )
    .await;
    let answer = reqwest::get(&readyz).await.unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.text().await.unwrap(), "waiting for the unit list\n");
    eventually(
        Duration::from_secs(20),
        "the failed watch is logged",
        || async { proc.log_text().contains("watching EndpointSlices failed") },
    )
    .await;
}

/// An attacker who finds requests the app answers with 5xx (or an app that forges the
/// sidecar's unit-unavailable signal) takes no unit out: only connection failures and the
/// sidecar's own signal do. Checks are made rare, so only passive detection could act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_5xx_and_forged_signals_eject_no_unit() {
    let db = TestDb::new().await;
    let units = three_units(&db).await;
    let gw = GatewayProc::start(&unit_flags(&units), &["--check-interval", "60s"]).await;
    gw.wait_up(3).await;
    let mut shopper = Browser::new();
    let home = shopper.get(&gw.url("/echo")).await.json()["x-stickyfarm-unit"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        shopper
            .post(&gw.url(&format!("/_unit/{home}/cart/add?item=fig")))
            .await
            .status,
        200
    );

    // A bounded burst: 40 cookieless requests (spread over every unit) and 40 aimed at one
    // unit, all answered 500 by the app, then 20 forged unit-unavailable answers on that unit.
    let client = reqwest::Client::new();
    for i in 0..80 {
        let path = if i % 2 == 0 {
            "/fail".to_owned()
        } else {
            format!("/_unit/{home}/fail")
        };
        let r = client.get(gw.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 500, "the app's answer reaches the client");
    }
    for _ in 0..20 {
        let r = client
            .get(gw.url(&format!("/_unit/{home}/forged-unavailable")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(
            !r.headers().contains_key("x-stickyfarm-unit-unavailable"),
            "the signal never reaches a client"
        );
    }
    for u in &units {
        let status = gw.unit_status(&u.sidecar.unit).await;
        assert_eq!(status["state"], "up", "{status}");
    }
    // Honest traffic goes on where it was.
    let cart = shopper.get(&gw.url(&format!("/_unit/{home}/cart"))).await;
    assert_eq!(cart.status, 200, "{}", cart.body);
    assert_eq!(cart.json()["unit"], home.as_str());
    assert_eq!(cart.json()["items"], json!(["fig"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_whose_app_is_gone_fails_over_what_never_reached_the_app() {
    // What a terminating pod looks like for a moment: the app stopped, its sidecar still runs.
    // Health checks are made rare so that the requests, not a check, find the dead apps.
    let db = TestDb::new().await;
    let units = three_units(&db).await;
    let gw = GatewayProc::start(&unit_flags(&units), &["--check-interval", "60s"]).await;
    gw.wait_up(3).await;
    let (mut b, home) = gw.shopper("fig").await;
    let victim = units.iter().find(|u| u.sidecar.unit == home).unwrap();
    victim.app.stop();

    // The sidecar says so itself, with the marker the gateway acts on, once the app's
    // graceful stop has reached its open connections (a moment under load).
    eventually(
        Duration::from_secs(5),
        "the sidecar sees its app gone",
        || async {
            let direct = reqwest::get(victim.sidecar.url("/echo")).await.unwrap();
            direct.status() == 503
                && direct
                    .headers()
                    .get("x-stickyfarm-unit-unavailable")
                    .is_some_and(|v| v == "app")
        },
    )
    .await;

    // A GET is replayed on a backup, with the session intact, and the unit is taken out.
    let cart = b.get(&gw.url(&format!("/_unit/{home}/cart"))).await;
    assert_eq!(cart.status, 200, "{}", cart.body);
    let cart = cart.json();
    assert_ne!(cart["unit"], home.as_str(), "a backup answered");
    assert_eq!(cart["items"], json!(["fig"]));
    assert_eq!(gw.unit_status(&home).await["state"], "down");

    // A POST with a body the gateway held (at most --replay-body-max) never reached the
    // stopped app either: it goes to the one unit left, with the session, whatever its method.
    // This is what a shopper meets in a rolling update when the pod's app stops first.
    let backup = cart["unit"].as_str().unwrap().to_owned();
    let other = units
        .iter()
        .find(|u| u.sidecar.unit != home && u.sidecar.unit != backup)
        .unwrap();
    other.app.stop();
    let add = b
        .send(
            reqwest::Method::POST,
            &gw.url(&format!("/_unit/{}/cart/add?item=plum", other.sidecar.unit)),
            Some(&json!({"note": "a small body the gateway holds"})),
        )
        .await;
    assert_eq!(add.status, 200, "{}", add.body);
    let cart = b.get(&gw.url(&format!("/_unit/{backup}/cart"))).await;
    assert_eq!(cart.json()["unit"], backup.as_str());
    assert_eq!(cart.json()["items"], json!(["fig", "plum"]), "added once");

    // A body larger than --replay-body-max streams and is not held, so it cannot be replayed:
    // a clear 503 that says it did not reach the app, never a silent loss.
    let resp = reqwest::Client::new()
        .post(gw.url(&format!("/_unit/{}/cart/add?item=pear", other.sidecar.unit)))
        .body("x".repeat(128 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("did not reach it"), "{body}");
    // One of three units is out already: the ejection cap (50 %, at least one) keeps the
    // second in service; its active checks, not requests, take it out.
    assert_eq!(gw.unit_status(&other.sidecar.unit).await["state"], "up");
    assert!(
        gw.metric("stickyfarm_gateway_ejections_refused_total", "")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_eject_units_but_never_more_than_the_cap() {
    // An attacker who found a slow page makes every unit time out in turn. Timeouts in a row
    // are passive failures, but passive detection stops at half the farm and the rest serve.
    let fakes = [
        FakeUnit::start("web-0").await,
        FakeUnit::start("web-1").await,
        FakeUnit::start("web-2").await,
        FakeUnit::start("web-3").await,
    ];
    let flags: Vec<String> = fakes.iter().map(FakeUnit::flag).collect();
    let gw = GatewayProc::start(
        &flags,
        &[
            "--upstream-timeout",
            "300ms",
            "--timeouts-to-eject",
            "2",
            "--ejection-time",
            "60s",
            "--max-retries",
            "0",
        ],
    )
    .await;
    gw.wait_up(4).await;
    let client = reqwest::Client::new();
    for unit in ["web-0", "web-1", "web-2", "web-3"] {
        for _ in 0..2 {
            let r = client
                .get(gw.url(&format!("/_unit/{unit}/slow")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 504);
        }
    }
    let states: BTreeMap<String, String> = gw.status().await["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let down = states.values().filter(|s| *s == "down").count();
    assert_eq!(down, 2, "at most half the units are ejected: {states:?}");
    assert_eq!(states["web-0"], "down", "the first timeouts eject");
    let ejected = gw.unit_status("web-0").await;
    assert_eq!(ejected["ejections"], 1);
    assert!(
        ejected["ejected_until_unix_ms"].as_u64().is_some(),
        "{ejected}"
    );
    assert!(
        gw.metric("stickyfarm_gateway_ejections_refused_total", "")
            .await
            >= 1.0
    );

    // Honest shoppers are served by the units still in service.
    for _ in 0..20 {
        let r = client.get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        let unit = echo["unit"].as_str().unwrap();
        assert_eq!(states[unit], "up", "{unit} answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookieless_requests_store_nothing_until_a_shopper_writes() {
    // A crawler or a flood of cookieless requests once inserted a session row each.
    let db = TestDb::new().await;
    let units = three_units(&db).await;
    // From one address: the new-session limit (its own test) is off here.
    let gw = GatewayProc::start(&unit_flags(&units), &["--new-session-rate", "0"]).await;
    gw.wait_up(3).await;
    let mut cache_before = 0.0;
    for u in &units {
        cache_before += u
            .sidecar
            .metric("stickyfarm_sidecar_cache_memory_bytes", "")
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut flood = Vec::new();
    for _ in 0..4 {
        let url = gw.url("/echo");
        flood.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for _ in 0..1250 {
                assert!(Instant::now() < deadline, "the flood took too long");
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                assert!(
                    r.headers()
                        .get_all("set-cookie")
                        .iter()
                        .any(|c| c.to_str().unwrap().starts_with("sf_session=")),
                    "each still gets a session cookie"
                );
            }
        }));
    }
    for f in flood {
        f.await.unwrap();
    }
    assert_eq!(db.session_count().await, 0, "5,000 requests, no row");
    let (mut issued, mut created, mut cache_after) = (0.0, 0.0, 0.0);
    for u in &units {
        issued += u
            .sidecar
            .metric("stickyfarm_sidecar_sessions_issued_total", "")
            .await;
        created += u
            .sidecar
            .metric("stickyfarm_sidecar_sessions_created_total", "")
            .await;
        cache_after += u
            .sidecar
            .metric("stickyfarm_sidecar_cache_memory_bytes", "")
            .await;
    }
    assert!(issued >= 5000.0, "{issued}");
    assert_eq!(created, 0.0);
    assert_eq!(cache_after, cache_before, "and no cache entry");

    // A shopper's first cart write stores exactly one session, under the id it was given.
    let mut shopper = Browser::new();
    let home = shopper.get(&gw.url("/echo")).await.json()["x-stickyfarm-unit"]
        .as_str()
        .unwrap()
        .to_owned();
    let sid = shopper.cookie("sf_session").unwrap().to_owned();
    let p = shopper
        .post(&gw.url(&format!("/_unit/{home}/cart/add?item=fig")))
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(db.session_count().await, 1);
    assert!(db.session_exists(&sid).await);
    assert_eq!(db.table(&sid, "cart").await, Some((1, json!(["fig"]))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_mint_sessions_while_shoppers_go_on() {
    let a = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(
        &[a.flag()],
        &["--new-session-rate", "5", "--new-session-burst", "10"],
    )
    .await;
    gw.wait_up(1).await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    // A shopper (127.0.0.3) with a session before the flood starts.
    let shopper = from([127, 0, 0, 3]);
    let session = stickyfarm_api::SessionId::generate().to_string();
    let cookie = format!("sf_session={session}; sf_unit=web-0");

    // The attacker (127.0.0.2): 200 cookieless requests as fast as it can.
    let attacker = from([127, 0, 0, 2]);
    let mut codes = BTreeMap::<u16, usize>::new();
    for _ in 0..200 {
        let r = attacker.get(gw.url("/")).send().await.unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
        }
        *codes.entry(r.status().as_u16()).or_default() += 1;
        // The shopper's requests carry a session: never limited.
        let s = shopper
            .get(gw.url("/cart"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(s.status(), 200);
    }
    let served = codes.get(&200).copied().unwrap_or(0);
    assert!(
        (10..40).contains(&served),
        "the burst and a few refills are served, the rest refused: {codes:?}"
    );
    assert_eq!(
        served + codes.get(&429).copied().unwrap_or(0),
        200,
        "{codes:?}"
    );
    // Another address starts its session at once.
    let newcomer = from([127, 0, 0, 4]).get(gw.url("/")).send().await.unwrap();
    assert_eq!(newcomer.status(), 200);
    assert!(
        gw.metric("stickyfarm_gateway_refused_total", "new_session_rate")
            .await
            >= 160.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_host_cannot_poison_the_links_the_app_builds() {
    let a = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(
        &[a.flag()],
        &["--public-host", "shop.example,www.shop.example:8443"],
    )
    .await;
    gw.wait_up(1).await;
    let unit_url = |host: &'static str| {
        let url = gw.url("/");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .header("host", host)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let echo: serde_json::Value = r.json().await.unwrap();
            echo["headers"]["x-stickyfarm-unit-url"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        unit_url("www.shop.example:8443").await,
        "http://www.shop.example:8443/_unit/web-0",
        "each public host keeps its own links"
    );
    for forged in ["evil.example", "shop.example.evil.example", "127.0.0.1:1"] {
        assert_eq!(
            unit_url(forged).await,
            "http://shop.example/_unit/web-0",
            "Host: {forged} gets the configured links"
        );
    }
    // A malformed public host is refused at start, with the flag named.
    let out = std::process::Command::new(binary("stickyfarm-gateway"))
        .args([
            "--public-host",
            "user@evil.example",
            "--unit",
            "web-0=127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--public-host"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_health_check_is_not_reachable_through_the_gateway() {
    let db = TestDb::new().await;
    let unit = Unit::start("web-0", &db.url, &[]).await;
    let gw = GatewayProc::start(&unit_flags(std::slice::from_ref(&unit)), &[]).await;
    gw.wait_up(1).await;
    let client = reqwest::Client::new();
    for path in [
        "/_stickyfarm/health",
        "/_unit/web-0/_stickyfarm/health",
        "/%5fstickyfarm/health",
        "/_unit/web-0/%5Fstickyfarm/health",
        "/_STICKYFARM/health",
    ] {
        let r = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("instance"), "{path}: {body}");
    }
    assert!(
        gw.metric("stickyfarm_gateway_refused_total", "internal_path")
            .await
            >= 5.0
    );
    // The gateway's own checks reach it on the unit's port, and shoppers are served.
    assert_eq!(gw.unit_status("web-0").await["state"], "up");
    assert_eq!(
        client.get(gw.url("/echo")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_writes_are_replayed_when_their_unit_dies_and_others_are_not() {
    let a = FakeUnit::start("web-0").await;
    let b = FakeUnit::start("web-1").await;
    let gw = GatewayProc::start(
        &[a.flag(), b.flag()],
        &[
            "--rise",
            "1",
            "--ejection-time",
            "1s",
            "--replay-body-max",
            "1KiB",
        ],
    )
    .await;
    gw.wait_up(2).await;
    let client = reqwest::Client::new();
    // web-0 dies in the middle of each request (it reset the connection after reading it).
    for (method, body_len) in [(reqwest::Method::PUT, 300), (reqwest::Method::DELETE, 20)] {
        let r = client
            .request(
                method.clone(),
                gw.url("/_unit/web-0/reset-on/web-0/cart/items/tea"),
            )
            .body("x".repeat(body_len))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method} is replayed on the backup");
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["unit"], "web-1");
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["body_len"], body_len, "the same body, in full");
        assert_eq!(a.count(method.as_str()), 1);
        assert_eq!(b.count(method.as_str()), 1);
        gw.wait_up(2).await;
    }
    // Not idempotent and it reached the app (held or not): never replayed, a clear 502.
    let r = client
        .post(gw.url("/_unit/web-0/reset-on/web-0/checkout"))
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(b.count("POST"), 0);
    gw.wait_up(2).await;
    // Idempotent but over --replay-body-max: streamed, so not replayed either.
    let r = client
        .put(gw.url("/_unit/web-0/reset-on/web-0/upload"))
        .body("x".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(b.count("PUT"), 1, "only the small PUT reached the backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_a_body_leaves_the_connection_usable() {
    let a = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(&[a.flag()], &["--max-body-size", "1KiB"]).await;
    gw.wait_up(1).await;
    // One client, one keep-alive connection at a time: each refusal is followed by a request
    // that must be answered, not fail on what was left of the refused body.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for i in 0..20 {
        let refused = match i % 2 {
            // No such unit for a client without a session: refused before the body is read.
            0 => client
                .post(gw.url("/_unit/nobody/cart"))
                .body(vec![b'x'; 64 * 1024 + i])
                .send()
                .await
                .unwrap(),
            // A malformed unit address.
            _ => client
                .put(gw.url("/_unit/Not_A_Unit/cart"))
                .body(vec![b'y'; 8192 + i])
                .send()
                .await
                .unwrap(),
        };
        assert!(refused.status().is_client_error(), "{}", refused.status());
        assert_eq!(refused.headers()["connection"], "close");
        let next = client.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(next.status(), 200, "round {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_oversized_heads_are_cut_off_while_shoppers_are_served() {
    let a = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(&[a.flag()], &["--header-read-timeout", "3s"]).await;
    gw.wait_up(1).await;
    let client = reqwest::Client::new();
    // A returning shopper (a session cookie), so the new-session limit plays no part.
    let cookie = format!(
        "sf_session={}; sf_unit=web-0",
        stickyfarm_api::SessionId::generate()
    );
    let timed_gets = |n: usize| {
        let (client, url, cookie) = (client.clone(), gw.url("/echo"), cookie.clone());
        async move {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let r = client
                    .get(&url)
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "an honest request is served");
                r.bytes().await.unwrap();
                samples.push(started.elapsed());
            }
            samples
        }
    };
    let quiet = p99_ms(&mut timed_gets(200).await);

    // 500 slowloris connections for at most 30 s, and a shopper meanwhile.
    let attack = tokio::spawn(slowloris(gw.addr, 500, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let under_attack = p99_ms(&mut timed_gets(200).await);
    let cut = attack.await.unwrap();
    eprintln!(
        "shopper p99: quiet {quiet:.2} ms, under 500 slowloris connections {under_attack:.2} ms"
    );
    assert_eq!(
        cut, 500,
        "every slowloris connection is cut off by the header deadline"
    );

    // Oversized heads: 431 on the public port and on the admin port.
    let big = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    for addr in [gw.addr, gw.admin] {
        let answer = raw_http(addr, big.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{addr}: {answer:.80}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_clients_wait_for_a_slot() {
    let a = FakeUnit::start("web-0").await;
    let gw = GatewayProc::start(
        &[a.flag()],
        &["--max-connections", "20", "--header-read-timeout", "2s"],
    )
    .await;
    gw.wait_up(1).await;
    // 40 idle connections: 20 get a slot, 20 wait in the accept queue.
    let hold = tokio::spawn(slowloris(gw.addr, 40, Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A shopper is served once slots free up (the header deadline ends the idle ones).
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(gw.url("/echo"))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the shopper waited for a slot: the cap holds ({:?})",
        started.elapsed()
    );
    assert_eq!(
        hold.await.unwrap(),
        40,
        "every held connection is cut off in the end"
    );
}

/// A request can be followed: the client's valid `x-request-id` (or a new one) reaches the app
/// through gateway and sidecar, comes back to the client, and names the request's log lines in
/// both; a forged one (a newline, a quote, too long) is replaced, never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_kept_or_made_and_follows_the_request_through_both_hops() {
    let db = TestDb::new().await;
    let unit = Unit::start(
        "web-0",
        &db.url,
        &[
            "--log-filter",
            "stickyfarm_sidecar=debug,info",
            "--log-format",
            "json",
        ],
    )
    .await;
    let gw = GatewayProc::start(
        &[format!("web-0={}", unit.sidecar.public)],
        &["--log-filter", "debug", "--log-format", "json"],
    )
    .await;
    gw.wait_up(1).await;
    let client = reqwest::Client::new();

    let sent = "9b1c7e0a-3f11-4c55-a0de-5c2f1e4b7d10";
    let r = client
        .get(gw.url("/echo"))
        .header("x-request-id", sent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], sent);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["x-request-id"],
        sent
    );

    for forged in ["a\"b", "x".repeat(129).as_str(), "two words"] {
        let r = client
            .get(gw.url("/echo"))
            .header("x-request-id", forged)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, forged);
        assert_eq!(id.len(), 32);
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["x-request-id"],
            id
        );
    }
    let none = client.get(gw.url("/echo")).send().await.unwrap();
    let made = none.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        none.json::<serde_json::Value>().await.unwrap()["x-request-id"],
        made
    );

    // The request's log lines name its id, in the gateway and in the sidecar.
    let failing = "trace-me-0001";
    let r = client
        .get(gw.url("/_unit/web-0/cart"))
        .header("x-request-id", failing)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], failing);
    let lines_naming = |log: String| -> usize {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["span"]["request_id"] == failing)
            .count()
    };
    eventually(
        Duration::from_secs(5),
        "log lines name the request",
        || async { lines_naming(gw.log_text()) >= 1 && lines_naming(unit.sidecar.log_text()) >= 1 },
    )
    .await;
    for log in [gw.log_text(), unit.sidecar.log_text()] {
        assert!(!log.contains("two words") && !log.contains("a\\\"b"));
    }
    // Every component says what it is and which version it runs.
    assert_eq!(
        gw.metric("stickyfarm_build_info", "component=\"gateway\"")
            .await,
        1.0
    );
    assert_eq!(
        unit.sidecar
            .metric("stickyfarm_build_info", "component=\"sidecar\"")
            .await,
        1.0
    );
}

/// `--access-log json`: one line per request when its answer ends, with the unit, the keyed
/// session hash (never the id), bytes, durations, failover; the gateway's own refusals too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_and_no_credential() {
    let db = TestDb::new().await;
    let units = [
        Unit::start("web-0", &db.url, &[]).await,
        Unit::start("web-1", &db.url, &[]).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = GatewayProc::start(
        &unit_flags(&units),
        &[
            "--access-log",
            "json",
            "--access-log-path",
            path.to_str().unwrap(),
            "--slow-start",
            "0s",
        ],
    )
    .await;
    gw.wait_up(2).await;

    let (mut b, home) = gw.shopper("pear").await;
    let sid = b.cookie("sf_session").unwrap().to_owned();
    let r = reqwest::Client::new()
        .get(gw.url("/cart?token=secret-in-query"))
        .header("cookie", b.cookie_header())
        .header("x-request-id", "cart-read-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body_len = r.bytes().await.unwrap().len() as u64;
    let refused = b.get(&gw.url("/_stickyfarm/health")).await;
    assert_eq!(refused.status, 404);
    assert_eq!(gw.admin(&home, "disable").await, 204);
    let moved = b.get(&gw.url("/cart")).await;
    assert_eq!(moved.status, 200);

    let read_lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    };
    eventually(Duration::from_secs(5), "five lines", || async {
        read_lines().len() >= 5
    })
    .await;
    let lines = read_lines();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&sid), "no session id in the access log");
    assert!(!text.contains("secret-in-query"), "no query by default");

    let cart = lines
        .iter()
        .find(|l| l["request_id"] == "cart-read-1")
        .expect("the cart read's line");
    assert_eq!(cart["path"], "/cart");
    assert_eq!(cart["method"], "GET");
    assert_eq!(cart["status"], 200);
    assert_eq!(cart["unit"], home.as_str());
    assert_eq!(cart["client"], "127.0.0.1");
    assert_eq!(cart["bytes_out"], body_len);
    assert_eq!(cart["failed_over"], false);
    assert_eq!(cart["retried"], 0);
    assert!(cart["instance"].as_str().is_some_and(|i| i.len() == 36));
    let session = cart["session"].as_str().unwrap();
    assert_eq!(session.len(), 16);
    assert!(cart["duration_ms"].as_f64().unwrap() >= cart["upstream_ms"].as_f64().unwrap());
    // The same session hashes alike on every line of this gateway.
    let added_line = lines
        .iter()
        .find(|l| l["path"] == format!("/_unit/{home}/cart/add"))
        .unwrap();
    assert_eq!(added_line["session"], session);
    assert_eq!(added_line["method"], "POST");

    let refusal = lines
        .iter()
        .find(|l| l["path"] == "/_stickyfarm/health")
        .unwrap();
    assert_eq!(refusal["status"], 404);
    assert!(refusal["unit"].is_null() && refusal["upstream_ms"].is_null());

    let failover = lines.last().unwrap();
    assert_eq!(failover["failed_over"], true);
    assert_ne!(failover["unit"], home.as_str());
    assert_eq!(failover["session"], session);

    // The same requests in the histograms: whole requests by unit and status class, new
    // connections by unit, and at the home unit's sidecar the app's session-API calls (the
    // cart's read and write) by method and route.
    let home_2xx = format!("unit=\"{home}\",class=\"2xx\"");
    assert!(
        gw.metric("stickyfarm_gateway_request_seconds_count", &home_2xx)
            .await
            >= 3.0
    );
    assert!(
        gw.metric(
            "stickyfarm_gateway_connect_seconds_count",
            &format!("unit=\"{home}\"")
        )
        .await
            >= 1.0
    );
    let home_unit = units.iter().find(|u| u.sidecar.unit == home).unwrap();
    for method in ["GET", "PUT"] {
        let labels = format!(
            "method=\"{method}\",route=\"/v1/sessions/{{id}}/tables/{{table}}\",class=\"2xx\""
        );
        assert!(
            home_unit
                .sidecar
                .metric("stickyfarm_sidecar_session_api_seconds_count", &labels)
                .await
                >= 1.0,
            "{labels}"
        );
    }
}
