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
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;
use stickyfarm_api::{
    SessionId, SessionSnapshot, TableName, header_names, headers, request_id, session_api,
};
use tracing::Instrument;

use crate::cache::{CachedSession, Entry};
use crate::json::{Doc, Structure};
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

/// The session API as an OpenAPI 3.1 document, made from the handlers and the wire types
/// themselves; `docs/session-api.openapi.json` is this, checked in (`tests/openapi.rs` fails
/// when they differ).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Stickyfarm session API",
        description = "What an app calls on localhost (the sidecar's `--api-listen`, or its Unix socket) to keep its users' session state in the unit's cache, written through to PostgreSQL. The model is explained in docs/session-api.md. The webhook `proxiedRequest` describes the headers the sidecar adds to every request it forwards to the app.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "http://127.0.0.1:7070", description = "The sidecar's default API address, inside the pod")),
    paths(get_session, delete_session, rotate_session, get_table, put_table, delete_table),
    components(schemas(SessionSnapshot, stickyfarm_api::TableSnapshot, session_api::WriteAck, session_api::Rotated, session_api::ApiError)),
    tags(
        (name = "sessions", description = "A whole session: read, rotate the id, delete."),
        (name = "tables", description = "One table (a JSON document with a version) of a session."),
    )
)]
struct ApiDoc;

/// The OpenAPI document of the session API, with the request the sidecar forwards to the app.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = ApiDoc::openapi();
    doc.webhooks = Some(proxied_request());
    doc
}

/// What the app receives: the client's request, with the sidecar's headers (any incoming
/// `x-stickyfarm-*` header is removed first, so a client cannot forge them).
fn proxied_request() -> utoipa::openapi::Paths {
    use utoipa::openapi::path::{
        HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
    };
    use utoipa::openapi::{ObjectBuilder, PathsBuilder, Required, ResponseBuilder, Type};
    let header = |name: &str, required: bool, kind: Type, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(if required {
                Required::True
            } else {
                Required::False
            })
            .description(Some(description))
            .schema(Some(ObjectBuilder::new().schema_type(kind)))
            .build()
    };
    let operation = OperationBuilder::new()
        .operation_id(Some("proxiedRequest"))
        .summary(Some("A client's request, as the sidecar forwards it to the app"))
        .description(Some(
            "Any method and path the client sent (shown here as GET): the sidecar removes the \
             client's `x-stickyfarm-*` headers and hop-by-hop headers, then adds these. The app \
             answers as it would without Stickyfarm; its answer goes back to the client.",
        ))
        .parameters(Some(vec![
            header(headers::SESSION, true, Type::String, "The session id: the key of every session-API call for this request. A new client gets a new id (its cookie is set on the answer)."),
            header(headers::UNIT, true, Type::String, "The name of the unit serving the request."),
            header(headers::UNIT_URL, true, Type::String, "The unit's base URL, without a trailing slash: build the page's links from it so the client's next requests reach this unit."),
            header(headers::INSTANCE, true, Type::String, "The serving sidecar's instance id (the pod's UID)."),
            header(headers::GENERATION, true, Type::Integer, "The session's generation the snapshot reflects (0: no state yet)."),
            header(headers::SNAPSHOT, false, Type::String, "The whole session (the SessionSnapshot schema as JSON, in unpadded base64url) when it is small enough: the app can read its state without calling the API."),
            header(stickyfarm_api::request_id::HEADER, true, Type::String, "The request id: pass it on to the session API so both log it."),
            header("traceparent", false, Type::String, "W3C trace context, when the farm exports traces: pass it on to the session API so its spans join the request's trace."),
        ]))
        .response("default", ResponseBuilder::new().description("The app's answer, as it would give it without Stickyfarm."))
        .build();
    PathsBuilder::new()
        .path("proxiedRequest", PathItem::new(HttpMethod::Get, operation))
        .build()
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
        .get(request_id::NAME)
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
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut structure = Structure::default();
    for b in doc.bytes().filter(|&b| structure.is_structure(b)) {
        match b {
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

/// A refusal: a status and the body every refusal has ([`session_api::ApiError`]: what failed
/// and what to do; on 409 the table's current version, also as its `ETag`).
struct ApiError(StatusCode, session_api::ApiError);

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError(status, session_api::ApiError::new(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let current = self.1.current_version.flatten();
        let mut r = (self.0, axum::Json(self.1)).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(v) = current {
            set_version(r.headers_mut(), v);
        }
        r
    }
}

impl From<TierError> for ApiError {
    fn from(e: TierError) -> Self {
        match e {
            TierError::SessionNotFound => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            TierError::TooManyTables { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            TierError::Store(StoreError::Conflict { current }) => ApiError(
                StatusCode::CONFLICT,
                session_api::ApiError::conflict(e.to_string(), current),
            ),
            TierError::Store(StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, "session API: PostgreSQL unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session store is unavailable; nothing was changed; retry shortly",
                )
            }
            TierError::Interrupted => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => {
                tracing::error!(error = %other, "session API failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

fn set_version(h: &mut HeaderMap, version: u64) {
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\"")).expect("digits"),
    );
    h.insert(header_names::TABLE_VERSION, HeaderValue::from(version));
}

fn parse_id(id: &str) -> Result<SessionId, ApiError> {
    id.parse().map_err(|e: stickyfarm_api::ContractError| {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    })
}

fn parse_table(t: &str) -> Result<TableName, ApiError> {
    t.parse().map_err(|e: stickyfarm_api::ContractError| {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    })
}

/// A body that could not be read: too large (413, naming the limit, in the body every refusal
/// has), or whatever else went wrong reading it.
fn too_large_or(r: BytesRejection, limit: usize) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the document is larger than {limit} bytes (--max-table-size); keep less in one table or split it into several"
            ),
        )
    } else {
        ApiError::new(r.status(), r.body_text())
    }
}

