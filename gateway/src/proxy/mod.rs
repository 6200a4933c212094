//! The reverse proxy: which unit serves a request (FIG. 4A–4C) and forwarding it there.
//!
//! A request goes through named phases, each a module with its own tests:
//! 1. **route** ([`route`]): read the head. Refuse what is malformed (Host, unit address,
//!    declared body size, a unit's internal path) with a clear 4xx; find the unit the request
//!    names (path `/_unit/<unit>/…`, host `<unit>.<farm host>`, or the `sf_unit` routing
//!    cookie); a client without a session is held to the new-session rate;
//! 2. **pick** ([`Proxy::pick`]): the named unit if it serves its sessions, else a backup
//!    (rendezvous order over unit names, so every replica agrees); a first request is
//!    balanced over the units that take new sessions;
//! 3. **forward** ([`forward`]): the head rewritten once; bodies up to `--replay-body-max`
//!    held so the request can go to a backup; one attempt on one unit;
//! 4. **fail over** ([`forward::after_failure`]): a request that never reached the app goes to
//!    a backup whatever its method (never sent, or answered by a sidecar with
//!    `x-stickyfarm-unit-unavailable`); an idempotent one is also replayed after a reset;
//!    anything else that may have reached the app is not; a stale pooled connection gets one
//!    more try on the same unit over a fresh one;
//! 5. **respond** ([`respond`]): the unit's answer with the routing cookie. Every answer of
//!    the gateway's own is a [`Refusal`], counted by reason; one to an HTTP/1 request whose
//!    body it did not read closes the connection.

pub mod forward;
pub mod refusal;
pub mod respond;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use stickyfarm_api::listener::RequestBody;
use stickyfarm_api::trace::{KeyValue, Traced};
use stickyfarm_api::{CookiePolicy, UnitName, header_names, request_id};
use tracing::Instrument;

use crate::access_log::{self, AccessLog, AccessRecord, Logged};
use crate::balance::{self, Candidate, Policy};
use crate::config::{Addressing, AppProtocol, Failback, Scheme};
use crate::metrics::Metrics;
use crate::ratelimit::NewSessionLimit;
use crate::units::{AdminState, Farm, InFlight, Members, TunnelSlot, Unit, now_ms};
use hyper::upgrade::OnUpgrade;
use stickyfarm_api::tunnel::Tunnels;
use stickyfarm_api::upstream::AnswerBody;

pub use forward::{Attempt, Failure, Outbound, Replay, Step};
pub use refusal::Refusal;
pub use route::{Addressed, Route, addressed, client_address, request_host, unit_url};

/// The body type of every answer the gateway gives.
pub type ResponseBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// New-session policy.
    pub policy: Policy,
    /// After a failover.
    pub failback: Failback,
    /// Host-style unit addresses.
    pub farm_host: Option<String>,
    /// Address style handed to the app.
    pub addressing: Addressing,
    /// Scheme of unit URLs.
    pub scheme: Scheme,
    /// The hosts (`host[:port]`) clients reach the farm by; the first is the canonical one.
    /// Links name the request's host only when it is one of these, otherwise the first: a
    /// client's `Host` header never decides where other clients' links point. Empty: links
    /// are relative (`/_unit/<unit>`), which work under any host.
    pub public_hosts: Vec<String>,
    /// Ramp-up time.
    pub slow_start: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time for a unit to start answering.
    pub upstream_timeout: Duration,
    /// Further units tried.
    pub max_retries: u32,
    /// Largest request body.
    pub max_body_size: u64,
    /// Largest body held in memory so an idempotent request can be replayed on a backup.
    pub replay_body_max: u64,
    /// Keep and append to the client's `X-Forwarded-For`.
    pub trust_forwarded: bool,
    /// The farm's cookie names and attributes (shared with the sidecars).
    pub cookies: CookiePolicy,
    /// New sessions (requests without a session cookie) per client address and second; 0: no
    /// limit.
    pub new_session_rate: u32,
    /// New sessions a client address may start at once.
    pub new_session_burst: u32,
    /// The farm's gateway token, sent to the units so their sidecars trust the unit base URL
    /// (`x-stickyfarm-gateway-token`); `None`: not sent.
    pub gateway_token: Option<HeaderValue>,
    /// Upgraded connections (WebSockets) one unit may hold open; more get 503.
    pub max_tunnels_per_unit: usize,
    /// An upgraded connection with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// `Strict-Transport-Security` for answers that carry none (with TLS only).
    pub hsts: Option<HeaderValue>,
    /// What the app speaks: with h2c, HTTP/2 requests stay HTTP/2 to the unit.
    pub app_protocol: AppProtocol,
    /// Rebalancing after a scale-up: `None` never; else sessions idle this long move.
    pub rebalance: Option<Rebalance>,
}

/// When idle sessions move to less loaded units (`balance::rebalance_target` decides where).
#[derive(Debug, Clone, Copy)]
pub struct Rebalance {
    /// A session with no request for this long may move.
    pub idle: Duration,
    /// For this long after units were added.
    pub window: Duration,
}

