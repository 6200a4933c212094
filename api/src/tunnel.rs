//! Upgraded connections (feature `server`): after a `101 Switching Protocols` the gateway and
//! the sidecar splice the client's connection to the unit's (or the app's) both ways, with an
//! idle timeout, and close it the way a WebSocket client understands: when the far side
//! ends without a close frame (its process died), the client gets close code 1012 "service
//! restart" and reconnects, and when the proxy stops or the tunnel idles out, 1001 "going
//! away". A close frame is written only at a frame boundary of the far side's stream, so a
//! half-forwarded frame is never corrupted; elsewhere the connection is simply closed.
//!
//! [`Tunnels`] keeps every open tunnel of one proxy, so that a stop lets them finish for the
//! shutdown grace and then closes the rest (they are no longer hyper connections the
//! listener's graceful shutdown could see).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// WebSocket close code 1001: the endpoint is going away (the proxy stops, or the tunnel idled).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code 1012: the server is restarting; the client should reconnect.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed their half (the normal end, whoever began it).
    Closed,
    /// The far side (unit or app) ended first without closing the protocol: it stopped or
    /// died. The client was sent 1012 where it could be.
    FarSideGone,
    /// No byte either way for the idle timeout.
    Idle,
    /// The proxy stopped and the shutdown grace ran out.
    Stopped,
    /// Reading or writing the client's side failed (it went away).
    ClientGone,
    /// One of the two upgrades never completed.
    NotUpgraded,
}

impl TunnelEnd {
    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::FarSideGone => "far_side_gone",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Stopped => "stopped",
            TunnelEnd::ClientGone => "client_gone",
            TunnelEnd::NotUpgraded => "not_upgraded",
        }
    }

    /// Every label, so metrics can show zeroes.
    pub const ALL: [TunnelEnd; 6] = [
        TunnelEnd::Closed,
        TunnelEnd::FarSideGone,
        TunnelEnd::Idle,
        TunnelEnd::Stopped,
        TunnelEnd::ClientGone,
        TunnelEnd::NotUpgraded,
    ];
}

/// Follows the frames of a WebSocket stream written by a server (RFC 6455 §5.2), byte by
/// byte, to know whether a frame of our own may be inserted now and whether the server
/// already sent its close frame. Any other upgraded protocol is not followed.
#[derive(Debug, Default, Clone)]
pub struct FrameBoundary {
    head: [u8; 14],
    head_len: usize,
    payload_left: u64,
    close_seen: bool,
}

impl FrameBoundary {
    /// Takes in bytes the server sent.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.head_len] = data[0];
            self.head_len += 1;
            data = &data[1..];
            if let Some((payload, opcode)) = self.complete_head() {
                self.head_len = 0;
                self.payload_left = payload;
                if opcode == 0x8 {
                    self.close_seen = true;
                }
            }
        }
    }

    /// The payload length and opcode once the frame head in `head` is complete.
    fn complete_head(&self) -> Option<(u64, u8)> {
        if self.head_len < 2 {
            return None;
        }
        let masked = self.head[1] & 0x80 != 0;
        let len7 = self.head[1] & 0x7f;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let needed = 2 + extended + if masked { 4 } else { 0 };
        if self.head_len < needed {
            return None;
        }
        let payload = match extended {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            _ => u64::from_be_bytes(self.head[2..10].try_into().expect("eight bytes")),
        };
        Some((payload, self.head[0] & 0x0f))
    }

    /// No frame is half sent: a frame of our own may go now.
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// The server sent its close frame (the closing handshake began).
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }
}

