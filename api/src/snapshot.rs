use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Generation, SessionId, TableName};

/// The whole state of one session, as the session API returns it and as the sidecar attaches
/// it to forwarded requests ([`crate::headers::SNAPSHOT`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionSnapshot {
    /// The session id.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = String, pattern = "^[A-Za-z0-9_-]{22}$")
    )]
    pub id: SessionId,
    /// The session's generation when the snapshot was taken (0: no state yet).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub generation: Generation,
    /// The application state tables, by name (`[a-z0-9_-]{1,64}`).
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = std::collections::BTreeMap<String, TableSnapshot>)
    )]
    pub tables: BTreeMap<TableName, TableSnapshot>,
}

/// One application state table: a JSON document and its version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TableSnapshot {
    /// Version of the document; a conditional write names it in `If-Match`.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub version: u64,
    /// The JSON document, exactly as stored (any JSON value).
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub doc: Box<RawValue>,
}
