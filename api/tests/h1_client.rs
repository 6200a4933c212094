//! The request-driven HTTP/1.1 client (`upstream::h1`) against a server on a loopback socket
//! that answers with exactly the bytes each test gives it: what the server read, how many
//! connections it accepted, and what the client made of each answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use stickyfarm_api::upstream::h1::{H1Body, H1Error, SendError};
use stickyfarm_api::upstream::{Pool, UpstreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does after it reads a request.
#[derive(Clone)]
enum Reply {
    /// Writes these pieces, a few milliseconds apart, and waits for the next request.
    Answer(Vec<&'static [u8]>),
    /// Writes them and closes the connection.
    AnswerAndClose(Vec<&'static [u8]>),
    /// Closes without answering.
    Close,
}

/// A server that answers the n-th request (over all connections) with `replies[n]`.
struct Server {
    address: String,
    accepted: Arc<Mutex<usize>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(Mutex::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(replies.into_iter()));
        let (a, r) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                *a.lock().unwrap() += 1;
                tokio::spawn(serve(stream, r.clone(), replies.clone()));
            }
        });
        Server {
            address,
            accepted,
            requests,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<String>>>,
    replies: Arc<Mutex<std::vec::IntoIter<Reply>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: its head, then as many bytes as its Content-Length says.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        let request: Vec<u8> = buf.drain(..head_end + length).collect();
        requests
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request).to_string());
        let reply = replies
            .lock()
            .unwrap()
            .next()
            .expect("a reply for each request");
        let (pieces, close) = match reply {
            Reply::Answer(p) => (p, false),
            Reply::AnswerAndClose(p) => (p, true),
            Reply::Close => return,
        };
        for piece in pieces {
            if stream.write_all(piece).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        if close {
            return;
        }
    }
}

