//! Warm backups: the gateway names each session's backup, the backup keeps a warm copy, and
//! a failed-over session is served from it, never older than PostgreSQL. Real gateway,
//! sidecars and PostgreSQL on loopback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use stickyfarm_testkit::*;

async fn three_units(db: &TestDb, extra: &[&str]) -> Vec<Unit> {
    let mut units = Vec::new();
    for name in ["web-0", "web-1", "web-2"] {
        units.push(Unit::start(name, &db.url, extra).await);
    }
    units
}

async fn sum_over(units: &[&Unit], name: &str, labels: &str) -> f64 {
    let mut total = 0.0;
    for u in units {
        total += u.sidecar.metric(name, labels).await;
    }
    total
}

const WARM_COPIES: &str = "stickyfarm_sidecar_warm_copies";
const WARM_FAILOVERS: &str = "stickyfarm_sidecar_warm_failovers_total";
/// Reads that had to load from PostgreSQL (warming a copy is not one).
const MISSES: &str = "stickyfarm_sidecar_cache_misses_total";

/// Shoppers with two items each; returns them by the unit that holds their session.
async fn shoppers(gw: &GatewayProc, n: usize) -> Vec<(Browser, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let (mut b, home) = gw.shopper(&format!("a{i}")).await;
        let p = b
            .post(&gw.url(&format!("/_unit/{home}/cart/add?item=b{i}")))
            .await;
        assert_eq!(p.status, 200, "{}", p.body);
        out.push((b, home));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_over_session_is_served_from_its_backups_warm_copy_without_a_load() {
    let db = TestDb::new().await;
    let mut units = three_units(&db, &[]).await;
    let gw = GatewayProc::start(&unit_flags(&units), &[]).await;
    gw.wait_up(3).await;
    let mut shoppers = shoppers(&gw, 24).await;

    // Every session has a warm copy on exactly one other unit: its backup.
    let all: Vec<&Unit> = units.iter().collect();
    eventually(
        Duration::from_secs(10),
        "a warm copy of every session",
        || async { sum_over(&all, WARM_COPIES, "").await == 24.0 },
    )
    .await;
    // The gateway's status table shows them, from the units' health answers.
    eventually(
        Duration::from_secs(10),
        "warm copies in the status table",
        || async {
            let s = gw.status().await;
            s["units"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|u| u["warm_copies"].as_u64())
                .sum::<u64>()
                == 24
        },
    )
    .await;
    let victim = "web-0";
    let on_victim = shoppers.iter().filter(|(_, h)| h == victim).count();
    assert!(on_victim > 0, "some shoppers on {victim}");
    let (dead, backups): (Vec<&mut Unit>, Vec<&mut Unit>) =
        units.iter_mut().partition(|u| u.sidecar.unit == victim);
    let backups: Vec<&Unit> = backups.into_iter().map(|u| &*u).collect();
    let misses_before = sum_over(&backups, MISSES, "").await;
    dead.into_iter().next().unwrap().sidecar.kill();

    // Every shopper of the dead unit reads its cart on a backup: intact, and from the warm
    // copy (a generation check, no load).
    let mut served_by = BTreeMap::new();
    for (i, (b, home)) in shoppers.iter_mut().enumerate() {
        if home != victim {
            continue;
        }
        let p = b.get(&gw.url("/cart")).await;
        assert_eq!(p.status, 200, "{}", p.body);
        let cart = p.json();
        assert_eq!(cart["items"], json!([format!("a{i}"), format!("b{i}")]));
        assert_ne!(cart["unit"], victim);
        *served_by
            .entry(cart["unit"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        sum_over(&backups, WARM_FAILOVERS, "outcome=\"hit\"").await,
        on_victim as f64,
        "each failed-over session found its warm copy current: {served_by:?}"
    );
    assert_eq!(
        sum_over(&backups, MISSES, "").await,
        misses_before,
        "no failed-over session was loaded from PostgreSQL"
    );
    assert_eq!(
        sum_over(&backups, WARM_FAILOVERS, "outcome=\"stale\"").await,
        0.0
    );

    // Then it goes on there: a write on the backup lands in PostgreSQL.
    let (b, _) = shoppers.iter_mut().find(|(_, h)| h == victim).unwrap();
    let p = b.post(&gw.url("/cart/add?item=c")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    let sid = b.cookie("sf_session").unwrap().to_owned();
    let (_, doc) = db.table(&sid, "cart").await.unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 3);
}

/// A warm copy that PostgreSQL has moved past (a change the backup never heard of) is
/// discarded on failover and the session loaded: warm copies never bring back old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_copy_older_than_postgresql_is_never_served() {
    let db = TestDb::new().await;
    let mut units = three_units(&db, &[]).await;
    let gw = GatewayProc::start(&unit_flags(&units), &[]).await;
    gw.wait_up(3).await;
    let (mut b, home) = gw.shopper("apple").await;
    let all: Vec<&Unit> = units.iter().collect();
    eventually(
        Duration::from_secs(10),
        "the session's warm copy",
        || async { sum_over(&all, WARM_COPIES, "").await == 1.0 },
    )
    .await;

    // PostgreSQL moves on without announcing it (as if the backup missed the notification).
    let sid = b.cookie("sf_session").unwrap().to_owned();
    let changed = sqlx::query(
        "WITH t AS (UPDATE stickyfarm_session_tables SET doc = '[\"pear\"]', version = version + 1
                     WHERE session_id = $1 AND name = 'cart')
         UPDATE stickyfarm_sessions SET generation = generation + 1 WHERE id = $1",
    )
    .bind(stored_uuid(&sid))
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);

    let (dead, backups): (Vec<&mut Unit>, Vec<&mut Unit>) =
        units.iter_mut().partition(|u| u.sidecar.unit == home);
    let backups: Vec<&Unit> = backups.into_iter().map(|u| &*u).collect();
    dead.into_iter().next().unwrap().sidecar.kill();
    let p = b.get(&gw.url("/cart")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(
        p.json()["items"],
        json!(["pear"]),
        "PostgreSQL's state, not the warm copy"
    );
    assert_eq!(
        sum_over(&backups, WARM_FAILOVERS, "outcome=\"stale\"").await,
        1.0
    );
    assert_eq!(
        sum_over(&backups, WARM_FAILOVERS, "outcome=\"hit\"").await,
        0.0
    );
}

/// With warm copies off (`--warm-backup-percent 0`) a failed-over session loads cold, as
/// before: the comparison the benchmark makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_warm_copies_a_failed_over_session_loads_from_postgresql() {
    let db = TestDb::new().await;
    let mut units = three_units(&db, &["--warm-backup-percent", "0"]).await;
    let gw = GatewayProc::start(&unit_flags(&units), &[]).await;
    gw.wait_up(3).await;
    let (mut b, home) = gw.shopper("apple").await;
    // Give a warm copy, were there one, the time to arrive.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all: Vec<&Unit> = units.iter().collect();
    assert_eq!(sum_over(&all, WARM_COPIES, "").await, 0.0);
    let (dead, backups): (Vec<&mut Unit>, Vec<&mut Unit>) =
        units.iter_mut().partition(|u| u.sidecar.unit == home);
    let backups: Vec<&Unit> = backups.into_iter().map(|u| &*u).collect();
    let misses_before = sum_over(&backups, MISSES, "").await;
    dead.into_iter().next().unwrap().sidecar.kill();
    let p = b.get(&gw.url("/cart")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.json()["items"], json!(["apple"]));
    assert_eq!(sum_over(&backups, MISSES, "").await, misses_before + 1.0);
}