/// A server's close frame (unmasked) with `code` and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88); // FIN, opcode close
    f.push(2 + reason.len() as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// The open tunnels of one proxy.
#[derive(Clone)]
pub struct Tunnels {
    tracker: TaskTracker,
    stop: CancellationToken,
    idle: Duration,
    stop_code: u16,
    max_open: usize,
    open: Arc<AtomicUsize>,
}

impl Tunnels {
    /// Tunnels that end after `idle` without a byte either way; those still open when the
    /// proxy stops get close code `stop_code` ([`CLOSE_GOING_AWAY`] for the gateway, which
    /// goes away; [`CLOSE_SERVICE_RESTART`] for a unit, whose sessions live on elsewhere).
    pub fn new(idle: Duration, stop_code: u16) -> Tunnels {
        Tunnels {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            idle,
            stop_code,
            max_open: usize::MAX,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// At most `max_open` tunnels at once ([`Tunnels::full`] says when no more may open). An
    /// upgraded connection leaves its listener's connection cap, so without this a client
    /// could hold any number of sockets open.
    pub fn at_most(mut self, max_open: usize) -> Tunnels {
        self.max_open = max_open;
        self
    }

    /// Whether as many tunnels as allowed are open.
    pub fn full(&self) -> bool {
        self.open() >= self.max_open
    }

    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Once both upgrades complete, splices `client` and `far` (the unit or the app) until
    /// the tunnel ends, then calls `ended`. `websocket`: the far side speaks WebSocket, so the
    /// client can be told why it was closed.
    pub fn spawn(
        &self,
        client: OnUpgrade,
        far: OnUpgrade,
        websocket: bool,
        ended: impl FnOnce(TunnelEnd) + Send + 'static,
    ) {
        let (stop, idle, open) = (self.stop.clone(), self.idle, self.open.clone());
        let stop_code = self.stop_code;
        open.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(async move {
            let end = match tokio::try_join!(client, far) {
                Ok((client, far)) => {
                    splice(
                        TokioIo::new(client),
                        TokioIo::new(far),
                        websocket,
                        idle,
                        (stop, stop_code),
                    )
                    .await
                }
                Err(e) => {
                    tracing::debug!(error = %e, "an upgrade did not complete");
                    TunnelEnd::NotUpgraded
                }
            };
            open.fetch_sub(1, Ordering::Relaxed);
            ended(end);
        });
    }

    /// Lets open tunnels end on their own for `grace`, then closes the rest (1001 to
    /// WebSocket clients) and waits for them to go.
    pub async fn close(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.open(),
                "closing the tunnels still open at the end of the shutdown grace"
            );
            self.stop.cancel();
            self.tracker.wait().await;
        }
    }
}

/// Copies both ways between `client` and `far` until both sides closed, one fails, nothing
/// moved for `idle`, or `stop` (the client then gets its close code). Each direction's end
/// (EOF) is passed on as a half close.
pub async fn splice<C, F>(
    client: C,
    far: F,
    websocket: bool,
    idle: Duration,
    (stop, stop_code): (CancellationToken, u16),
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    F: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut far_rd, mut far_wr) = tokio::io::split(far);
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // The far side's frames (where a frame of ours may go, whether it closed), and the
    // client's (whether it began the closing handshake, after which the far side may end).
    let mut frames = FrameBoundary::default();
    let mut client_frames = FrameBoundary::default();
    let (mut client_done, mut far_done) = (false, false);
    loop {
        if client_done && far_done {
            return TunnelEnd::Closed;
        }
        let deadline = tokio::time::sleep(idle);
        tokio::select! {
            read = client_rd.read(&mut up), if !client_done => match read {
                Ok(0) => {
                    client_done = true;
                    let _ = far_wr.shutdown().await;
                }
                Ok(n) => {
                    if websocket {
                        client_frames.feed(&up[..n]);
                    }
                    if far_wr.write_all(&up[..n]).await.is_err() {
                        say_goodbye(&mut client_wr, websocket, &frames, CLOSE_SERVICE_RESTART, "unit stopped").await;
                        return TunnelEnd::FarSideGone;
                    }
                }
                Err(_) => {
                    let _ = far_wr.shutdown().await;
                    return TunnelEnd::ClientGone;
                }
            },
            read = far_rd.read(&mut down), if !far_done => match read {
                Ok(n) if n > 0 => {
                    if websocket {
                        frames.feed(&down[..n]);
                    }
                    if client_wr.write_all(&down[..n]).await.is_err() {
                        let _ = far_wr.shutdown().await;
                        return TunnelEnd::ClientGone;
                    }
                }
                // The far side ended. After a close frame either way, or the client's EOF,
                // that is the protocol's end; before, it stopped or died under the client.
                ended => {
                    far_done = true;
                    let closing = client_done || frames.close_seen() || client_frames.close_seen();
                    if ended.is_ok() && websocket && closing {
                        // The server closes the TCP connection first (RFC 6455 §7.1.1); a
                        // client may wait for that rather than close its own side.
                        let _ = client_wr.shutdown().await;
                        return TunnelEnd::Closed;
                    }
                    if ended.is_ok() && !websocket {
                        // Another protocol may go on sending the other way (a half close).
                        let _ = client_wr.shutdown().await;
                        continue;
                    }
                    say_goodbye(&mut client_wr, websocket, &frames, CLOSE_SERVICE_RESTART, "unit stopped").await;
                    return TunnelEnd::FarSideGone;
                }
            },
            _ = deadline => {
                say_goodbye(&mut client_wr, websocket, &frames, CLOSE_GOING_AWAY, "idle").await;
                let _ = far_wr.shutdown().await;
                return TunnelEnd::Idle;
            }
            _ = stop.cancelled() => {
                say_goodbye(&mut client_wr, websocket, &frames, stop_code, "stopping").await;
                let _ = far_wr.shutdown().await;
                return TunnelEnd::Stopped;
            }
        }
    }
}