/// `If-Match`: absent → the cached copy's version; `*` → any; `"N"` or `N` → exactly N.
fn precondition(h: &HeaderMap) -> Result<Precondition, ApiError> {
    let mut values = h.get_all(header::IF_MATCH).iter();
    let Some(v) = values.next() else {
        return Ok(Precondition::CachedCopy);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "If-Match must be * or one strong ETag such as \"3\" (the table's version)",
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

/// `GET /v1/sessions/{id}`.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    summary = "Read the whole session",
    description = "Every table with its version. A session this unit issued that has no state yet reads as empty (generation 0).",
    params(("id" = String, Path, description = "The session id (22 characters of base64url), as the sidecar passes it in `x-stickyfarm-session`.", pattern = "^[A-Za-z0-9_-]{22}$")),
    responses(
        (status = 200, description = "The session.", body = SessionSnapshot, headers(("x-stickyfarm-generation" = u64, description = "The session's generation."))),
        (status = 400, description = "The id is malformed.", body = session_api::ApiError),
        (status = 404, description = "No such session, or it expired.", body = session_api::ApiError),
        (status = 503, description = "PostgreSQL is unavailable; retry.", body = session_api::ApiError, headers(("retry-after" = u64, description = "Seconds."))),
    )
)]
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
        .insert(header_names::GENERATION, HeaderValue::from(s.generation));
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
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/rotate",
    tag = "sessions",
    summary = "Give the session a new id",
    description = "On sign-in and sign-out (against session fixation): the same state and versions under a new id; the old id is deleted and announced to every unit; the absolute lifetime is unchanged. The client's cookie is reissued on the answer to the request during which the app rotated.",
    params(("id" = String, Path, description = "The session id (22 characters of base64url), as the sidecar passes it in `x-stickyfarm-session`.", pattern = "^[A-Za-z0-9_-]{22}$")),
    responses(
        (status = 200, description = "The new id.", body = session_api::Rotated, headers(("x-stickyfarm-session" = String, description = "The new id."))),
        (status = 400, description = "The id is malformed.", body = session_api::ApiError),
        (status = 404, description = "No such session, or it expired.", body = session_api::ApiError),
        (status = 503, description = "PostgreSQL is unavailable; nothing changed; retry.", body = session_api::ApiError, headers(("retry-after" = u64, description = "Seconds."))),
    )
)]
async fn rotate_session(
    State(tier): State<Arc<SessionTier>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let new = tier.rotate(id).await?;
    let mut r = axum::Json(session_api::Rotated { id: new }).into_response();
    r.headers_mut().insert(
        header_names::SESSION,
        HeaderValue::from_str(&new.to_string()).expect("session ids are visible ASCII"),
    );
    Ok(r)
}

