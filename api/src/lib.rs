//! The Stickyfarm wire contract.
//!
//! Everything that two Stickyfarm components (or a component and a client) must agree on lives
//! here: cookie and header names, the session-id and instance-id formats, unit names and unit
//! addressing, the health answer and the session snapshot handed to the app. The crate does no
//! I/O. Every value that can come from a client is parsed strictly into a typed value or a
//! [`ContractError`]; nothing downstream ever sees a raw client string.

#[cfg(feature = "config")]
pub mod config;
mod cookies;
mod error;
#[cfg(feature = "farm")]
pub mod farm;
mod hop;
mod ids;
#[cfg(feature = "server")]
pub mod listener;
#[cfg(feature = "logs")]
pub mod logs;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod request_id;
#[cfg(feature = "server")]
pub mod runtime;
pub mod session_api;
mod snapshot;
pub mod token;
#[cfg(feature = "logs")]
pub mod trace;
#[cfg(feature = "server")]
pub mod tunnel;
mod unit;
#[cfg(feature = "server")]
pub mod upstream;

pub use cookies::{
    ClientCookies, CookiePolicy, FarmCookie, HOST_PREFIX, SESSION_COOKIE_NAME_PATTERN,
    SessionCookieName, parse_client_cookies,
};
pub use error::ContractError;
pub use hop::{remove_hop_by_hop, remove_stickyfarm_headers, upgrade_protocol};
pub use ids::{Generation, InstanceId, SessionId, SessionIdKey, StoredId, TableName};
pub use snapshot::{SessionSnapshot, TableSnapshot};
pub use unit::{UnitBaseUrl, UnitName, UnitPath, is_valid_host, parse_unit_host, parse_unit_path};

/// Cookie names set by Stickyfarm. All are `HttpOnly` and `SameSite=Lax`.
pub mod cookie_names {
    /// The session id ([`crate::SessionId`]), set by the sidecar.
    pub const SESSION: &str = "sf_session";
    /// The instance id ([`crate::InstanceId`]) of the unit that last served the client, set by
    /// the sidecar. A unit that sees another instance id flushes what it cached for the session.
    pub const INSTANCE: &str = "sf_instance";
    /// The newest session generation ([`crate::Generation`]) the client has seen. A unit whose
    /// cached copy is older reloads it from PostgreSQL before serving.
    pub const GENERATION: &str = "sf_gen";
    /// The routing cookie ([`crate::UnitName`]), set by the gateway for clients that drop the
    /// unit links.
    pub const UNIT: &str = "sf_unit";
}

/// Header names on requests the sidecar forwards to the app, and on responses.
///
/// The sidecar removes every incoming header that starts with [`headers::PREFIX`] before it adds
/// its own, so a client can never inject a session id or a unit address into the app.
pub mod headers {
    /// Every Stickyfarm header starts with this prefix (lower case, as HTTP/2 requires).
    pub const PREFIX: &str = "x-stickyfarm-";
    /// The session id of the request (sidecar → app).
    pub const SESSION: &str = "x-stickyfarm-session";
    /// The name of the unit that serves the request (sidecar → app).
    pub const UNIT: &str = "x-stickyfarm-unit";
    /// The unit's external base URL, without a trailing slash (gateway → sidecar → app). The app
    /// builds its links from it so the client's next requests reach the same unit.
    pub const UNIT_URL: &str = "x-stickyfarm-unit-url";
    /// The instance id of the serving sidecar (sidecar → app, and on health answers).
    pub const INSTANCE: &str = "x-stickyfarm-instance";
    /// The session generation the forwarded snapshot reflects (sidecar → app).
    pub const GENERATION: &str = "x-stickyfarm-generation";
    /// The whole session state as base64url (no padding) of the JSON [`crate::SessionSnapshot`],
    /// attached when it fits the sidecar's size limit, so the app needs no round trip to read it.
    pub const SNAPSHOT: &str = "x-stickyfarm-snapshot";
    /// The version of one session table, on session-API responses (alongside `ETag`).
    pub const TABLE_VERSION: &str = "x-stickyfarm-version";
    /// On a sidecar's 503 when its app refused the connection (sidecar → gateway): the request
    /// never reached the app, so the gateway may try it on another unit. Seen when the app
    /// stops first while its pod terminates.
    pub const UNIT_UNAVAILABLE: &str = "x-stickyfarm-unit-unavailable";
    /// The farm's gateway token ([`crate::token`]) on every request the gateway forwards
    /// (gateway → sidecar). A sidecar trusts the gateway's other headers (the unit base URL)
    /// only when it carries the token the sidecar was given; it never reaches the app.
    pub const GATEWAY_TOKEN: &str = "x-stickyfarm-gateway-token";
    /// The unit the gateway would fail the request's session over to (gateway → sidecar,
    /// believed only with the gateway token): the unit that keeps the session's warm copy.
    pub const BACKUP: &str = "x-stickyfarm-backup";
    /// Asks a sidecar to release the request's session if it has been idle for at least this
    /// many milliseconds (gateway → sidecar, believed only with the gateway token): the
    /// sidecar then drops its copy and answers 503 with [`UNIT_UNAVAILABLE`] `released`
    /// without reaching the app, and the gateway sends the request to a less loaded unit.
    pub const RELEASE_IF_IDLE: &str = "x-stickyfarm-release-if-idle";
}

/// The [`headers`] a proxy sets or reads on every request, as `http::HeaderName`s: a `&str`
/// name is parsed again on every use, which showed in the gateway's profile.
pub mod header_names {
    use http::HeaderName;

