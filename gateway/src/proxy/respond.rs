//! Respond: a unit's answer as the client gets it. Hop-by-hop headers and the sidecar's
//! signals removed, the routing cookie set when the serving unit changed, and a body that
//! counts the request in flight until it ends and then returns the connection to the pool.

use std::sync::Arc;
use std::time::Instant;

use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use stickyfarm_api::{CookiePolicy, FarmCookie, UnitName, header_names, remove_hop_by_hop};

use super::ResponseBody;
use crate::metrics::Metrics;
use crate::units::{InFlight, TunnelSlot, Unit};
use stickyfarm_api::tunnel::Tunnels;
use stickyfarm_api::upstream::{AnswerBody, AtEnd, Sender};

/// The unit's answer for the client. `link`: the unit the client's links and cookie name from
/// now on; `cookie_unit`: the one its routing cookie names today.
#[allow(clippy::too_many_arguments)]
pub fn respond(
    cookies: &CookiePolicy,
    response: Response<AnswerBody>,
    unit: Arc<Unit>,
    sender: Option<Sender>,
    in_flight: InFlight,
    arrived: Instant,
    link: &UnitName,
    cookie_unit: Option<&UnitName>,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    client_head(cookies, &mut parts.headers, link, cookie_unit);
    // The request counts in flight until its answer ends; then the connection goes back to the
    // unit's pool (only when the answer was read to the end; the request-driven client's
    // answer hands its connection back by itself) and the whole request is recorded.
    let status = parts.status.as_u16();
    let body = AtEnd::new(body, move |complete| {
        if let (true, Some(sender)) = (complete, sender) {
            unit.pool.put_back(sender);
        }
        unit.record_request(status, arrived.elapsed());
        drop(in_flight);
    });
    Response::from_parts(parts, body.boxed())
}

/// What an upgraded connection holds while it is open: the unit's in-flight count (balancing
/// and drain see it) and one of its tunnel slots.
pub struct TunnelHold {
    /// Counted in flight.
    pub in_flight: InFlight,
    /// Counted against `--max-tunnels-per-unit`.
    pub slot: TunnelSlot,
}

/// The unit's `101 Switching Protocols` for the client (a `200` to an HTTP/2 extended CONNECT:
/// `over_h2`), its connection spliced to the client's once both upgrades complete. The unit's
/// connection is never pooled again.
#[allow(clippy::too_many_arguments)]
pub fn switch_protocols(
    cookies: &CookiePolicy,
    tunnels: &Tunnels,
    metrics: Arc<Metrics>,
    mut response: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    protocol: &HeaderValue,
    hold: TunnelHold,
    link: &UnitName,
    cookie_unit: Option<&UnitName>,
    over_h2: bool,
) -> Response<ResponseBody> {
    let far = hyper::upgrade::on(&mut response);
    let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
    tunnels.spawn(client, far, websocket, move |end| {
        drop(hold);
        metrics.tunnel_ended(end);
    });
    let (mut parts, _) = response.into_parts();
    client_head(cookies, &mut parts.headers, link, cookie_unit);
    if over_h2 {
        // RFC 8441: the stream is the tunnel once the CONNECT is answered with a 2xx; there
        // is no switch to announce and no key to answer.
        parts.status = http::StatusCode::OK;
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    } else {
        // Hop-by-hop, so removed above; the client needs them to take the switch.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    Response::from_parts(
        parts,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// Rewrites a unit's answer head for the client.
pub fn client_head(
    cookies: &CookiePolicy,
    h: &mut http::HeaderMap,
    link: &UnitName,
    cookie_unit: Option<&UnitName>,
) {
    remove_hop_by_hop(h);
    // A signal between sidecar and gateway, never the client's to see.
    h.remove(&header_names::UNIT_UNAVAILABLE);
    if cookie_unit != Some(link) {
        let c = cookies.set_cookie(FarmCookie::Unit, link.as_str());
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
}