/// Why a session leaves the unit that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// Its unit is draining (scale-down, `farmctl drain`, a terminating pod).
    Drain,
    /// Units were added and its unit holds more than its share.
    Rebalance,
}

/// A session's move, if its unit releases it.
struct Move {
    to: Arc<Unit>,
    /// Released only if unused for this long (ms) and with no other request in flight.
    idle_ms: u64,
    reason: MoveReason,
}

/// The proxy.
pub struct Proxy {
    farm: Arc<Farm>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    new_sessions: Option<NewSessionLimit>,
    tunnels: Tunnels,
    s: ProxySettings,
    turn: AtomicUsize,
}

/// Where the pick phase sends a request.
pub struct Placement {
    /// The unit that gets the first attempt.
    pub unit: Arc<Unit>,
    /// The unit the client's links and cookie name afterwards, when not `unit` (failback
    /// `return`: the session goes back to its unit when it returns).
    pub home: Option<UnitName>,
    /// Units already passed over, never tried again for this request.
    pub tried: Vec<UnitName>,
}

/// Marks an answer the gateway made itself (not a unit's).
#[derive(Debug, Clone, Copy)]
struct GatewayAnswer;

/// The backup of the session keyed `key` when the units in `exclude` are out: the first unit
/// in rendezvous order that takes sessions, so every request of the session, on every gateway
/// replica, finds the same one. The gateway fails a session over to it, and names it to the
/// serving unit beforehand so it keeps a warm copy.
fn backup_of<'m>(members: &'m Members, exclude: &[UnitName], key: &[u8]) -> Option<&'m Arc<Unit>> {
    balance::rendezvous(
        key,
        members
            .units
            .values()
            .filter(|u| u.takes_new_sessions() && !exclude.contains(u.name())),
        |u| u.name().as_str(),
    )
}

fn text_response(refusal: Refusal) -> Response<ResponseBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{}\n", refusal.message())))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = refusal.status();
    r.extensions_mut().insert(GatewayAnswer);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if refusal.retry_soon() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

impl Proxy {
    /// A proxy over `farm`.
    pub fn new(farm: Arc<Farm>, metrics: Arc<Metrics>, s: ProxySettings) -> Proxy {
        Proxy {
            farm,
            metrics,
            access_log: None,
            new_sessions: NewSessionLimit::new(s.new_session_rate, s.new_session_burst),
            tunnels: Tunnels::new(
                s.tunnel_idle_timeout,
                stickyfarm_api::tunnel::CLOSE_GOING_AWAY,
            ),
            s,
            turn: AtomicUsize::new(0),
        }
    }

