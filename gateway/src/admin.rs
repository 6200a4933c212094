//! The admin port: the status table, metrics, and unit administration. Bind it to an address
//! only operators reach (the default is loopback).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::units::{AdminState, Farm, UnitStatus};

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusTable {
    /// One row per unit, by name.
    pub units: Vec<UnitStatus>,
}

#[derive(Clone)]
struct AdminCtx {
    farm: Arc<Farm>,
    metrics: Arc<Metrics>,
    slow_start: Duration,
    listed: Arc<AtomicBool>,
}

/// The admin router. `listed` turns true once discovery published the unit list; `/readyz`
/// answers 503 until then.
pub fn router(
    farm: Arc<Farm>,
    metrics: Arc<Metrics>,
    slow_start: Duration,
    listed: Arc<AtomicBool>,
) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/units/{unit}/{action}", post(set_admin))
        .with_state(AdminCtx {
            farm,
            metrics,
            slow_start,
            listed,
        })
}

async fn readyz(State(c): State<AdminCtx>) -> (StatusCode, &'static str) {
    if c.listed.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the unit list\n",
        )
    }
}

async fn status(State(c): State<AdminCtx>) -> axum::Json<StatusTable> {
    axum::Json(StatusTable {
        units: c.farm.status(c.slow_start),
    })
}

async fn metrics_text(State(c): State<AdminCtx>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        c.metrics.encode(),
    )
}

async fn set_admin(
    State(c): State<AdminCtx>,
    Path((unit, action)): Path<(String, String)>,
) -> Result<StatusCode, (StatusCode, String)> {
    let to = match action.as_str() {
        "enable" => AdminState::Enabled,
        "drain" => AdminState::Draining,
        "disable" => AdminState::Disabled,
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                "unknown action: use enable, drain or disable\n".into(),
            ));
        }
    };
    let name = unit
        .parse()
        .map_err(|e: stickyfarm_api::ContractError| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    let members = c.farm.members();
    let u = members.units.get(&name).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no unit {name} in this farm\n"),
        )
    })?;
    u.set_admin(to);
    Ok(StatusCode::NO_CONTENT)
}
