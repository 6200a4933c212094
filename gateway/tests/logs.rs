//! The gateway and the sidecars log alike (the settings in `stickyfarm_api::logs`): the same
//! flags, JSON lines with the same field names, and never a credential or a session id, even
//! with every event on (`trace`).

use std::time::Duration;

use serde_json::{Value, json};
use stickyfarm_testkit::*;

const TRACE_JSON: [&str; 4] = ["--log-filter", "trace", "--log-format", "json"];

/// The lines of a JSON log, each checked to be one object with the fields every component
/// writes.
fn json_lines(component: &str, log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{component}: not a JSON line ({e}): {l}"));
            for key in ["timestamp", "level", "target"] {
                assert!(v.get(key).is_some(), "{component}: no {key:?} in {l}");
            }
            v
        })
        .collect()
}

/// Events of a log that carry `field` with `value` at the top level.
fn with_field<'a>(lines: &'a [Value], field: &str, value: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l.get(field).and_then(Value::as_str) == Some(value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_trace_level_every_log_is_json_with_shared_fields_and_no_credential() {
    let db = TestDb::new().await;
    let units = [
        Unit::start("web-0", &db.url, &TRACE_JSON).await,
        Unit::start("web-1", &db.url, &TRACE_JSON).await,
    ];
    let flags = unit_flags(&units);
    let mut gw_flags = TRACE_JSON.to_vec();
    gw_flags.extend(["--check-interval", "60s", "--rise", "1"]);
    let gw = GatewayProc::start(&flags, &gw_flags).await;
    gw.wait_up(2).await;

    // What a day brings: a shopper with a session and writes, an operator's unit action with
    // the admin token, an attacker's with a wrong one, a unit whose app stops (failover).
    let mut shopper = Browser::new();
    let home = shopper.get(&gw.url("/echo")).await.json()["x-stickyfarm-unit"]
        .as_str()
        .unwrap()
        .to_owned();
    for item in ["fig", "plum"] {
        let p = shopper
            .post(&gw.url(&format!("/_unit/{home}/cart/add?item={item}")))
            .await;
        assert_eq!(p.status, 200, "{}", p.body);
    }
    let sid = shopper.cookie("sf_session").unwrap().to_owned();
    let raw_sid = sid
        .parse::<stickyfarm_api::SessionId>()
        .unwrap()
        .as_uuid()
        .to_string();
    let wrong_token = "attacker-guess-0123456789abcdef0123456789abcdef";
    assert_eq!(gw.unit_action(&home, "drain", Some(wrong_token)).await, 401);
    assert_eq!(gw.unit_action(&home, "drain", Some(ADMIN_TOKEN)).await, 204);
    assert_eq!(
        gw.unit_action(&home, "enable", Some(ADMIN_TOKEN)).await,
        204
    );
    let victim = units.iter().find(|u| u.sidecar.unit == home).unwrap();
    victim.app.stop();
    let cart = shopper.get(&gw.url(&format!("/_unit/{home}/cart"))).await;
    assert_eq!(cart.status, 200, "{}", cart.body);
    assert_eq!(cart.json()["items"], json!(["fig", "plum"]));
    assert_ne!(cart.json()["unit"], home.as_str(), "a backup answered");
    // The unit is out now: the next request for it fails over at once (a debug event).
    let cart = shopper.get(&gw.url(&format!("/_unit/{home}/cart"))).await;
    assert_eq!(cart.status, 200, "{}", cart.body);

    // Give the last events time to be written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let password = db
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .expect("DATABASE_URL names a password");
    let credentials = [
        ("the session id", sid.as_str()),
        ("the raw session id", raw_sid.as_str()),
        ("the database password", password.as_str()),
        ("the admin token", ADMIN_TOKEN),
        ("a guessed admin token", wrong_token),
        ("the gateway token", GATEWAY_TOKEN),
        ("the session-id key", SESSION_ID_KEY),
    ];
    let logs = [
        ("gateway", gw.log_text()),
        ("sidecar web-0", units[0].sidecar.log_text()),
        ("sidecar web-1", units[1].sidecar.log_text()),
    ];
    for (component, log) in &logs {
        for (what, value) in credentials {
            assert!(
                !log.contains(value),
                "{component} logged {what} at trace level"
            );
        }
        let lines = json_lines(component, log);
        assert!(
            lines
                .iter()
                .any(|l| l["level"] == "TRACE" || l["level"] == "DEBUG"),
            "{component}: --log-filter trace took effect"
        );
    }

    // The same names for the same things: the unit that failed is `unit` in the gateway's
    // events and in its sidecar's, and what failed is `error`.
    let gateway = json_lines("gateway", &logs[0].1);
    let victim_log = json_lines("sidecar", &victim.sidecar.log_text());
    assert!(
        with_field(&gateway, "unit", &home)
            .iter()
            .any(|l| l["message"] == "unit out of service: failing over"),
        "the gateway names the unit as `unit`"
    );
    assert!(
        !with_field(&victim_log, "unit", &home).is_empty(),
        "the sidecar names its unit as `unit`"
    );
    assert!(
        victim_log
            .iter()
            .any(|l| l["message"] == "the app refused the connection" && l.get("error").is_some()),
        "the sidecar says why its app failed, as `error`"
    );
}

/// A filter that is not one is refused at start, naming the flag and the syntax, instead of
/// running with some other level.
#[test]
fn a_bad_log_filter_or_format_is_refused_at_start() {
    for (component, args) in [
        ("stickyfarm-gateway", ["--log-filter", "stickyfarm=loud"]),
        ("stickyfarm-sidecar", ["--log-filter", "stickyfarm=loud"]),
        ("stickyfarm-gateway", ["--log-format", "xml"]),
    ] {
        let out = std::process::Command::new(binary(component))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{component} {args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(args[0]), "{component}: {err}");
        if args[0] == "--log-filter" {
            assert!(err.contains("not a log filter"), "{component}: {err}");
        }
    }
    // RUST_LOG, the usual variable, is read the same way.
    let out = std::process::Command::new(binary("stickyfarm-gateway"))
        .env("RUST_LOG", "stickyfarm=loud")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a log filter"));
}
