use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Generation, SessionId, TableName};

/// The whole state of one session, as the session API returns it and as the sidecar attaches
/// it to forwarded requests ([`crate::headers::SNAPSHOT`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The session id.
    pub id: SessionId,
    /// The session's generation when the snapshot was taken.
    pub generation: Generation,
    /// The application state tables, by name.
    pub tables: BTreeMap<TableName, TableSnapshot>,
}

/// One application state table: a JSON document and its version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableSnapshot {
    /// Version of the document; a conditional write names it in `If-Match`.
    pub version: u64,
    /// The JSON document, exactly as stored.
    pub doc: Box<RawValue>,
}