    /// Writes a line per request to `log`.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Proxy {
        self.access_log = log;
        self
    }

    /// The open upgraded connections (a stop closes them at the end of its grace).
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// An answer of the gateway's own, counted under its reason.
    fn refuse(&self, refusal: Refusal) -> Response<ResponseBody> {
        self.metrics.refused(refusal.kind());
        text_response(refusal)
    }

    /// A unit for a new session (or a backup), avoiding `exclude`: one in service, else the
    /// last resort.
    fn pick_new(
        &self,
        members: &Members,
        exclude: &[UnitName],
        key: &[u8],
        deterministic: bool,
    ) -> Option<Arc<Unit>> {
        self.pick_in_service(members, exclude, key, deterministic)
            .or_else(|| self.last_resort(members, exclude, key, None))
    }

    /// The last resort when no unit (outside `exclude`) is in service: a unit the checks took
    /// out, instead of a 503. Every unit out at once is most likely something they share
    /// failing their checks (the database being replaced fails every sidecar's check), not
    /// every unit broken; refusing would turn an outage of writes into one of everything,
    /// while a unit can still serve the sessions it caches. This is Envoy's "panic" routing
    /// at a threshold of zero. A unit an administrator disabled is never used, a draining one
    /// only for its own sessions (`home`); a unit that really is gone fails its attempt as
    /// any other, and the forward phase's retry budget bounds the attempts.
    fn last_resort(
        &self,
        members: &Members,
        exclude: &[UnitName],
        key: &[u8],
        home: Option<&Arc<Unit>>,
    ) -> Option<Arc<Unit>> {
        let unit = match home.filter(|h| h.admin() != AdminState::Disabled) {
            Some(h) => h,
            None => balance::rendezvous(
                key,
                members
                    .units
                    .values()
                    .filter(|u| u.admin() == AdminState::Enabled && !exclude.contains(u.name())),
                |u| u.name().as_str(),
            )?,
        };
        self.metrics.last_resort();
        tracing::debug!(unit = %unit.name(), "no unit in service: trying one the checks took out");
        Some(unit.clone())
    }

    /// A unit in service for a new session (or a backup), avoiding `exclude`.
    fn pick_in_service(
        &self,
        members: &Members,
        exclude: &[UnitName],
        key: &[u8],
        deterministic: bool,
    ) -> Option<Arc<Unit>> {
        if deterministic {
            return backup_of(members, exclude, key).cloned();
        }
        let eligible: Vec<&Arc<Unit>> = members
            .units
            .values()
            .filter(|u| u.takes_new_sessions() && !exclude.contains(u.name()))
            .collect();
        let now = now_ms();
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|u| Candidate {
                in_flight: u.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                weight: u.weight(now, self.s.slow_start),
            })
            .collect();
        let i = balance::pick(self.s.policy, &candidates, &mut rand::rng(), &self.turn)?;
        Some(eligible[i].clone())
    }

    /// Handles one client request.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        remote: SocketAddr,
    ) -> Response<ResponseBody> {
        // An answer of the gateway's own (a refusal, an error) to an HTTP/1 request whose body
        // it did not read closes the connection: otherwise the unread body would be taken for
        // the client's next request on it, which then fails.
        let unread_body = req.version() < http::Version::HTTP_2 && !req.body().is_end_stream();
        // The request id goes to the unit and the app, back to the client, and on every log
        // line about this request (its span).
        let id = request_id::ensure(req.headers_mut());
        let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
        let arrival = self
            .access_log
            .as_ref()
            .map(|log| Arrival::of(log, &req, remote, self.s.trust_forwarded));
        let mut notes = Notes::new(arrival.is_some());
        // With trace export on, the client's trace (its `traceparent`) continues here.
        let traced = Traced::request("request", req.headers());
        let mut resp = match traced
            .clone()
            .run(
                self.handle_request(req, remote, &mut notes)
                    .instrument(span),
            )
            .await
        {
            Ok(resp) => resp,
            Err(refusal) => self.refuse(refusal),
        };
        if unread_body && resp.extensions().get::<GatewayAnswer>().is_some() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let (Some(log), Some(arrival)) = (&self.access_log, arrival) {
            resp = arrival.log_when_sent(log, resp, notes, &id);
        }
        let status = resp.status().as_u16();
        traced.set(|| KeyValue::new("http.response.status_code", i64::from(status)));
        resp.headers_mut().insert(request_id::NAME, id);
        if let Some(hsts) = &self.s.hsts {
            resp.headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| hsts.clone());
        }
        resp
    }

    /// route → pick → forward → fail over → respond.
    async fn handle_request(
        &self,
        mut req: Request<RequestBody>,
        remote: SocketAddr,
        notes: &mut Notes,
    ) -> Result<Response<ResponseBody>, Refusal> {
        // Each phase is a span of the trace, when traces are exported.
        let route = {
            let _phase = Traced::phase("route").enter();
            route::route(&self.s, &req, remote)?
        };
        if notes.keep && route.has_session {
            notes.session = Some(route.key.clone());
        }
        self.admit(&route, &req, remote)?;
        let members = self.farm.members();
        let placement = {
            let _phase = Traced::phase("pick").enter();
            self.pick(&members, &route)?
        };
        // Taken before the request is consumed: the client's end of a tunnel, should the
        // unit switch protocols.
        let client_upgrade = route
            .upgrade
            .is_some()
            .then(|| hyper::upgrade::on(&mut req));
        let outbound = forward::outbound(&self.s, req, &route, remote).await?;
        self.forward(&members, &route, placement, outbound, client_upgrade, notes)
            .await
    }

    /// A client without a session starts one: held to the new-session rate of its address.
    fn admit<B>(&self, route: &Route, req: &Request<B>, remote: SocketAddr) -> Result<(), Refusal> {
        match &self.new_sessions {
            Some(limit)
                if !route.has_session
                    && !limit.admit(
                        client_address(remote, req.headers(), self.s.trust_forwarded),
                        std::time::Instant::now(),
                    ) =>
            {
                Err(Refusal::NewSessionRate)
            }
            _ => Ok(()),
        }
    }

    fn return_mode(&self) -> bool {
        self.s.failback == Failback::Return
    }

    /// Whether the session of this request leaves `home`, its unit, if `home` releases it:
    /// off a draining unit at once, else after a scale-up if it is idle.
    fn move_target(&self, members: &Members, home: &Arc<Unit>, route: &Route) -> Option<Move> {
        if route.explicit || !route.has_session || route.upgrade.is_some() || self.return_mode() {
            // A link naming a unit stays there (it moves through the cookie path only); a
            // WebSocket is one long request; in failback `return` the client would be sent
            // home again.
            return None;
        }
        self.drain_target(members, home, route)
            .or_else(|| self.rebalance_target(members, home))
    }

    /// Where a session on a draining `home` goes: its backup, which keeps its warm copy and
    /// is where it would fail over when `home` is removed. Asked to release it whenever no
    /// other request of it is in flight there, so a drain moves every active session at its
    /// next request instead of waiting for the unit's removal.
    fn drain_target(&self, members: &Members, home: &Arc<Unit>, route: &Route) -> Option<Move> {
        if home.admin() != AdminState::Draining {
            return None;
        }
        let to = backup_of(members, std::slice::from_ref(home.name()), &route.key)?;
        Some(Move {
            to: to.clone(),
            idle_ms: 0,
            reason: MoveReason::Drain,
        })
    }

    /// Where a session on `home` moves if `home` finds it idle, and after how long idle: within
    /// the rebalancing window after a scale-up, to a unit `balance::rebalance_target` picks.
    fn rebalance_target(&self, members: &Members, home: &Arc<Unit>) -> Option<Move> {
        let r = self.s.rebalance?;
        let since_growth = now_ms().saturating_sub(members.grew_at_ms);
        if members.grew_at_ms == 0 || since_growth > r.window.as_millis() as u64 {
            return None;
        }
        let others: Vec<&Arc<Unit>> = members
            .units
            .values()
            .filter(|u| u.takes_new_sessions() && !Arc::ptr_eq(u, home))
            .collect();
        let loads: Vec<u64> = others
            .iter()
            .map(|u| u.session_estimate())
            .collect::<Option<_>>()?;
        let i = balance::rebalance_target(home.session_estimate()?, &loads)?;
        Some(Move {
            to: others[i].clone(),
            idle_ms: r.idle.as_millis() as u64,
            reason: MoveReason::Rebalance,
        })
    }

    /// The pick phase: the unit a request names if it serves its sessions, else a backup (the
    /// one its routing cookie names when that serves, else the first in rendezvous order of
    /// the session, so all its tabs and every gateway replica agree); a first request is
    /// balanced.
    pub fn pick(&self, members: &Members, route: &Route) -> Result<Placement, Refusal> {
        let return_mode = self.return_mode();
        let Some(name) = &route.wanted else {
            let unit = self
                .pick_new(members, &[], &route.key, false)
                .ok_or(Refusal::NoUnit)?;
            return Ok(Placement {
                unit,
                home: None,
                tried: Vec::new(),
            });
        };
        match members.units.get(name) {
            Some(u) if u.serves_its_sessions() => {
                // A session that already moved off its draining unit (`drain_target`) lives
                // where its routing cookie points: a link naming the old unit follows it.
                if u.admin() == AdminState::Draining
                    && let Some(moved) = self.moved_to(members, route, name)
                {
                    return Ok(Placement {
                        tried: Vec::new(),
                        ..moved
                    });
                }
                Ok(Placement {
                    unit: u.clone(),
                    home: Some(name.clone()),
                    tried: Vec::new(),
                })
            }
            Some(u) => {
                let tried = vec![name.clone()];
                let moved = self.moved_to(members, route, name);
                let backup = self.pick_in_service(members, &tried, &route.key, true);
                if moved.is_none() && backup.is_none() {
                    // None in service: the session stays where its cache is, if it may.
                    let unit = self
                        .last_resort(members, &tried, &route.key, Some(u))
                        .ok_or(Refusal::NoUnit)?;
                    let home = (unit.name() == name).then(|| name.clone());
                    let tried = if home.is_some() { Vec::new() } else { tried };
                    return Ok(Placement { unit, home, tried });
                }
                self.metrics.failover();
                let _phase = Traced::phase_with("failover", || {
                    vec![KeyValue::new("stickyfarm.from", name.to_string())]
                })
                .enter();
                if let Some(moved) = moved {
                    return Ok(moved);
                }
                let backup = backup.ok_or(Refusal::NoUnit)?;
                tracing::debug!(unit = %name, backup = %backup.name(), "unit out of service: failing over");
                Ok(Placement {
                    unit: backup,
                    home: return_mode.then(|| name.clone()),
                    tried,
                })
            }
            None if route.explicit && !route.has_session => Err(Refusal::UnknownUnit),
            // A returning client of a unit that left the farm (scaled down): fail over.
            None => {
                self.metrics.failover();
                if let Some(moved) = self.moved_to(members, route, name) {
                    return Ok(moved);
                }
                let backup = self
                    .pick_new(members, &[], &route.key, true)
                    .ok_or(Refusal::NoUnit)?;
                Ok(Placement {
                    unit: backup,
                    home: None,
                    tried: Vec::new(),
                })
            }
        }
    }

    /// Where a session already went when its unit `name` is out of service: a link (or a
    /// page's WebSocket) naming the old unit follows the routing cookie to the backup the
    /// session failed over to, so every tab of a session meets on one unit. In failback
    /// `return` the backup is chosen by rendezvous anyway.
    fn moved_to(&self, members: &Members, route: &Route, name: &UnitName) -> Option<Placement> {
        if self.return_mode() {
            return None;
        }
        let moved = route.cookie_unit.as_ref().filter(|c| *c != name)?;
        let unit = members
            .units
            .get(moved)
            .filter(|u| u.serves_its_sessions())?;
        tracing::debug!(unit = %name, backup = %moved, "unit out of service: failing over");
        Some(Placement {
            unit: unit.clone(),
            home: None,
            tried: vec![name.clone()],
        })
    }

    /// The forward and fail-over phases: attempts on the placed unit, then on backups as the
    /// verdict on each failure says, until a unit answers or the verdict is to give up.
    async fn forward(
        &self,
        members: &Members,
        route: &Route,
        placement: Placement,
        outbound: Outbound,
        mut client_upgrade: Option<OnUpgrade>,
        notes: &mut Notes,
    ) -> Result<Response<ResponseBody>, Refusal> {
        let Placement {
            mut unit,
            home,
            mut tried,
        } = placement;
        let Outbound {
            mut request,
            replay,
            idempotent,
        } = outbound;
        let return_mode = self.return_mode();
        // A session on the unit its request named may move (off a draining unit, or to a less
        // loaded one after a scale-up) if its unit releases it. Only when the request can be
        // sent again.
        let mut moving = match (&route.wanted, replay.is_some() && tried.is_empty()) {
            (Some(w), true) if w == unit.name() => self.move_target(members, &unit, route),
            _ => None,
        };
        let mut retries = 0;
        let mut fresh = false;
        let mut stale_retry_used = false;
        // Whether some unit received the request and failed it (502) rather than none being
        // reachable (503).
        let mut reached_a_unit = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let link = match (&home, return_mode) {
                (Some(h), true) => h.clone(),
                _ => unit.name().clone(),
            };
            if let Ok(v) = forward::owned_value(unit_url(&self.s, &link, &route.host)) {
                request.headers_mut().insert(header_names::UNIT_URL, v);
            }
            // The unit this session fails over to from here keeps a warm copy of it.
            let backup = route
                .has_session
                .then(|| backup_of(members, std::slice::from_ref(unit.name()), &route.key))
                .flatten();
            // The first attempt's head carries no Stickyfarm header (`upstream_head` removed the
            // client's): only a later one may hold what an earlier attempt set.
            let retry = attempts > 1;
            match backup {
                Some(b) => {
                    request
                        .headers_mut()
                        .insert(header_names::BACKUP, b.name_header().clone());
                }
                None if retry => {
                    request.headers_mut().remove(header_names::BACKUP);
                }
                None => {}
            }
            match moving.as_ref().filter(|_| !retry) {
                Some(m) => {
                    request
                        .headers_mut()
                        .insert(header_names::RELEASE_IF_IDLE, HeaderValue::from(m.idle_ms));
                }
                None if retry => {
                    request.headers_mut().remove(header_names::RELEASE_IF_IDLE);
                }
                None => {}
            }
            // An upgrade stays on its unit: a full unit refuses it rather than moving the
            // session's connection elsewhere.
            let slot = match route.upgrade {
                Some(_) => Some(
                    unit.open_tunnel(self.s.max_tunnels_per_unit)
                        .ok_or(Refusal::TooManyTunnels)?,
                ),
                None => None,
            };
            let upstream = Traced::phase_with("upstream", || {
                vec![
                    KeyValue::new("stickyfarm.unit", unit.name().to_string()),
                    KeyValue::new("stickyfarm.attempt", i64::from(attempts)),
                ]
            });
            // The unit (and through it the app) continue the trace under this attempt.
            upstream.inject(request.headers_mut());
            let (failure, error, returned) = match upstream
                .run(forward::attempt(
                    &self.s,
                    &unit,
                    request,
                    fresh,
                    replay.as_ref().and_then(Replay::own_client),
                ))
                .await
            {
                Attempt::Answered {
                    response,
                    sender,
                    in_flight,
                    took,
                } => {
                    // Any status the app chose, 5xx included, is an answer: only what
                    // proves the unit broken takes it out (a client can make an app
                    // answer 500).
                    unit.record_response(response.status().as_u16(), took);
                    notes.served(&unit, took, attempts, !tried.is_empty());
                    tracing::debug!(unit = %unit.name(), status = response.status().as_u16(), ?took, "the unit answered");
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        return self.switch_protocols(
                            route,
                            response,
                            client_upgrade.take(),
                            TunnelParts { in_flight, slot },
                            &link,
                        );
                    }
                    return Ok(respond::respond(
                        &self.s.cookies,
                        response,
                        unit,
                        sender,
                        in_flight,
                        notes.arrived,
                        &link,
                        route.cookie_unit.as_ref(),
                    ));
                }
                Attempt::Failed {
                    failure,
                    error,
                    returned,
                } => (failure, error, returned),
            };
            if let (Failure::Released, Some(m)) = (failure, moving.take()) {
                // Its unit found the session idle and dropped its copy: the target loads it,
                // and the answer's routing cookie names that unit from now on.
                unit.note_moved(-1);
                m.to.note_moved(1);
                self.metrics.moved(m.reason);
                tracing::debug!(from = %unit.name(), to = %m.to.name(), reason = ?m.reason, "moving a session its unit released");
                unit = m.to;
                request = match returned.or_else(|| replay.as_ref().and_then(Replay::request)) {
                    Some(r) => r,
                    None => break,
                };
                continue;
            }
            moving = None;
            reached_a_unit |= matches!(failure, Failure::Broken { .. });
            let verdict =
                forward::after_failure(failure, replay.is_some(), idempotent, stale_retry_used);
            if verdict.blame_unit {
                match failure {
                    Failure::TimedOut => {
                        tracing::warn!(unit = %unit.name(), "unit did not answer in time");
                        // Timeouts in a row count as a passive failure (within the ejection cap).
                        self.farm.record_timeout(&unit, self.s.upstream_timeout);
                    }
                    _ => {
                        self.farm.record_passive_failure(&unit, &error);
                    }
                }
            }
            match verdict.step {
                Step::Stop(refusal) => {
                    if refusal == Refusal::UnitFailed {
                        tracing::warn!(unit = %unit.name(), %error, "a request that may have reached the app failed; not replaying it");
                    }
                    return Err(refusal);
                }
                Step::SameUnitFresh => {
                    fresh = true;
                    stale_retry_used = true;
                }
                Step::NextUnit => {
                    fresh = false;
                    if retries >= self.s.max_retries {
                        break;
                    }
                    retries += 1;
                    self.metrics.retry();
                    tried.push(unit.name().clone());
                    // A session's retries go where its failovers go; a first request's anywhere.
                    let sticky = route.has_session || return_mode;
                    let _phase = Traced::phase_with("failover", || {
                        vec![KeyValue::new("stickyfarm.from", unit.name().to_string())]
                    })
                    .enter();
                    unit = match self.pick_new(members, &tried, &route.key, sticky) {
                        Some(b) => b,
                        None => break,
                    };
                }
            }
            request = match returned.or_else(|| replay.as_ref().and_then(Replay::request)) {
                Some(r) => r,
                // The verdict only sends on what we still hold; nothing left to send.
                None => break,
            };
        }
        Err(if reached_a_unit {
            Refusal::EveryUnitFailed
        } else {
            Refusal::NoUnit
        })
    }

    /// The unit switched protocols: a tunnel when the client asked for that switch, else
    /// the unit broke HTTP (a `101` nobody asked for) and the client gets a 502.
    fn switch_protocols(
        &self,
        route: &Route,
        response: Response<AnswerBody>,
        client: Option<OnUpgrade>,
        parts: TunnelParts,
        link: &UnitName,
    ) -> Result<Response<ResponseBody>, Refusal> {
        let (Some(client), Some(protocol), Some(slot)) = (client, &route.upgrade, parts.slot)
        else {
            tracing::warn!("a unit switched protocols for a request that asked for no upgrade");
            return Err(Refusal::UnitFailed);
        };
        // Only hyper's client carries an upgrade (`Outbound::own_client`).
        let (head, AnswerBody::Hyper(body)) = response.into_parts() else {
            return Err(Refusal::UnitFailed);
        };
        let response = Response::from_parts(head, body);
        // Standing in for an HTTP/2 client, the gateway checks the unit's answer to the key
        // it made, as RFC 6455 has a client do: anything else is not that WebSocket.
        if let Some(key) = &route.connect_key {
            let accept = response.headers().get(http::header::SEC_WEBSOCKET_ACCEPT);
            if accept.is_none_or(|a| a.as_bytes() != route::websocket_accept(key).as_bytes()) {
                tracing::warn!(unit = %link, "a unit answered a WebSocket upgrade with the wrong Sec-WebSocket-Accept");
                return Err(Refusal::UnitFailed);
            }
        }
        Ok(respond::switch_protocols(
            &self.s.cookies,
            &self.tunnels,
            self.metrics.clone(),
            response,
            client,
            protocol,
            respond::TunnelHold {
                in_flight: parts.in_flight,
                slot,
            },
            link,
            route.cookie_unit.as_ref(),
            route.connect_key.is_some(),
        ))
    }
}

