//! The gateway's two operator-facing ports:
//! - the **admin** port is read-only (the status page at `/`, the status table as JSON, metrics,
//!   health): scrapers and probes reach it, and nothing there changes routing;
//! - the **control** port takes unit actions (enable, drain, disable), each authorised by the
//!   farm's admin token. On Kubernetes no NetworkPolicy admits anyone to it: an administrator
//!   reaches it with `kubectl port-forward` (itself authorised by the API server) and the token
//!   from the farm's Secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use stickyfarm_api::token::Token;

use crate::metrics::Metrics;
use crate::status_page;
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

/// The read-only admin router. `listed` turns true once discovery published the unit list;
/// `/readyz` answers 503 until then.
pub fn router(
    farm: Arc<Farm>,
    metrics: Arc<Metrics>,
    slow_start: Duration,
    listed: Arc<AtomicBool>,
) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminCtx {
            farm,
            metrics,
            slow_start,
            listed,
        })
}

/// The control router: unit actions, each request authorised by `token` before anything else
/// is looked at.
pub fn control_router(farm: Arc<Farm>, metrics: Arc<Metrics>, token: Arc<Token>) -> Router {
    Router::new()
        .route("/units/{unit}/{action}", post(set_admin))
        // Unknown paths too are behind the token (the layer below wraps the fallback).
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such action\n") })
        .layer(middleware::from_fn_with_state(
            (token, metrics.clone()),
            authorise,
        ))
        .with_state(farm)
}

/// Lets a request on only with `Authorization: Bearer <admin token>`; otherwise 401, whatever
/// the path (so an unauthorised caller learns nothing about units or routes).
async fn authorise(
    State((token, metrics)): State<(Arc<Token>, Arc<Metrics>)>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req.headers().get(header::AUTHORIZATION);
    if presented.is_some_and(|v| token.matches_bearer(v.as_bytes())) {
        return next.run(req).await;
    }
    metrics.control_refused();
    tracing::warn!(
        path = %req.uri().path(),
        credential = if presented.is_some() { "wrong" } else { "missing" },
        "refused a unit action without the admin token"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"stickyfarm-gateway\""),
        )],
        "unit actions need Authorization: Bearer <admin token>\n",
    )
        .into_response()
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

/// `GET /?refresh=N`: the status page (see [`crate::status_page`]).
#[derive(Deserialize)]
struct PageQuery {
    refresh: Option<u32>,
}

async fn page(State(c): State<AdminCtx>, Query(q): Query<PageQuery>) -> Response {
    let html = status_page::render(
        &c.farm.status(c.slow_start),
        &status_page::PageContext {
            now_ms: crate::units::now_ms(),
            refresh_secs: q
                .refresh
                .unwrap_or(status_page::DEFAULT_REFRESH_SECS)
                .min(status_page::MAX_REFRESH_SECS),
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                status_page::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
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
    State(farm): State<Arc<Farm>>,
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
    let members = farm.members();
    let u = members.units.get(&name).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no unit {name} in this farm\n"),
        )
    })?;
    u.set_admin(to);
    tracing::info!(unit = %name, action, "unit action");
    Ok(StatusCode::NO_CONTENT)
}
