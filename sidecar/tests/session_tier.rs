//! The session tier against real PostgreSQL, the real sidecar binary and real sockets.

use std::time::Duration;

use serde_json::json;
use stickyfarm_testkit::*;

async fn put_cart(
    client: &reqwest::Client,
    unit: &Unit,
    session: &str,
    items: serde_json::Value,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .put(
            unit.sidecar
                .api_url(&format!("/v1/sessions/{session}/tables/cart")),
        )
        .json(&items);
    if let Some(m) = if_match {
        req = req.header("if-match", m);
    }
    req.send().await.unwrap()
}

async fn get_cart(client: &reqwest::Client, unit: &Unit, session: &str) -> reqwest::Response {
    client
        .get(
            unit.sidecar
                .api_url(&format!("/v1/sessions/{session}/tables/cart")),
        )
        .send()
        .await
        .unwrap()
}

/// Reads one request head (up to its blank line) from a raw app's connection, byte by byte so
/// that nothing of the next request is taken; `None` when the sidecar closed it first.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A raw app on loopback, without an HTTP library, so a test sees the bytes the sidecar sends:
/// `serve` handles each connection it accepts on a task of its own. Abort the handle to stop it.
async fn raw_app<F, Fut>(serve: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn));
        }
    });
    (addr, server)
}

/// A sidecar (unit `web-0`, on a database of its own) in front of `app`, with `extra` flags.
async fn sidecar_in_front_of(app: std::net::SocketAddr, extra: &[&str]) -> (TestDb, SidecarProc) {
    let db = TestDb::new().await;
    let sidecar = SidecarProc::start(SidecarSpec {
        unit: "web-0",
        database_url: &db.url,
        app,
        extra: extra.iter().map(|s| s.to_string()).collect(),
        instance: None,
    })
    .await;
    (db, sidecar)
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_is_stored_on_its_first_write_and_then_served_from_the_cache() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let mut browser = Browser::new();

    let first = browser.get(&a.sidecar.url("/echo")).await;
    assert_eq!(first.status, 200);
    let cookies = first.set_cookies();
    for name in ["sf_session=", "sf_instance=", "sf_gen="] {
        let c = cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} cookie"));
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("Path=/"),
            "{c}"
        );
        assert!(!c.contains("Secure"), "Secure is off by default: {c}");
    }
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    assert_eq!(
        browser.cookie("sf_instance"),
        Some(a.sidecar.instance.as_str())
    );
    let seen = first.json();
    assert_eq!(seen["x-stickyfarm-session"], sid.as_str());
    assert_eq!(seen["x-stickyfarm-unit"], "web-0");
    assert_eq!(seen["x-stickyfarm-unit-url"], "/_unit/web-0");
    assert_eq!(seen["x-stickyfarm-instance"], a.sidecar.instance.as_str());
    // Nothing is stored for a session without state; the next requests keep the same id and
    // do not ask PostgreSQL (the unit knows it never wrote that session).
    assert!(!db.session_exists(&sid).await);
    let loads = || {
        a.sidecar
            .metric("stickyfarm_sidecar_db_queries_total", "op=\"load_session\"")
    };
    let loads_before_browsing = loads().await;
    for _ in 0..5 {
        let again = browser.get(&a.sidecar.url("/echo")).await;
        assert_eq!(again.json()["x-stickyfarm-session"], sid.as_str());
        assert!(
            again
                .set_cookies()
                .iter()
                .all(|c| !c.starts_with("sf_session="))
        );
    }
    assert_eq!(
        loads().await,
        loads_before_browsing,
        "browsing without state costs no query"
    );

    // The app writes the cart through the session API: the first write stores the session.
    let client = reqwest::Client::new();
    let w = put_cart(&client, &a, &sid, json!(["apple"]), Some("\"0\"")).await;
    assert_eq!(w.status(), 201);
    assert!(db.session_exists(&sid).await);
    assert_eq!(w.headers()["etag"], "\"1\"");
    assert_eq!(db.table(&sid, "cart").await, Some((1, json!(["apple"]))));

    let loads_before = a
        .sidecar
        .metric("stickyfarm_sidecar_db_queries_total", "op=\"load_session\"")
        .await;
    let hits_before = a
        .sidecar
        .metric("stickyfarm_sidecar_cache_hits_total", "")
        .await;
    for _ in 0..10 {
        let p = browser.get(&a.sidecar.url("/cart")).await;
        assert_eq!(p.status, 200);
        let cart = p.json();
        assert_eq!(cart["session"], sid.as_str());
        assert_eq!(cart["items"], json!(["apple"]));
        assert_eq!(cart["version"], "1");
    }
    // Twenty reads (proxy + API per page) and not one of them went to PostgreSQL.
    let loads_after = a
        .sidecar
        .metric("stickyfarm_sidecar_db_queries_total", "op=\"load_session\"")
        .await;
    let hits_after = a
        .sidecar
        .metric("stickyfarm_sidecar_cache_hits_total", "")
        .await;
    assert_eq!(
        loads_after, loads_before,
        "a cached session must not be read from PostgreSQL"
    );
    assert!(
        hits_after - hits_before >= 20.0,
        "hits {hits_before} -> {hits_after}"
    );

    // The snapshot attached to the forwarded request carries the cart, so the app needs no
    // round trip at all.
    let echo = browser.get(&a.sidecar.url("/echo")).await.json();
    let snap = echo["x-stickyfarm-snapshot"]
        .as_str()
        .expect("snapshot header");
    use base64::Engine as _;
    let snap: stickyfarm_api::SessionSnapshot = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(snap)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(snap.id.to_string(), sid);
    assert_eq!(
        snap.tables[&"cart".parse().unwrap()].doc.get(),
        r#"["apple"]"#
    );
}

/// With `Secure` cookies and no cookie domain, every cookie carries the `__Host-` prefix, and a
/// session cookie under the bare name (planted by a sibling subdomain or a plain-HTTP response,
/// which browsers refuse to let carry the prefix) is never honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_cookies_are_host_only_and_unprefixed_ones_are_ignored() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &["--cookie-secure", "true"]).await;
    let mut browser = Browser::new();
    let first = browser.post(&a.sidecar.url("/cart/add?item=tea")).await;
    assert_eq!(first.status, 200);
    let cookies = first.set_cookies();
    for name in [
        "__Host-sf_session=",
        "__Host-sf_instance=",
        "__Host-sf_gen=",
    ] {
        let c = cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"));
        assert!(
            c.contains("Secure") && c.contains("Path=/") && !c.contains("Domain"),
            "what browsers require of a __Host- cookie: {c}"
        );
    }
    let sid = browser.cookie("__Host-sf_session").unwrap().to_owned();
    let cart = browser.get(&a.sidecar.url("/cart")).await.json();
    assert_eq!(cart["session"], sid.as_str(), "the prefixed cookie is read");
    assert_eq!(cart["items"], json!(["tea"]));

    // An attacker who plants the bare name gets nobody's session: not the victim's, not theirs.
    let r = reqwest::Client::new()
        .get(a.sidecar.url("/cart"))
        .header("cookie", format!("sf_session={sid}"))
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_ne!(seen["session"], sid.as_str());
    assert_eq!(seen["items"], json!([]));
}

/// A body over `--max-body-size` never reaches the app, declared or streamed; the unit goes
/// on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_on_the_public_port() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &["--max-body-size", "1KiB"]).await;
    let client = reqwest::Client::new();
    let upload = |body: reqwest::Body| client.post(a.sidecar.url("/upload")).body(body).send();

    let small = upload(vec![b'x'; 512].into()).await.unwrap();
    assert_eq!(small.status(), 200);
    assert_eq!(small.text().await.unwrap(), "received 512 bytes\n");

    let declared = upload(vec![b'x'; 4096].into()).await.unwrap();
    assert_eq!(declared.status(), 413);
    assert!(
        declared
            .text()
            .await
            .unwrap()
            .contains("at most 1024 bytes")
    );

    // Chunked, no length: cut off where it passes the limit.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(a.sidecar.public)
        .await
        .unwrap();
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: unit\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The sidecar may answer and close before it has read everything: a failed write is fine.
    let _ = conn.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let after = client.get(a.sidecar.url("/echo")).send().await.unwrap();
    assert_eq!(after.status(), 200, "the unit goes on serving");
}

