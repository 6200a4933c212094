//! Draining moves sessions actively: a session on a draining unit moves to its backup (the
//! unit that keeps its warm copy) at its next request, with nothing lost, instead of staying
//! until the unit is removed. Real gateway, sidecars and PostgreSQL on loopback.

use std::time::Duration;

use serde_json::json;
use stickyfarm_testkit::*;

/// The units file, with `draining` marked as such (what the operator's Service label or
/// `farmctl drain` gives).
fn units_yaml(units: &[Unit], draining: Option<&str>) -> String {
    let mut s = String::from("units:\n");
    for u in units {
        s.push_str(&format!(
            "  - name: {}\n    address: \"{}\"\n",
            u.sidecar.unit, u.sidecar.public
        ));
        if draining == Some(u.sidecar.unit.as_str()) {
            s.push_str("    admin: draining\n");
        }
    }
    s
}

const DRAINED: &str = "stickyfarm_gateway_drained_sessions_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_units_sessions_move_to_their_backups_at_their_next_request() {
    let db = TestDb::new().await;
    let units = vec![
        Unit::start("web-0", &db.url, &[]).await,
        Unit::start("web-1", &db.url, &[]).await,
        Unit::start("web-2", &db.url, &[]).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("units.yaml");
    std::fs::write(&file, units_yaml(&units, None)).unwrap();
    // Rebalancing off: every move below is the drain's.
    let gw = GatewayProc::start(
        &[],
        &[
            "--units-file",
            file.to_str().unwrap(),
            "--rebalance-idle",
            "0s",
        ],
    )
    .await;
    gw.wait_up(3).await;

    // Shoppers until web-0 holds at least three sessions (placement is balanced; bounded).
    let mut shoppers = Vec::new();
    for i in 0..30 {
        let (b, home) = gw.shopper(&format!("i{i}")).await;
        shoppers.push((i, b, home));
        if shoppers.iter().filter(|s| s.2 == "web-0").count() >= 3 && shoppers.len() >= 9 {
            break;
        }
    }
    let on_web0 = shoppers.iter().filter(|s| s.2 == "web-0").count();
    assert!(on_web0 >= 3, "web-0 holds {on_web0} sessions");

    // web-0 drains.
    std::fs::write(&file, units_yaml(&units, Some("web-0"))).unwrap();
    eventually(Duration::from_secs(5), "web-0 draining", || async {
        gw.status().await["units"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "web-0" && u["admin"] == "draining")
    })
    .await;
    assert_eq!(gw.metric(DRAINED, "").await, 0.0);
    eventually(
        Duration::from_secs(5),
        "web-0's sessions counted as draining",
        || async {
            gw.metric(
                "stickyfarm_gateway_unit_draining_sessions",
                "unit=\"web-0\"",
            )
            .await
                >= on_web0 as f64
        },
    )
    .await;

    // One of web-0's shoppers follows a link naming web-0 before anything else: a link stays
    // on its unit (sessions move through the cookie path only), so it is still served there.
    let linked = shoppers.iter().position(|s| s.2 == "web-0").unwrap();
    {
        let (i, b, _) = &mut shoppers[linked];
        let p = b.get(&gw.url("/_unit/web-0/cart")).await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(p.json()["unit"], "web-0");
        assert_eq!(p.json()["items"], json!([format!("i{i}")]));
    }

    // Every shopper's next request: web-0's go to another unit (the first request there, no
    // idle time needed), the others stay; every cart is whole.
    let mut moved = 0;
    for (i, b, home) in shoppers.iter_mut() {
        let p = b.get(&gw.url("/cart")).await;
        assert_eq!(p.status, 200, "{}", p.body);
        let cart = p.json();
        assert_eq!(cart["items"], json!([format!("i{i}")]), "nothing lost");
        let unit = cart["unit"].as_str().unwrap().to_owned();
        if *home == "web-0" {
            assert_ne!(unit, "web-0", "shopper {i} left the draining unit");
            assert_eq!(b.cookie("sf_unit"), Some(unit.as_str()), "routed there now");
            moved += 1;
            *home = unit;
        } else {
            assert_eq!(&unit, home, "a session on a serving unit stays");
        }
    }
    assert_eq!(moved, on_web0);
    assert_eq!(gw.metric(DRAINED, "").await, moved as f64);
    assert_eq!(
        units[0]
            .sidecar
            .metric("stickyfarm_sidecar_flushes_total", "reason=\"released\"")
            .await,
        moved as f64,
        "each move was one release by web-0"
    );

    // The moved session's link naming web-0 now follows its cookie to where it lives, and
    // it stays there; a write there is kept.
    {
        let (i, b, home) = &mut shoppers[linked];
        let p = b.get(&gw.url("/_unit/web-0/cart")).await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(
            p.json()["unit"],
            home.as_str(),
            "the link follows the moved session"
        );
        let p = b
            .post(&gw.url(&format!("/_unit/web-0/cart/add?item=j{i}")))
            .await;
        assert_eq!(p.status, 200, "{}", p.body);
        let p = b.get(&gw.url("/_unit/web-0/cart")).await;
        assert_eq!(p.json()["unit"], home.as_str());
        assert_eq!(p.json()["items"], json!([format!("i{i}"), format!("j{i}")]));
    }
    // A second round: nobody moves again, nothing is served by web-0.
    for (_, b, home) in shoppers.iter_mut() {
        let p = b.get(&gw.url("/cart")).await;
        assert_eq!(p.status, 200);
        assert_eq!(p.json()["unit"], home.as_str());
    }
    assert_eq!(gw.metric(DRAINED, "").await, moved as f64);
    // New sessions avoid the draining unit.
    for _ in 0..6 {
        let (_, home) = gw.shopper("new").await;
        assert_ne!(home, "web-0");
    }
    // PostgreSQL holds every cart as the shoppers left it.
    for (n, (i, b, _)) in shoppers.iter().enumerate() {
        let sid = b.cookie("sf_session").unwrap();
        let (_, doc) = db.table(sid, "cart").await.unwrap();
        let want = if n == linked {
            json!([format!("i{i}"), format!("j{i}")])
        } else {
            json!([format!("i{i}")])
        };
        assert_eq!(doc, want);
    }
    // Enabled again: its drain gauge falls to 0.
    std::fs::write(&file, units_yaml(&units, None)).unwrap();
    eventually(Duration::from_secs(5), "drain gauge back to 0", || async {
        gw.metric(
            "stickyfarm_gateway_unit_draining_sessions",
            "unit=\"web-0\"",
        )
        .await
            == 0.0
    })
    .await;
}
