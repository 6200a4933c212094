//! Rebalancing after a scale-up: idle sessions of the units holding more than their share move
//! to the new units at their next request; active sessions and links that name a unit stay.
//! Real gateway, sidecars and PostgreSQL on loopback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use stickyfarm_testkit::*;

fn units_yaml(units: &[Unit]) -> String {
    let mut s = String::from("units:\n");
    for u in units {
        s.push_str(&format!(
            "  - name: {}\n    address: \"{}\"\n",
            u.sidecar.unit, u.sidecar.public
        ));
    }
    s
}

/// A farm whose gateway reads its units from a file (so the test can add some), with these
/// rebalancing flags; the folder holding the file lives as long as the returned guard.
async fn farm(
    units: &[Unit],
    rebalance: &[&str],
) -> (GatewayProc, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("units.yaml");
    std::fs::write(&file, units_yaml(units)).unwrap();
    let mut flags = vec!["--units-file", file.to_str().unwrap()];
    flags.extend_from_slice(rebalance);
    let gw = GatewayProc::start(&[], &flags).await;
    gw.wait_up(units.len()).await;
    (gw, file, dir)
}

async fn released(units: &[Unit]) -> f64 {
    let mut n = 0.0;
    for u in units {
        n += u
            .sidecar
            .metric("stickyfarm_sidecar_flushes_total", "reason=\"released\"")
            .await;
    }
    n
}

const REBALANCED: &str = "stickyfarm_gateway_rebalanced_sessions_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_scale_up_idle_sessions_move_to_the_new_units_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let mut units = vec![
        Unit::start("web-0", &db.url, &[]).await,
        Unit::start("web-1", &db.url, &[]).await,
    ];
    let (gw, file, _dir) = farm(
        &units,
        &["--rebalance-idle", "300ms", "--rebalance-window", "1m"],
    )
    .await;

    // 16 shoppers with an item each, on the two units.
    let mut shoppers = Vec::new();
    for i in 0..16 {
        let (b, home) = gw.shopper(&format!("i{i}")).await;
        shoppers.push((b, home));
    }
    let first_homes: Vec<String> = shoppers.iter().map(|(_, h)| h.clone()).collect();

    // Without a scale-up nothing moves, however uneven and idle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (b, home) in shoppers.iter_mut() {
        let p = b.get(&gw.url("/cart")).await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(p.json()["unit"], home.as_str());
    }
    assert_eq!(gw.metric(REBALANCED, "").await, 0.0);

    // Scale up to four units; the gateway moves sessions only once it knows every unit's
    // session count (from its checks).
    units.push(Unit::start("web-2", &db.url, &[]).await);
    units.push(Unit::start("web-3", &db.url, &[]).await);
    std::fs::write(&file, units_yaml(&units)).unwrap();
    gw.wait_up(4).await;
    eventually(
        Duration::from_secs(5),
        "every unit's session count",
        || async {
            gw.status().await["units"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["sessions"].is_u64())
        },
    )
    .await;

    // Shopper 0 becomes active (a request every 50 ms; its first one, after its idle time
    // above, may move it once); shopper 1 follows a link that names its unit; the others come
    // back after being idle. Bounded: 6 rounds.
    let mut moves = 0;
    let mut active_home: Option<String> = None;
    for round in 0..6 {
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            let (b, home) = &mut shoppers[0];
            let p = b.get(&gw.url("/cart")).await;
            assert_eq!(p.status, 200, "{}", p.body);
            let unit = p.json()["unit"].as_str().unwrap().to_owned();
            match &active_home {
                Some(h) => assert_eq!(&unit, h, "an active session stays"),
                None => {
                    moves += usize::from(unit != *home);
                    *home = unit.clone();
                    active_home = Some(unit);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (i, (b, home)) in shoppers.iter_mut().enumerate().skip(1) {
            let url = if i == 1 {
                gw.url(&format!("/_unit/{home}/cart"))
            } else {
                gw.url("/cart")
            };
            let p = b.get(&url).await;
            assert_eq!(p.status, 200, "round {round}, shopper {i}: {}", p.body);
            let cart = p.json();
            assert_eq!(cart["items"], json!([format!("i{i}")]), "nothing lost");
            let unit = cart["unit"].as_str().unwrap().to_owned();
            if unit != *home {
                assert_ne!(i, 1, "a link that names a unit is never moved");
                moves += 1;
                // The client is routed there from now on.
                assert_eq!(b.cookie("sf_unit"), Some(unit.as_str()));
                *home = unit;
            }
        }
    }
    assert_eq!(shoppers[1].1, first_homes[1]);
    assert!(moves > 0, "idle sessions moved to the new units");
    let mut per_unit: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, home) in &shoppers {
        *per_unit.entry(home.as_str()).or_default() += 1;
    }
    assert!(
        per_unit.contains_key("web-2") && per_unit.contains_key("web-3"),
        "{per_unit:?}"
    );
    // 16 sessions on 4 units: the busiest holds at most 1.2× the mean, rounded up.
    assert!(per_unit.values().all(|&n| n <= 5), "balanced: {per_unit:?}");
    // Each move was one release by the old unit and one move by the gateway.
    assert_eq!(gw.metric(REBALANCED, "").await, moves as f64);
    assert_eq!(released(&units).await, moves as f64);
    // And PostgreSQL holds every cart as the shoppers left it.
    for (i, (b, _)) in shoppers.iter().enumerate() {
        let sid = b.cookie("sf_session").unwrap();
        let (_, doc) = db.table(sid, "cart").await.unwrap();
        assert_eq!(doc, json!([format!("i{i}")]));
    }
}

/// With `--rebalance-idle 0s` a scale-up moves nothing: sessions stay where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_off_moves_nothing() {
    let db = TestDb::new().await;
    let mut units = vec![Unit::start("web-0", &db.url, &[]).await];
    let (gw, file, _dir) = farm(&units, &["--rebalance-idle", "0s"]).await;
    let mut shoppers = Vec::new();
    for i in 0..4 {
        shoppers.push(gw.shopper(&format!("i{i}")).await);
    }
    units.push(Unit::start("web-1", &db.url, &[]).await);
    std::fs::write(&file, units_yaml(&units)).unwrap();
    gw.wait_up(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (b, home) in shoppers.iter_mut() {
        let p = b.get(&gw.url("/cart")).await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(p.json()["unit"], "web-0");
        assert_eq!(home, "web-0");
    }
    assert_eq!(gw.metric(REBALANCED, "").await, 0.0);
}