/// `DELETE /v1/sessions/{id}` (logout).
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    summary = "Delete the session (logout)",
    params(("id" = String, Path, description = "The session id (22 characters of base64url), as the sidecar passes it in `x-stickyfarm-session`.", pattern = "^[A-Za-z0-9_-]{22}$")),
    responses(
        (status = 204, description = "Deleted on every unit."),
        (status = 400, description = "The id is malformed.", body = session_api::ApiError),
        (status = 404, description = "No such session, or it expired.", body = session_api::ApiError),
        (status = 503, description = "PostgreSQL is unavailable; nothing changed; retry.", body = session_api::ApiError, headers(("retry-after" = u64, description = "Seconds."))),
    )
)]
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

/// `GET /v1/sessions/{id}/tables/{table}`.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/tables/{table}",
    tag = "tables",
    summary = "Read one table",
    description = "The table's JSON document exactly as written, from this unit's cache when it holds the newest version, else from PostgreSQL.",
    params(("id" = String, Path, description = "The session id (22 characters of base64url), as the sidecar passes it in `x-stickyfarm-session`.", pattern = "^[A-Za-z0-9_-]{22}$"), ("table" = String, Path, description = "The table's name.", pattern = "^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The document.", body = Value, content_type = "application/json", headers(("etag" = String, description = "The table's version, `\"N\"`: name it in `If-Match`."), ("x-stickyfarm-version" = u64, description = "The same version, as a number."), ("x-stickyfarm-generation" = u64, description = "The session's generation."))),
        (status = 400, description = "The id or the table name is malformed.", body = session_api::ApiError),
        (status = 404, description = "No such table, or no such session.", body = session_api::ApiError),
        (status = 503, description = "PostgreSQL is unavailable; retry.", body = session_api::ApiError, headers(("retry-after" = u64, description = "Seconds."))),
    )
)]
async fn get_table(
    State(tier): State<Arc<SessionTier>>,
    Path((id, table)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let table = parse_table(&table)?;
    let s = read_or_pending(&tier, id).await?;
    let Some(t) = s.tables.get(table.as_str()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the session has no table {table:?}; write it first (If-Match: \"0\" creates it)"
            ),
        ));
    };
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        t.doc.body(),
    )
        .into_response();
    set_version(r.headers_mut(), t.version);
    r.headers_mut()
        .insert(header_names::GENERATION, HeaderValue::from(s.generation));
    Ok(r)
}

