//! The user's path, end to end, on a cluster that runs pods (the local control plane with its real
//! node, or kind): install the chart with helm, apply `examples/webstore.yaml` with kubectl,
//! shop through the gateway, lose a unit's pod, scale, lose the database's pod, upgrade the
//! chart, delete the farm. Every step asserts what a user would check: who answered, what the
//! cart holds, what PostgreSQL stored, which objects exist.
//!
//! README's "Install on Kubernetes" is the same sequence of commands.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::ListParams;
use kube::{Api, Client};
use reqwest::Method;
use serde_json::{Value, json};
use stickyfarm_api::farm::ServerFarm;
use stickyfarm_e2e::{
    OPERATOR_PODS, Reach, admin, apply_example_farm, eventually, helm_run, install_chart_with_pods,
    kubeconfig, kubectl, kubectl_stickyfarm, pods_run, scale_farm,
};
use stickyfarm_testkit::{Browser, stored_uuid_with};

const NS: &str = "shop";
const FARM: &str = "webstore";
const RELEASE_NS: &str = "stickyfarm-system";
const GATEWAY_PORT: u16 = 8000;
const GATEWAY_ADMIN_PORT: u16 = 9465;
const GATEWAY_CONTROL_PORT: u16 = 9466;
const SIDECAR_METRICS_PORT: u16 = 9464;
const POSTGRES_PORT: u16 = 5432;

/// Progress on the terminal (libtest captures only the print macros).
fn step(what: &str) {
    let _ = writeln!(std::io::stderr(), "==> {what}");
}

fn selector(component: &str) -> String {
    format!("stickyfarm.dev/farm={FARM},stickyfarm.dev/component={component}")
}

/// `(uid, ready)` of a pod, `None` when it does not exist.
async fn pod_state(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<(String, bool)>> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok(pod
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (p.metadata.uid.unwrap_or_default(), ready)
        }))
}

async fn pod_names(client: &Client, ns: &str, selector: &str) -> anyhow::Result<Vec<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await?;
    let mut names: Vec<String> = pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// The gateway's status table: unit → (state, admin state, instance).
async fn gateway_units(admin: &Reach) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let table: Value = reqwest::get(format!("http://{}/status", admin.addr))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(table["units"]
        .as_array()
        .context("no units in the gateway's status")?
        .iter()
        .map(|u| {
            let s = |k: &str| u[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("state"), s("admin"), s("instance"))
        })
        .collect())
}

/// How many objects of a kind in the suite's namespace match `lp`.
async fn count<K>(client: &Client, lp: &ListParams) -> anyhow::Result<usize>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Ok(Api::<K>::namespaced(client.clone(), NS)
        .list(lp)
        .await?
        .items
        .len())
}

/// Waits until the gateway counts `n` units up.
async fn units_up(admin: &Reach, n: usize, within: Duration) -> anyhow::Result<()> {
    eventually(within, &format!("{n} units up in the gateway"), || async {
        Ok(gateway_units(admin)
            .await?
            .iter()
            .filter(|u| u.1 == "up")
            .count()
            == n)
    })
    .await
}

async fn metric(addr: std::net::SocketAddr, name: &str, labels: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let wanted = format!("{name}{{{labels}}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0.0, |v| v.trim().parse().unwrap_or(0.0)))
}

/// The farm's database, reached from this machine with the credentials of one of its
/// generated Secrets (`<farm>-db`: the sidecars' role; `<farm>-db-app`: the app's).
async fn farm_database(
    kc: &Path,
    client: &Client,
    secret: &str,
) -> anyhow::Result<(sqlx::PgPool, Reach)> {
    let secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get(secret)
        .await?;
    let url = secret
        .data
        .and_then(|d| {
            d.get("url")
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })
        .context("the database Secret has no url")?;
    // postgres://user:password@webstore-db.shop.svc:5432/db → the pod as this machine reaches it.
    let (head, tail) = url
        .rsplit_once('@')
        .context("a database URL without credentials")?;
    let db = tail.split_once('/').map_or("", |(_, d)| d);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let reach = Reach::pod(kc, NS, &format!("{FARM}-db-0"), POSTGRES_PORT).await?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&format!("{head}@{}/{db}", reach.addr))
                .await?;
            anyhow::Ok((pool, reach))
        };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("connecting to the farm's PostgreSQL"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The farm's session-id key, from the Secret the operator generated.
async fn session_id_key(client: &Client) -> anyhow::Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get(&format!("{FARM}-session-id-key"))
        .await?;
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get("session-id-key"))
        .context("the session-id key Secret has no key session-id-key")?;
    Ok(String::from_utf8(key.0.clone())?)
}