/// What the phases learned about a request, for its metrics and access log line.
struct Notes {
    /// When the request arrived.
    arrived: std::time::Instant,
    /// Whether anyone reads the rest (the access log is on).
    keep: bool,
    session: Option<Vec<u8>>,
    unit: Option<Arc<Unit>>,
    took: Option<Duration>,
    retried: u32,
    failed_over: bool,
}

impl Notes {
    fn new(keep: bool) -> Notes {
        Notes {
            arrived: std::time::Instant::now(),
            keep,
            session: None,
            unit: None,
            took: None,
            retried: 0,
            failed_over: false,
        }
    }

    fn served(&mut self, unit: &Arc<Unit>, took: Duration, attempts: u32, failed_over: bool) {
        if self.keep {
            self.unit = Some(unit.clone());
            self.took = Some(took);
            self.retried = attempts.saturating_sub(1);
            self.failed_over = failed_over;
        }
    }
}

/// A request as it arrived, for its access log line.
struct Arrival {
    at: std::time::SystemTime,
    client: std::net::IpAddr,
    method: String,
    path: String,
    bytes_in: Option<u64>,
}

impl Arrival {
    fn of<B>(log: &AccessLog, req: &Request<B>, remote: SocketAddr, trust_forwarded: bool) -> Self {
        Arrival {
            at: std::time::SystemTime::now(),
            client: client_address(remote, req.headers(), trust_forwarded),
            method: req.method().to_string(),
            path: log.path(req.uri()),
            bytes_in: route::declared_length(req.headers()),
        }
    }

