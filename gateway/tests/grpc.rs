//! gRPC through the gateway and real sidecars to h2c apps (`app.protocol: h2c`), on loopback:
//! a tonic server per unit (the standard health service: unary `Check`, server-streaming
//! `Watch`), a tonic client and a raw HTTP/2 client at the gateway. Calls stick to their unit
//! by cookie, streams arrive message by message, and the status in the trailers arrives intact.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use stickyfarm_testkit::*;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;

/// A gRPC app: the health service, reporting its own unit's name as a serving service (so
/// which unit answered shows in what it knows).
struct GrpcApp {
    addr: SocketAddr,
    reporter: HealthReporter,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn grpc_app(unit: &str) -> GrpcApp {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(unit, ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    GrpcApp {
        addr,
        reporter,
        _stop: stop,
    }
}

fn check(service: &str, cookie: Option<&str>) -> tonic::Request<HealthCheckRequest> {
    let mut r = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    if let Some(c) = cookie {
        r.metadata_mut()
            .insert("cookie", MetadataValue::try_from(c).unwrap());
    }
    r
}

/// The `name=value` pairs of a response's `Set-Cookie` headers.
fn cookies_of(metadata: &tonic::metadata::MetadataMap) -> Vec<String> {
    metadata
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect()
}

/// The next message of a stream, within 10 s.
async fn next(watch: &mut tonic::Streaming<HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream is open")
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_stick_to_their_unit_with_trailers_intact() {
    let db = TestDb::new().await;
    let names = ["web-0", "web-1"];
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for name in names {
        let app = grpc_app(name).await;
        let sidecar = SidecarProc::start(SidecarSpec {
            unit: name,
            app: app.addr,
            database_url: &db.url,
            extra: vec!["--app-protocol".into(), "h2c".into()],
            instance: None,
        })
        .await;
        apps.push(app);
        sidecars.push(sidecar);
    }
    let flags: Vec<String> = sidecars
        .iter()
        .map(|s| format!("{}={}", s.unit, s.public))
        .collect();
    let gw = GatewayProc::start(&flags, &["--app-protocol", "h2c", "--slow-start", "0s"]).await;
    gw.wait_up(2).await;

    let channel = tonic::transport::Endpoint::from_shared(gw.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    // The first call starts a session on some unit; its cookies name it.
    let first = client.check(check("", None)).await.unwrap();
    assert_eq!(first.get_ref().status, Wire::Serving as i32);
    let cookies = cookies_of(first.metadata());
    let home = cookies
        .iter()
        .find_map(|c| c.strip_prefix("sf_unit="))
        .expect("the gateway names the unit in a cookie")
        .to_owned();
    let away = names.iter().find(|n| **n != home).unwrap().to_string();
    let jar = cookies.join("; ");

    // Sticky: every call with the cookies reaches the same unit (only it knows its own name;
    // the other answers NOT_FOUND).
    for _ in 0..10 {
        let r = client.check(check(&home, Some(&jar))).await.unwrap();
        assert_eq!(r.get_ref().status, Wire::Serving as i32);
    }
    let status = client.check(check(&away, Some(&jar))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // Server streaming: the current status at once, then each change as it happens.
    let mut watch = client
        .watch(check(&home, Some(&jar)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await, Wire::Serving as i32);
    let home_app = &apps[names.iter().position(|n| *n == home).unwrap()];
    home_app
        .reporter
        .set_service_status(&home, ServingStatus::NotServing)
        .await;
    assert_eq!(next(&mut watch).await, Wire::NotServing as i32);
    drop(watch);

    // The trailers themselves, read by a plain HTTP/2 client: `grpc-status: 0` after the
    // message, not folded into the head.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // HealthCheckRequest { service = home }: field 1, length-delimited.
    let mut message = vec![0x0a, home.len() as u8];
    message.extend_from_slice(home.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let req = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("cookie", &jar)
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    let response = h2.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("grpc-status").is_none(),
        "not a trailers-only answer"
    );
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    let body = collected.to_bytes();
    // One message: NOT_SERVING (2) now.
    assert_eq!(&body[5..], &[0x08, 0x02]);
}
