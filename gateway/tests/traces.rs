//! Traces across the farm, exported to an OTLP receiver in the test (HTTP/protobuf, decoded
//! with the collector's own message types): a client's `traceparent` is continued by the
//! gateway, handed to the sidecar and on to the app; each component exports its phases under
//! its service name. Without an endpoint nothing is exported and the client's `traceparent`
//! reaches the app unchanged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use stickyfarm_testkit::*;

/// One exported span: its service, name, ids.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/HTTP receiver on loopback, as a collector would be.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Exported>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn receiver() -> Receiver {
    receiver_over(None).await
}

/// The receiver's route: decodes every export into `store`.
fn collector(store: Arc<Mutex<Vec<Exported>>>) -> axum::Router {
    axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut out = store.lock().unwrap();
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        out.push(Exported {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                        });
                    }
                }
                ([("content-type", "application/x-protobuf")], Bytes::new())
            }
        }),
    )
}

/// A receiver over plain HTTP, or over HTTPS with `ca`'s server certificate (as a collector
/// outside the cluster, or behind its own CA, is reached).
async fn receiver_over(ca: Option<&TestCa>) -> Receiver {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let app = collector(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let Some(ca) = ca else {
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        return Receiver {
            url: format!("http://{addr}"),
            spans,
            _task: task,
        };
    };
    let acceptor = ca.acceptor();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate gives up here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    Receiver {
        url: format!("https://{addr}"),
        spans,
        _task: task,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
}

/// What the test app saw of `GET /echo` sent through the gateway with `headers`.
async fn echo(gw: &GatewayProc, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = reqwest::Client::new().get(gw.url("/echo"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_trace_continues_through_gateway_sidecar_and_app_and_is_exported() {
    let db = TestDb::new().await;
    let otlp = receiver().await;
    let mut unit = Unit::start("web-0", &db.url, &["--otlp-endpoint", &otlp.url]).await;
    let mut gw = GatewayProc::start(
        &unit_flags(std::slice::from_ref(&unit)),
        &["--otlp-endpoint", &otlp.url],
    )
    .await;
    gw.wait_up(1).await;

    let echo = echo(
        &gw,
        &[("traceparent", &traceparent()), ("tracestate", "vendor=1")],
    )
    .await;
    // The app is handed the same trace, under a parent of the sidecar's.
    let seen = echo["traceparent"]
        .as_str()
        .expect("the app gets a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "{seen}");
    assert_ne!(parts[2], CLIENT_SPAN, "{seen}");
    assert_eq!(echo["tracestate"], "vendor=1");
    let app_parent = parts[2].to_owned();

    // A write through the session API, for the sidecar's write-through span (a trace of its
    // own: the test app does not pass a traceparent there).
    let (_, _home) = gw.shopper("apple").await;

    // Stopping flushes what each component queued.
    assert!(gw.terminate(Duration::from_secs(20)));
    assert!(unit.sidecar.process.terminate(Duration::from_secs(20)));
    let spans = otlp.spans.lock().unwrap().clone();
    let of = |service: &str, name: &str| -> Vec<Exported> {
        spans
            .iter()
            .filter(|s| s.service == format!("stickyfarm-{service}") && s.name == name)
            .cloned()
            .collect()
    };
    let ours: Vec<&Exported> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let names: BTreeMap<String, usize> = ours.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(format!("{} {}", s.service, s.name)).or_default() += 1;
        m
    });
    for want in [
        "stickyfarm-gateway request",
        "stickyfarm-gateway route",
        "stickyfarm-gateway pick",
        "stickyfarm-gateway upstream",
        "stickyfarm-gateway connect",
        "stickyfarm-sidecar request",
        "stickyfarm-sidecar cache lookup",
        "stickyfarm-sidecar app",
    ] {
        assert!(
            names.contains_key(want),
            "no {want} span in the client's trace: {names:?}"
        );
    }
    let in_trace = |service: &str, name: &str| -> Exported {
        of(service, name)
            .into_iter()
            .find(|s| s.trace_id == TRACE_ID)
            .unwrap_or_else(|| panic!("{service} {name}"))
    };
    // The chain of parents: client → gateway request → … → upstream → sidecar request → app.
    let gw_request = in_trace("gateway", "request");
    assert_eq!(gw_request.parent, CLIENT_SPAN);
    let upstream = in_trace("gateway", "upstream");
    assert_eq!(upstream.parent, gw_request.span_id);
    let sc_request = in_trace("sidecar", "request");
    assert_eq!(sc_request.parent, upstream.span_id);
    let app = in_trace("sidecar", "app");
    assert_eq!(app.parent, sc_request.span_id);
    assert_eq!(
        app.span_id, app_parent,
        "the app's parent is the sidecar's app span"
    );
    // The shopper's cart write went through to PostgreSQL under a span of its own.
    assert!(!of("sidecar", "write-through").is_empty(), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_the_clients_traceparent_reaches_the_app_unchanged() {
    let db = TestDb::new().await;
    let unit = Unit::start("web-0", &db.url, &[]).await;
    let gw = GatewayProc::start(&unit_flags(std::slice::from_ref(&unit)), &[]).await;
    gw.wait_up(1).await;
    let echo = echo(&gw, &[("traceparent", &traceparent())]).await;
    assert_eq!(echo["traceparent"], traceparent().as_str());
}

/// A collector over HTTPS is verified: against the CA the standard variable names, spans
/// arrive; trusting only the system's roots, the export is refused and nothing arrives while the
/// farm serves on; a CA file that is not a certificate stops the start, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_over_https_is_verified_against_the_named_ca() {
    let db = TestDb::new().await;
    let ca = TestCa::new(&["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("collector-ca.crt");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let ca_file = ca_file.display().to_string();
    let unit = Unit::start("web-0", &db.url, &[]).await;
    let units = unit_flags(std::slice::from_ref(&unit));

    // Trusted through OTEL_EXPORTER_OTLP_CERTIFICATE: the gateway's spans arrive.
    let otlp = receiver_over(Some(&ca)).await;
    let mut gw = GatewayProc::start_with_env(
        &units,
        &["--otlp-endpoint", &otlp.url],
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_file)],
    )
    .await;
    gw.wait_up(1).await;
    echo(&gw, &[("traceparent", &traceparent())]).await;
    assert!(gw.terminate(Duration::from_secs(20)));
    let got = otlp.spans.lock().unwrap().clone();
    assert!(
        got.iter()
            .any(|s| s.trace_id == TRACE_ID && s.service == "stickyfarm-gateway"),
        "no gateway span arrived over HTTPS: {got:?}\n{}",
        gw.process.log_text()
    );

    // The same collector, not trusted (a certificate no system root signed): nothing is
    // delivered, and requests are answered all the same.
    let untrusted = receiver_over(Some(&ca)).await;
    let mut gw = GatewayProc::start(&units, &["--otlp-endpoint", &untrusted.url]).await;
    gw.wait_up(1).await;
    let seen = echo(&gw, &[("traceparent", &traceparent())]).await;
    assert_eq!(
        seen["traceparent"].as_str().unwrap().split('-').nth(1),
        Some(TRACE_ID)
    );
    assert!(gw.terminate(Duration::from_secs(20)));
    assert!(
        untrusted.spans.lock().unwrap().is_empty(),
        "spans went to a collector whose certificate nothing vouches for"
    );

    // A CA file that holds no certificate: the gateway does not start, and says which file.
    let bad = dir.path().join("not-a-ca.crt");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let out = std::process::Command::new(binary("stickyfarm-gateway"))
        .args(["--listen", "127.0.0.1:0", "--unit", &units[0]])
        .args(["--otlp-endpoint", &otlp.url])
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not-a-ca.crt") && err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{err}"
    );
}
