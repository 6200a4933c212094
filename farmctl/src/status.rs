//! The gateway's status table as `farmctl status` and `kubectl stickyfarm status` print it:
//! one renderer for both, over the gateway's `GET /status` document.

use serde::Deserialize;

/// One row of the gateway's status table, as farmctl shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusRow {
    /// Unit.
    pub name: String,
    /// up/down/unknown.
    pub state: String,
    /// enabled/draining/disabled.
    pub admin: String,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests answered.
    pub requests: u64,
    /// Sessions the unit's cache holds.
    #[serde(default)]
    pub sessions: Option<u64>,
    /// Warm copies it keeps of sessions it backs up.
    #[serde(default)]
    pub warm_copies: Option<u64>,
    /// Last check latency.
    pub last_latency_ms: Option<f64>,
    /// Instance id.
    pub instance: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
}

/// The gateway's status document (`GET /status` on its admin port).
#[derive(Deserialize)]
pub struct StatusDoc {
    /// One row per unit.
    pub units: Vec<StatusRow>,
}

/// The status table as `farmctl status` and `kubectl stickyfarm status` print it.
pub fn render_status_table(rows: &[StatusRow]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<18} {:<8} {:<9} {:>9} {:>6} {:>9} {:>9} {:>10}  {:<10} LAST ERROR\n",
        "UNIT", "STATE", "ADMIN", "SESSIONS", "WARM", "IN-FLIGHT", "REQUESTS", "CHECK", "INSTANCE"
    );
    let count = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
    for r in rows {
        let _ = writeln!(
            out,
            "{:<18} {:<8} {:<9} {:>9} {:>6} {:>9} {:>9} {:>10}  {:<10} {}",
            r.name,
            r.state,
            r.admin,
            count(r.sessions),
            count(r.warm_copies),
            r.in_flight,
            r.requests,
            r.last_latency_ms
                .map_or("-".into(), |l| format!("{l:.1} ms")),
            r.instance
                .as_deref()
                .map_or("-", |i| i.get(..8).unwrap_or(i)),
            r.last_error.as_deref().unwrap_or_default()
        );
    }
    out
}

/// Fetches the gateway's status table.
pub async fn status_table(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<StatusRow>> {
    let doc: StatusDoc = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(doc.units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_sessions_held_and_warm_copies() {
        let doc: StatusDoc = serde_json::from_value(serde_json::json!({"units": [
            {"name": "web-0", "state": "up", "admin": "enabled", "in_flight": 2, "requests": 90,
             "last_latency_ms": 1.25, "instance": "0123456789ab", "last_error": null,
             "sessions": 40, "warm_copies": 12},
            // A gateway of an earlier version sends neither count.
            {"name": "web-1", "state": "down", "admin": "enabled", "in_flight": 0, "requests": 3,
             "last_latency_ms": null, "instance": null, "last_error": "refused"}
        ]}))
        .unwrap();
        let table = render_status_table(&doc.units);
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0][..5],
            ["UNIT", "STATE", "ADMIN", "SESSIONS", "WARM"]
        );
        assert_eq!(
            lines[1][..7],
            ["web-0", "up", "enabled", "40", "12", "2", "90"]
        );
        assert_eq!(lines[2][..5], ["web-1", "down", "enabled", "-", "-"]);
    }
}