    /// The answer, whose body writes the request's line when it ends.
    fn log_when_sent(
        self,
        log: &Arc<AccessLog>,
        resp: Response<ResponseBody>,
        notes: Notes,
        id: &HeaderValue,
    ) -> Response<ResponseBody> {
        let record = AccessRecord {
            time: access_log::timestamp(self.at),
            client: self.client,
            method: self.method,
            path: self.path,
            status: resp.status().as_u16(),
            unit: notes.unit.as_ref().map(|u| u.name().to_string()),
            instance: notes
                .unit
                .as_ref()
                .and_then(|u| u.instance())
                .map(|i| i.to_string()),
            session: notes.session.map(|s| log.session(&s)),
            bytes_in: self.bytes_in,
            bytes_out: 0,
            duration_ms: 0.0,
            upstream_ms: notes.took.map(access_log::ms),
            retried: notes.retried,
            failed_over: notes.failed_over,
            request_id: id.to_str().unwrap_or_default().to_owned(),
        };
        let arrived = notes.arrived;
        resp.map(|body| Logged::new(body, log.clone(), record, arrived).boxed())
    }
}
/// What the forward phase holds for a tunnel when a unit switches protocols.
struct TunnelParts {
    in_flight: InFlight,
    slot: Option<TunnelSlot>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::AdminState;
    use std::net::SocketAddr;

