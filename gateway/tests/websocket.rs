//! WebSockets through the gateway and a real sidecar to the app, with a real WebSocket client
//! (tokio-tungstenite), on loopback: the tunnel keeps the session's stickiness, carries every
//! message in order, and when its unit dies the client is told (1012) and its reconnect lands
//! on a backup with the same session and its state.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use stickyfarm_testkit::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/ws` through the gateway with the browser's cookies.
async fn connect(
    gw: &GatewayProc,
    b: &Browser,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", b.cookie_header().parse().unwrap());
    let (ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the handshake must finish")?;
    assert_eq!(response.status(), 101);
    Ok(ws)
}

/// The next message that is not a control frame, within a bound.
async fn next(ws: &mut Socket) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a well-formed message");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

async fn hello(ws: &mut Socket) -> serde_json::Value {
    match next(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected the app's hello, got {other:?}"),
    }
}

async fn wait_for_metric(gw: &GatewayProc, name: &str, labels: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = gw.metric(name, labels).await;
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{labels}}} is {v}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_carries_messages_both_ways_in_order_on_the_sessions_unit() {
    let db = TestDb::new().await;
    let units = [
        Unit::start("web-0", &db.url, &[]).await,
        Unit::start("web-1", &db.url, &[]).await,
    ];
    let flags = unit_flags(&units);
    let gw = GatewayProc::start(&flags, &["--slow-start", "0s"]).await;
    gw.wait_up(2).await;
    let (b, home) = gw.shopper("apple").await;

    let mut ws = connect(&gw, &b).await.unwrap();
    // Routed like any request of the session: its unit, its session, its state.
    let hi = hello(&mut ws).await;
    assert_eq!(hi["unit"], home.as_str());
    assert_eq!(hi["session"], b.cookie("sf_session").unwrap());
    assert_eq!(hi["items"], json!(["apple"]));
    // The open tunnel counts on its unit, in flight too (balancing and drain see it).
    wait_for_metric(&gw, "stickyfarm_gateway_unit_tunnels", &home, 1.0).await;
    assert_eq!(gw.unit_status(&home).await["tunnels"], 1);
    assert!(gw.unit_status(&home).await["in_flight"].as_u64().unwrap() >= 1);

    // Text, binary, ping/pong.
    ws.send(Message::text("hello, unit")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello, unit"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Message::Pong(p) = ws.next().await.unwrap().unwrap() {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"are you there");

    // 10,000 messages of growing sizes, sent while the echoes come back: none lost, none
    // reordered, none altered.
    const N: usize = 10_000;
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let body = format!("{i}:{}", "x".repeat(i % 300));
            tx.send(Message::text(body)).await.unwrap();
        }
        tx
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..N {
        assert!(Instant::now() < deadline, "10,000 echoes took over 60 s");
        let m = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("an echo within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            Message::text(format!("{i}:{}", "x".repeat(i % 300))),
            "message {i}"
        );
    }
    let tx = sender.await.unwrap();
    let mut ws = tx.reunite(rx).unwrap();

    // The closing handshake passes through; then the tunnel is counted out.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                return frame;
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(closed.map(|f| f.code), Some(CloseCode::Normal));
    wait_for_metric(&gw, "stickyfarm_gateway_unit_tunnels", &home, 0.0).await;
    wait_for_metric(
        &gw,
        "stickyfarm_gateway_tunnels_ended_total",
        "end=\"closed\"",
        1.0,
    )
    .await;
    // Plain requests of the session are still served by its unit afterwards.
    let mut b = b;
    let again = b.get(&gw.url("/cart")).await.json();
    assert_eq!(again["unit"], home.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_its_unit_dies_the_client_gets_1012_and_reconnects_to_a_backup_with_its_session() {
    let db = TestDb::new().await;
    let mut units = [
        Unit::start("web-0", &db.url, &[]).await,
        Unit::start("web-1", &db.url, &[]).await,
        Unit::start("web-2", &db.url, &[]).await,
    ];
    let flags = unit_flags(&units);
    let gw = GatewayProc::start(&flags, &["--slow-start", "0s"]).await;
    gw.wait_up(3).await;
    let (b, home) = gw.shopper("apple").await;
    let mut ws = connect(&gw, &b).await.unwrap();
    assert_eq!(hello(&mut ws).await["unit"], home.as_str());
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("before"));

    // The unit's process dies under the open tunnel.
    let victim = units.iter_mut().find(|u| u.sidecar.unit == home).unwrap();
    victim.sidecar.kill();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Restart),
        other => panic!("expected close code 1012, got {other:?}"),
    }
    wait_for_metric(
        &gw,
        "stickyfarm_gateway_tunnels_ended_total",
        "end=\"far_side_gone\"",
        1.0,
    )
    .await;

    // The reconnect (the same cookies) fails over like any request of the session.
    let mut ws = connect(&gw, &b).await.unwrap();
    let hi = hello(&mut ws).await;
    assert_ne!(hi["unit"], home.as_str(), "a backup serves the reconnect");
    assert_eq!(hi["session"], b.cookie("sf_session").unwrap());
    assert_eq!(
        hi["items"],
        json!(["apple"]),
        "the session's state came along"
    );
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_capped_per_unit_and_closed_when_idle() {
    let db = TestDb::new().await;
    let unit = Unit::start("web-0", &db.url, &[]).await;
    let flags = [format!("web-0={}", unit.sidecar.public)];
    let gw = GatewayProc::start(
        &flags,
        &["--max-tunnels-per-unit", "1", "--tunnel-idle-timeout", "2s"],
    )
    .await;
    gw.wait_up(1).await;
    let (b, _) = gw.shopper("apple").await;
    let mut first = connect(&gw, &b).await.unwrap();
    hello(&mut first).await;

    // The unit's one tunnel is taken: the next upgrade is refused, plain requests go on.
    match connect(&gw, &b).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers()["retry-after"], "1");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| "a WebSocket")),
    }
    assert_eq!(
        gw.metric("stickyfarm_gateway_refused_total", "too_many_tunnels")
            .await,
        1.0
    );
    let mut plain = Browser::new();
    assert_eq!(plain.get(&gw.url("/echo")).await.status, 200);

    // Quiet for the idle timeout: closed with 1001, and the slot is free again.
    match next(&mut first).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close code 1001, got {other:?}"),
    }
    wait_for_metric(
        &gw,
        "stickyfarm_gateway_tunnels_ended_total",
        "end=\"idle\"",
        1.0,
    )
    .await;
    let mut second = connect(&gw, &b).await.unwrap();
    hello(&mut second).await;
}

