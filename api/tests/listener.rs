//! The listener every Stickyfarm port is served by, driven over real sockets.

use std::convert::Infallible;
use std::time::Duration;

use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use stickyfarm_api::listener::{self, Limits, RequestBody};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A port that refuses every request with a body before reading it, as a 413 on the declared
/// length does.
async fn refusing_port() -> (std::net::SocketAddr, CancellationToken) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(listener::serve(
        socket,
        Limits::default(),
        |_| {
            service_fn(|_req: hyper::Request<RequestBody>| async {
                let mut r = Response::new("too large\n".to_owned());
                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                Ok::<_, Infallible>(r)
            })
        },
        stop.clone(),
        Duration::from_secs(1),
    ));
    (addr, stop)
}

/// A client that writes its whole request before reading (as most do) gets the refusal, not a
/// reset: the body it is still sending is read and dropped. 8 MiB is far more than the
/// kernel's socket buffers hold, so without that the write fails every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_answered_before_it_was_read_does_not_cost_the_client_its_answer() {
    let (addr, stop) = refusing_port().await;
    let body = vec![b'x'; 8 * 1024 * 1024];
    for attempt in 0..3 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: unit\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: the body could not be sent: {e}"));
        let mut answer = vec![0; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "attempt {attempt}: {answer}"
        );
    }
    stop.cancel();
}

/// The lingering read is bounded: a client that goes on sending past `LINGER_BYTES` is
/// disconnected, it cannot keep the port reading for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_stops_sending_is_disconnected() {
    let (addr, stop) = refusing_port().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: unit\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = {
        let mut c = format!("{:x}\r\n", 1 << 20).into_bytes();
        c.extend(std::iter::repeat_n(b'y', 1 << 20));
        c.extend_from_slice(b"\r\n");
        c
    };
    // Bounded in count (twice the lingering cap) and in time (the linger time and some).
    let sent = tokio::time::timeout(listener::LINGER_TIME * 3, async {
        let mut sent = 0;
        while sent <= 2 * listener::LINGER_BYTES {
            if conn.write_all(&chunk).await.is_err() {
                return Some(sent);
            }
            sent += 1 << 20;
        }
        None
    })
    .await
    .expect("the port stops reading within its linger time");
    let sent = sent.expect("the port stops reading past its linger bytes");
    assert!(
        sent >= listener::LINGER_BYTES / 2,
        "only {sent} bytes were read"
    );
    stop.cancel();
}

/// A Unix socket (the sidecar's session API for its app) is served with the same limits as a
/// TCP port. With room for one connection, a client that starts a request head and stalls
/// holds the port only until the head deadline: it is disconnected without an answer, and the
/// client queued behind it is answered only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_has_the_connection_cap_and_the_head_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let stop = CancellationToken::new();
    tokio::spawn(listener::serve(
        tokio::net::UnixListener::bind(&path).unwrap(),
        Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        |_| {
            service_fn(|_req: hyper::Request<RequestBody>| async {
                Ok::<_, Infallible>(Response::new("served\n".to_owned()))
            })
        },
        stop.clone(),
        Duration::from_secs(1),
    ));

    let mut stalled = tokio::net::UnixStream::connect(&path).await.unwrap();
    stalled
        .write_all(b"GET /cart HTTP/1.1\r\nHost: unit\r\n")
        .await
        .unwrap();
    // Give the port time to accept the stalled client before the second one arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut queued = tokio::net::UnixStream::connect(&path).await.unwrap();
    queued
        .write_all(b"GET /cart HTTP/1.1\r\nHost: unit\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();

    let (stalled_ended, queued_answer) = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut s, mut q) = (Vec::new(), Vec::new());
        // Whichever ends first is what the cap and the deadline decide. Once the stalled
        // client is let go, the queued one may be answered before this task looks again:
        // `biased` looks at the stalled one first, so that counts as the right order.
        tokio::select! {
            biased;
            r = stalled.read_to_end(&mut s) => {
                r.unwrap();
                assert!(q.is_empty());
                queued.read_to_end(&mut q).await.unwrap();
                (true, String::from_utf8_lossy(&q).into_owned())
            }
            r = queued.read_to_end(&mut q) => {
                r.unwrap();
                (false, String::from_utf8_lossy(&q).into_owned())
            }
        }
    })
    .await
    .expect("the stalled client is disconnected and the queued one answered");
    assert!(
        stalled_ended,
        "the queued client was answered while the stalled one held the only slot: {queued_answer}"
    );
    assert!(
        queued_answer.starts_with("HTTP/1.1 200") && queued_answer.ends_with("served\n"),
        "{queued_answer}"
    );
    stop.cancel();
}
