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
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let app = axum::Router::new().route(
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
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Receiver {
        url: format!("http://{addr}"),
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