/// An upgraded connection leaves its listener's connection cap, so a client that reaches a
/// unit directly (past the NetworkPolicy) could hold any number of sockets open there; the
/// sidecar caps its tunnels at --max-connections and refuses the next upgrade, while its
/// ordinary requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_reached_directly_holds_no_more_tunnels_than_its_connection_cap() {
    let db = TestDb::new().await;
    let unit = Unit::start("web-0", &db.url, &["--max-connections", "2"]).await;
    let direct = |addr: std::net::SocketAddr| async move {
        let req = format!("ws://{addr}/ws").into_client_request().unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("the handshake must finish")
    };
    let (mut first, _) = direct(unit.sidecar.public).await.unwrap();
    let (mut second, _) = direct(unit.sidecar.public).await.unwrap();
    assert_eq!(hello(&mut first).await["unit"], "web-0");
    assert_eq!(hello(&mut second).await["unit"], "web-0");
    match direct(unit.sidecar.public).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| "a WebSocket")),
    }
    let plain = reqwest::get(unit.sidecar.url("/echo")).await.unwrap();
    assert_eq!(plain.status(), 200);
    // One closes: room for one more.
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut third = loop {
        match direct(unit.sidecar.public).await {
            Ok((ws, _)) => break ws,
            Err(_) => {
                assert!(Instant::now() < deadline, "a slot must free up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(hello(&mut third).await["unit"], "web-0");
}

/// An HTTP/2 connection to the gateway (prior knowledge, as h2c), and an extended CONNECT on
/// it (RFC 8441) for `/ws` with `protocol` and the browser's cookies.
async fn connect_h2(
    gw: &GatewayProc,
    b: &Browser,
    protocol: &'static str,
) -> http::Response<hyper::body::Incoming> {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/ws", gw.addr))
        .header("cookie", b.cookie_header())
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer within 10 s")
        .unwrap()
}

/// RFC 8441: a WebSocket over an HTTP/2 stream. The gateway announces extended CONNECT,
/// routes it like any request of the session, opens the unit's HTTP/1.1 upgrade with a key of
/// its own, and answers `200`; messages then flow both ways on the stream, in order. Another
/// `:protocol` is refused, and honest WebSockets go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_extended_connect_reaches_the_sessions_unit() {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let db = TestDb::new().await;
    let units = [
        Unit::start("web-0", &db.url, &[]).await,
        Unit::start("web-1", &db.url, &[]).await,
    ];
    let gw = GatewayProc::start(&unit_flags(&units), &["--slow-start", "0s"]).await;
    gw.wait_up(2).await;
    let (b, home) = gw.shopper("apple").await;

    // Not a WebSocket: 501, and nothing reached a unit.
    let refused = connect_h2(&gw, &b, "connect-udp").await;
    assert_eq!(refused.status(), 501);
    assert_eq!(
        gw.metric(
            "stickyfarm_gateway_refused_total",
            "kind=\"unsupported_tunnel\""
        )
        .await,
        1.0
    );

    let mut answer = connect_h2(&gw, &b, "websocket").await;
    assert_eq!(answer.status(), 200, "{:?}", answer.headers());
    assert_eq!(answer.version(), http::Version::HTTP_2);
    assert!(answer.headers().get("sec-websocket-accept").is_none());
    let stream = hyper::upgrade::on(&mut answer)
        .await
        .expect("the stream is the tunnel");
    let mut ws =
        WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(stream), Role::Client, None)
            .await;
    let hi = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<serde_json::Value>(&t).unwrap(),
        other => panic!("expected the app's hello, got {other:?}"),
    };
    assert_eq!(hi["unit"], home.as_str());
    assert_eq!(hi["session"], b.cookie("sf_session").unwrap());
    assert_eq!(hi["items"], json!(["apple"]));
    wait_for_metric(&gw, "stickyfarm_gateway_unit_tunnels", &home, 1.0).await;

    // 1,000 messages each way, in order, none altered.
    for i in 0..1_000 {
        let body = format!("{i}:{}", "y".repeat(i % 200));
        ws.send(Message::text(body.clone())).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), body),
            other => panic!("message {i}: {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    // The close handshake completes and the tunnel is counted off its unit.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                return true;
            }
        }
        true
    })
    .await;
    assert_eq!(closed, Ok(true));
    wait_for_metric(&gw, "stickyfarm_gateway_unit_tunnels", &home, 0.0).await;

    // An HTTP/1.1 WebSocket of the same session is unaffected.
    let mut h1 = connect(&gw, &b).await.unwrap();
    assert_eq!(hello(&mut h1).await["unit"], home.as_str());
}
