//! Respond: a unit's answer as the client gets it. Hop-by-hop headers and the sidecar's
//! signals removed, the routing cookie set when the serving unit changed, and a body that
//! counts the request in flight until it ends and then returns the connection to the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use stickyfarm_api::{CookiePolicy, FarmCookie, UnitName, header_names, remove_hop_by_hop};

use super::ResponseBody;
use crate::metrics::Metrics;
use crate::units::{InFlight, TunnelSlot, Unit};
use stickyfarm_api::tunnel::Tunnels;
use stickyfarm_api::upstream::{Pooled, Sender};

/// The unit's answer for the client. `link`: the unit the client's links and cookie name from
/// now on; `cookie_unit`: the one its routing cookie names today.
#[allow(clippy::too_many_arguments)]
pub fn respond(
    cookies: &CookiePolicy,
    response: Response<Incoming>,
    unit: Arc<Unit>,
    sender: Sender,
    in_flight: InFlight,
    arrived: Instant,
    link: &UnitName,
    cookie_unit: Option<&UnitName>,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    client_head(cookies, &mut parts.headers, link, cookie_unit);
    let body = Tracked {
        inner: Pooled::new(body, sender, unit.pool.clone()),
        done: false,
        status: parts.status.as_u16(),
        arrived,
        unit,
        _in_flight: in_flight,
    };
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

/// A unit's response body: counts the request in flight until the body ends, and records how
/// long the whole request took. The connection goes back to the unit's pool when the body ends
/// ([`Pooled`]).
struct Tracked {
    inner: Pooled,
    done: bool,
    status: u16,
    arrived: Instant,
    unit: Arc<Unit>,
    _in_flight: InFlight,
}

impl Tracked {
    /// The body ended, or the client went away before it did.
    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.unit
            .record_request(self.status, self.arrived.elapsed());
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}
