//! The shop's view of the sidecar: who is asking (from the headers the sidecar adds) and the
//! cart and login, kept in the sidecar's session state, never in this process.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use stickyfarm_api::{SessionSnapshot, headers};
use thiserror::Error;

/// Table names in the session.
pub const CART: &str = "cart";
/// The signed-in customer.
pub const LOGIN: &str = "login";

/// A session-state operation failed.
#[derive(Debug, Error)]
pub enum StateError {
    /// The request did not come through a sidecar.
    #[error("no Stickyfarm session on this request: run the shop behind stickyfarm-sidecar")]
    NoSession,
    /// The sidecar said its store is unavailable; nothing was changed.
    #[error("session store unavailable; nothing was changed, retry shortly")]
    Unavailable,
    /// Too many concurrent changes to the same cart.
    #[error("the cart kept changing concurrently; retry")]
    Contended,
    /// Talking to the sidecar failed.
    #[error("session API call failed: {0}")]
    Api(String),
}

/// What the sidecar told us about this request.
#[derive(Debug, Clone)]
pub struct Visit {
    /// Session id.
    pub session: String,
    /// Serving unit.
    pub unit: String,
    /// Base URL for every link, so the client stays on its unit.
    pub base: String,
    /// Serving instance (pod UID).
    pub instance: String,
    snapshot: Option<SessionSnapshot>,
}

impl Visit {
    /// Reads the sidecar's headers.
    pub fn from_headers(h: &HeaderMap) -> Result<Visit, StateError> {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let session = get(headers::SESSION).ok_or(StateError::NoSession)?;
        let snapshot = get(headers::SNAPSHOT).and_then(|s| {
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()?;
            serde_json::from_slice(&json).ok()
        });
        Ok(Visit {
            session,
            unit: get(headers::UNIT).unwrap_or_default(),
            base: get(headers::UNIT_URL).unwrap_or_default(),
            instance: get(headers::INSTANCE).unwrap_or_default(),
            snapshot,
        })
    }

    /// A table from the snapshot the sidecar attached: no round trip at all.
    fn snapshot_table(&self, table: &str) -> Option<(Option<String>, u64)> {
        let snap = self.snapshot.as_ref()?;
        Some(
            match snap.tables.iter().find(|(name, _)| name.as_str() == table) {
                Some((_, t)) => (Some(t.doc.get().to_owned()), t.version),
                None => (None, 0),
            },
        )
    }
}

/// Cart lines: SKU → quantity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart(pub BTreeMap<String, u32>);

/// The signed-in customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// Display name.
    pub name: String,
}

/// Client of the sidecar's session-state API.
#[derive(Clone)]
pub struct SessionApi {
    base: String,
    http: reqwest::Client,
}

impl SessionApi {
    /// `base` is the API's URL, e.g. `http://127.0.0.1:7070`.
    pub fn new(base: &str) -> SessionApi {
        SessionApi {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, v: &Visit, table: &str) -> String {
        format!("{}/v1/sessions/{}/tables/{table}", self.base, v.session)
    }

    /// Reads a table: `(document, version)`; version 0 when it does not exist yet.
    async fn read_raw(&self, v: &Visit, table: &str) -> Result<(Option<String>, u64), StateError> {
        let r = self
            .http
            .get(self.url(v, table))
            .send()
            .await
            .map_err(|e| StateError::Api(e.to_string()))?;
        match r.status().as_u16() {
            200 => {
                let version = r
                    .headers()
                    .get(headers::TABLE_VERSION)
                    .and_then(|x| x.to_str().ok())
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                let doc = r.text().await.map_err(|e| StateError::Api(e.to_string()))?;
                Ok((Some(doc), version))
            }
            404 => Ok((None, 0)),
            503 => Err(StateError::Unavailable),
            s => Err(StateError::Api(format!("reading {table}: status {s}"))),
        }
    }

    /// Reads a table and its version, from the attached snapshot when there is one. The
    /// snapshot is the state when the request arrived: read a table before changing it, not
    /// after (writes are conditional, so a stale read can only cost a retry, never a lost
    /// update).
    pub async fn read<T: for<'de> Deserialize<'de> + Default>(
        &self,
        v: &Visit,
        table: &str,
    ) -> Result<(T, u64), StateError> {
        let (doc, version) = match v.snapshot_table(table) {
            Some(x) => x,
            None => self.read_raw(v, table).await?,
        };
        let value = doc
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or_default();
        Ok((value, version))
    }

    /// Read-modify-write of a table, conditional on the version read; on a conflict (another
    /// tab or unit changed it) it re-reads from the sidecar and applies `change` again.
    pub async fn update<T, F>(
        &self,
        v: &Visit,
        table: &str,
        mut change: F,
    ) -> Result<(T, u64), StateError>
    where
        T: for<'de> Deserialize<'de> + Serialize + Default,
        F: FnMut(&mut T),
    {
        let (mut value, mut version) = self.read::<T>(v, table).await?;
        for _ in 0..10 {
            change(&mut value);
            let r = self
                .http
                .put(self.url(v, table))
                .header("if-match", format!("\"{version}\""))
                .json(&value)
                .send()
                .await
                .map_err(|e| StateError::Api(e.to_string()))?;
            match r.status().as_u16() {
                200 | 201 => {
                    let new_version = r
                        .headers()
                        .get(headers::TABLE_VERSION)
                        .and_then(|x| x.to_str().ok())
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(version + 1);
                    return Ok((value, new_version));
                }
                409 => {
                    let (doc, ver) = self.read_raw(v, table).await?;
                    value = doc
                        .and_then(|d| serde_json::from_str(&d).ok())
                        .unwrap_or_default();
                    version = ver;
                }
                503 => return Err(StateError::Unavailable),
                s => return Err(StateError::Api(format!("writing {table}: status {s}"))),
            }
        }
        Err(StateError::Contended)
    }

    /// Gives the session a new id (on sign-in and sign-out, as OWASP asks): the state moves
    /// with it, the old id is dead, and the sidecar sets the new cookie on this request's
    /// answer. `v` names the new id afterwards.
    pub async fn rotate(&self, v: &mut Visit) -> Result<(), StateError> {
        let r = self
            .http
            .post(format!("{}/v1/sessions/{}/rotate", self.base, v.session))
            .send()
            .await
            .map_err(|e| StateError::Api(e.to_string()))?;
        match r.status().as_u16() {
            200 => {
                #[derive(Deserialize)]
                struct Rotated {
                    id: String,
                }
                let rotated: Rotated =
                    r.json().await.map_err(|e| StateError::Api(e.to_string()))?;
                v.session = rotated.id;
                Ok(())
            }
            503 => Err(StateError::Unavailable),
            s => Err(StateError::Api(format!("rotating the session: status {s}"))),
        }
    }

    /// Replaces a table only if it is still at `version`; `false` when it moved on.
    pub async fn replace_if<T: Serialize>(
        &self,
        v: &Visit,
        table: &str,
        value: &T,
        version: u64,
    ) -> Result<bool, StateError> {
        let r = self
            .http
            .put(self.url(v, table))
            .header("if-match", format!("\"{version}\""))
            .json(value)
            .send()
            .await
            .map_err(|e| StateError::Api(e.to_string()))?;
        match r.status().as_u16() {
            200 | 201 => Ok(true),
            409 => Ok(false),
            503 => Err(StateError::Unavailable),
            s => Err(StateError::Api(format!("writing {table}: status {s}"))),
        }
    }
}