/// An app that drops one connection without answering (as an app closing its idle keep-alive
/// connections while its pod stops): a bodiless GET is asked once more on a new connection and
/// answered; a POST is never repeated. An app that drops the second try too (it is stopping)
/// makes the GET the gateway's to send elsewhere: 503 with the unit-unavailable signal, which
/// a POST, that may have happened, never gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_app_connection_replays_safe_requests_only() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncWriteExt as _;

    // How many of the next requests the app drops without an answer.
    let break_next = Arc::new(AtomicU32::new(1));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (app, server) = raw_app({
        let (break_next, seen) = (break_next.clone(), seen.clone());
        move |mut conn| {
            let (break_next, seen) = (break_next.clone(), seen.clone());
            async move {
                let Some(text) = read_head(&mut conn).await else {
                    return;
                };
                let method = text.split(' ').next().unwrap_or_default().to_owned();
                seen.lock().unwrap().push(method);
                if break_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return; // dropped: no answer at all
                }
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            }
        }
    })
    .await;
    let (_db, sidecar) = sidecar_in_front_of(app, &[]).await;
    let client = reqwest::Client::new();
    let r = client.get(sidecar.url("/page")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the GET is answered on the second try");
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(*seen.lock().unwrap(), ["GET", "GET"]);

    break_next.store(1, Ordering::SeqCst);
    let r = client
        .post(sidecar.url("/order"))
        .body("item=tea")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "a POST is never sent twice");
    assert!(!r.headers().contains_key("x-stickyfarm-unit-unavailable"));
    assert_eq!(*seen.lock().unwrap(), ["GET", "GET", "POST"]);

    break_next.store(2, Ordering::SeqCst);
    let r = client.get(sidecar.url("/page")).send().await.unwrap();
    assert_eq!(r.status(), 503, "both tries dropped");
    assert_eq!(r.headers()["x-stickyfarm-unit-unavailable"], "app");
    assert_eq!(*seen.lock().unwrap(), ["GET", "GET", "POST", "GET", "GET"]);
    server.abort();
}

