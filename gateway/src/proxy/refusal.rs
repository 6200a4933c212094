//! Every answer the gateway gives of its own instead of a unit's: a closed set, so each is
//! counted under its reason (`stickyfarm_gateway_refused_total{kind}`, all created at zero) and
//! worded in one place.

use http::StatusCode;

/// An answer of the gateway's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No, several or a malformed `Host`.
    BadHost(&'static str),
    /// A malformed `/_unit/<unit>/…` address.
    BadUnitAddress(&'static str),
    /// A path and query that is not a valid request target once the unit prefix is removed.
    BadTarget,
    /// A declared body over `--max-body-size`.
    BodyTooLarge,
    /// A body that ended early or ran past its `Content-Length`.
    BodyUnreadable,
    /// Too many new sessions from one client address.
    NewSessionRate,
    /// A unit's own paths (the health check), never the client's.
    InternalPath,
    /// An address naming no unit of the farm, from a client without a session.
    UnknownUnit,
    /// No unit can take the request (none in service, or every one tried refused it).
    NoUnit,
    /// The unit's app refused the connection and the request was not held to send elsewhere.
    UnitUnavailable,
    /// The unit failed while handling a request that may have taken effect: not replayed.
    UnitFailed,
    /// Every unit tried failed while handling the request.
    EveryUnitFailed,
    /// The unit did not start answering within `--upstream-timeout`.
    UnitTimeout,
    /// The unit holds as many open tunnels (WebSockets) as `--max-tunnels-per-unit` allows.
    TooManyTunnels,
    /// An HTTP/2 extended CONNECT for a protocol other than WebSocket (RFC 8441 defines only
    /// that one; the gateway cannot translate another to its unit).
    UnsupportedTunnel,
}

impl Refusal {
    /// Every reason, for counters that exist before the first refusal.
    pub const KINDS: [&'static str; 15] = [
        "bad_host",
        "bad_unit_address",
        "bad_target",
        "body_too_large",
        "body_unreadable",
        "new_session_rate",
        "internal_path",
        "unknown_unit",
        "no_unit",
        "unit_unavailable",
        "unit_failed",
        "every_unit_failed",
        "unit_timeout",
        "too_many_tunnels",
        "unsupported_tunnel",
    ];

    /// The reason it is counted under.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::BadHost(_) => "bad_host",
            Refusal::BadUnitAddress(_) => "bad_unit_address",
            Refusal::BadTarget => "bad_target",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyUnreadable => "body_unreadable",
            Refusal::NewSessionRate => "new_session_rate",
            Refusal::InternalPath => "internal_path",
            Refusal::UnknownUnit => "unknown_unit",
            Refusal::NoUnit => "no_unit",
            Refusal::UnitUnavailable => "unit_unavailable",
            Refusal::UnitFailed => "unit_failed",
            Refusal::EveryUnitFailed => "every_unit_failed",
            Refusal::UnitTimeout => "unit_timeout",
            Refusal::TooManyTunnels => "too_many_tunnels",
            Refusal::UnsupportedTunnel => "unsupported_tunnel",
        }
    }

    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadHost(_)
            | Refusal::BadUnitAddress(_)
            | Refusal::BadTarget
            | Refusal::BodyUnreadable => StatusCode::BAD_REQUEST,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::NewSessionRate => StatusCode::TOO_MANY_REQUESTS,
            Refusal::InternalPath | Refusal::UnknownUnit => StatusCode::NOT_FOUND,
            Refusal::NoUnit | Refusal::UnitUnavailable | Refusal::TooManyTunnels => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::UnitFailed | Refusal::EveryUnitFailed => StatusCode::BAD_GATEWAY,
            Refusal::UnitTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::UnsupportedTunnel => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// What the client is told, in a sentence.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadHost(why) | Refusal::BadUnitAddress(why) => why,
            Refusal::BadTarget => "malformed request target",
            Refusal::BodyTooLarge => "request body too large",
            Refusal::BodyUnreadable => {
                "the request body ended early or was longer than its Content-Length"
            }
            Refusal::NewSessionRate => "too many new sessions from this address; retry shortly",
            Refusal::InternalPath => "not found",
            Refusal::UnknownUnit => "no such unit in this farm",
            Refusal::NoUnit => "no unit available",
            Refusal::UnitUnavailable => {
                "the unit's app is not accepting connections; the request did not reach it and may be retried"
            }
            Refusal::UnitFailed => {
                "the unit failed while handling this request; it was not replayed because it may have taken effect"
            }
            Refusal::EveryUnitFailed => "every unit tried failed while handling this request",
            Refusal::UnitTimeout => "the unit did not answer in time",
            Refusal::TooManyTunnels => {
                "the unit holds as many open connections (WebSockets) as it may; retry shortly"
            }
            Refusal::UnsupportedTunnel => {
                "only WebSockets can be opened with an HTTP/2 extended CONNECT (:protocol websocket)"
            }
        }
    }

    /// Whether the client should retry after a second (`Retry-After: 1`).
    pub fn retry_soon(self) -> bool {
        matches!(
            self,
            Refusal::NewSessionRate
                | Refusal::NoUnit
                | Refusal::UnitUnavailable
                | Refusal::TooManyTunnels
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: [Refusal; 15] = [
        Refusal::BadHost("x"),
        Refusal::BadUnitAddress("x"),
        Refusal::BadTarget,
        Refusal::BodyTooLarge,
        Refusal::BodyUnreadable,
        Refusal::NewSessionRate,
        Refusal::InternalPath,
        Refusal::UnknownUnit,
        Refusal::NoUnit,
        Refusal::UnitUnavailable,
        Refusal::UnitFailed,
        Refusal::EveryUnitFailed,
        Refusal::UnitTimeout,
        Refusal::TooManyTunnels,
        Refusal::UnsupportedTunnel,
    ];

    #[test]
    fn every_refusal_is_counted_under_a_listed_kind_of_its_own() {
        let kinds: Vec<_> = EVERY.iter().map(|r| r.kind()).collect();
        assert_eq!(kinds, Refusal::KINDS);
    }

    #[test]
    fn client_errors_and_unit_failures_get_their_status_class() {
        for r in EVERY {
            let status = r.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{r:?}"
            );
            assert!(!r.message().is_empty());
            // Only what may pass with time asks the client to come back.
            if r.retry_soon() {
                assert!(
                    matches!(status.as_u16(), 429 | 503),
                    "{r:?} asks for a retry with {status}"
                );
            }
        }
        assert_eq!(Refusal::UnitFailed.status(), 502);
        assert_eq!(Refusal::UnitTimeout.status(), 504);
    }
}