/// `PUT /v1/sessions/{id}/tables/{table}`.
#[utoipa::path(
    put,
    path = "/v1/sessions/{id}/tables/{table}",
    tag = "tables",
    summary = "Write one table through to PostgreSQL",
    description = "Answered only after PostgreSQL committed the write; every other unit then drops its copy. The first write to a session this unit issued stores the session.",
    params(("id" = String, Path, description = "The session id (22 characters of base64url), as the sidecar passes it in `x-stickyfarm-session`.", pattern = "^[A-Za-z0-9_-]{22}$"), ("table" = String, Path, description = "The table's name.", pattern = "^[a-z0-9_-]{1,64}$"), ("If-Match" = Option<String>, Header, description = "`\"N\"`: only if the table is at version N (`\"0\"`: only if it does not exist); `*`: whatever its version; absent: only if it is at the version this unit has cached (a write after a read on this unit).")),
    request_body(content = Value, content_type = "application/json", description = "One JSON document (at most --max-table-size bytes, nested at most --max-json-depth deep)."),
    responses(
        (status = 200, description = "Updated.", body = session_api::WriteAck, headers(("etag" = String, description = "The new version, `\"N\"`."), ("x-stickyfarm-version" = u64, description = "The new version."), ("x-stickyfarm-generation" = u64, description = "The session's generation."))),
        (status = 201, description = "Created (version 1).", body = session_api::WriteAck, headers(("etag" = String, description = "`\"1\"`."), ("x-stickyfarm-version" = u64, description = "1."), ("x-stickyfarm-generation" = u64, description = "The session's generation."))),
        (status = 400, description = "The body is not one JSON document, or an id, a name or If-Match is malformed.", body = session_api::ApiError),
        (status = 404, description = "The session is gone, or this unit did not issue it.", body = session_api::ApiError),
        (status = 409, description = "Stale: the table is at another version (`current_version`, also the ETag). Read it again, apply the change, write with that version.", body = session_api::ApiError, headers(("etag" = String, description = "The current version, when the table exists."))),
        (status = 413, description = "The document is larger than --max-table-size (the limit is named).", body = session_api::ApiError),
        (status = 422, description = "The document nests too deep, or the session would have too many tables (the limit is named).", body = session_api::ApiError),
        (status = 503, description = "PostgreSQL is unavailable; nothing changed; retry.", body = session_api::ApiError, headers(("retry-after" = u64, description = "Seconds."))),
    )
)]
async fn put_table(
    State(api): State<ApiState>,
    Path((id, table)): Path<(String, String)>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tier = api.tier;
    let id = parse_id(&id)?;
    let table = parse_table(&table)?;
    let pre = precondition(&h)?;
    let body = body.map_err(|r| too_large_or(r, api.limits.max_table_size))?;
    let doc = std::str::from_utf8(&body)
        .ok()
        .filter(|s| serde_json::from_str::<&RawValue>(s).is_ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "the body must be one JSON document",
            )
        })?;
    let depth = json_depth(doc);
    if depth > api.limits.max_json_depth {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the document nests {depth} levels deep; at most {} are allowed (--max-json-depth)",
                api.limits.max_json_depth
            ),
        ));
    }
    let done = tier
        .write_table(id, table, Some(Doc::from(doc)), pre)
        .await?;
    let status = if done.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut r = (
        status,
        axum::Json(session_api::WriteAck {
            version: done.version,
            generation: done.generation,
        }),
    )
        .into_response();
    set_version(r.headers_mut(), done.version);
    r.headers_mut()
        .insert(header_names::GENERATION, HeaderValue::from(done.generation));
    Ok(r)
}

/// `DELETE /v1/sessions/{id}/tables/{table}`.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}/tables/{table}",
    tag = "tables",
    summary = "Delete one table",
    params(("id" = String, Path, description = "The session id (22 characters of base64url), as the sidecar passes it in `x-stickyfarm-session`.", pattern = "^[A-Za-z0-9_-]{22}$"), ("table" = String, Path, description = "The table's name.", pattern = "^[a-z0-9_-]{1,64}$"), ("If-Match" = Option<String>, Header, description = "`\"N\"`: only if the table is at version N (`\"0\"`: only if it does not exist); `*`: whatever its version; absent: only if it is at the version this unit has cached (a write after a read on this unit).")),
    responses(
        (status = 204, description = "Deleted.", headers(("x-stickyfarm-generation" = u64, description = "The session's generation."))),
        (status = 400, description = "An id, a name or If-Match is malformed.", body = session_api::ApiError),
        (status = 404, description = "No such session.", body = session_api::ApiError),
        (status = 409, description = "Stale: the table is at another version (`current_version`).", body = session_api::ApiError),
        (status = 503, description = "PostgreSQL is unavailable; nothing changed; retry.", body = session_api::ApiError, headers(("retry-after" = u64, description = "Seconds."))),
    )
)]
async fn delete_table(
    State(tier): State<Arc<SessionTier>>,
    Path((id, table)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let table = parse_table(&table)?;
    let pre = precondition(&h)?;
    let done = tier.write_table(id, table, None, pre).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header_names::GENERATION, HeaderValue::from(done.generation));
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
