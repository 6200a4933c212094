//! `farmctl up` on the example farm: real processes, real PostgreSQL, loopback only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stickyfarm_testkit::*;
use stickyfarm_webstore::shop::session_ref;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/webstore.yaml")
}

/// A running `farmctl up`.
struct Farm {
    process: ChildProc,
    state_dir: tempfile::TempDir,
    url: String,
}

impl Farm {
    /// Starts the example farm; `database_url: None` makes farmctl start its own cluster.
    async fn up(database_url: Option<&str>) -> Farm {
        Self::up_with(database_url, &[]).await
    }

    /// [`Farm::up`] with more `farmctl up` flags.
    async fn up_with(database_url: Option<&str>, extra: &[&str]) -> Farm {
        let state_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(binary("farmctl"));
        cmd.arg("--state-dir")
            .arg(state_dir.path())
            .arg("up")
            .arg(example())
            .args(["--port", &port.to_string(), "--quiet"])
            .args(extra);
        match database_url {
            Some(url) => {
                cmd.args(["--database-url", url]);
            }
            None => {
                cmd.env_remove("DATABASE_URL");
            }
        }
        let mut farm = Farm {
            process: ChildProc::spawn("farmctl", cmd),
            state_dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // A farmctl that gave up fails the test at once, with its reason.
            farm.process.assert_running();
            if let Ok(r) = client.get(format!("{}/", farm.url)).send().await
                && r.status() == 200
                && r.text()
                    .await
                    .unwrap_or_default()
                    .contains("Served by unit")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the farm did not serve its first page within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every unit in service before the test starts.
        eventually(Duration::from_secs(60), "all units up", || async {
            farm.farmctl(&["status", "--json"])
                .map(|out| {
                    serde_json::from_str::<Value>(&out).unwrap()["units"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|u| u["state"] == "up")
                })
                .unwrap_or(false)
        })
        .await;
        farm
    }

    /// The processes farmctl recorded (gateway, and each unit's sidecar and app).
    fn pids(&self) -> Vec<u64> {
        self.state()["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect()
    }

    fn state(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.state_dir.path().join("farm.json")).unwrap(),
        )
        .unwrap()
    }

    /// The id PostgreSQL stores for `session`, under the farm's key from the state dir.
    fn stored_uuid(&self, session: &str) -> uuid::Uuid {
        let key = std::fs::read_to_string(self.state_dir.path().join("session-id-key")).unwrap();
        stickyfarm_testkit::stored_uuid_with(&key, session)
    }

