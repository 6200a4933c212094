//! The status page of the gateway's admin port, looked at the way a person does: in a real
//! browser (headless Chromium, driven over WebDriver by chromedriver), at a phone's width and a
//! desktop's, with units up and down and sessions held.
//!
//! Chromium and chromedriver come from Debian (`scripts/test` installs them and sets
//! `STICKYFARM_BROWSER_REQUIRED=1`, so there the test cannot skip). `CHROMIUM`/`CHROMEDRIVER`
//! name other binaries; `STICKYFARM_SCREENSHOT_DIR` keeps the screenshots (the docs' images are
//! made so: `STICKYFARM_SCREENSHOT_DIR=docs/images`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use stickyfarm_testkit::*;

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// What the page shows, read from the DOM as a person would read it.
const READ_PAGE: &str = "
const rows = [...document.querySelectorAll('tbody tr')].map(r => ({
  state: r.className,
  unit: r.querySelector('.name').textContent,
  sessions: r.querySelector('[data-label=Sessions]').textContent,
  warm: r.querySelector('[data-label=\"Warm copies\"]').textContent,
  error: r.querySelector('[data-label=\"Last error\"]').textContent,
  cells: r.querySelectorAll('td').length,
}));
return {
  title: document.title,
  summary: document.querySelector('.summary').textContent,
  rows,
  header_shown: getComputedStyle(document.querySelector('thead')).display !== 'none',
  overflows: document.documentElement.scrollWidth > window.innerWidth,
  fetched: performance.getEntriesByType('resource').map(e => e.name),
  refresh: document.querySelector('meta[http-equiv=refresh]')?.content ?? null,
};";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_reads_on_a_phone_and_a_desktop_in_a_real_browser() {
    let Some(tools) = chromium::Tools::find() else {
        return;
    };
    let keep = std::env::var_os("STICKYFARM_SCREENSHOT_DIR").map(PathBuf::from);

    // A farm of three units with shoppers on them; one unit's app stops (it goes down with the
    // reason), one is drained.
    let db = TestDb::new().await;
    let mut units = Vec::new();
    for name in ["webstore-0", "webstore-1", "webstore-2"] {
        units.push(Unit::start(name, &db.url, &[]).await);
    }
    let flags = unit_flags(&units);
    let gw = GatewayProc::start(&flags, &["--slow-start", "0s"]).await;
    gw.wait_up(3).await;
    let mut shoppers = 0;
    for i in 0..12 {
        gw.shopper(&format!("item-{i}")).await;
        shoppers += 1;
    }
    units[1].app.stop();
    assert_eq!(
        gw.unit_action("webstore-2", "drain", Some(ADMIN_TOKEN))
            .await,
        204
    );
    // The checks see both, and the sessions held, within a few rounds.
    eventually(Duration::from_secs(20), "the checks caught up", || async {
        let s = gw.status().await;
        let units = s["units"].as_array().unwrap();
        units[1]["state"] == "down"
            && units[0]["sessions"].is_u64()
            && units[2]["sessions"].is_u64()
            && units
                .iter()
                .filter_map(|u| u["sessions"].as_u64())
                .sum::<u64>()
                >= shoppers as u64 - 4
    })
    .await;
    let status = gw.status().await;
    let page_url = format!("http://{}/", gw.admin);

    let browser = chromium::Chromium::start(&tools).await;
    // A phone (390 × 844 CSS pixels, as an iPhone 14): one card per unit, nothing wider than
    // the screen.
    browser.size(390, 844).await;
    browser.open(&page_url).await;
    let phone = browser.eval(READ_PAGE).await;
    assert_eq!(
        phone["title"], "2/3 units up · Stickyfarm gateway",
        "{phone}"
    );
    assert_eq!(
        phone["overflows"], false,
        "no sideways scrolling on a phone"
    );
    assert_eq!(
        phone["header_shown"], false,
        "cards, not a table, on a phone"
    );
    assert_eq!(phone["fetched"], json!([]), "nothing loaded from anywhere");
    assert_eq!(phone["refresh"], "5");
    let rows = phone["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (row, unit) in rows.iter().zip(status["units"].as_array().unwrap()) {
        assert_eq!(row["unit"], unit["name"]);
        assert_eq!(row["state"], unit["state"]);
        assert_eq!(row["cells"], 13);
        match unit["sessions"].as_u64() {
            Some(n) => assert_eq!(row["sessions"], n.to_string()),
            None => assert_eq!(row["sessions"], "–"),
        }
        match unit["warm_copies"].as_u64() {
            Some(n) => assert_eq!(row["warm"], n.to_string()),
            None => assert_eq!(row["warm"], "–"),
        }
    }
    assert_eq!(rows[1]["state"], "down");
    assert!(
        rows[1]["error"].as_str().unwrap().contains("app"),
        "the reason a unit is down is shown: {}",
        rows[1]["error"]
    );
    assert!(
        phone["summary"]
            .as_str()
            .unwrap()
            .starts_with("2 of 3 units up"),
        "{}",
        phone["summary"]
    );
    let png = browser
        .screenshot("status-page-phone.png", keep.as_deref())
        .await;
    let (w, _) = png_size(&png);
    assert!(w >= 390, "a phone-wide screenshot ({w} px)");

    // A desktop: the table with its header row; `?refresh=0` stops the refreshing.
    browser.size(1400, 700).await;
    browser.open(&format!("{page_url}?refresh=0")).await;
    let desktop = browser.eval(READ_PAGE).await;
    assert_eq!(desktop["header_shown"], true, "a table on a desktop");
    assert_eq!(desktop["overflows"], false);
    assert_eq!(desktop["refresh"], Value::Null);
    let png = browser
        .screenshot("status-page-desktop.png", keep.as_deref())
        .await;
    assert!(png_size(&png).0 >= 1400);
    browser.close().await;

    // What the browser was given: no script may run, nothing may frame it.
    let page = reqwest::get(&page_url).await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!page.text().await.unwrap().contains("<script"));
}