/// What the app gets is what a server expects from a client: the request target in origin
/// form (`/path?query`, not the sidecar's absolute URI) and the client's `Host`. And the
/// sidecar keeps its connection to the app: a second request, once the first answer was read,
/// goes over the same one.
/// Node.js closes a connection idle for its keep-alive timeout without reading what arrives
/// on it; a request the sidecar writes just then is lost, and a POST cannot be sent again. The
/// raw app here makes that moment certain: a request on a connection that idled for its
/// keep-alive timeout is dropped unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_after_the_apps_keep_alive_timeout_goes_over_a_new_connection() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const KEEP_ALIVE: Duration = Duration::from_secs(1);
    let (accepted, answered, lost) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
    );
    let (app, server) = raw_app({
        let (accepted, answered, lost) = (accepted.clone(), answered.clone(), lost.clone());
        move |mut conn| {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (answered, lost) = (answered.clone(), lost.clone());
            async move {
                let mut idle_since = Instant::now();
                while let Some(head) = read_head(&mut conn).await {
                    if idle_since.elapsed() >= KEEP_ALIVE {
                        lost.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let length = head
                        .to_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    // Counted before the answer goes out, which the test may see first.
                    answered.fetch_add(1, Ordering::SeqCst);
                    if conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    idle_since = Instant::now();
                }
            }
        }
    })
    .await;
    let (_db, sidecar) = sidecar_in_front_of(app, &["--app-keep-alive-timeout", "1s"]).await;
    let client = reqwest::Client::new();
    let post = || {
        client
            .post(sidecar.url("/cart/add"))
            .body("item=apple")
            .send()
    };
    for _ in 0..2 {
        assert_eq!(post().await.unwrap().status(), 200, "within the timeout");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept connection");
    tokio::time::sleep(KEEP_ALIVE + Duration::from_millis(200)).await;
    let r = post().await.unwrap();
    assert_eq!(r.status(), 200, "the POST after the app's timeout was lost");
    assert_eq!(
        lost.load(Ordering::SeqCst),
        0,
        "a request went into an expired connection"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(answered.load(Ordering::SeqCst), 3);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_gets_origin_form_targets_over_one_kept_connection() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncWriteExt as _;

    let accepted = Arc::new(AtomicU32::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (app, server) = raw_app({
        let (accepted, heads) = (accepted.clone(), heads.clone());
        move |mut conn| {
            accepted.fetch_add(1, Ordering::SeqCst);
            let heads = heads.clone();
            // Bodiless requests, one after another, each answered and the connection kept.
            async move {
                while let Some(head) = read_head(&mut conn).await {
                    heads.lock().unwrap().push(head.to_lowercase());
                    if conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let (_db, sidecar) = sidecar_in_front_of(app, &[]).await;
    let client = reqwest::Client::new();
    for path in ["/cart?page=2", "/checkout"] {
        let r = client
            .get(sidecar.url(path))
            .header("host", "shop.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads[0].starts_with("get /cart?page=2 http/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("get /checkout http/1.1\r\n"),
        "{}",
        heads[1]
    );
    for head in &heads {
        assert!(head.contains("\r\nhost: shop.example\r\n"), "{head}");
        assert_eq!(head.matches("\r\nhost:").count(), 1, "{head}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the second request reused the first one's connection"
    );
    server.abort();
}

/// TLS to PostgreSQL with `sslmode=verify-full` and a CA from a file (a mounted Secret on
/// Kubernetes): with the CA that signed the server's certificate the unit writes through as
/// always; a server whose certificate another CA signed, or that was made for another name,
/// never gets the sidecar's password, and the sidecar says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_is_verified_fully() {
    let db = TestDb::new().await;
    let ca = TestCa::new(&["localhost"]);
    let front = PgTlsFront::start(db.pg_addr(), &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("ca.crt");
    std::fs::write(&trusted, &ca.ca_pem).unwrap();
    let stranger = dir.path().join("other-ca.crt");
    std::fs::write(&stranger, TestCa::new(&["localhost"]).ca_pem).unwrap();
    let url = |host: &str, ca_file: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            db.url_via(front.port).replace("127.0.0.1", host),
            ca_file.display()
        )
    };

    let app = TestApp::start().await;
    let unit = SidecarProc::start(SidecarSpec {
        unit: "web-0",
        database_url: &url("localhost", &trusted),
        app: app.0.addr,
        extra: vec![],
        instance: None,
    })
    .await;
    *app.1.lock().unwrap() = Some(unit.api);
    let mut b = Browser::new();
    assert_eq!(b.post(&unit.url("/cart/add?item=tea")).await.status, 200);
    let sid = b.cookie("sf_session").unwrap().to_owned();
    assert!(db.session_exists(&sid).await, "written through over TLS");
    drop(unit);

    for (what, database_url) in [
        (
            "a certificate another CA signed",
            url("localhost", &stranger),
        ),
        (
            "a certificate made for another name",
            url("127.0.0.1", &trusted),
        ),
    ] {
        let admin = free_port();
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), SESSION_ID_KEY).unwrap();
        let mut cmd = std::process::Command::new(binary("stickyfarm-sidecar"));
        cmd.args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--app-url", &format!("http://{}", app.0.addr)])
            .args(["--unit", "web-1"])
            .arg("--session-id-key-file")
            .arg(key.path())
            .env("DATABASE_URL", &database_url);
        let proc = ChildProc::spawn("sidecar web-1", cmd);
        eventually(
            Duration::from_secs(20),
            &format!("{what}: the sidecar refuses the server"),
            || async {
                let log = proc.log_text().to_lowercase();
                log.contains("cannot apply the session schema yet") && log.contains("certificate")
            },
        )
        .await;
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", admin))
                .await
                .is_err(),
            "{what}: the unit never starts serving"
        );
        assert!(
            !proc.log_text().contains(db.url.rsplit_once('@').unwrap().0),
            "{what}: the credentials are never logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_killed_sidecar() {
    let db = TestDb::new().await;
    let mut a = Unit::start("web-0", &db.url, &[]).await;
    let mut browser = Browser::new();
    for item in ["apple", "pear", "plum"] {
        let p = browser
            .post(&a.sidecar.url(&format!("/cart/add?item={item}")))
            .await;
        assert_eq!(p.status, 200, "{}", p.body);
    }
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    assert_eq!(
        db.table(&sid, "cart").await,
        Some((3, json!(["apple", "pear", "plum"])))
    );

    // The pod dies without any cleanup; a new pod (new instance id) takes the unit's place.
    let old_instance = a.sidecar.instance.clone();
    a.sidecar.kill();
    let b = Unit::start("web-0", &db.url, &[]).await;
    assert_ne!(b.sidecar.instance, old_instance);

    let p = browser.get(&b.sidecar.url("/cart")).await;
    assert_eq!(p.status, 200);
    assert_eq!(
        p.json()["session"],
        sid.as_str(),
        "the session must continue, not restart"
    );
    assert_eq!(p.json()["items"], json!(["apple", "pear", "plum"]));
    // The client now carries the new instance's id.
    assert_eq!(
        browser.cookie("sf_instance"),
        Some(b.sidecar.instance.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_mismatch_flushes_and_reloads() {
    let db = TestDb::new().await;
    // No listener: this test isolates the instance-id check.
    let a = Unit::start("web-0", &db.url, &["--listen-invalidations", "false"]).await;
    let mut browser = Browser::new();
    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();

    // Change the state behind the unit's back (as another unit whose notification was lost).
    sqlx::query(
        "UPDATE stickyfarm_session_tables SET doc = '[\"changed\"]', version = version + 1 WHERE session_id = $1;
         ",
    )
    .bind(stored_uuid(&sid))
    .execute(&db.pool)
    .await
    .unwrap();

    // Same instance cookie: the cached copy is served (this is what the cache is for).
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["apple"]));

    // The client was last served by another instance: the unit must flush and reload.
    let flushes_before = a
        .sidecar
        .metric("stickyfarm_sidecar_flushes_total", "instance_mismatch")
        .await;
    browser
        .cookies
        .insert("sf_instance".into(), uuid::Uuid::new_v4().to_string());
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["changed"]));
    assert_eq!(p.json()["version"], "2");
    assert_eq!(
        browser.cookie("sf_instance"),
        Some(a.sidecar.instance.as_str())
    );
    let flushes_after = a
        .sidecar
        .metric("stickyfarm_sidecar_flushes_total", "instance_mismatch")
        .await;
    assert_eq!(flushes_after, flushes_before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_cookies_get_a_fresh_session() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let client = reqwest::Client::new();

    // A well-formed id that PostgreSQL never issued is not adopted.
    let forged = stickyfarm_api::SessionId::generate().to_string();
    let mut b = Browser::new();
    b.cookies.insert("sf_session".into(), forged.clone());
    let p = b.get(&a.sidecar.url("/echo")).await;
    assert_eq!(p.status, 200);
    let issued = b.cookie("sf_session").unwrap().to_owned();
    assert_ne!(issued, forged);
    assert!(!db.session_exists(&forged).await);
    assert!(!db.session_exists(&issued).await, "no row before state");

    // Malformed values of every cookie: 200 and a fresh session, never a 500.
    let sessions_before = db.session_count().await;
    let bad_headers: [&[u8]; 6] = [
        b"sf_session=../../etc/passwd; sf_instance=nope; sf_gen=-1",
        b"sf_session=AAAAAAAAAAAAAAAAAAAAAA",
        b"sf_session=\"quoted\"; sf_gen=99999999999999999999999",
        b"sf_session=\xff\xfe\xfd",
        b";;;===;",
        b"sf_session=x",
    ];
    for raw in bad_headers {
        let r = client
            .get(a.sidecar.url("/echo"))
            .header(
                "cookie",
                reqwest::header::HeaderValue::from_bytes(raw).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "cookie {:?}", String::from_utf8_lossy(raw));
        let set: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert!(
            set.iter()
                .any(|c| c.to_str().unwrap().starts_with("sf_session="))
        );
    }
    assert_eq!(
        db.session_count().await,
        sessions_before,
        "fresh sessions store nothing until the app writes"
    );
    assert!(
        a.sidecar
            .metric("stickyfarm_sidecar_malformed_cookies_total", "")
            .await
            >= 4.0
    );

    // Cookie tossing: an attacker plants its own session cookie next to the victim's (from a
    // sibling subdomain, say). Two session ids: neither is used, the client gets a fresh one.
    let mut attacker = Browser::new();
    attacker.post(&a.sidecar.url("/cart/add?item=bait")).await;
    let planted = attacker.cookie("sf_session").unwrap().to_owned();
    let mut victim = Browser::new();
    victim.post(&a.sidecar.url("/cart/add?item=mine")).await;
    let own = victim.cookie("sf_session").unwrap().to_owned();
    for order in [
        format!("sf_session={planted}; sf_session={own}"),
        format!("sf_session={own}; sf_session={planted}"),
    ] {
        let r = client
            .get(a.sidecar.url("/cart"))
            .header("cookie", order.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cart: serde_json::Value = r.json().await.unwrap();
        assert_ne!(cart["session"], planted.as_str(), "{order}");
        assert_ne!(cart["session"], own.as_str(), "{order}");
        assert_eq!(cart["items"], json!([]));
    }

    // A client cannot inject Stickyfarm headers into the app.
    let r = client
        .get(a.sidecar.url("/echo"))
        .header("x-stickyfarm-session", forged.as_str())
        .header("x-stickyfarm-unit", "evil")
        .header("x-stickyfarm-unit-url", "javascript:alert(1)")
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_ne!(seen["x-stickyfarm-session"], forged.as_str());
    assert_eq!(seen["x-stickyfarm-unit"], "web-0");
    assert_eq!(seen["x-stickyfarm-unit-url"], "/_unit/web-0");

    // A client that reaches the unit directly cannot choose the links the app builds (a
    // phishing host in every link): the unit URL is believed only with the farm's gateway
    // token, and the token itself never reaches the app.
    let echo_with = |token: Option<&'static str>| {
        let mut req = client
            .get(a.sidecar.url("/echo"))
            .header("x-stickyfarm-unit-url", "https://evil.example/_unit/web-0");
        if let Some(token) = token {
            req = req.header("x-stickyfarm-gateway-token", token);
        }
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    for forged_token in [None, Some("not-the-farms-token-0123456789abcdef0123456789")] {
        let seen = echo_with(forged_token).await;
        assert_eq!(
            seen["x-stickyfarm-unit-url"], "/_unit/web-0",
            "{forged_token:?}"
        );
        assert!(seen.get("x-stickyfarm-gateway-token").is_none(), "{seen}");
    }
    let seen = echo_with(Some(stickyfarm_testkit::GATEWAY_TOKEN)).await;
    assert_eq!(
        seen["x-stickyfarm-unit-url"], "https://evil.example/_unit/web-0",
        "the gateway (holding the token) decides the unit URL"
    );
    assert!(seen.get("x-stickyfarm-gateway-token").is_none(), "{seen}");

    // The API refuses malformed ids and unknown sessions with clear errors.
    let r = client
        .get(a.sidecar.api_url("/v1/sessions/not-an-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("malformed session id"));
    let r = client
        .get(a.sidecar.api_url(&format!("/v1/sessions/{forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Session fixation: an app write to an id the client chose never creates that session,
    // nor does a write to an id another unit issued; the id issued here does.
    let r = put_cart(&client, &a, &forged, json!([1]), None).await;
    assert_eq!(r.status(), 404);
    assert!(!db.session_exists(&forged).await);
    let b_unit = Unit::start("web-1", &db.url, &[]).await;
    let r = put_cart(&client, &b_unit, &issued, json!([1]), None).await;
    assert_eq!(r.status(), 404, "web-1 did not issue it");
    assert!(!db.session_exists(&issued).await);
    let r = client
        .put(
            a.sidecar
                .api_url(&format!("/v1/sessions/{issued}/tables/prefs")),
        )
        .json(&json!({"lang": "en"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(db.session_exists(&issued).await);
    // Not JSON, and too large: refused, nothing stored.
    let r = client
        .put(
            a.sidecar
                .api_url(&format!("/v1/sessions/{issued}/tables/cart")),
        )
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let huge = format!("\"{}\"", "x".repeat(2 * 1024 * 1024));
    let r = client
        .put(
            a.sidecar
                .api_url(&format!("/v1/sessions/{issued}/tables/cart")),
        )
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(db.table(&issued, "cart").await, None);
}

/// The gap the patent leaves: unit A is only marked down (it keeps running with the same
/// instance id), B serves and changes the session, then the client is back on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_marked_down_never_serves_or_writes_back_stale_state() {
    let db = TestDb::new().await;
    let a = Unit::start("web-a", &db.url, &[]).await;
    let b = Unit::start("web-b", &db.url, &[]).await;
    let client = reqwest::Client::new();
    let mut browser = Browser::new();

    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    let on_a = browser.get(&a.sidecar.url("/cart")).await.json();
    assert_eq!(on_a["items"], json!(["apple"]));
    let a_cookies = browser.cookies.clone();

    // A is marked down: the client goes to B, which serves and changes the session.
    let p = browser.post(&b.sidecar.url("/cart/add?item=pear")).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.json()["items"], json!(["apple", "pear"]));
    assert_eq!(
        db.table(&sid, "cart").await,
        Some((2, json!(["apple", "pear"])))
    );

    // A write from A's stale copy (it read version 1) is refused, and nothing is lost.
    let r = put_cart(&client, &a, &sid, json!(["apple", "stale"]), Some("\"1\"")).await;
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["current_version"], 2);
    assert_eq!(
        db.table(&sid, "cart").await,
        Some((2, json!(["apple", "pear"])))
    );

    // Back on A with B's cookies: A returns B's update.
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["apple", "pear"]));
    assert_eq!(p.json()["version"], "2");

    // Worst case: the client replays A's old cookies (B's answer never reached it). A has
    // been told about B's commit through PostgreSQL and still serves the new state.
    b.sidecar
        .metric("stickyfarm_sidecar_invalidation_notifications_total", "")
        .await;
    let mut replay = Browser::new();
    replay.cookies = a_cookies;
    browser.post(&b.sidecar.url("/cart/add?item=plum")).await;
    eventually(
        Duration::from_secs(5),
        "A receives B's invalidation",
        || async {
            let p = replay.clone().get(&a.sidecar.url("/cart")).await;
            p.json()["items"] == json!(["apple", "pear", "plum"])
        },
    )
    .await;
}

/// The same gap without LISTEN/NOTIFY (behind a pooler that cannot LISTEN): the generation
/// the client carries and conditional writes still keep stale state out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notifications_the_generation_cookie_and_conditional_writes_hold() {
    let db = TestDb::new().await;
    let off = ["--listen-invalidations", "false"];
    let a = Unit::start("web-a", &db.url, &off).await;
    let b = Unit::start("web-b", &db.url, &off).await;
    let client = reqwest::Client::new();
    let mut browser = Browser::new();

    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    browser.get(&a.sidecar.url("/cart")).await; // cached on A at version 1
    let p = browser.post(&b.sidecar.url("/cart/add?item=pear")).await;
    assert_eq!(p.json()["items"], json!(["apple", "pear"]));

    // The app on A writes without If-Match: conditional on A's copy (version 1), so refused.
    let r = put_cart(&client, &a, &sid, json!(["overwrite"]), None).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        db.table(&sid, "cart").await,
        Some((2, json!(["apple", "pear"])))
    );

    // The refused write dropped A's copy; the client reads on A, which caches generation 2.
    browser
        .cookies
        .insert("sf_instance".into(), a.sidecar.instance.clone());
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["apple", "pear"]));

    // B changes the session again and the client learns the new generation from B's answer.
    browser.post(&b.sidecar.url("/cart/add?item=plum")).await;
    // Back on A, even with A's instance id in its cookie: the generation cookie proves a newer
    // state than A's copy, so A reloads instead of serving its cached generation 2.
    let gen_from_b: u64 = browser.cookie("sf_gen").unwrap().parse().unwrap();
    browser
        .cookies
        .insert("sf_instance".into(), a.sidecar.instance.clone());
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["apple", "pear", "plum"]));
    assert!(
        a.sidecar
            .metric("stickyfarm_sidecar_flushes_total", "newer_generation")
            .await
            >= 1.0
    );
    assert!(gen_from_b >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tabs_never_overwrite_each_other() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let b = Unit::start("web-1", &db.url, &[]).await;
    let mut browser = Browser::new();
    browser.get(&a.sidecar.url("/echo")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    // The unit that issued the id stores it on a first write (here: another table).
    let client = reqwest::Client::new();
    let r = client
        .put(
            a.sidecar
                .api_url(&format!("/v1/sessions/{sid}/tables/prefs")),
        )
        .json(&json!({"lang": "en"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Two writes with the same precondition: exactly one wins.
    let (r1, r2) = tokio::join!(
        put_cart(&client, &a, &sid, json!(["tab-1"]), Some("\"0\"")),
        put_cart(&client, &b, &sid, json!(["tab-2"]), Some("\"0\"")),
    );
    let mut statuses = [r1.status().as_u16(), r2.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);

    // Eight tabs, on two units, each adding items with read-modify-write: every item lands.
    let mut tabs = Vec::new();
    for tab in 0..8 {
        let mut t = browser.clone();
        let unit = if tab % 2 == 0 {
            a.sidecar.url("")
        } else {
            b.sidecar.url("")
        };
        tabs.push(tokio::spawn(async move {
            for i in 0..5 {
                let p = t.post(&format!("{unit}/cart/add?item=t{tab}-{i}")).await;
                assert_eq!(p.status, 200, "{}", p.body);
            }
        }));
    }
    for t in tabs {
        t.await.unwrap();
    }
    let (version, doc) = db.table(&sid, "cart").await.unwrap();
    let items: Vec<String> = serde_json::from_value(doc).unwrap();
    assert_eq!(items.len(), 1 + 8 * 5, "{items:?}");
    for tab in 0..8 {
        for i in 0..5 {
            assert!(items.contains(&format!("t{tab}-{i}")));
        }
    }
    assert_eq!(version, 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_refuses_writes_serves_cached_reads_and_loses_nothing() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(db.pg_addr()).await;
    let url = db.url_via(proxy.port);
    let a = Unit::start("web-0", &url, &["--db-acquire-timeout", "500ms"]).await;
    let client = reqwest::Client::new();
    let mut browser = Browser::new();
    for item in ["apple", "pear"] {
        assert_eq!(
            browser
                .post(&a.sidecar.url(&format!("/cart/add?item={item}")))
                .await
                .status,
            200
        );
    }
    let sid = browser.cookie("sf_session").unwrap().to_owned();

    proxy.cut();
    // Writes: 503, never acknowledged.
    for attempt in 0..3 {
        let r = put_cart(&client, &a, &sid, json!(["lost"]), Some("\"2\"")).await;
        assert_eq!(r.status(), 503, "attempt {attempt}");
        assert_eq!(r.headers()["retry-after"], "1");
    }
    // Reads of the cached session still answer, through the proxy and the API.
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.json()["items"], json!(["apple", "pear"]));
    // A new client is served (its session has no state to store yet), but its first write
    // is refused like any other: nothing is acknowledged that is not in PostgreSQL.
    let p = Browser::new().get(&a.sidecar.url("/echo")).await;
    assert_eq!(p.status, 200);
    let newcomer = p.json()["x-stickyfarm-session"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = put_cart(&client, &a, &newcomer, json!(["x"]), Some("\"0\"")).await;
    assert_eq!(r.status(), 503);
    // The health check reports the database.
    let h = client
        .get(a.sidecar.url("/_stickyfarm/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 503);
    assert!(h.text().await.unwrap().contains("database"));

    proxy.restore();
    // Once the database is back, writes are accepted again (the pool reconnects).
    eventually(
        Duration::from_secs(15),
        "writes accepted after the outage",
        || async {
            browser
                .clone()
                .post(&a.sidecar.url("/cart/add?item=plum"))
                .await
                .status
                == 200
        },
    )
    .await;
    // Everything acknowledged is there, the refused write is not.
    assert_eq!(
        db.table(&sid, "cart").await,
        Some((3, json!(["apple", "pear", "plum"])))
    );
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["apple", "pear", "plum"]));
    let h = client
        .get(a.sidecar.url("/_stickyfarm/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answer_names_unit_and_instance_and_fails_without_the_app() {
    let db = TestDb::new().await;
    let a = Unit::start("web-7", &db.url, &[]).await;
    let client = reqwest::Client::new();
    let r = client
        .get(a.sidecar.url("/_stickyfarm/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-stickyfarm-instance"],
        a.sidecar.instance.as_str()
    );
    assert_eq!(
        r.text().await.unwrap(),
        format!(
            "stickyfarm-sidecar healthy\nunit: web-7\ninstance: {}\nsessions: 0\nwarm copies: 0\n",
            a.sidecar.instance
        )
    );
    // A shopper writes: the unit now holds one session, and says so (the status page shows it).
    let mut shopper = Browser::new();
    shopper.get(&a.sidecar.url("/echo")).await;
    let sid = shopper.cookie("sf_session").unwrap().to_owned();
    let w = put_cart(&client, &a, &sid, json!(["fig"]), None).await;
    assert!(w.status().is_success(), "{}", w.status());
    let r = client
        .get(a.sidecar.url("/_stickyfarm/health"))
        .send()
        .await
        .unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .ends_with("\nsessions: 1\nwarm copies: 0\n")
    );
    // Other reserved paths are not forwarded to the app.
    let r = client
        .get(a.sidecar.url("/_stickyfarm/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    a.app.stop();
    eventually(
        Duration::from_secs(5),
        "health fails once the app is gone",
        || async {
            let r = client
                .get(a.sidecar.url("/_stickyfarm/health"))
                .send()
                .await
                .unwrap();
            r.status() == 503 && r.text().await.unwrap().contains("app")
        },
    )
    .await;
    // A request finds the app gone before anything reached it: 503 with the marker that lets
    // the gateway send it to another unit.
    let mut browser = Browser::new();
    let page = browser.get(&a.sidecar.url("/echo")).await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert_eq!(page.headers["x-stickyfarm-unit-unavailable"], "app");
    // So does an upload the app never took: the sidecar reads and drops the rest of the body,
    // so its client reads the answer instead of a connection reset (a socket closed on
    // unread data is reset, and the answer with it).
    for _ in 0..10 {
        let r = client
            .post(a.sidecar.url("/echo"))
            .body(vec![b'x'; 4 << 20])
            .send()
            .await
            .expect("an answer, not a reset connection");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-stickyfarm-unit-unavailable"], "app");
    }
}

/// The unit-unavailable signal takes a unit out at the gateway, so only the sidecar may send
/// it: an app that sets it (or echoes a client's header) has it removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_send_the_unit_unavailable_signal() {
    let db = TestDb::new().await;
    let a = Unit::start("web-8", &db.url, &[]).await;
    let mut browser = Browser::new();
    let page = browser.get(&a.sidecar.url("/forged-unavailable")).await;
    assert_eq!(page.status, 503, "the app's own answer stands");
    assert!(page.body.contains("the app says"), "{}", page.body);
    assert!(
        !page.headers.contains_key("x-stickyfarm-unit-unavailable"),
        "{:?}",
        page.headers
    );
    // The sidecar still speaks for itself when the app is really gone.
    a.app.stop();
    eventually(
        Duration::from_secs(5),
        "the sidecar's own signal",
        || async {
            let page = Browser::new().get(&a.sidecar.url("/echo")).await;
            page.headers
                .get("x-stickyfarm-unit-unavailable")
                .is_some_and(|v| v == "app")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_swept_from_postgres() {
    let db = TestDb::new().await;
    let a = Unit::start(
        "web-0",
        &db.url,
        &["--idle-timeout", "2s", "--sweep-interval", "500ms"],
    )
    .await;
    let mut browser = Browser::new();
    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    assert!(db.session_exists(&sid).await);
    eventually(
        Duration::from_secs(10),
        "the idle session is swept",
        || async { !db.session_exists(&sid).await },
    )
    .await;
    assert_eq!(db.table(&sid, "cart").await, None, "its tables go with it");
    // The client's old cookie now gets a new, empty session (once the unit heard of the sweep;
    // its id is never honoured again).
    eventually(
        Duration::from_secs(10),
        "the swept id is replaced",
        || async {
            let p = browser.clone().get(&a.sidecar.url("/cart")).await;
            p.json()["session"] != sid.as_str() && p.json()["items"] == json!([])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_sessions_are_kept_alive_by_cached_reads() {
    let db = TestDb::new().await;
    let a = Unit::start(
        "web-0",
        &db.url,
        &["--idle-timeout", "3s", "--sweep-interval", "500ms"],
    )
    .await;
    let mut browser = Browser::new();
    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    // Keep reading (from the cache) for twice the idle timeout: the touches keep it alive.
    for _ in 0..12 {
        let p = browser.get(&a.sidecar.url("/cart")).await;
        assert_eq!(p.json()["session"], sid.as_str());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(db.session_exists(&sid).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sidecars_starting_at_once_apply_the_schema_once() {
    let db = TestDb::new().await;
    let (u1, u2, u3) = tokio::join!(
        Unit::start("web-0", &db.url, &[]),
        Unit::start("web-1", &db.url, &[]),
        Unit::start("web-2", &db.url, &[]),
    );
    let client = reqwest::Client::new();
    for u in [&u1, &u2, &u3] {
        let r = client
            .get(u.sidecar.url("/_stickyfarm/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, files, "every migration applied once");
    let keys: Vec<String> = sqlx::query_scalar("SELECT value FROM stickyfarm_meta")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "one key recorded: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_a_small_cache_with_a_disk_tier_loses_nothing() {
    let db = TestDb::new().await;
    let disk = tempfile::tempdir().unwrap();
    let disk_dir = disk.path().to_str().unwrap().to_owned();
    let a = Unit::start(
        "web-0",
        &db.url,
        &[
            "--cache-memory",
            "64KiB",
            "--cache-disk-dir",
            &disk_dir,
            "--cache-disk-size",
            "16MiB",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    // 200 sessions with 2 KiB carts: ~400 KiB through a 64 KiB memory tier.
    let mut sessions = Vec::new();
    for i in 0..200 {
        let mut b = Browser::new();
        b.get(&a.sidecar.url("/echo")).await;
        let sid = b.cookie("sf_session").unwrap().to_owned();
        let items: Vec<String> = (0..100).map(|j| format!("item-{i}-{j:04}")).collect();
        let r = put_cart(&client, &a, &sid, json!(items), Some("\"0\"")).await;
        assert_eq!(r.status(), 201);
        sessions.push((sid, items));
    }
    // foyer writes what memory evicts to disk in the background.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let hits = |tier: &'static str| {
        let a = &a;
        async move {
            a.sidecar
                .metric(
                    "stickyfarm_sidecar_cache_hits_total",
                    &format!("tier=\"{tier}\""),
                )
                .await
        }
    };
    let disk_hits_before = hits("disk").await;
    for (sid, items) in &sessions {
        let r = get_cart(&client, &a, sid).await;
        assert_eq!(r.status(), 200);
        let got: Vec<String> = r.json().await.unwrap();
        assert_eq!(&got, items);
    }
    // Most of them no longer fit in memory: the disk tier served reads, and says so.
    assert!(
        hits("disk").await > disk_hits_before,
        "no read was counted as a disk-tier hit"
    );
    // Every entry also matches PostgreSQL, the only place that must hold it.
    for (sid, items) in sessions.iter().step_by(20) {
        assert_eq!(db.table(sid, "cart").await, Some((1, json!(items))));
    }
}

/// A unit serving its session API on `socket` too, and the id of a session whose cart it
/// holds (`["apple"]`).
async fn unit_with_a_cart_on_a_socket(db: &TestDb, socket: &std::path::Path) -> (Unit, String) {
    let unit = Unit::start(
        "web-0",
        &db.url,
        &["--api-socket", socket.to_str().unwrap()],
    )
    .await;
    let mut browser = Browser::new();
    browser
        .post(&unit.sidecar.url("/cart/add?item=apple"))
        .await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    (unit, sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_api_over_a_unix_socket_and_delete() {
    use http_body_util::{BodyExt, Empty};
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let (a, sid) = unit_with_a_cart_on_a_socket(&db, &socket).await;

    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("/v1/sessions/{sid}"))
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let snap: stickyfarm_api::SessionSnapshot = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        snap.tables[&"cart".parse().unwrap()].doc.get(),
        r#"["apple"]"#
    );

    // Logout: the session is gone everywhere.
    let client = reqwest::Client::new();
    let r = client
        .delete(a.sidecar.api_url(&format!("/v1/sessions/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!db.session_exists(&sid).await);
    let r = client
        .get(a.sidecar.api_url(&format!("/v1/sessions/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The app usually runs as another user than the sidecar (each container as its image's user).
/// Connecting to a Unix socket takes write permission on it: with the sidecar's umask alone the
/// app's session calls were refused ("permission denied") while the loopback port took them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_api_socket_serves_an_app_running_as_another_user() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::os::unix::process::CommandExt as _;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // The pod's shared volume: every container may enter it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("api.sock");
    // A socket left by an earlier run is replaced.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (_unit, sid) = unit_with_a_cart_on_a_socket(&db, &socket).await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o666,
        "connectable by every user"
    );
    assert!(
        !std::fs::read_dir(dir.path())
            .unwrap()
            .any(|e| e.unwrap().file_name() != "api.sock"),
        "no temporary socket left beside it"
    );

    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("not root: the call as another user (uid 65534) is left out");
        return;
    }
    let path = socket.clone();
    let url = format!("http://unit/v1/sessions/{sid}/tables/cart");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&path)
            .arg(&url)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("curl runs (scripts/test installs it)")
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the cart read as uid 65534; curl said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly() {
    let db = TestDb::new().await;
    let mut a = Unit::start("web-0", &db.url, &[]).await;
    let mut browser = Browser::new();
    assert_eq!(browser.get(&a.sidecar.url("/echo")).await.status, 200);
    assert!(
        a.sidecar.terminate(Duration::from_secs(10)),
        "exit 0 within 10 s of SIGTERM"
    );
    assert!(
        tokio::net::TcpStream::connect(a.sidecar.public)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_session_cookie_name_is_set_and_the_default_one_ignored() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &["--session-cookie", "shop_sid"]).await;
    let mut browser = Browser::new();
    let first = browser.get(&a.sidecar.url("/echo")).await;
    assert_eq!(first.status, 200);
    let cookies = first.set_cookies();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("shop_sid=") && c.contains("HttpOnly")),
        "{cookies:?}"
    );
    assert!(
        cookies.iter().all(|c| !c.starts_with("sf_session=")),
        "{cookies:?}"
    );
    let sid = browser.cookie("shop_sid").unwrap().to_owned();
    assert_eq!(first.json()["x-stickyfarm-session"], sid.as_str());
    // The same browser keeps its session under the configured name.
    let again = browser.get(&a.sidecar.url("/echo")).await.json();
    assert_eq!(again["x-stickyfarm-session"], sid.as_str());
    // A client that sends the default name is not recognised: it gets a new session.
    let other = browser_with_cookie(&a, &format!("sf_session={sid}")).await;
    assert_ne!(other, sid);

    // A name that collides with Stickyfarm's other cookies is refused at start.
    let out = std::process::Command::new(binary("stickyfarm-sidecar"))
        .args([
            "--session-cookie",
            "sf_unit",
            "--session-id-key-file",
            "/nonexistent",
            "--database-url",
            &db.url,
            "--unit",
            "web-9",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sf_unit"));
}

/// The session a request with only `cookie` is served under.
async fn browser_with_cookie(unit: &Unit, cookie: &str) -> String {
    let echo: serde_json::Value = reqwest::Client::new()
        .get(unit.sidecar.url("/echo"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    echo["x-stickyfarm-session"].as_str().unwrap().to_owned()
}

/// `--cache-reads false` (the benchmarks' baseline): every read is loaded from PostgreSQL, so
/// a change made in PostgreSQL behind the sidecar's back is served at once, and the cache never
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_loaded_from_postgres_is_held_without_jsonb_spaces() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let b = Unit::start("web-1", &db.url, &[]).await;
    let mut browser = Browser::new();
    assert_eq!(browser.get(&a.sidecar.url("/echo")).await.status, 200);
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    let client = reqwest::Client::new();
    let cart = json!({"items": ["a b", "c\"d"], "note": "x: y, z"});
    assert_eq!(
        put_cart(&client, &a, &sid, cart.clone(), None)
            .await
            .status(),
        201
    );
    // PostgreSQL's own text of it has a space after every `:` and `,`.
    let stored: String =
        sqlx::query_scalar("SELECT doc::text FROM stickyfarm_session_tables WHERE session_id = $1")
            .bind(stored_uuid(&sid))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(stored.contains("\": "), "{stored}");

    // Unit b never saw the session: it loads it, and holds and serves it without the spaces,
    // strings untouched.
    let text = get_cart(&client, &b, &sid).await.text().await.unwrap();
    assert_eq!(text, r#"{"note":"x: y, z","items":["a b","c\"d"]}"#);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        cart
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cache_reads_off_every_read_comes_from_postgres() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &["--cache-reads", "false"]).await;
    let mut browser = Browser::new();
    assert_eq!(browser.get(&a.sidecar.url("/echo")).await.status, 200);
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    let client = reqwest::Client::new();
    let w = put_cart(&client, &a, &sid, json!(["apple"]), None).await;
    assert_eq!(w.status(), 201);

    let loads = || {
        a.sidecar
            .metric("stickyfarm_sidecar_db_queries_total", "op=\"load_session\"")
    };
    let loads_before = loads().await;
    for _ in 0..5 {
        let p = browser.get(&a.sidecar.url("/cart")).await;
        assert_eq!(p.status, 200);
        assert_eq!(p.json()["items"], json!(["apple"]));
    }
    // Each page is read twice (the forwarded request and the app's API call).
    assert!(
        loads().await - loads_before >= 10.0,
        "every read must load from PostgreSQL"
    );
    assert_eq!(
        a.sidecar
            .metric("stickyfarm_sidecar_cache_hits_total", "")
            .await,
        0.0
    );

    // Changed in PostgreSQL directly (no notification): served on the next read.
    sqlx::query(
        "UPDATE stickyfarm_session_tables SET doc = '[\"pear\"]'::jsonb WHERE session_id = $1",
    )
    .bind(stored_uuid(&sid))
    .execute(&db.pool)
    .await
    .unwrap();
    let p = browser.get(&a.sidecar.url("/cart")).await;
    assert_eq!(p.json()["items"], json!(["pear"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_holds_bounded_tables_and_documents_of_bounded_depth() {
    let db = TestDb::new().await;
    let a = Unit::start(
        "web-0",
        &db.url,
        &["--max-tables", "3", "--max-json-depth", "8"],
    )
    .await;
    let mut browser = Browser::new();
    browser.get(&a.sidecar.url("/echo")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    let client = reqwest::Client::new();
    let put = |table: &str, body: String| {
        client
            .put(
                a.sidecar
                    .api_url(&format!("/v1/sessions/{sid}/tables/{table}")),
            )
            .header("if-match", "*")
            .body(body)
            .send()
    };
    for t in ["t1", "t2", "t3"] {
        assert_eq!(put(t, "1".into()).await.unwrap().status(), 201);
    }
    let r = put("t4", "1".into()).await.unwrap();
    assert_eq!(r.status(), 422);
    let why = r.text().await.unwrap();
    assert!(
        why.contains("3 tables") && why.contains("--max-tables"),
        "{why}"
    );
    // Rewriting an existing table is fine; deleting one makes room.
    assert_eq!(put("t3", "2".into()).await.unwrap().status(), 200);
    let d = client
        .delete(a.sidecar.api_url(&format!("/v1/sessions/{sid}/tables/t1")))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 204);
    assert_eq!(put("t4", "1".into()).await.unwrap().status(), 201);

    // Depth: 8 levels are stored, 9 refused with the limit named, nothing written.
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_eq!(put("t4", nested(8)).await.unwrap().status(), 200);
    let r = put("t4", nested(9)).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("at most 8"));
    let r = put("t4", nested(100_000)).await.unwrap();
    assert_eq!(r.status(), 422, "no stack overflow either");
    let stored = db.table(&sid, "t4").await.unwrap();
    assert_eq!(
        stored.1,
        serde_json::from_str::<serde_json::Value>(&nested(8)).unwrap()
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stickyfarm_session_tables t JOIN stickyfarm_sessions s ON s.id = t.session_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_ends_sessions_itself_without_notifications() {
    // No notifications and no sweep here: what the cache enforces on its own.
    let db = TestDb::new().await;
    let quiet = [
        "--listen-invalidations",
        "false",
        "--sweep-interval",
        "1h",
        "--idle-timeout",
        "4s",
    ];
    let mut args = quiet.to_vec();
    args.extend(["--absolute-timeout", "3s"]);
    let a = Unit::start("web-0", &db.url, &args).await;

    // Absolute lifetime: a session read from the cache all along still ends on time.
    let mut browser = Browser::new();
    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the session outlived its absolute timeout"
        );
        let p = browser.get(&a.sidecar.url("/cart")).await;
        if p.json()["session"] != sid.as_str() {
            assert_eq!(p.json()["items"], json!([]), "the new session starts empty");
            break;
        }
        assert_eq!(p.json()["items"], json!(["apple"]));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.sidecar
            .metric("stickyfarm_sidecar_flushes_total", "expired")
            .await
            >= 1.0
    );

    // Logout on another unit: this one drops its copy at its next touch, notification or not.
    let b = Unit::start("web-1", &db.url, &quiet).await;
    let c = Unit::start("web-2", &db.url, &quiet).await;
    let mut shopper = Browser::new();
    shopper.post(&b.sidecar.url("/cart/add?item=pear")).await;
    let sid = shopper.cookie("sf_session").unwrap().to_owned();
    // c caches it (the client moves there, as after a failover).
    let p = shopper.get(&c.sidecar.url("/cart")).await;
    assert_eq!(p.json()["session"], sid.as_str());
    assert_eq!(p.json()["items"], json!(["pear"]));
    let r = reqwest::Client::new()
        .delete(b.sidecar.api_url(&format!("/v1/sessions/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually(
        Duration::from_secs(10),
        "the other unit stops serving the logged-out session",
        || async {
            let p = shopper.clone().get(&c.sidecar.url("/cart")).await;
            p.json()["session"] != sid.as_str()
        },
    )
    .await;
    assert!(
        c.sidecar
            .metric("stickyfarm_sidecar_flushes_total", "gone")
            .await
            >= 1.0
    );
}

/// A unit hears other units' writes only through its invalidation listener. A copy it read
/// from PostgreSQL while the listener was not connected (at start, or while it reconnects)
/// may already be behind a write it never heard of: it serves that one request and is not
/// kept. Here unit b's listener loses its connection and cannot reconnect (its database
/// proxy refuses new connections; the pool's open ones go on working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_read_while_the_listener_is_down_is_not_kept() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let proxy = PgProxy::start(db.pg_addr()).await;
    let b = Unit::start("web-1", &db.url_via(proxy.port), &[]).await;
    let listening = || async {
        b.sidecar
            .metric("stickyfarm_sidecar_invalidation_listener_connected", "")
            .await
    };
    // Both listeners are connected: `Unit::start` waits for them.
    let mut shopper = Browser::new();
    shopper.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let sid = shopper.cookie("sf_session").unwrap().to_owned();

    proxy.refuse_new();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'listen%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ended.len(), 2, "both units' listeners");
    eventually(Duration::from_secs(10), "b's listener is down", || async {
        listening().await == 0.0
    })
    .await;

    // A second tab through b: b reads the session (its cookies now name b and what it read).
    let mut tab = Browser::new();
    tab.cookies.insert("sf_session".into(), sid.clone());
    let p = tab.get(&b.sidecar.url("/cart")).await.json();
    assert_eq!(p["items"], json!(["apple"]));
    // Written on a; the announcement does not reach b.
    shopper.post(&a.sidecar.url("/cart/add?item=pear")).await;
    let p = tab.get(&b.sidecar.url("/cart")).await.json();
    assert_eq!(p["session"], sid.as_str());
    assert_eq!(
        p["items"],
        json!(["apple", "pear"]),
        "b served a stale copy"
    );
    assert!(
        b.sidecar
            .metric("stickyfarm_sidecar_flushes_total", "unheard")
            .await
            >= 2.0
    );

    // Once the listener is back, b keeps its copies again and hears a's writes.
    proxy.restore();
    eventually(Duration::from_secs(15), "b's listener is back", || async {
        listening().await == 1.0
    })
    .await;
    let loads = || async {
        b.sidecar
            .metric("stickyfarm_sidecar_db_queries_total", "op=\"load_session\"")
            .await
    };
    tab.get(&b.sidecar.url("/cart")).await;
    let before = loads().await;
    let p = tab.get(&b.sidecar.url("/cart")).await.json();
    assert_eq!(p["items"], json!(["apple", "pear"]));
    assert_eq!(loads().await, before, "served from the cache");
    shopper.post(&a.sidecar.url("/cart/add?item=plum")).await;
    eventually(Duration::from_secs(10), "b hears a's write", || async {
        tab.clone().get(&b.sidecar.url("/cart")).await.json()["items"]
            == json!(["apple", "pear", "plum"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_rotates_the_session_id_and_the_old_one_is_dead_everywhere() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let b = Unit::start("web-1", &db.url, &[]).await;
    let mut browser = Browser::new();
    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    let old = browser.cookie("sf_session").unwrap().to_owned();
    // Another unit has the session cached (a failover, or a second tab through it).
    let mut thief = Browser::new();
    thief.cookies.insert("sf_session".into(), old.clone());
    assert_eq!(
        thief.get(&b.sidecar.url("/cart")).await.json()["session"],
        old.as_str()
    );

    // The app rotates during a request: the answer carries the new cookie.
    let p = browser.post(&a.sidecar.url("/sign-in")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    let new = p.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(browser.cookie("sf_session"), Some(new.as_str()));
    // The state moved, with its versions; the old row is gone.
    assert!(!db.session_exists(&old).await);
    assert_eq!(db.table(&new, "cart").await, Some((1, json!(["apple"]))));
    let cart = browser.get(&a.sidecar.url("/cart")).await.json();
    assert_eq!(cart["session"], new.as_str());
    assert_eq!(cart["items"], json!(["apple"]));
    // The app is handed the stored session under the new id (its generation, not an empty one).
    let seen = browser.get(&a.sidecar.url("/echo")).await.json();
    assert_eq!(seen["x-stickyfarm-session"], new.as_str());
    assert_eq!(seen["x-stickyfarm-generation"], "1");

    // Whoever kept the old id (an attacker who planted or saw it before sign-in) gets nothing,
    // on the unit that rotated and on the one that had it cached.
    for unit in [&a, &b] {
        let mut t = thief.clone();
        eventually(Duration::from_secs(10), "the old id is dead", || async {
            let p = t.clone().get(&unit.sidecar.url("/cart")).await.json();
            p["session"] != old.as_str() && p["items"] == json!([])
        })
        .await;
        t.cookies.insert("sf_session".into(), old.clone());
        let r = t.post(&unit.sidecar.url("/sign-in")).await;
        assert_eq!(r.status, 200, "a fresh session can sign in");
        assert_ne!(r.json()["id"], new.as_str());
    }
    let client = reqwest::Client::new();
    let r = client
        .post(a.sidecar.api_url(&format!("/v1/sessions/{old}/rotate")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a dead id cannot be rotated back to life");
    let r = client
        .put(
            a.sidecar
                .api_url(&format!("/v1/sessions/{old}/tables/cart")),
        )
        .json(&json!(["x"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nor written");
    assert!(!db.session_exists(&old).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sidecar_listener_cuts_off_slow_and_oversized_heads() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &["--header-read-timeout", "2s"]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    for addr in [a.sidecar.public, a.sidecar.api, a.sidecar.admin] {
        let answer = raw_http(addr, big.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{addr}: {answer:.80}");
        let cut = slowloris(addr, 50, Duration::from_secs(15)).await;
        assert_eq!(cut, 50, "{addr}: slow heads are cut off");
    }
    // And it still serves.
    let p = Browser::new().get(&a.sidecar.url("/echo")).await;
    assert_eq!(p.status, 200);
}

/// A session id is a bearer credential: PostgreSQL's rows and its notifications carry only its
/// keyed hash, so whoever reads the tables (a backup, the app's database role) or listens on
/// the channel learns no id a cookie accepts; the sidecar's log never shows it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_are_stored_and_announced_only_as_keyed_hashes() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("stickyfarm_session").await.unwrap();
    let mut browser = Browser::new();
    browser.get(&a.sidecar.url("/echo")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    let raw = sid.parse::<stickyfarm_api::SessionId>().unwrap().as_uuid();
    let client = reqwest::Client::new();
    let r = put_cart(&client, &a, &sid, json!(["apple"]), None).await;
    assert!(r.status().is_success(), "{}", r.status());

    let sessions: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM stickyfarm_sessions")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(sessions, [stored_uuid(&sid)]);
    assert_ne!(sessions[0], raw);
    assert_eq!(db.table(&sid, "cart").await, Some((1, json!(["apple"]))));
    let announced = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the write was announced")
        .unwrap();
    assert_eq!(
        announced.payload(),
        format!("{}:1", stored_uuid(&sid)),
        "the notification names the stored id only"
    );
    let log = a.sidecar.log_text();
    assert!(!log.contains(&sid) && !log.contains(&raw.to_string()));

    // What a database reader learns is no credential: presented as a cookie, it gets a new,
    // empty session, never the shopper's.
    let stolen = stickyfarm_api::SessionId::from_uuid(stored_uuid(&sid)).to_string();
    let got = browser_with_cookie(&a, &format!("sf_session={stolen}")).await;
    assert_ne!(got, stolen);
    assert_ne!(got, sid);
    let r = client
        .get(
            a.sidecar
                .api_url(&format!("/v1/sessions/{stolen}/tables/cart")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// An earlier version stored raw ids: the first sidecar with a key re-keys them, and the
/// shopper still has the cart. A sidecar started with another key refuses to serve, naming the
/// way out, and changes nothing (it does not act as if no session existed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_sessions_are_rekeyed_and_another_key_is_refused() {
    let db = TestDb::new().await;
    // The schema as the earlier version left it (its one migration), a cart under a raw id.
    let earlier = tempfile::tempdir().unwrap();
    let first = "20261127000001_sessions.sql";
    std::fs::copy(
        format!("{}/migrations/{first}", env!("CARGO_MANIFEST_DIR")),
        earlier.path().join(first),
    )
    .unwrap();
    sqlx::migrate::Migrator::new(earlier.path())
        .await
        .unwrap()
        .run(&db.pool)
        .await
        .unwrap();
    let sid = stickyfarm_api::SessionId::generate();
    sqlx::query(
        "WITH s AS (INSERT INTO stickyfarm_sessions (id, generation, created_by)
                    VALUES ($1, 1, 'web-old') RETURNING id)
         INSERT INTO stickyfarm_session_tables (session_id, name, version, doc)
         SELECT id, 'cart', 1, '[\"pear\"]' FROM s",
    )
    .bind(sid.as_uuid())
    .execute(&db.pool)
    .await
    .unwrap();

    let a = Unit::start("web-0", &db.url, &[]).await;
    let ids = || async {
        sqlx::query_scalar::<_, uuid::Uuid>(
            "SELECT s.id FROM stickyfarm_sessions s JOIN stickyfarm_session_tables t ON t.session_id = s.id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let sid_text = sid.to_string();
    assert_eq!(
        ids().await,
        [stored_uuid(&sid_text)],
        "re-keyed, tables along"
    );
    let r = get_cart(&reqwest::Client::new(), &a, &sid.to_string()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!(["pear"])
    );
    drop(a);

    let other_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        other_key.path(),
        "another-farms-key-0123456789abcdef0123456789",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(binary("stickyfarm-sidecar"));
    cmd.args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--app-url", "http://127.0.0.1:9"])
        .args(["--unit", "web-1"])
        .arg("--session-id-key-file")
        .arg(other_key.path())
        .env("DATABASE_URL", &db.url);
    let mut proc = ChildProc::spawn("sidecar web-1", cmd);
    let mut exited = None;
    for _ in 0..200 {
        exited = proc.exit_status();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("a sidecar with another key stops");
    assert!(!status.success());
    let log = proc.log_text();
    assert!(log.contains("another session-id key"), "{log}");
    assert!(log.contains("<farm>-session-id-key"), "{log}");
    assert_eq!(ids().await, [stored_uuid(&sid_text)], "nothing changed");
}

/// A forged generation cookie (claiming more than any unit committed) cannot make a unit load
/// the session from PostgreSQL on every request: once PostgreSQL refutes the claim, that
/// session's claims reload it at most once a second, and the shopper is still served the cart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_generation_cookie_cannot_force_a_reload_per_request() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let mut browser = Browser::new();
    browser.post(&a.sidecar.url("/cart/add?item=apple")).await;
    browser.get(&a.sidecar.url("/cart")).await;
    let loads = || {
        a.sidecar
            .metric("stickyfarm_sidecar_db_queries_total", "op=\"load_session\"")
    };
    let before = loads().await;
    let started = std::time::Instant::now();
    for _ in 0..200 {
        browser.cookies.insert("sf_gen".into(), "999999999".into());
        let p = browser.get(&a.sidecar.url("/cart")).await;
        assert_eq!(p.json()["items"], json!(["apple"]));
    }
    let elapsed = started.elapsed();
    let reloads = loads().await - before;
    let bound = 1.0 + elapsed.as_secs_f64().ceil();
    assert!(
        (1.0..=bound).contains(&reloads),
        "{reloads} loads for 200 forged claims in {elapsed:?} (at least the first, at most {bound})"
    );
    assert!(
        a.sidecar
            .metric("stickyfarm_sidecar_generation_claims_refuted_total", "")
            .await
            >= 1.0
    );
}

/// Writes announce themselves to the other units after their commit, many to one notifying
/// transaction: under concurrent writes every committed change is announced exactly once,
/// and a unit that hears of one always finds it committed in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_each_announced_after_their_commit() {
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("stickyfarm_session").await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..24 {
        let mut b = Browser::new();
        b.get(&a.sidecar.url("/echo")).await;
        sessions.push(b.cookie("sf_session").unwrap().to_owned());
    }

    // Two writes per session, all sessions at once.
    let client = reqwest::Client::new();
    let writes = sessions.iter().map(|sid| {
        let (client, a) = (&client, &a);
        async move {
            for items in [json!(["apple"]), json!(["apple", "pear"])] {
                let r = put_cart(client, a, sid, items, None).await;
                assert!(r.status().is_success(), "{}", r.status());
            }
        }
    });
    futures::future::join_all(writes).await;
    // Then half of them deleted.
    for sid in &sessions[..12] {
        let r = client
            .delete(a.sidecar.api_url(&format!("/v1/sessions/{sid}")))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    let mut heard = std::collections::BTreeSet::new();
    while heard.len() < 24 * 2 + 12 {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} announcements: {heard:?}", heard.len()))
            .unwrap();
        let payload = n.payload().to_owned();
        let (id, what) = payload.split_once(':').unwrap();
        let id: uuid::Uuid = id.parse().unwrap();
        // What was announced is in PostgreSQL already.
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM stickyfarm_sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        match what {
            "deleted" => assert_eq!(generation, None, "{payload} announced before its commit"),
            g => {
                let g: i64 = g.parse().unwrap();
                // The session may be deleted by now, never behind the announcement.
                assert!(
                    generation.is_none_or(|now| now >= g),
                    "{payload} vs {generation:?}"
                );
            }
        }
        assert!(heard.insert(payload.clone()), "{payload} announced twice");
    }
    for (i, sid) in sessions.iter().enumerate() {
        let u = stored_uuid(sid);
        assert!(heard.contains(&format!("{u}:1")) && heard.contains(&format!("{u}:2")));
        assert_eq!(heard.contains(&format!("{u}:deleted")), i < 12);
    }
    let sent = a
        .sidecar
        .metric(
            "stickyfarm_sidecar_invalidations_announced_total",
            "outcome=\"sent\"",
        )
        .await;
    assert_eq!(sent, 60.0);
}

/// A write whose client goes away while PostgreSQL is still working on it (the app's request
/// was cancelled) runs to its end anyway: once committed it reaches this unit's cache and is
/// announced to the others. Otherwise the unit would keep the copy from before (the next
/// write against it refused with 409) and every other unit would too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_went_away_still_reaches_the_cache_and_the_other_units() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new().await;
    let a = Unit::start("web-0", &db.url, &[]).await;
    let b = Unit::start("web-1", &db.url, &[]).await;
    let mut browser = Browser::new();
    browser.get(&a.sidecar.url("/echo")).await;
    let sid = browser.cookie("sf_session").unwrap().to_owned();
    let client = reqwest::Client::new();
    let r = put_cart(&client, &a, &sid, json!(["apple"]), None).await;
    assert_eq!(r.status(), 201);
    let cart_on = |unit: &Unit| {
        let url = unit
            .sidecar
            .api_url(&format!("/v1/sessions/{sid}/tables/cart"));
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    assert_eq!(cart_on(&b).await, json!(["apple"]), "B holds a copy");

    // Hold the session's row so the next write waits inside PostgreSQL.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM stickyfarm_sessions WHERE id = $1 FOR UPDATE")
        .bind(stored_uuid(&sid))
        .execute(&mut *blocker)
        .await
        .unwrap();
    // The write is sent, then its client hangs up while it waits.
    let body = r#"["apple","pear"]"#;
    let mut conn = tokio::net::TcpStream::connect(a.sidecar.api).await.unwrap();
    conn.write_all(
        format!(
            "PUT /v1/sessions/{sid}/tables/cart HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "the write waits for the row", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%stickyfarm_session_tables%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.commit().await.unwrap();

    // Committed; A's cache follows it, and B heard of it.
    eventually(Duration::from_secs(5), "the write committed", || async {
        db.table(&sid, "cart").await == Some((2, json!(["apple", "pear"])))
    })
    .await;
    eventually(Duration::from_secs(5), "B drops its old copy", || async {
        cart_on(&b).await == json!(["apple", "pear"])
    })
    .await;
    assert_eq!(cart_on(&a).await, json!(["apple", "pear"]));
    let r = put_cart(&client, &a, &sid, json!(["plum"]), None).await;
    assert_eq!(r.status(), 200, "A writes against the committed version");
    assert_eq!(db.table(&sid, "cart").await, Some((3, json!(["plum"]))));
}
