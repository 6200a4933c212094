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
        "{:<18} {:<8} {:<9} {:>9} {:>9} {:>10}  {:<10} LAST ERROR\n",
        "UNIT", "STATE", "ADMIN", "IN-FLIGHT", "REQUESTS", "CHECK", "INSTANCE"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<18} {:<8} {:<9} {:>9} {:>9} {:>10}  {:<10} {}",
            r.name,
            r.state,
            r.admin,
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