fn request(method: &str, path: &str) -> http::request::Parts {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn pool() -> Arc<Pool<UpstreamBody>> {
    Arc::new(Pool::new(4, Duration::from_secs(10)))
}

/// Sends one request over a pooled connection and reads the whole answer.
async fn exchange(
    pool: &Pool<UpstreamBody>,
    server: &Server,
    method: &str,
    body: &'static [u8],
) -> Result<(u16, Bytes, bool), SendError> {
    let (conn, reused) = pool
        .checkout_own(&server.address, Duration::from_secs(1), false)
        .await
        .unwrap();
    let answer = conn
        .send(
            &request(method, "/cart"),
            &Bytes::from_static(body),
            pool.own_idle(),
        )
        .await?;
    let status = answer.status().as_u16();
    // As hyper's server reads a body: until it says it has ended, not until it returns none.
    let mut body = answer.into_body();
    let mut read = Vec::new();
    while !body.is_end_stream() {
        match body.frame().await {
            Some(frame) => {
                if let Ok(data) = frame.unwrap().into_data() {
                    read.extend_from_slice(&data);
                }
            }
            None => break,
        }
    }
    Ok((status, Bytes::from(read), reused))
}

/// A GET over a pooled connection, its answer's body left to the test to read.
async fn get(pool: &Pool<UpstreamBody>, server: &Server) -> http::Response<H1Body> {
    let (conn, _) = pool
        .checkout_own(&server.address, Duration::from_secs(1), false)
        .await
        .unwrap();
    conn.send(&request("GET", "/"), &Bytes::new(), pool.own_idle())
        .await
        .unwrap()
}

const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

#[tokio::test]
async fn answers_come_back_over_one_kept_connection() {
    let server = Server::start(vec![Reply::Answer(vec![HELLO]); 3]).await;
    let pool = pool();
    for (i, method) in ["GET", "POST", "PUT"].into_iter().enumerate() {
        let body: &'static [u8] = if method == "GET" { b"" } else { b"{\"a\":1}" };
        let (status, answer, reused) = exchange(&pool, &server, method, body).await.unwrap();
        assert_eq!((status, &answer[..], reused), (200, &b"hello"[..], i > 0));
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(
        server.requests(),
        [
            "GET /cart HTTP/1.1\r\nhost: shop\r\n\r\n",
            "POST /cart HTTP/1.1\r\nhost: shop\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            "PUT /cart HTTP/1.1\r\nhost: shop\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
        ]
    );
}

#[tokio::test]
async fn interim_answers_are_skipped_and_a_chunked_answer_arrives_in_pieces() {
    let chunked: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n6;x=y\r\n, shop\r\n0\r\nx-checksum: t\r\n",
        b"\r\n",
    ];
    let server = Server::start(vec![Reply::Answer(chunked), Reply::Answer(vec![HELLO])]).await;
    let pool = pool();
    let (status, body, _) = exchange(&pool, &server, "GET", b"").await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"hello, shop"[..]));
    // Read to its end, the connection carries the next request.
    let (_, body, reused) = exchange(&pool, &server, "GET", b"").await.unwrap();
    assert_eq!((&body[..], reused), (&b"hello"[..], true));
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn answers_without_a_body_leave_the_connection_ready() {
    let server = Server::start(vec![
        // HEAD: the length of what a GET would get, and no body.
        Reply::Answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"]),
        Reply::Answer(vec![b"HTTP/1.1 204 No Content\r\n\r\n"]),
        Reply::Answer(vec![
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
        ]),
        Reply::Answer(vec![HELLO]),
    ])
    .await;
    let pool = pool();
    let mut got = Vec::new();
    for method in ["HEAD", "GET", "GET", "GET"] {
        let (status, body, _) = exchange(&pool, &server, method, b"").await.unwrap();
        got.push((status, body));
    }
    assert_eq!(
        got,
        [
            (200, Bytes::new()),
            (204, Bytes::new()),
            (304, Bytes::new()),
            (200, Bytes::from_static(b"hello"))
        ]
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn an_answer_that_ends_with_the_connection_is_read_whole_and_not_kept() {
    let server = Server::start(vec![
        Reply::AnswerAndClose(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close"]),
        Reply::Answer(vec![
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        ]),
        Reply::Answer(vec![HELLO]),
    ])
    .await;
    let pool = pool();
    let (_, body, _) = exchange(&pool, &server, "GET", b"").await.unwrap();
    assert_eq!(&body[..], b"until close");
    let (_, body, reused) = exchange(&pool, &server, "GET", b"").await.unwrap();
    assert_eq!((&body[..], reused), (&b"ok"[..], false));
    assert!(
        pool.own_idle().is_empty(),
        "`connection: close` is not kept"
    );
    let (_, _, reused) = exchange(&pool, &server, "GET", b"").await.unwrap();
    assert!(!reused);
    assert_eq!(server.accepted(), 3);
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_never_taken() {
    // The server answers as if it kept the connection, then closes it (a keep-alive timeout).
    let server = Server::start(vec![
        Reply::AnswerAndClose(vec![HELLO]),
        Reply::Answer(vec![HELLO]),
    ])
    .await;
    let pool = pool();
    exchange(&pool, &server, "GET", b"").await.unwrap();
    assert_eq!(pool.own_idle().len(), 1);
    // Time for the server's FIN to arrive and tokio's I/O driver to see it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, body, reused) = exchange(&pool, &server, "POST", b"x").await.unwrap();
    assert_eq!((&body[..], reused), (&b"hello"[..], false));
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn an_answer_dropped_before_its_end_closes_its_connection() {
    let server = Server::start(vec![
        Reply::Answer(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
            b"-later",
        ]),
        Reply::Answer(vec![HELLO]),
    ])
    .await;
    let pool = pool();
    let mut answer = get(&pool, &server).await;
    let first = answer.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "half");
    drop(answer);
    assert!(pool.own_idle().is_empty());
    let (_, body, reused) = exchange(&pool, &server, "GET", b"").await.unwrap();
    assert_eq!((&body[..], reused), (&b"hello"[..], false));
}

#[tokio::test]
async fn a_request_the_server_read_and_left_unanswered_is_broken_not_unsent() {
    let server = Server::start(vec![Reply::Close]).await;
    let pool = pool();
    match exchange(&pool, &server, "POST", b"{}").await {
        Err(SendError::Broken(H1Error::ClosedEarly)) => {}
        other => panic!("{:?}", other.map(|(s, b, _)| (s, b))),
    }
    assert_eq!(server.requests().len(), 1, "the server got it");
}

#[tokio::test]
async fn a_connection_the_server_reset_sends_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let pool = pool();
    let (conn, _) = pool
        .checkout_own(&address, Duration::from_secs(1), false)
        .await
        .unwrap();
    // The server resets the connection before the request is written.
    let (accepted, _) = listener.accept().await.unwrap();
    accepted.set_zero_linger().unwrap();
    drop(accepted);
    tokio::time::sleep(Duration::from_millis(50)).await;
    match conn
        .send(
            &request("POST", "/"),
            &Bytes::from_static(b"{}"),
            pool.own_idle(),
        )
        .await
    {
        Err(SendError::NotSent(_)) => {}
        other => panic!("{:?}", other.map(|r| r.status())),
    }
}

#[tokio::test]
async fn a_malformed_answer_is_refused_and_its_connection_dropped() {
    let huge: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(70_000))
            .into_bytes()
            .into_boxed_slice(),
    );
    let server = Server::start(vec![
        Reply::Answer(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        ]),
        Reply::Answer(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ]),
        Reply::Answer(vec![huge]),
        Reply::Answer(vec![b"HTTX/1.1 200 OK\r\n\r\n"]),
    ])
    .await;
    let pool = pool();
    let lengths_differ = exchange(&pool, &server, "GET", b"").await.err();
    assert!(
        matches!(lengths_differ, Some(SendError::Broken(H1Error::Framing(_)))),
        "{lengths_differ:?}"
    );
    // A bad chunk shows in the body, after the head was taken.
    let answer = get(&pool, &server).await;
    let bad_chunk = answer.into_body().collect().await.err();
    assert!(
        matches!(bad_chunk, Some(H1Error::Framing(_))),
        "{bad_chunk:?}"
    );
    let too_large = exchange(&pool, &server, "GET", b"").await.err();
    assert!(
        matches!(too_large, Some(SendError::Broken(H1Error::HeadTooLarge))),
        "{too_large:?}"
    );
    let not_http = exchange(&pool, &server, "GET", b"").await.err();
    assert!(
        matches!(not_http, Some(SendError::Broken(H1Error::Malformed(_)))),
        "{not_http:?}"
    );
    assert!(pool.own_idle().is_empty());
    assert_eq!(server.accepted(), 4, "no connection was used again");
}

/// An answer framed twice (chunked and a Content-Length, how responses are split): the chunks
/// frame it, the client never sees the Content-Length, and the connection is not used again.
#[tokio::test]
async fn an_answer_with_both_lengths_is_read_by_its_chunks_on_a_connection_not_kept() {
    let server = Server::start(vec![
        Reply::Answer(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ]),
        Reply::Answer(vec![HELLO]),
    ])
    .await;
    let pool = pool();
    let answer = get(&pool, &server).await;
    assert!(!answer.headers().contains_key("content-length"));
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    assert!(pool.own_idle().is_empty());
    let (_, _, reused) = exchange(&pool, &server, "GET", b"").await.unwrap();
    assert!(!reused);
    assert_eq!(server.accepted(), 2);
}
