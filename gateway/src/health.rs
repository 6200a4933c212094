//! Active health checks (the patent's Server Status Check, FIG. 6): every unit is probed at an
//! interval with jitter; rise/fall thresholds turn results into its state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rand::Rng;
use stickyfarm_api::InstanceId;

use crate::units::{CheckOk, Unit};
use stickyfarm_api::upstream;

/// How units are checked.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The test URL's path.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// ± fraction of the interval.
    pub jitter: f64,
    /// Per-check timeout.
    pub timeout: Duration,
    /// Expected status.
    pub expect_status: u16,
    /// Text the answer must contain.
    pub expect_body: String,
    /// Passes to come back.
    pub rise: u32,
    /// Failures to go out.
    pub fall: u32,
}

/// Checks one unit until it leaves the farm or the gateway stops. The first check runs at once,
/// so a new unit enters service as soon as it answers.
pub async fn check_loop(unit: Arc<Unit>, cfg: Arc<CheckConfig>) {
    loop {
        let started = Instant::now();
        let result = match tokio::time::timeout(cfg.timeout, probe(&unit, &cfg)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
        };
        unit.record_check(result, started.elapsed(), cfg.rise, cfg.fall);
        let factor = 1.0 + cfg.jitter * (rand::rng().random::<f64>() * 2.0 - 1.0);
        let pause = cfg.interval.mul_f64(factor.max(0.0));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = unit.removed.cancelled() => return,
        }
    }
}

async fn probe(unit: &Unit, cfg: &CheckConfig) -> Result<CheckOk, String> {
    // A fresh connection each time: the check proves the unit accepts connections now.
    let mut sender = upstream::connect(&unit.spec.address, cfg.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let req = http::Request::get(&cfg.path)
        .header(http::header::HOST, "stickyfarm-gateway")
        .header(http::header::USER_AGENT, "stickyfarm-gateway health check")
        .header(http::header::CONNECTION, "close")
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 4096)
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    evaluate(status, &text, cfg, unit.spec.instance)
}

/// What an unhealthy answer says after its first line (a sidecar lists what failed: `app: not
/// accepting connections`), on one line, bounded, for the status table.
fn reason(body: &str) -> Option<String> {
    let why: String = body
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    (!why.is_empty()).then_some(why)
}

/// Judges an answer: status, expected text, and the instance id when discovery knows it.
pub fn evaluate(
    status: u16,
    body: &str,
    cfg: &CheckConfig,
    expected: Option<InstanceId>,
) -> Result<CheckOk, String> {
    if status != cfg.expect_status {
        return Err(match reason(body) {
            Some(why) => format!("status {status}, expected {}: {why}", cfg.expect_status),
            None => format!("status {status}, expected {}", cfg.expect_status),
        });
    }
    if !body.contains(&cfg.expect_body) {
        return Err(format!("answer lacks {:?}", cfg.expect_body));
    }
    let instance = body
        .lines()
        .find_map(|l| l.strip_prefix("instance:"))
        .and_then(|v| v.trim().parse::<InstanceId>().ok());
    if let (Some(want), Some(got)) = (expected, instance)
        && want != got
    {
        return Err(format!(
            "answered as instance {got}, but the unit's pod is {want}"
        ));
    }
    let count = |key: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Ok(CheckOk {
        instance,
        sessions: count("sessions:"),
        warm_copies: count("warm copies:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CheckConfig {
        CheckConfig {
            path: "/h".into(),
            interval: Duration::from_secs(1),
            jitter: 0.0,
            timeout: Duration::from_secs(1),
            expect_status: 200,
            expect_body: "stickyfarm-sidecar healthy".into(),
            rise: 2,
            fall: 3,
        }
    }

    #[test]
    fn answers_are_judged() {
        let id = InstanceId::random();
        let good = format!("stickyfarm-sidecar healthy\nunit: web-0\ninstance: {id}\n");
        assert_eq!(
            evaluate(200, &good, &cfg(), None).unwrap().instance,
            Some(id)
        );
        assert_eq!(
            evaluate(200, &good, &cfg(), Some(id)).unwrap().instance,
            Some(id)
        );
        let other = evaluate(200, &good, &cfg(), Some(InstanceId::random())).unwrap_err();
        assert!(other.contains("answered as instance"), "{other}");
        assert!(evaluate(503, &good, &cfg(), None).is_err());
        let sick = "stickyfarm-sidecar unhealthy\napp: not accepting connections\ndatabase: not answering\n";
        assert_eq!(
            evaluate(503, sick, &cfg(), None).unwrap_err(),
            "status 503, expected 200: app: not accepting connections; database: not answering"
        );
        assert!(
            evaluate(200, "ok", &cfg(), None)
                .unwrap_err()
                .contains("lacks")
        );
    }

    #[test]
    fn the_sessions_a_unit_holds_are_read_from_its_answer() {
        let name: stickyfarm_api::UnitName = "web-0".parse().unwrap();
        let id = InstanceId::random();
        let answer = stickyfarm_api::healthy_answer(&name, &id, 41, 7);
        let ok = evaluate(200, &answer, &cfg(), Some(id)).unwrap();
        assert_eq!((ok.sessions, ok.warm_copies), (Some(41), Some(7)));
        // An older sidecar's answer has no such lines: unknown, not zero.
        let old = format!("stickyfarm-sidecar healthy\nunit: web-0\ninstance: {id}\n");
        let ok = evaluate(200, &old, &cfg(), None).unwrap();
        assert_eq!((ok.sessions, ok.warm_copies), (None, None));
    }
}
