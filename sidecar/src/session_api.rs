//! The session-state API the app calls on localhost (TCP or a Unix socket).
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/sessions/{id}` | the whole session ([`stickyfarm_api::SessionSnapshot`]) |
//! | DELETE | `/v1/sessions/{id}` | delete the session (logout) |
//! | GET | `/v1/sessions/{id}/tables/{table}` | one table's JSON document; `ETag: "<version>"` |
//! | PUT | `/v1/sessions/{id}/tables/{table}` | write it through; optional `If-Match` |
//! | DELETE | `/v1/sessions/{id}/tables/{table}` | delete it; optional `If-Match` |

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use serde_json::value::RawValue;
use stickyfarm_api::{SessionId, TableName, headers, request_id};
use tracing::Instrument;

use crate::cache::{CachedSession, Entry};
use crate::store::StoreError;
use crate::tier::{Precondition, SessionTier, TierError};

/// Bounds on what the app may write.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest document (bytes).
    pub max_table_size: usize,
    /// Deepest nesting of arrays and objects.
    pub max_json_depth: usize,
}

#[derive(Clone)]
struct ApiState {
    tier: Arc<SessionTier>,
    limits: Limits,
}

impl axum::extract::FromRef<ApiState> for Arc<SessionTier> {
    fn from_ref(s: &ApiState) -> Self {
        s.tier.clone()
    }
}

/// The API router.
pub fn router(tier: Arc<SessionTier>, limits: Limits) -> Router {
    Router::new()
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/v1/sessions/{id}/rotate", post(rotate_session))
        .route(
            "/v1/sessions/{id}/tables/{table}",
            get(get_table).put(put_table).delete(delete_table),
        )
        .route_layer(axum::middleware::from_fn_with_state(tier.clone(), timed))
        .layer(DefaultBodyLimit::max(limits.max_table_size))
        .with_state(ApiState { tier, limits })
}

/// Times every answer of the API (`stickyfarm_sidecar_session_api_seconds`), and puts its log
/// lines under the request id the app passed along, when it passed a valid one.
async fn timed(
    State(tier): State<Arc<SessionTier>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let id = req
        .headers()
        .get(request_id::HEADER)
        .filter(|v| request_id::is_valid(v.as_bytes()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // An app that traces passes its `traceparent`: its session calls join its request's trace.
    let traced = stickyfarm_api::trace::Traced::request("session api", req.headers());
    let resp = match id {
        Some(id) => {
            traced
                .run(
                    next.run(req)
                        .instrument(tracing::info_span!("request", request_id = id)),
                )
                .await
        }
        None => traced.run(next.run(req)).await,
    };
    tier.metrics().session_api(
        &method,
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// How deep arrays and objects nest in a JSON text (strings skipped). Bounded so a document
/// cannot make anything that walks it later (the app, PostgreSQL's jsonb) recurse without end.
fn json_depth(doc: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in doc.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// An API error: a status and a JSON body `{"error": …}` that says what to do.
struct ApiError(StatusCode, String, Option<u64>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.1 });
        if self.0 == StatusCode::CONFLICT {
            body["current_version"] = json!(self.2);
        }
        let mut r = (self.0, axum::Json(body)).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(v) = self.2 {
            set_version(r.headers_mut(), v);
        }
        r
    }
}

impl From<TierError> for ApiError {
    fn from(e: TierError) -> Self {
        match e {
            TierError::SessionNotFound => ApiError(StatusCode::NOT_FOUND, e.to_string(), None),
            TierError::TooManyTables { .. } => {
                ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), None)
            }
            TierError::Store(StoreError::Conflict { current }) => {
                ApiError(StatusCode::CONFLICT, e.to_string(), current)
            }
            TierError::Store(StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, "session API: PostgreSQL unavailable");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session store is unavailable; nothing was changed; retry shortly".into(),
                    None,
                )
            }
            other => {
                tracing::error!(error = %other, "session API failed");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string(), None)
            }
        }
    }
}

fn set_version(h: &mut HeaderMap, version: u64) {
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\"")).expect("digits"),
    );
    h.insert(headers::TABLE_VERSION, HeaderValue::from(version));
}

fn parse_id(id: &str) -> Result<SessionId, ApiError> {
    id.parse().map_err(|e: stickyfarm_api::ContractError| {
        ApiError(StatusCode::BAD_REQUEST, e.to_string(), None)
    })
}

fn parse_table(t: &str) -> Result<TableName, ApiError> {
    t.parse().map_err(|e: stickyfarm_api::ContractError| {
        ApiError(StatusCode::BAD_REQUEST, e.to_string(), None)
    })
}

/// `If-Match`: absent → the cached copy's version; `*` → any; `"N"` or `N` → exactly N.
fn precondition(h: &HeaderMap) -> Result<Precondition, ApiError> {
    let mut values = h.get_all(header::IF_MATCH).iter();
    let Some(v) = values.next() else {
        return Ok(Precondition::CachedCopy);
    };
    let bad = || {
        ApiError(
            StatusCode::BAD_REQUEST,
            "If-Match must be * or one strong ETag such as \"3\" (the table's version)".into(),
            None,
        )
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let v = v.to_str().map_err(|_| bad())?.trim();
    if v == "*" {
        return Ok(Precondition::Any);
    }
    let digits = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    digits
        .parse::<stickyfarm_api::Generation>()
        .map(|g| Precondition::Version(g.0))
        .map_err(|_| bad())
}

async fn get_session(
    State(tier): State<Arc<SessionTier>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let s = read_or_pending(&tier, id).await?;
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        s.snapshot_json(id),
    )
        .into_response();
    r.headers_mut()
        .insert(headers::GENERATION, HeaderValue::from(s.generation));
    Ok(r)
}

/// A session as the API shows it: stored, or issued here without state yet (empty).
enum SessionView {
    Stored(Entry),
    Empty(CachedSession),
}

impl std::ops::Deref for SessionView {
    type Target = CachedSession;
    fn deref(&self) -> &CachedSession {
        match self {
            SessionView::Stored(e) => e,
            SessionView::Empty(s) => s,
        }
    }
}

/// The session's state; a session issued here that has no state yet reads as empty.
async fn read_or_pending(tier: &SessionTier, id: SessionId) -> Result<SessionView, TierError> {
    match tier.read(id).await? {
        Some(e) => Ok(SessionView::Stored(e)),
        None if tier.pending(&id) => Ok(SessionView::Empty(CachedSession::new(
            0,
            Default::default(),
        ))),
        None => Err(TierError::SessionNotFound),
    }
}

/// `POST /v1/sessions/{id}/rotate`: the session's state under a new id; the old id is dead.
/// The client's cookie is reissued on the answer to the request during which the app rotated.
async fn rotate_session(
    State(tier): State<Arc<SessionTier>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let new = tier.rotate(id).await?;
    let mut r = axum::Json(json!({ "id": new.to_string() })).into_response();
    r.headers_mut().insert(
        headers::SESSION,
        HeaderValue::from_str(&new.to_string()).expect("session ids are visible ASCII"),
    );
    Ok(r)
}

async fn delete_session(
    State(tier): State<Arc<SessionTier>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if tier.delete_session(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(TierError::SessionNotFound.into())
    }
}

async fn get_table(
    State(tier): State<Arc<SessionTier>>,
    Path((id, table)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let table = parse_table(&table)?;
    let s = read_or_pending(&tier, id).await?;
    let Some(t) = s.tables.get(table.as_str()) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "the session has no table {table:?}; write it first (If-Match: \"0\" creates it)"
            ),
            None,
        ));
    };
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        t.doc.clone(),
    )
        .into_response();
    set_version(r.headers_mut(), t.version);
    r.headers_mut()
        .insert(headers::GENERATION, HeaderValue::from(s.generation));
    Ok(r)
}

async fn put_table(
    State(api): State<ApiState>,
    Path((id, table)): Path<(String, String)>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tier = api.tier;
    let id = parse_id(&id)?;
    let table = parse_table(&table)?;
    let pre = precondition(&h)?;
    let doc = std::str::from_utf8(&body)
        .ok()
        .filter(|s| serde_json::from_str::<&RawValue>(s).is_ok())
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "the body must be one JSON document".into(),
                None,
            )
        })?;
    let depth = json_depth(doc);
    if depth > api.limits.max_json_depth {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the document nests {depth} levels deep; at most {} are allowed (--max-json-depth)",
                api.limits.max_json_depth
            ),
            None,
        ));
    }
    let done = tier.write_table(id, &table, Some(doc), pre).await?;
    let status = if done.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut r = (
        status,
        axum::Json(json!({ "version": done.version, "generation": done.generation })),
    )
        .into_response();
    set_version(r.headers_mut(), done.version);
    r.headers_mut()
        .insert(headers::GENERATION, HeaderValue::from(done.generation));
    Ok(r)
}

async fn delete_table(
    State(tier): State<Arc<SessionTier>>,
    Path((id, table)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let table = parse_table(&table)?;
    let pre = precondition(&h)?;
    let done = tier.write_table(id, &table, None, pre).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(headers::GENERATION, HeaderValue::from(done.generation));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_if_match(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in v {
            h.append(header::IF_MATCH, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"["[[[[", "\\\"{{{"]"#), 1);
        assert_eq!(
            json_depth(&format!("{}{}", "[".repeat(100), "]".repeat(100))),
            100
        );
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(
            precondition(&HeaderMap::new()).ok(),
            Some(Precondition::CachedCopy)
        );
        assert_eq!(
            precondition(&with_if_match(&["*"])).ok(),
            Some(Precondition::Any)
        );
        assert_eq!(
            precondition(&with_if_match(&["\"3\""])).ok(),
            Some(Precondition::Version(3))
        );
        assert_eq!(
            precondition(&with_if_match(&["0"])).ok(),
            Some(Precondition::Version(0))
        );
        for bad in [
            &["W/\"3\""][..],
            &["\"x\""],
            &["\"1\", \"2\""],
            &["1", "2"],
            &["-1"],
        ] {
            assert!(precondition(&with_if_match(bad)).is_err(), "{bad:?}");
        }
    }
}
