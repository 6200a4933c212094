//! The bodies of the sidecar's session API, the one the app calls on localhost: what the
//! sidecar writes and what the OpenAPI document (`docs/session-api.openapi.json`, generated
//! from these types with the `openapi` feature) says it writes. An app in any language reads
//! them; the model is explained in `docs/session-api.md`.

use serde::{Deserialize, Serialize};

use crate::SessionId;

/// The answer to a write of a table (`PUT`): the table's new version (also its `ETag`) and the
/// session's generation after the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteAck {
    /// The table's version now; name it in `If-Match` for the next conditional write.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub version: u64,
    /// The session's generation now (it grows with every write to any of its tables).
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub generation: u64,
}

/// The answer to a rotation: the id the session's state lives under from now on (also in the
/// `x-stickyfarm-session` header). The old id is dead on every unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rotated {
    /// The new session id.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = String, pattern = "^[A-Za-z0-9_-]{22}$")
    )]
    pub id: SessionId,
}

/// Every refusal of the session API: what failed and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// What failed and what to do, in a sentence.
    pub error: String,
    /// Only on 409 (a stale write): the version the table has now, `null` when it does not
    /// exist. Read the table again, apply the change to what it holds, write with this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, nullable))]
    pub current_version: Option<Option<u64>>,
}

impl ApiError {
    /// A refusal saying `error`.
    pub fn new(error: impl Into<String>) -> ApiError {
        ApiError {
            error: error.into(),
            current_version: None,
        }
    }

    /// A stale write's refusal: the table is at `current` now (`None`: it does not exist).
    pub fn conflict(error: impl Into<String>, current: Option<u64>) -> ApiError {
        ApiError {
            error: error.into(),
            current_version: Some(current),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_names_the_current_version_even_when_the_table_is_gone() {
        let gone = serde_json::to_value(ApiError::conflict("stale", None)).unwrap();
        assert_eq!(
            gone,
            serde_json::json!({"error": "stale", "current_version": null})
        );
        let at = serde_json::to_value(ApiError::conflict("stale", Some(3))).unwrap();
        assert_eq!(at["current_version"], 3);
        let plain = serde_json::to_value(ApiError::new("bad id")).unwrap();
        assert_eq!(plain, serde_json::json!({"error": "bad id"}));
    }
}