    /// Runs another farmctl command against this farm; Err with its stderr on failure.
    fn farmctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(binary("farmctl"))
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// Sends JSON to the shop through the gateway, following the unit links like a browser.
async fn shop(b: &mut Browser, method: reqwest::Method, url: &str, body: Option<Value>) -> Page {
    b.send(method, url, body.as_ref()).await
}

fn alive(pid: u64) -> bool {
    // A zombie is dead already; it only waits for its parent to read its status.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// A SIGTERM while the farm is still coming up (units starting, private PostgreSQL running)
/// stops what has started and exits cleanly, as it does once the farm serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_the_farm_starts_stops_everything_it_started() {
    let state_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("farmctl"));
    cmd.arg("--state-dir")
        .arg(state_dir.path())
        .arg("up")
        .arg(example())
        .args(["--port", &free_port().to_string(), "--quiet"])
        .env_remove("DATABASE_URL");
    let mut farmctl = ChildProc::spawn("farmctl", cmd);
    // The state file appears once the processes are launched, before the units are up.
    let state_file = state_dir.path().join("farm.json");
    eventually(
        Duration::from_secs(120),
        "farmctl launched the farm",
        || {
            let exists = state_file.exists();
            async move { exists }
        },
    )
    .await;
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let pids: Vec<u64> = state["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(!pids.is_empty(), "{state}");
    let pg = state["postgres_data"].as_str().unwrap().to_owned();

    assert!(
        farmctl.terminate(Duration::from_secs(60)),
        "farmctl did not stop cleanly:\n{}",
        farmctl.log_text()
    );
    for p in &pids {
        assert!(!alive(*p), "process {p} outlived the farm");
    }
    assert!(
        processes_naming(&pg).is_empty(),
        "the private PostgreSQL stopped"
    );
    assert!(!state_file.exists(), "the state file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_shop_and_stops_leaving_no_process_behind() {
    // No database given: farmctl starts (and removes) a private PostgreSQL cluster.
    let mut farm = Farm::up(None).await;
    let page = Browser::new().get(&format!("{}/", farm.url)).await;
    assert!(page.body.contains("Stickyfarm Webstore"));
    assert!(
        page.body.contains("/_unit/webstore-"),
        "links point at the unit"
    );
    eventually(
        Duration::from_secs(10),
        "gateway + 3 × (sidecar + app) recorded",
        || async { farm.pids().len() == 7 },
    )
    .await;
    let state = farm.state();
    let pids = farm.pids();
    assert!(pids.iter().all(|p| alive(*p)));
    let pg = state["postgres_data"].as_str().unwrap().to_owned();
    assert!(
        !processes_naming(&pg).is_empty(),
        "the private PostgreSQL runs"
    );
    // Only farmctl's user reaches its control socket, logs and the database's files.
    use std::os::unix::fs::PermissionsExt;
    for dir in [farm.state_dir.path(), Path::new(&pg)] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}: {mode:o}", dir.display());
    }
    assert!(
        !Path::new(&pg).join("pwfile").exists(),
        "the password file is gone once the cluster is initialised"
    );
    for token in ["admin-token", "gateway-token", "session-id-key"] {
        let path = farm.state_dir.path().join(token);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
    }