    fn settings(failback: Failback) -> ProxySettings {
        ProxySettings {
            policy: Policy::RoundRobin,
            failback,
            farm_host: None,
            addressing: Addressing::Path,
            scheme: Scheme::Http,
            public_hosts: Vec::new(),
            slow_start: Duration::ZERO,
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(1),
            max_retries: 1,
            max_body_size: 1024,
            replay_body_max: 1024,
            trust_forwarded: false,
            cookies: CookiePolicy::new(&Default::default(), false, None),
            new_session_rate: 0,
            new_session_burst: 0,
            gateway_token: None,
            max_tunnels_per_unit: 2,
            tunnel_idle_timeout: Duration::from_secs(60),
            hsts: None,
            app_protocol: AppProtocol::Http1,
            rebalance: None,
        }
    }

    /// A proxy over units `web-0`…`web-{n-1}`, all up.
    fn proxy(n: usize, failback: Failback) -> Proxy {
        let metrics = Arc::new(Metrics::new());
        let farm = crate::units::test_farm(n, Default::default(), metrics.clone());
        Proxy::new(Arc::new(farm), metrics, settings(failback))
    }

    fn route_to(wanted: Option<&str>, explicit: bool, has_session: bool) -> Route {
        Route {
            host: "shop".into(),
            forward_path: "/".into(),
            wanted: wanted.map(|w| w.parse().unwrap()),
            explicit,
            has_session,
            cookie_unit: None,
            key: b"a-session".to_vec(),
            upgrade: None,
            connect_key: None,
        }
    }