/// The cart as PostgreSQL stores it for a session (by the keyed hash of its id).
async fn stored_cart(pool: &sqlx::PgPool, key: &str, session: &str) -> anyhow::Result<Value> {
    let doc: Option<Value> = sqlx::query_scalar(
        "SELECT doc FROM stickyfarm_session_tables WHERE session_id = $1 AND name = 'cart'",
    )
    .bind(stored_uuid_with(key, session))
    .fetch_optional(pool)
    .await?;
    doc.context("no cart stored for the session")
}

/// Items of a cart document (`{"lines": …}` or `{"items": …}` shapes both count).
fn items_of(doc: &Value) -> Value {
    doc.get("items").cloned().unwrap_or_else(|| doc.clone())
}

async fn get_json(b: &mut Browser, url: &str) -> anyhow::Result<Value> {
    let p = b.send(Method::GET, url, None).await;
    ensure!(p.status == 200, "GET {url}: {} {}", p.status, p.body);
    Ok(p.json())
}

async fn add_to_cart(b: &mut Browser, base: &str, sku: &str, qty: u32) -> anyhow::Result<Value> {
    let url = format!("{base}/api/cart/items");
    let p = b
        .send(Method::POST, &url, Some(&json!({"sku": sku, "qty": qty})))
        .await;
    ensure!(p.status == 200, "POST {url}: {} {}", p.status, p.body);
    Ok(p.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_installs_shops_and_the_farm_survives_failures_scaling_and_upgrades()
-> anyhow::Result<()> {
    let Some(kc) = kubeconfig() else {
        return Ok(());
    };
    if !pods_run() {
        return Ok(());
    }
    let kc = kc.as_path();
    let client = admin(kc).await?;

    step("helm install: the operator runs in a pod as its ServiceAccount");
    // From scratch, as a user starts: a release an earlier run left goes first (the CRD stays,
    // the chart keeps it on uninstall).
    helm_run(
        kc,
        &[
            "uninstall",
            "stickyfarm",
            "--namespace",
            RELEASE_NS,
            "--ignore-not-found",
            "--wait",
        ],
    )?;
    install_chart_with_pods(kc)?;
    let operators = pod_names(&client, RELEASE_NS, OPERATOR_PODS).await?;
    ensure!(
        operators.len() == 1,
        "one operator pod, found {operators:?}"
    );
    let (operator_uid, ready) = pod_state(&client, RELEASE_NS, &operators[0])
        .await?
        .context("operator pod")?;
    ensure!(ready, "helm --wait returned with the operator not Ready");

    step("helm test: the chart's hook pod asks the operator's /readyz through its metrics Service");
    // The pod runs in the release namespace, behind the operator's NetworkPolicy, which
    // admits it by its label.
    let tested = helm_run(
        kc,
        &[
            "test",
            "stickyfarm",
            "--namespace",
            RELEASE_NS,
            "--logs",
            "--timeout",
            "120s",
        ],
    )?;
    ensure!(
        tested.contains("stickyfarm-test-operator-answers")
            && tested.contains("Succeeded")
            && tested.contains("ready: leading"),
        "helm test passed and its pod read the operator's answer:\n{tested}"
    );

    step("kubectl apply -f examples/webstore.yaml; kubectl wait for the farm to be Ready");
    // A namespace of the suite's own, emptied first if an earlier run left it.
    apply_example_farm(kc, NS, "webstore.yaml", FARM)?;
    let listed = kubectl(kc, &["get", "-n", NS, "serverfarms"])?;
    ensure!(
        listed
            .lines()
            .any(|l| l.starts_with(FARM) && l.contains("3/3")),
        "kubectl get serverfarms shows the farm with 3/3 units:\n{listed}"
    );
    let farms: Api<ServerFarm> = Api::namespaced(client.clone(), NS);
    let status = farms
        .get(FARM)
        .await?
        .status
        .context("the farm has a status")?;
    ensure!(
        status.ready_replicas == 3,
        "3 ready units, status says {}",
        status.ready_replicas
    );
    for u in &status.units {
        let (uid, ready) = pod_state(&client, NS, &u.name)
            .await?
            .with_context(|| format!("pod {}", u.name))?;
        ensure!(ready, "unit {} is Ready", u.name);
        ensure!(
            u.instance_id.as_deref() == Some(uid.as_str()),
            "unit {}'s instance id is its pod's UID",
            u.name
        );
    }
    let gateway_pod = pod_names(&client, NS, &selector("gateway"))
        .await?
        .pop()
        .context("a gateway pod")?;
    let gateway = Reach::pod(kc, NS, &gateway_pod, GATEWAY_PORT).await?;
    let gw_admin = Reach::pod(kc, NS, &gateway_pod, GATEWAY_ADMIN_PORT).await?;
    let url = |path: &str| format!("http://{}{path}", gateway.addr);
    // Without spec.gateway.publicHost the unit links are relative: resolved against the
    // address this test reaches the gateway by, as a browser would.
    let link = |unit_url: &Value| -> anyhow::Result<String> {
        let u = unit_url.as_str().context("unit_url")?;
        Ok(if u.starts_with('/') {
            url(u)
        } else {
            u.to_owned()
        })
    };
    units_up(&gw_admin, 3, Duration::from_secs(60)).await?;

    step("shop through the gateway: the catalog, a unit link, the cart");
    let mut b = Browser::new();
    let page = b.send(Method::GET, &url("/"), None).await;
    ensure!(
        page.status == 200 && page.body.contains("Served by unit"),
        "the catalog page: {} {}",
        page.status,
        page.body
    );
    let home = b
        .cookie("sf_unit")
        .context("the gateway pins the client to a unit")?
        .to_owned();
    let cookies = page.set_cookies().join("\n");
    ensure!(
        cookies.contains("sf_session=") && cookies.contains("HttpOnly"),
        "session cookie is HttpOnly: {cookies}"
    );
    let me = get_json(&mut b, &url(&format!("/_unit/{home}/api/whoami"))).await?;
    ensure!(
        me["unit"] == home.as_str(),
        "the unit link reaches {home}: {me}"
    );
    let home_base = link(&me["unit_url"])?;
    add_to_cart(&mut b, &home_base, "apple", 2).await?;
    let cart = add_to_cart(&mut b, &home_base, "tea", 1).await?;
    ensure!(
        cart["unit"] == home.as_str() && cart["items"] == json!({"apple": 2, "tea": 1}),
        "{cart}"
    );
    let session = b.cookie("sf_session").context("session cookie")?.to_owned();
    let (pool, _db) = farm_database(kc, &client, &format!("{FARM}-db")).await?;
    let key = session_id_key(&client).await?;
    let stored = stored_cart(&pool, &key, &session).await?;
    ensure!(
        items_of(&stored) == json!({"apple": 2, "tea": 1}),
        "written through to PostgreSQL: {stored}"
    );
    // Separate roles: the sidecars' is no superuser; the app's made its own tables and can
    // neither see nor read the session tables.
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&pool)
            .await?;
    ensure!(!superuser, "the sidecars' role is no superuser");
    pool.close().await;
    let (app_pool, _app_db) = farm_database(kc, &client, &format!("{FARM}-db-app")).await?;
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'webstore_orders'",
    )
    .fetch_optional(&app_pool)
    .await?;
    ensure!(
        owner.as_deref() == Some("stickyfarm_app"),
        "the app made its tables as its own role: {owner:?}"
    );
    for sql in [
        "SELECT count(*) FROM stickyfarm.stickyfarm_session_tables",
        "SELECT count(*) FROM stickyfarm_session_tables",
    ] {
        let refused = sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&app_pool)
            .await
            .expect_err("the app role reads no session table");
        let code = refused
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        ensure!(
            matches!(code.as_deref(), Some("42501" | "42P01")),
            "{sql}: refused as not allowed or not visible, got {refused}"
        );
    }
    app_pool.close().await;

    step(&format!(
        "{home} only marked down in the gateway: a backup serves; back on {home}, its stale cache is flushed"
    ));
    let home_metrics = Reach::pod(kc, NS, &home, SIDECAR_METRICS_PORT).await?;
    let flushes = |m: std::net::SocketAddr| {
        metric(
            m,
            "stickyfarm_sidecar_flushes_total",
            "reason=\"instance_mismatch\"",
        )
    };
    // Nobody without the admin token changes a unit: straight to the control port (as if a
    // NetworkPolicy let someone in), the gateway refuses.
    let gw_control = Reach::pod(kc, NS, &gateway_pod, GATEWAY_CONTROL_PORT).await?;
    let refused = reqwest::Client::new()
        .post(format!("http://{}/units/{home}/disable", gw_control.addr))
        .send()
        .await?
        .status();
    ensure!(
        refused == 401,
        "without the admin token the gateway refuses: {refused}"
    );
    ensure!(
        gateway_units(&gw_admin)
            .await?
            .iter()
            .all(|(_, _, admin, _)| admin == "enabled"),
        "and nothing changed"
    );
    // The administrator's way: the kubectl plugin, through the API server alone (port-forward
    // to every gateway pod, the admin token from the farm's Secret).
    let table = kubectl_stickyfarm(kc, &["status", FARM, "-n", NS])?;
    ensure!(
        table.contains(&format!("farm {FARM} in {NS}"))
            && table
                .lines()
                .filter(|l| l.starts_with(&format!("{FARM}-")))
                .filter(|l| l.contains(" up ") && l.contains(" enabled "))
                .count()
                == 3,
        "kubectl stickyfarm status shows the three units up and enabled:\n{table}"
    );
    let done = kubectl_stickyfarm(kc, &["-n", NS, "disable", FARM, &home])?;
    ensure!(
        done.contains(&format!("{gateway_pod}: disable {home}: ok")),
        "every gateway pod took the action: {done}"
    );
    let table = kubectl_stickyfarm(kc, &["status", FARM, "-n", NS])?;
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with(home.as_str()) && l.contains(" disabled ")),
        "the table shows {home} disabled:\n{table}"
    );
    for (args, expected) in [
        (
            vec!["status", "no-such-farm", "-n", NS],
            "no ServerFarm \"no-such-farm\"",
        ),
        (
            vec!["drain", FARM, "../units", "-n", NS],
            "is not a unit name",
        ),
    ] {
        let err = kubectl_stickyfarm(kc, &args)
            .expect_err("refused")
            .to_string();
        ensure!(err.contains(expected), "{args:?}: {err}");
    }
    let cart = get_json(&mut b, &url("/api/cart")).await?;
    ensure!(
        cart["unit"] != home.as_str(),
        "a backup answers while {home} is marked down: {cart}"
    );
    ensure!(
        cart["items"] == json!({"apple": 2, "tea": 1}),
        "the backup reloads the cart from PostgreSQL: {cart}"
    );
    let backup = cart["unit"].as_str().context("unit")?.to_owned();
    ensure!(
        b.cookie("sf_unit") == Some(backup.as_str()),
        "the client now stays on {backup}"
    );
    let backup_base = link(&cart["unit_url"])?;
    let cart = add_to_cart(&mut b, &backup_base, "coffee", 3).await?;
    ensure!(
        cart["items"] == json!({"apple": 2, "tea": 1, "coffee": 3}),
        "{cart}"
    );
    kubectl_stickyfarm(kc, &["-n", NS, "enable", FARM, &home])?;
    let before = flushes(home_metrics.addr).await?;
    let cart = get_json(&mut b, &format!("{home_base}/api/cart")).await?;
    ensure!(
        cart["unit"] == home.as_str(),
        "the unit link leads back to {home}: {cart}"
    );
    ensure!(
        cart["items"] == json!({"apple": 2, "tea": 1, "coffee": 3}),
        "{home} serves what the backup wrote, not its stale copy: {cart}"
    );
    ensure!(
        flushes(home_metrics.addr).await? > before,
        "{home}'s sidecar flushed on the instance mismatch"
    );
    drop(home_metrics);

    step(&format!(
        "kubectl delete pod {home}: every request is answered with the cart while the StatefulSet replaces it"
    ));
    let (old_uid, _) = pod_state(&client, NS, &home).await?.context("home pod")?;
    kubectl(kc, &["delete", "pod", "-n", NS, &home, "--wait=false"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answered_by = std::collections::BTreeSet::new();
    let mut new_uid = None;
    for _ in 0..1200 {
        ensure!(
            Instant::now() < deadline,
            "{home} was not replaced within 2 minutes (answers from {answered_by:?})"
        );
        let cart = get_json(&mut b, &format!("{home_base}/api/cart")).await?;
        ensure!(
            cart["items"] == json!({"apple": 2, "tea": 1, "coffee": 3}),
            "the cart survives: {cart}"
        );
        let instance = b.cookie("sf_instance").unwrap_or_default().to_owned();
        answered_by.insert((
            cart["unit"].as_str().unwrap_or_default().to_owned(),
            instance.clone(),
        ));
        if let Some((uid, true)) = pod_state(&client, NS, &home).await?
            && uid != old_uid
            && cart["unit"] == home.as_str()
            && instance == uid
        {
            new_uid = Some(uid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_uid = new_uid.context("the unit's new instance never answered")?;
    ensure!(
        answered_by.iter().any(|(_, i)| i != &old_uid),
        "requests moved off the deleted instance: {answered_by:?}"
    );
    eventually(
        Duration::from_secs(60),
        "the gateway sees the new instance up",
        || async {
            Ok(gateway_units(&gw_admin)
                .await?
                .iter()
                .any(|u| u.0 == home && u.1 == "up" && u.3 == new_uid))
        },
    )
    .await?;
    let metrics = Reach::pod(kc, NS, &home, SIDECAR_METRICS_PORT).await?;
    let before = flushes(metrics.addr).await?;
    // A client still carrying the old instance's cookies, led back to the unit.
    let mut stale = Browser::new();
    stale.cookies.insert("sf_session".into(), session.clone());
    stale.cookies.insert("sf_instance".into(), old_uid.clone());
    stale.cookies.insert("sf_unit".into(), home.clone());
    let cart = get_json(&mut stale, &url(&format!("/_unit/{home}/api/cart"))).await?;
    ensure!(cart["unit"] == home.as_str(), "{cart}");
    ensure!(
        cart["items"] == json!({"apple": 2, "tea": 1, "coffee": 3}),
        "the new instance reads the stored cart: {cart}"
    );
    ensure!(
        flushes(metrics.addr).await? > before,
        "the new instance counted the mismatch with the old instance's cookie"
    );
    ensure!(
        stale.cookie("sf_instance") == Some(new_uid.as_str()),
        "the client now names the new instance"
    );

    step(
        "kubectl scale --replicas=5, then 2: removed units drain (their sessions move) before they go",
    );
    scale_farm(kc, NS, FARM, 5)?;
    units_up(&gw_admin, 5, Duration::from_secs(180)).await?;
    let mut late = Browser::new();
    let me = get_json(&mut late, &url(&format!("/_unit/{FARM}-4/api/whoami"))).await?;
    ensure!(me["unit"] == format!("{FARM}-4"), "{me}");
    add_to_cart(&mut late, &link(&me["unit_url"])?, "bread", 1).await?;
    scale_farm(kc, NS, FARM, 2)?;
    let removed = [
        format!("{FARM}-2"),
        format!("{FARM}-3"),
        format!("{FARM}-4"),
    ];
    eventually(
        Duration::from_secs(60),
        "the removed units drain",
        || async {
            let units = gateway_units(&gw_admin).await?;
            Ok(removed
                .iter()
                .all(|r| units.iter().any(|u| &u.0 == r && u.2 == "draining")))
        },
    )
    .await?;
    // Its next request moves the session off the draining unit, to its backup among the
    // units that stay, with its cart.
    let cart = get_json(&mut late, &url("/api/cart")).await?;
    let now_on = cart["unit"].as_str().unwrap_or_default().to_owned();
    ensure!(
        !removed.contains(&now_on) && cart["items"] == json!({"bread": 1}),
        "a draining unit's session moves to a unit that stays, with its cart: {cart}"
    );
    ensure!(
        late.cookie("sf_unit") == Some(now_on.as_str()),
        "the client is routed to {now_on} from now on"
    );
    for _ in 0..6 {
        let me = get_json(&mut Browser::new(), &url("/api/whoami")).await?;
        let unit = me["unit"].as_str().unwrap_or_default();
        ensure!(
            unit == format!("{FARM}-0") || unit == format!("{FARM}-1"),
            "new sessions avoid draining units, got {unit}"
        );
    }
    eventually(
        Duration::from_secs(150),
        "the drained units' pods are gone",
        || async {
            Ok(pod_names(&client, NS, &selector("unit")).await?
                == [format!("{FARM}-0"), format!("{FARM}-1")])
        },
    )
    .await?;
    let cart = get_json(&mut late, &url("/api/cart")).await?;
    ensure!(
        cart["items"] == json!({"bread": 1}),
        "the moved session keeps its cart after the drained units went: {cart}"
    );
    let cart = get_json(&mut b, &url("/api/cart")).await?;
    ensure!(
        cart["items"] == json!({"apple": 2, "tea": 1, "coffee": 3}),
        "{cart}"
    );
    let base = link(&cart["unit_url"])?;

    step(&format!(
        "kubectl delete pod {FARM}-db-0: writes answer 503 or wait, then recover, nothing lost"
    ));
    let (old_db_uid, _) = pod_state(&client, NS, &format!("{FARM}-db-0"))
        .await?
        .context("database pod")?;
    kubectl(
        kc,
        &[
            "delete",
            "pod",
            "-n",
            NS,
            &format!("{FARM}-db-0"),
            "--wait=false",
        ],
    )?;
    // Writes go on through the replacement: each is accepted (committed) or refused with 503
    // (nothing stored), never anything else. Recovered: a write accepted once the new database
    // pod is ready. A replacement quicker than the sidecars' acquire timeout (2 s) may refuse
    // none: the writes then just wait for the new pod.
    let (mut accepted, mut refused, mut recovered) = (0u32, 0u32, false);
    let deadline = Instant::now() + Duration::from_secs(180);
    for _ in 0..2000 {
        if Instant::now() > deadline {
            break;
        }
        let replaced = matches!(
            pod_state(&client, NS, &format!("{FARM}-db-0")).await?,
            Some((uid, true)) if uid != old_db_uid
        );
        let p = b
            .send(
                Method::POST,
                &format!("{base}/api/cart/items"),
                Some(&json!({"sku": "honey", "qty": 1})),
            )
            .await;
        match p.status {
            200 => {
                accepted += 1;
                if replaced {
                    recovered = true;
                    break;
                }
            }
            503 => refused += 1,
            other => bail!(
                "a write during the database outage answered {other}: {}",
                p.body
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        recovered,
        "writes did not recover on a new database pod within 3 minutes ({accepted} accepted, {refused} refused)"
    );
    eprintln!("database pod replaced: {accepted} writes accepted, {refused} refused with 503");
    let cart = get_json(&mut b, &url("/api/cart")).await?;
    ensure!(
        cart["items"] == json!({"apple": 2, "tea": 1, "coffee": 3, "honey": accepted}),
        "every accepted write and no refused one: {cart}"
    );
    let (db_uid, _) = pod_state(&client, NS, &format!("{FARM}-db-0"))
        .await?
        .context("database pod")?;
    ensure!(db_uid != old_db_uid, "the database pod was replaced");
    let (pool, _db) = farm_database(kc, &client, &format!("{FARM}-db")).await?;
    let key = session_id_key(&client).await?;
    let stored = stored_cart(&pool, &key, &session).await?;
    ensure!(
        items_of(&stored) == cart["items"],
        "PostgreSQL holds the same cart: {stored}"
    );
    let late_session = late.cookie("sf_session").context("session")?.to_owned();
    ensure!(
        items_of(&stored_cart(&pool, &key, &late_session).await?) == json!({"bread": 1}),
        "older sessions survived on the volume"
    );
    pool.close().await;

    step("helm upgrade: a new operator pod takes over and reconciles");
    helm_run(
        kc,
        &[
            "upgrade",
            "stickyfarm",
            "charts/stickyfarm",
            "--namespace",
            RELEASE_NS,
            "--reuse-values",
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "3m",
        ],
    )?;
    let history = helm_run(
        kc,
        &[
            "history",
            "stickyfarm",
            "--namespace",
            RELEASE_NS,
            "-o",
            "json",
        ],
    )?;
    let revisions: Vec<Value> = serde_json::from_str(&history)?;
    ensure!(
        revisions.last().and_then(|r| r["status"].as_str()) == Some("deployed")
            && revisions.len() >= 2,
        "{history}"
    );
    eventually(Duration::from_secs(120), "one new operator pod, Ready", || async {
        let pods = pod_names(&client, RELEASE_NS, OPERATOR_PODS).await?;
        Ok(pods.len() == 1 && matches!(pod_state(&client, RELEASE_NS, &pods[0]).await?, Some((uid, true)) if uid != operator_uid))
    })
    .await?;
    scale_farm(kc, NS, FARM, 3)?;
    units_up(&gw_admin, 3, Duration::from_secs(120)).await?;
    let cart = get_json(&mut b, &url("/api/cart")).await?;
    ensure!(
        cart["items"]["coffee"] == 3,
        "the farm served through the upgrade: {cart}"
    );

    step("kubectl delete serverfarm: everything of the farm is collected");
    drop((gateway, gw_admin, metrics));
    kubectl(
        kc,
        &[
            "delete",
            "serverfarm",
            "-n",
            NS,
            FARM,
            "--wait=true",
            "--timeout=120s",
        ],
    )?;
    let farm_selector = format!("stickyfarm.dev/farm={FARM}");
    eventually(
        Duration::from_secs(180),
        "the farm's pods, StatefulSets, Services, Secrets, claims and volumes gone",
        || async {
            let lp = ListParams::default().labels(&farm_selector);
            let all = ListParams::default();
            let pods = count::<Pod>(&client, &all).await?;
            let sets = count::<StatefulSet>(&client, &lp).await?;
            let services = count::<Service>(&client, &lp).await?;
            let secrets = count::<Secret>(&client, &lp).await?;
            let claims = count::<PersistentVolumeClaim>(&client, &all).await?;
            let volumes = Api::<PersistentVolume>::all(client.clone())
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|v| {
                    v.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .and_then(|c| c.namespace.as_deref())
                        == Some(NS)
                })
                .count();
            Ok(pods + sets + services + secrets + claims + volumes == 0)
        },
    )
    .await?;
    kubectl(kc, &["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