    use super::headers;

    /// [`headers::SESSION`].
    pub const SESSION: HeaderName = HeaderName::from_static(headers::SESSION);
    /// [`headers::UNIT`].
    pub const UNIT: HeaderName = HeaderName::from_static(headers::UNIT);
    /// [`headers::UNIT_URL`].
    pub const UNIT_URL: HeaderName = HeaderName::from_static(headers::UNIT_URL);
    /// [`headers::INSTANCE`].
    pub const INSTANCE: HeaderName = HeaderName::from_static(headers::INSTANCE);
    /// [`headers::GENERATION`].
    pub const GENERATION: HeaderName = HeaderName::from_static(headers::GENERATION);
    /// [`headers::SNAPSHOT`].
    pub const SNAPSHOT: HeaderName = HeaderName::from_static(headers::SNAPSHOT);
    /// [`headers::TABLE_VERSION`].
    pub const TABLE_VERSION: HeaderName = HeaderName::from_static(headers::TABLE_VERSION);
    /// [`headers::UNIT_UNAVAILABLE`].
    pub const UNIT_UNAVAILABLE: HeaderName = HeaderName::from_static(headers::UNIT_UNAVAILABLE);
    /// [`headers::GATEWAY_TOKEN`].
    pub const GATEWAY_TOKEN: HeaderName = HeaderName::from_static(headers::GATEWAY_TOKEN);
    /// [`headers::BACKUP`].
    pub const BACKUP: HeaderName = HeaderName::from_static(headers::BACKUP);
    /// [`headers::RELEASE_IF_IDLE`].
    pub const RELEASE_IF_IDLE: HeaderName = HeaderName::from_static(headers::RELEASE_IF_IDLE);
}

/// Label keys the operator puts on a farm's objects; the gateway finds units by them.
pub mod labels {
    /// The farm an object belongs to.
    pub const FARM: &str = "stickyfarm.dev/farm";
    /// The component: `unit`, `gateway` or `database`.
    pub const COMPONENT: &str = "stickyfarm.dev/component";
    /// On a unit's Service (and so on its EndpointSlices): the unit's name.
    pub const UNIT: &str = "stickyfarm.dev/unit";
    /// On a unit's Service: `serving` or `draining`. The gateway stops giving a draining unit
    /// new sessions.
    pub const UNIT_STATE: &str = "stickyfarm.dev/unit-state";
}

/// Paths reserved by Stickyfarm on a unit's public port.
pub mod paths {
    /// The health check the gateway probes (the patent's test URL, FIG. 6).
    pub const HEALTH: &str = "/_stickyfarm/health";
    /// Prefix of gateway unit addresses: `/_unit/<unit>/…`.
    pub const UNIT_PREFIX: &str = "/_unit/";
    /// First segment of Stickyfarm's own paths on a unit (the health check): never reachable
    /// through the gateway's public port.
    pub const INTERNAL_SEGMENT: &str = "_stickyfarm";

    /// Whether `path` is one of Stickyfarm's own (`/_stickyfarm/…`), however its first segment
    /// is spelled: percent-encoded or in another case, so no spelling slips past a check that a
    /// server behind it might still route.
    pub fn is_internal(path: &str) -> bool {
        let first = path
            .trim_start_matches('/')
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        // Decoded on the fly and compared as it goes: no allocation on the request path.
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let bytes = first.as_bytes();
        let mut want = INTERNAL_SEGMENT.bytes();
        let mut i = 0;
        while i < bytes.len() {
            let decoded = match (
                bytes[i],
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    i += 3;
                    h * 16 + l
                }
                (b, _, _) => {
                    i += 1;
                    b
                }
            };
            if want.next() != Some(decoded.to_ascii_lowercase()) {
                return false;
            }
        }
        want.next().is_none()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn internal_paths_in_every_spelling() {
            for p in [
                "/_stickyfarm/health",
                "/_stickyfarm",
                "//_stickyfarm/health",
                "/%5fstickyfarm/health",
                "/%5Fstickyfarm/x?y",
                "/_STICKYFARM/health",
                "/%5f%73tickyfarm/health",
            ] {
                assert!(is_internal(p), "{p}");
            }
            for p in [
                "/",
                "/_stickyfarmx/health",
                "/shop/_stickyfarm/health",
                "/%zz",
                "/cart?_stickyfarm",
            ] {
                assert!(!is_internal(p), "{p}");
            }
        }
    }
}

/// The [`headers::UNIT_UNAVAILABLE`] value of a sidecar that released the request's session
/// for rebalancing ([`headers::RELEASE_IF_IDLE`]).
pub const RELEASED: &str = "released";

/// The fixed first line of a healthy answer of [`paths::HEALTH`].
pub const HEALTHY_ANSWER: &str = "stickyfarm-sidecar healthy";

/// The body a healthy sidecar returns on [`paths::HEALTH`] (status 200).
///
/// It names the unit and the instance id, so a gateway whose expected answer includes the
/// instance id notices a replaced pod, the number of sessions the unit's cache holds, and the
/// warm copies it keeps of sessions it backs up (the gateway's status table shows both).
pub fn healthy_answer(
    unit: &UnitName,
    instance: &InstanceId,
    sessions: u64,
    warm_copies: u64,
) -> String {
    format!(
        "{HEALTHY_ANSWER}\nunit: {unit}\ninstance: {instance}\nsessions: {sessions}\nwarm copies: {warm_copies}\n"
    )
}