    fn take_out(p: &Proxy, name: &str) {
        let members = p.farm.members();
        let u = &members.units[&name.parse().unwrap()];
        u.set_admin(AdminState::Disabled);
        assert!(!u.serves_its_sessions());
    }

    #[test]
    fn a_session_stays_on_its_unit_while_it_serves() {
        let p = proxy(3, Failback::Stay);
        let placed = p
            .pick(&p.farm.members(), &route_to(Some("web-2"), false, true))
            .unwrap();
        assert_eq!(placed.unit.name().as_str(), "web-2");
        assert!(placed.tried.is_empty());
    }

    #[test]
    fn a_session_of_a_unit_out_of_service_goes_to_the_same_backup_every_time() {
        let p = proxy(3, Failback::Return);
        take_out(&p, "web-1");
        let members = p.farm.members();
        let route = route_to(Some("web-1"), false, true);
        let first = p.pick(&members, &route).unwrap();
        assert_ne!(first.unit.name().as_str(), "web-1");
        assert_eq!(first.tried, vec!["web-1".parse::<UnitName>().unwrap()]);
        // Failback `return`: links keep naming the unit the session belongs to.
        assert_eq!(first.home, Some("web-1".parse().unwrap()));
        for _ in 0..10 {
            assert_eq!(
                p.pick(&members, &route).unwrap().unit.name(),
                first.unit.name()
            );
        }
        let stay = proxy(3, Failback::Stay);
        take_out(&stay, "web-1");
        let members = stay.farm.members();
        let first = stay.pick(&members, &route).unwrap();
        assert_eq!(first.home, None);
        // Failback `stay` too: every tab, retry and gateway replica meets the session on one
        // backup.
        for _ in 0..10 {
            assert_eq!(
                stay.pick(&members, &route).unwrap().unit.name(),
                first.unit.name()
            );
        }
    }

    #[test]
    fn an_old_link_follows_the_session_to_the_backup_its_cookie_names() {
        let p = proxy(4, Failback::Stay);
        take_out(&p, "web-1");
        let members = p.farm.members();
        let mut old_link = route_to(Some("web-1"), true, true);
        old_link.cookie_unit = Some("web-3".parse().unwrap());
        for _ in 0..10 {
            let placed = p.pick(&members, &old_link).unwrap();
            assert_eq!(placed.unit.name().as_str(), "web-3");
            assert_eq!(placed.tried, vec!["web-1".parse::<UnitName>().unwrap()]);
        }
        // A cookie naming a unit out of service too is no help: any backup.
        take_out(&p, "web-3");
        let placed = p.pick(&p.farm.members(), &old_link).unwrap();
        assert!(["web-0", "web-2"].contains(&placed.unit.name().as_str()));
    }