/// Closes the client's side, with a close frame carrying `code` when the far side speaks
/// WebSocket, has not closed it itself, and no frame of its is half written.
async fn say_goodbye<W: AsyncWrite + Unpin>(
    client_wr: &mut W,
    websocket: bool,
    frames: &FrameBoundary,
    code: u16,
    reason: &str,
) {
    if websocket && frames.at_boundary() && !frames.close_seen() {
        let _ = client_wr.write_all(&close_frame(code, reason)).await;
    }
    let _ = client_wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend_from_slice(payload);
        f
    }

    type Peer = tokio::io::DuplexStream;

    /// A splice between two in-memory connections; the test plays the client and the far
    /// side through the peers.
    fn spliced(
        idle: Duration,
        stop: (CancellationToken, u16),
    ) -> (tokio::task::JoinHandle<TunnelEnd>, Peer, Peer) {
        let (client, client_peer) = tokio::io::duplex(1024);
        let (far, far_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(splice(client, far, true, idle, stop));
        (task, client_peer, far_peer)
    }

    fn quiet() -> (CancellationToken, u16) {
        (CancellationToken::new(), CLOSE_GOING_AWAY)
    }

    #[test]
    fn frame_boundaries_are_found_whatever_the_pieces() {
        let mut stream = frame(0x1, b"hello", false);
        stream.extend(frame(0x2, &[7u8; 300], false));
        stream.extend(frame(0x1, &vec![b'x'; 70_000], true));
        let ends = [7, 7 + 304, stream.len()];
        for piece in [1, 2, 3, 5, 13, 4096] {
            let mut f = FrameBoundary::default();
            let mut at = 0;
            for chunk in stream.chunks(piece) {
                f.feed(chunk);
                at += chunk.len();
                // Between frames exactly where a frame ended.
                assert_eq!(
                    f.at_boundary(),
                    ends.contains(&at),
                    "at {at}, pieces of {piece}"
                );
            }
            assert!(!f.close_seen());
        }
    }

    #[test]
    fn a_close_frame_is_seen_and_ours_is_well_formed() {
        let mut f = FrameBoundary::default();
        f.feed(&frame(0x1, b"bye", false));
        assert!(!f.close_seen());
        let ours = close_frame(CLOSE_SERVICE_RESTART, "unit stopped");
        f.feed(&ours);
        assert!(f.close_seen() && f.at_boundary());
        assert_eq!(&ours[..4], &[0x88, 14, 0x03, 0xF4]);
        assert_eq!(&ours[4..], b"unit stopped");
    }

    /// Both directions, half closes passed on, and the far side dying mid-conversation
    /// answered with 1012 at a frame boundary.
    #[tokio::test]
    async fn a_splice_carries_both_ways_and_tells_the_client_when_the_far_side_dies() {
        let (task, mut client_peer, mut far_peer) = spliced(Duration::from_secs(5), quiet());
        client_peer
            .write_all(&frame(0x1, b"up", true))
            .await
            .unwrap();
        let mut got = [0u8; 8];
        far_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[6..], b"up");
        far_peer
            .write_all(&frame(0x1, b"down", false))
            .await
            .unwrap();
        let mut got = [0u8; 6];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[2..], b"down");
        drop(far_peer);
        assert_eq!(task.await.unwrap(), TunnelEnd::FarSideGone);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, close_frame(CLOSE_SERVICE_RESTART, "unit stopped"));
    }

    #[tokio::test]
    async fn a_far_side_that_closed_properly_gets_no_frame_of_ours() {
        let (task, mut client_peer, mut far_peer) = spliced(Duration::from_secs(5), quiet());
        let theirs = frame(0x8, &1000u16.to_be_bytes(), false);
        far_peer.write_all(&theirs).await.unwrap();
        far_peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, theirs);
        // Ended without waiting for the client to close its side.
        assert_eq!(task.await.unwrap(), TunnelEnd::Closed);
    }

    #[tokio::test]
    async fn a_far_side_that_ends_after_the_clients_close_frame_is_no_failure() {
        let (task, mut client_peer, mut far_peer) = spliced(Duration::from_secs(5), quiet());
        let close = frame(0x8, &1000u16.to_be_bytes(), true);
        client_peer.write_all(&close).await.unwrap();
        let mut got = vec![0u8; close.len()];
        far_peer.read_exact(&mut got).await.unwrap();
        drop(far_peer);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no 1012 after the client's own close");
        assert_eq!(task.await.unwrap(), TunnelEnd::Closed);
    }

    #[tokio::test]
    async fn an_idle_tunnel_is_closed_and_a_half_frame_is_not_corrupted() {
        let (task, mut client_peer, mut far_peer) = spliced(Duration::from_millis(200), quiet());
        // Half a frame: the head promises 10 bytes, 3 come.
        let half = &frame(0x2, &[9u8; 10], false)[..5];
        far_peer.write_all(half).await.unwrap();
        assert_eq!(task.await.unwrap(), TunnelEnd::Idle);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, half, "no close frame inside a frame");
        let mut far_rest = Vec::new();
        far_peer.read_to_end(&mut far_rest).await.unwrap();
        assert!(far_rest.is_empty());
    }

    #[test]
    fn a_capped_set_of_tunnels_says_when_it_is_full() {
        let tunnels = Tunnels::new(Duration::from_secs(1), CLOSE_GOING_AWAY).at_most(1);
        assert!(!tunnels.full());
        tunnels.open.fetch_add(1, Ordering::Relaxed);
        assert!(tunnels.full());
    }

    #[tokio::test]
    async fn stopping_closes_open_tunnels_with_the_stop_code() {
        let stop = CancellationToken::new();
        let (task, mut client_peer, _far_peer) = spliced(
            Duration::from_secs(60),
            (stop.clone(), CLOSE_SERVICE_RESTART),
        );
        stop.cancel();
        assert_eq!(task.await.unwrap(), TunnelEnd::Stopped);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, close_frame(CLOSE_SERVICE_RESTART, "stopping"));
    }
}