    // Unit actions go through the gateway's control port with the farm's admin token; the
    // same call without it is refused.
    let admin_of = |unit: &str| {
        let status: Value =
            serde_json::from_str(&farm.farmctl(&["status", "--json"]).unwrap()).unwrap();
        status["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == unit)
            .map(|u| u["admin"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let control = farm.state()["gateway_control"].as_str().unwrap().to_owned();
    let anonymous = reqwest::Client::new()
        .post(format!("http://{control}/units/webstore-0/disable"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(admin_of("webstore-0"), "enabled");
    assert_eq!(
        farm.farmctl(&["disable", "webstore-0"]).unwrap().trim(),
        "ok"
    );
    assert_eq!(admin_of("webstore-0"), "disabled");
    assert_eq!(
        farm.farmctl(&["enable", "webstore-0"]).unwrap().trim(),
        "ok"
    );
    assert_eq!(admin_of("webstore-0"), "enabled");
    let e = farm.farmctl(&["drain", "webstore-9"]).unwrap_err();
    assert!(e.contains("no unit webstore-9"), "{e}");

    assert!(
        farm.process.terminate(Duration::from_secs(60)),
        "farmctl exits 0 on SIGTERM"
    );
    for p in &pids {
        assert!(!alive(*p), "process {p} outlived the farm");
    }
    assert_eq!(
        processes_naming(&pg),
        Vec::<String>::new(),
        "PostgreSQL outlived the farm"
    );
    assert!(!Path::new(&pg).exists(), "the throwaway cluster is removed");
    assert!(!farm.state_dir.path().join("farm.json").exists());
    assert!(!farm.state_dir.path().join("farmctl.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_keeps_the_cart_when_its_unit_is_killed_and_checkout_is_exact() {
    let db = TestDb::new().await;
    let farm = Farm::up(Some(&db.url)).await;
    let mut b = Browser::new();
    let me = shop(
        &mut b,
        reqwest::Method::GET,
        &format!("{}/api/whoami", farm.url),
        None,
    )
    .await
    .json();
    let home = me["unit"].as_str().unwrap().to_owned();
    let base = me["unit_url"].as_str().unwrap().to_owned();
    for (sku, qty) in [("apple", 2), ("tea", 1), ("coffee", 3)] {
        let p = shop(
            &mut b,
            reqwest::Method::POST,
            &format!("{base}/api/cart/items"),
            Some(json!({"sku": sku, "qty": qty})),
        )
        .await;
        assert_eq!(p.status, 200, "{}", p.body);
    }
    let session = b.cookie("sf_session").unwrap().to_owned();

    farm.farmctl(&["kill", &home]).unwrap();
    let cart = shop(
        &mut b,
        reqwest::Method::GET,
        &format!("{base}/api/cart"),
        None,
    )
    .await;
    assert_eq!(cart.status, 200);
    let cart = cart.json();
    assert_ne!(cart["unit"], home.as_str(), "a backup serves");
    assert_eq!(cart["session"], session.as_str());
    assert_eq!(cart["items"], json!({"apple": 2, "tea": 1, "coffee": 3}));
    assert_eq!(b.cookie("sf_unit"), cart["unit"].as_str());

    let backup = cart["unit_url"].as_str().unwrap().to_owned();
    let order = shop(
        &mut b,
        reqwest::Method::POST,
        &format!("{backup}/api/checkout"),
        None,
    )
    .await;
    assert_eq!(order.status, 200, "{}", order.body);
    let order = order.json();
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT i.sku, i.qty FROM webstore_order_items i JOIN webstore_orders o ON o.id = i.order_id
          WHERE o.session_ref = $1 ORDER BY i.sku",
    )
    .bind(session_ref(&session))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("apple".into(), 2), ("coffee".into(), 3), ("tea".into(), 1)]
    );
    let orders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webstore_orders WHERE session_ref = $1")
            .bind(session_ref(&session))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(orders, 1);
    assert_eq!(order["total_cents"], 2 * 349 + 590 + 3 * 1290);
    // The cart is empty after checkout.
    let cart = shop(
        &mut b,
        reqwest::Method::GET,
        &format!("{backup}/api/cart"),
        None,
    )
    .await
    .json();
    assert_eq!(cart["items"], json!({}));
    // Unknown units and bad commands are refused with a clear message.
    let e = farm.farmctl(&["kill", "webstore-9"]).unwrap_err();
    assert!(e.contains("no unit \"webstore-9\""), "{e}");

    // Even if farmctl itself is SIGKILLed, its children do not outlive it.
    let mut farm = farm;
    let pids = farm.pids();
    assert!(!pids.is_empty());
    farm.process.kill();
    eventually(
        Duration::from_secs(15),
        "children die with farmctl",
        || async { pids.iter().all(|p| !alive(*p)) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_shoppers_lose_nothing_while_a_unit_is_killed_and_restarted() {
    let db = TestDb::new().await;
    let farm = Farm::up(Some(&db.url)).await;
    let skus = ["apple", "bread", "cheese", "coffee", "honey", "tea"];
    let url = farm.url.clone();
    let mut shoppers = Vec::new();
    for s in 0..20u32 {
        let url = url.clone();
        shoppers.push(tokio::spawn(async move {
            let mut b = Browser::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut base = url.clone();
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            // Setting a quantity is idempotent, so a failed request is simply retried; only
            // acknowledged changes enter the model.
            for i in 0..20u32 {
                let sku = skus[((s + i) % 6) as usize];
                let qty = u64::from((s * 7 + i * 3) % 5);
                loop {
                    assert!(Instant::now() < deadline, "shopper {s} ran out of time");
                    let p = shop(
                        &mut b,
                        reqwest::Method::PUT,
                        &format!("{base}/api/cart/items/{sku}"),
                        Some(json!({"qty": qty})),
                    )
                    .await;
                    if p.status == 200 {
                        let cart = p.json();
                        base = cart["unit_url"].as_str().unwrap().to_owned();
                        if qty == 0 {
                            model.remove(sku);
                        } else {
                            model.insert(sku.to_owned(), qty);
                        }
                        let items: BTreeMap<String, u64> =
                            serde_json::from_value(cart["items"].clone()).unwrap();
                        assert_eq!(items, model, "shopper {s}: the acknowledged cart");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if model.is_empty() {
                let p = shop(
                    &mut b,
                    reqwest::Method::PUT,
                    &format!("{base}/api/cart/items/apple"),
                    Some(json!({"qty": 1})),
                )
                .await;
                assert_eq!(p.status, 200);
                model.insert("apple".into(), 1);
            }
            // Check out; a retry after an unanswered attempt finds the order already made
            // (same cart version) or an emptied cart.
            loop {
                assert!(Instant::now() < deadline, "shopper {s} could not check out");
                let p = shop(
                    &mut b,
                    reqwest::Method::POST,
                    &format!("{base}/api/checkout"),
                    None,
                )
                .await;
                if p.status == 200 || (p.status == 400 && p.body.contains("empty")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (b.cookie("sf_session").unwrap().to_owned(), model)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    farm.farmctl(&["kill", "webstore-1"]).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    farm.farmctl(&["restart", "webstore-1"]).unwrap();

    for s in shoppers {
        let (session, model) = s.await.unwrap();
        let orders: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM webstore_orders WHERE session_ref = $1")
                .bind(session_ref(&session))
                .fetch_all(&db.pool)
                .await
                .unwrap();
        assert_eq!(orders.len(), 1, "exactly one order for {session}");
        let rows: Vec<(String, i32)> =
            sqlx::query_as("SELECT sku, qty FROM webstore_order_items WHERE order_id = $1")
                .bind(orders[0])
                .fetch_all(&db.pool)
                .await
                .unwrap();
        let ordered: BTreeMap<String, u64> = rows.into_iter().map(|(k, q)| (k, q as u64)).collect();
        assert_eq!(
            ordered, model,
            "the order holds exactly the acknowledged cart"
        );
    }
    let status = farm.farmctl(&["status"]).unwrap();
    assert!(status.contains("webstore-1"), "{status}");
    // The status page: its URL, and the page there names every unit.
    let url = farm.farmctl(&["status", "--open"]).unwrap();
    let page = reqwest::get(url.trim()).await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let page = page.text().await.unwrap();
    for unit in ["webstore-0", "webstore-1"] {
        assert!(
            page.contains(&format!("<span class=\"name\">{unit}</span>")),
            "{page}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_quantities_are_refused_and_a_burst_of_them_ejects_no_unit() {
    let db = TestDb::new().await;
    let farm = Farm::up(Some(&db.url)).await;
    let mut attacker = Browser::new();
    let me = shop(
        &mut attacker,
        reqwest::Method::GET,
        &format!("{}/api/whoami", farm.url),
        None,
    )
    .await
    .json();
    let base = me["unit_url"].as_str().unwrap().to_owned();
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;
    let items = format!("{base}/api/cart/items");
    let tea = format!("{base}/api/cart/items/tea");
    let p = shop(
        &mut attacker,
        post.clone(),
        &items,
        Some(json!({"sku": "tea", "qty": 1})),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.body);

    // 1 + u32::MAX once wrapped to a line of 0 that made every checkout of the cart fail in
    // the database (503), and a burst of those ejected units.
    let crafted = [
        (post.clone(), &items, json!({"sku": "tea", "qty": u32::MAX})),
        (put.clone(), &tea, json!({"qty": u32::MAX})),
        (put.clone(), &tea, json!({"qty": 100})),
        (put.clone(), &tea, json!({"qty": -1})),
        (post.clone(), &items, json!({"sku": "tea", "qty": 1e12})),
    ];
    for round in 0..12 {
        for (method, url, body) in &crafted {
            let p = shop(&mut attacker, method.clone(), url, Some(body.clone())).await;
            assert!(
                (400..500).contains(&p.status),
                "{method} {body}: {} {}",
                p.status,
                p.body
            );
            if round == 0 && body["qty"] == json!(u32::MAX) {
                assert_eq!(p.status, 422);
                assert!(p.body.contains("limit of 99"), "{}", p.body);
            }
        }
    }
    let cart = shop(
        &mut attacker,
        reqwest::Method::GET,
        &format!("{base}/api/cart"),
        None,
    )
    .await
    .json();
    assert_eq!(
        cart["items"],
        json!({"tea": 1}),
        "refused input changed nothing"
    );

    // Signing in rotates the session id (OWASP): the cart moves to the new id, the old id is
    // dead, and the order is placed under the new one.
    let before = attacker.cookie("sf_session").unwrap().to_owned();
    let p = attacker
        .post_form(&format!("{base}/login"), &[("name", "Ann")])
        .await;
    assert!(p.status < 400, "{} {}", p.status, p.body);
    let after = attacker.cookie("sf_session").unwrap().to_owned();
    assert_ne!(after, before, "a new session id on sign-in");
    // PostgreSQL knows sessions by a keyed hash of their id (the farm's key in the state dir).
    let stored = |session: &str| farm.stored_uuid(session);
    let exists = |id: uuid::Uuid| {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM stickyfarm_sessions WHERE id = $1)",
        )
        .bind(id)
        .fetch_one(&db.pool)
    };
    assert!(
        !exists(stored(&before)).await.unwrap(),
        "the old id has no session any more"
    );
    assert!(
        exists(stored(&after)).await.unwrap(),
        "the new id holds the session"
    );

    // No unit left service, and the cart checks out with what was accepted.
    let status: Value =
        serde_json::from_str(&farm.farmctl(&["status", "--json"]).unwrap()).unwrap();
    for u in status["units"].as_array().unwrap() {
        assert_eq!(u["state"], "up", "{u}");
    }
    // Checkout with an Idempotency-Key, then the same again as a client whose first answer was
    // lost would: the same order, not "the cart is empty", and one order row.
    let cookie = attacker.cookie_header();
    let checkout = || {
        reqwest::Client::new()
            .post(format!("{base}/api/checkout"))
            .header("cookie", &cookie)
            .header("idempotency-key", "order-7f3a")
            .send()
    };
    let first = checkout().await.unwrap();
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let order_id = first.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let again = checkout().await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "a retried checkout is answered, not refused"
    );
    assert_eq!(again.json::<Value>().await.unwrap()["id"], order_id);
    let p = shop(&mut attacker, post, &format!("{base}/api/checkout"), None).await;
    assert!(
        p.status == 400 && p.body.contains("empty"),
        "without the key: {}",
        p.body
    );
    let orders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webstore_orders WHERE session_ref = $1")
            .bind(session_ref(&after))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(orders, 1);
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT i.sku, i.qty FROM webstore_order_items i JOIN webstore_orders o ON o.id = i.order_id
          WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![("tea".into(), 1)]);
    let (customer, session): (Option<String>, String) =
        sqlx::query_as("SELECT customer, session_ref FROM webstore_orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(customer.as_deref(), Some("Ann"));
    assert_eq!(
        session,
        session_ref(&after),
        "the order names the session by its digest"
    );
    assert!(!session.contains(&after));
}

/// What a tab shows of the live badge, read from its DOM.
const READ_BADGE: &str = "return {
  unit: document.querySelector('#served-by b')?.textContent ?? null,
  items: document.getElementById('cart-count')?.textContent ?? null,
  live: document.body.dataset.live ?? null,
  opens: Number(document.body.dataset.liveOpens || 0),
  marker: window.stickyfarmMarker ?? null,
};";

/// Waits until the current tab's badge state passes `check`; returns it.
async fn badge_until(
    browser: &chromium::Chromium,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = browser.eval(READ_BADGE).await;
        if check(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: the tab shows {seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The shop's one live feature, in a real browser: two tabs of one session; a cart change in
/// one shows in the other's badge without a reload, over a WebSocket through gateway and
/// sidecar. When their unit dies, the other tab's socket is closed (1012), reconnects to the
/// session's backup, and the badge goes on updating from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_badge_follows_changes_in_other_tabs_and_survives_its_unit() {
    let Some(tools) = chromium::Tools::find() else {
        return;
    };
    let db = TestDb::new().await;
    let farm = Farm::up(Some(&db.url)).await;
    let browser = chromium::Chromium::start(&tools).await;

    browser.open(&format!("{}/", farm.url)).await;
    let shopping = browser.tab().await;
    let first = badge_until(&browser, "tab 1 live", |s| s["live"] == "open").await;
    let home = first["unit"].as_str().unwrap().to_owned();
    assert_eq!(first["items"], "0");

    // A second tab of the same session (the same browser's cookies), on the same unit.
    let watching = browser.new_tab().await;
    browser.open(&format!("{}/cart", farm.url)).await;
    let second = badge_until(&browser, "tab 2 live", |s| s["live"] == "open").await;
    assert_eq!(second["unit"], home.as_str());
    browser
        .eval("window.stickyfarmMarker = 'no reload'; return null;")
        .await;

    // Tab 1 adds to the cart with the page's own form; tab 2's badge follows, not reloaded.
    browser.switch_to(&shopping).await;
    browser
        .eval("document.querySelector('form[action$=\"/cart/add\"]').submit(); return null;")
        .await;
    browser.switch_to(&watching).await;
    let updated = badge_until(&browser, "badge after adding", |s| s["items"] == "1").await;
    assert_eq!(updated["marker"], "no reload");

    // The unit dies under both tabs: tab 2's socket reconnects, to the session's backup.
    farm.farmctl(&["kill", &home]).unwrap();
    badge_until(&browser, "tab 2 reconnected", |s| {
        s["opens"].as_u64() >= Some(2) && s["live"] == "open"
    })
    .await;
    // Tab 1 shops on (its next page fails over like any request); tab 2 hears of it.
    browser.switch_to(&shopping).await;
    browser.open(&format!("{}/", farm.url)).await;
    let moved = badge_until(&browser, "tab 1 on the backup", |s| s["items"] == "1").await;
    assert_ne!(moved["unit"], home.as_str(), "a backup serves tab 1");
    browser
        .eval("document.querySelector('form[action$=\"/cart/add\"]').submit(); return null;")
        .await;
    browser.switch_to(&watching).await;
    let after = badge_until(&browser, "badge after the failover", |s| s["items"] == "2").await;
    assert_eq!(after["marker"], "no reload", "tab 2 was never reloaded");
    browser.close().await;
}

/// `farmctl up --tls`: a local CA in the state folder, the shop over HTTPS on HTTP/2 and
/// HTTP/1.1 for the names the farm is reached by, unit links over https, Secure cookies, and
/// the CA kept across runs so a client that trusts it keeps trusting the farm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_tls_serves_the_shop_over_https_with_its_own_ca() {
    use stickyfarm_testkit::tls::{TLS12, TLS13, TlsClient};
    let db = TestDb::new().await;
    let state_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let start = || {
        let mut cmd = Command::new(binary("farmctl"));
        cmd.arg("--state-dir")
            .arg(state_dir.path())
            .arg("up")
            .arg(example())
            .args([
                "--port",
                &port.to_string(),
                "--tls",
                "--database-url",
                &db.url,
            ]);
        ChildProc::spawn("farmctl", cmd)
    };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let ca_file = state_dir.path().join("tls/ca.crt");
    let mut farm = start();
    let deadline = Instant::now() + Duration::from_secs(120);
    let ca = loop {
        farm.assert_running();
        if farm.log_text().contains("the farm is serving") {
            break std::fs::read_to_string(&ca_file).unwrap();
        }
        assert!(Instant::now() < deadline, "the farm did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = farm.log_text();
    assert!(
        log.contains(&format!("curl --cacert {}", ca_file.display()))
            && log.contains(&format!("https://127.0.0.1:{port}/")),
        "farmctl says how to trust its CA: {log}"
    );

    for (versions, alpn, name, http) in [
        (TLS13, &b"h2"[..], "localhost", http::Version::HTTP_2),
        (TLS12, b"http/1.1", "127.0.0.1", http::Version::HTTP_11),
    ] {
        let client = TlsClient::new(&[&ca], versions, &[alpn]);
        let page = eventually_ok(|| client.get(addr, name, "/", None)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.version, http);
        assert!(page.body.contains("Served by unit"), "{}", page.body);
        let cookies = page.set_cookies();
        assert!(
            !cookies.is_empty()
                && cookies
                    .iter()
                    .all(|c| c.starts_with("__Host-") && c.contains("; Secure")),
            "{cookies:?}"
        );
        let whoami = client
            .get(addr, name, "/api/whoami", None)
            .await
            .unwrap()
            .json();
        assert!(
            whoami["unit_url"]
                .as_str()
                .unwrap()
                .starts_with(&format!("https://127.0.0.1:{port}/_unit/")),
            "{whoami}"
        );
    }
    let issued = std::fs::read_to_string(state_dir.path().join("tls/tls.crt")).unwrap();
    assert!(farm.terminate(Duration::from_secs(30)));

    // Again: the CA stays (clients that trust it keep working), the certificate is new.
    let mut farm = start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !farm.log_text().contains("the farm is serving") {
        farm.assert_running();
        assert!(Instant::now() < deadline, "the farm did not start again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), ca);
    assert_ne!(
        std::fs::read_to_string(state_dir.path().join("tls/tls.crt")).unwrap(),
        issued
    );
    let client = TlsClient::new(&[&ca], TLS13, &[b"h2"]);
    let page = eventually_ok(|| client.get(addr, "localhost", "/", None)).await;
    assert_eq!(page.status, 200);
    assert!(farm.terminate(Duration::from_secs(30)));
}

/// The first success of `attempt` within 30 s (the gateway may still be taking its units in).
async fn eventually_ok<F, Fut, T>(attempt: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "no success within 30 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The parent of process `pid`, from `/proc`.
fn parent_of(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces, so read after its closing parenthesis.
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// `--app-command`: each unit's app is whatever command starts it (here a shell line that
/// notes its unit and port, then runs the shop as a child, as `npm start` runs node). The farm
/// serves through it, and stopping the farm stops the command's children too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_each_units_app_from_any_command_and_stops_its_children() {
    let db = TestDb::new().await;
    let marks = tempfile::tempdir().unwrap();
    let started = marks.path().join("started");
    // Something after the shop keeps the shell waiting as its parent (a shell may otherwise
    // replace itself with its last command).
    let line = format!(
        "echo \"$POD_NAME $PORT\" >> '{started}'; '{}'; echo \"$POD_NAME stopped\" >> '{started}'",
        binary("stickyfarm-webstore").display(),
        started = started.display(),
    );
    let mut farm = Farm::up_with(Some(&db.url), &["--app-command", &line]).await;

    // Every unit's app was started by the command, with its unit's name and port.
    let lines = std::fs::read_to_string(&started).unwrap();
    let mut units: Vec<&str> = lines
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    units.sort();
    assert_eq!(units, ["webstore-0", "webstore-1", "webstore-2"], "{lines}");
    assert!(
        lines
            .lines()
            .all(|l| l.split(' ').nth(1).unwrap().parse::<u16>().is_ok())
    );

    // The shop serves through it.
    let mut b = Browser::new();
    let home = b.get(&format!("{}/", farm.url)).await;
    assert!(home.body.contains("Stickyfarm Webstore"));

    // The recorded app processes are the shells; their children are the shops.
    eventually(
        Duration::from_secs(10),
        "gateway + 3 × (sidecar + app) recorded",
        || async { farm.pids().len() == 7 },
    )
    .await;
    let pids = farm.pids();
    let children: Vec<u64> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|p| parent_of(*p).is_some_and(|parent| pids.contains(&parent)))
        .collect();
    assert_eq!(children.len(), 3, "one shop under each unit's shell");

    assert!(farm.process.terminate(Duration::from_secs(60)));
    for p in pids.iter().chain(&children) {
        assert!(!alive(*p), "process {p} outlived the farm");
    }

    // An empty command is refused before anything starts.
    let out = Command::new(binary("farmctl"))
        .arg("--state-dir")
        .arg(marks.path())
        .args(["up"])
        .arg(example())
        .args(["--app-command", " ", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--app-command is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