    #[test]
    fn an_address_naming_no_unit_is_refused_unless_a_session_comes_with_it() {
        let p = proxy(2, Failback::Stay);
        let members = p.farm.members();
        assert_eq!(
            p.pick(&members, &route_to(Some("web-9"), true, false))
                .err(),
            Some(Refusal::UnknownUnit)
        );
        // A returning session of a unit that left the farm (scaled down) fails over.
        let moved = p
            .pick(&members, &route_to(Some("web-9"), true, true))
            .unwrap();
        assert!(moved.unit.name().as_str().starts_with("web-"));
    }

    #[test]
    fn no_unit_in_service_is_a_503_to_retry() {
        let p = proxy(2, Failback::Stay);
        take_out(&p, "web-0");
        take_out(&p, "web-1");
        let members = p.farm.members();
        for route in [
            route_to(None, false, false),
            route_to(Some("web-0"), false, true),
        ] {
            assert_eq!(p.pick(&members, &route).err(), Some(Refusal::NoUnit));
        }
    }

    /// The checks take every unit out (as when the database goes away): a session stays on
    /// its unit rather than getting a 503, a new one goes to an enabled unit, a disabled unit
    /// is never used, and once any unit is in service again the usual failover applies.
    #[test]
    fn with_no_unit_in_service_the_checked_out_units_are_the_last_resort() {
        let p = proxy(3, Failback::Stay);
        let members = p.farm.members();
        let unit = |n: &str| members.units[&n.parse::<UnitName>().unwrap()].clone();
        for n in ["web-0", "web-1", "web-2"] {
            unit(n).record_check(
                Err("status 503: database: not answering".into()),
                Duration::ZERO,
                2,
                1,
            );
            assert!(!unit(n).serves_its_sessions());
        }
        let home = p
            .pick(&members, &route_to(Some("web-1"), false, true))
            .unwrap();
        assert_eq!(home.unit.name().as_str(), "web-1");
        assert!(home.tried.is_empty());
        unit("web-2").set_admin(AdminState::Draining);
        unit("web-1").set_admin(AdminState::Disabled);
        for key in 0..20u8 {
            let route = Route {
                key: vec![key],
                ..route_to(None, false, false)
            };
            let new = p.pick(&members, &route).unwrap();
            assert_eq!(new.unit.name().as_str(), "web-0", "only the enabled unit");
        }
        let moved = p
            .pick(&members, &route_to(Some("web-1"), false, true))
            .unwrap();
        assert_eq!(
            moved.unit.name().as_str(),
            "web-0",
            "never the disabled unit"
        );
        assert_eq!(moved.tried, vec!["web-1".parse::<UnitName>().unwrap()]);
        let draining = p
            .pick(&members, &route_to(Some("web-2"), false, true))
            .unwrap();
        assert_eq!(draining.unit.name().as_str(), "web-2", "its own sessions");
        assert!(
            p.metrics
                .encode()
                .contains("stickyfarm_gateway_last_resort_total 23")
        );

        unit("web-0").record_check(Ok(Default::default()), Duration::ZERO, 1, 1);
        let failover = p
            .pick(&members, &route_to(Some("web-2"), false, true))
            .unwrap();
        assert_eq!(
            failover.unit.name().as_str(),
            "web-0",
            "a unit in service again"
        );
        assert!(
            p.metrics
                .encode()
                .contains("stickyfarm_gateway_last_resort_total 23")
        );
    }

    /// Every exit of the forward phase is counted: a unit that cannot be reached at all
    /// (nothing listens at its address) ends in `no_unit`, after the one retry allowed. So does
    /// a farm whose checks took every unit out and that is really gone: the last resort costs
    /// the same two attempts, no more.
    #[tokio::test]
    async fn an_unreachable_farm_is_counted_as_refused() {
        for checked_out in [false, true] {
            let p = Arc::new(proxy(2, Failback::Stay));
            if checked_out {
                for u in p.farm.members().units.values() {
                    u.record_check(Err("connecting failed".into()), Duration::ZERO, 2, 1);
                }
            }
            forward_to_an_unreachable_farm(&p).await;
            let exposition = p.metrics.encode();
            let last_resort = if checked_out { 2 } else { 0 };
            assert!(
                exposition.contains(&format!(
                    "stickyfarm_gateway_last_resort_total {last_resort}\n"
                )),
                "{exposition}"
            );
        }
    }

    async fn forward_to_an_unreachable_farm(p: &Arc<Proxy>) {
        let remote: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let req = Request::get("/")
            .header(header::HOST, "shop")
            .body(())
            .unwrap();
        let route = route::route(
            &p.s,
            &req.map(|_| http_body_util::Empty::<Bytes>::new()),
            remote,
        )
        .unwrap();
        let members = p.farm.members();
        let placement = p.pick(&members, &route).unwrap();
        let outbound = Outbound {
            request: Request::get("/")
                .body(forward::full_body(Bytes::new()))
                .unwrap(),
            replay: None,
            idempotent: true,
        };
        let answer = p
            .forward(
                &members,
                &route,
                placement,
                outbound,
                None,
                &mut Notes::new(false),
            )
            .await;
        assert_eq!(answer.err(), Some(Refusal::NoUnit));
        let exposition = p.metrics.encode();
        assert!(
            exposition.contains("stickyfarm_gateway_retries_total 1"),
            "{exposition}"
        );
    }
}
