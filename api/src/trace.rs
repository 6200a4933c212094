//! Traces (feature `logs`): W3C trace context (`traceparent`, `tracestate`) carried from the
//! client through gateway and sidecar to the app, and each component's spans exported over
//! OpenTelemetry OTLP when an endpoint is configured.
//!
//! Off unless `--otlp-endpoint`/`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (OTLP over HTTP/protobuf, e.g.
//! `http://otel-collector:4318`). An `https://` collector is verified against the system's trust
//! store, or the CA that `OTEL_EXPORTER_OTLP_CERTIFICATE` names (a file that is not one stops
//! the start). `OTEL_SERVICE_NAME` overrides the component's name,
//! `OTEL_TRACES_SAMPLER`/`_ARG` the sampler (default: follow the client's decision, sample new
//! traces). Off, nothing is added or replaced: a client's `traceparent` reaches the app
//! unchanged, and every [`Traced`] is an empty `Option`.
//!
//! Spans are made with the OpenTelemetry API directly, not from `tracing` spans: what is
//! traced (a request and its phases) is chosen here, in the code, and the logs keep their own
//! filter. The current span travels in OpenTelemetry's context: a request's span is attached
//! to its future ([`Traced::run`]); a phase started inside it ([`Traced::phase`]) is its child.
//! Each component continues the trace of the request it received ([`Traced::request`]) and
//! names its own span as the parent in the request to the next hop ([`Traced::inject`]).

use std::future::Future;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
pub use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    FutureExt as _, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

/// The tracer, once export is set up.
static TRACER: OnceLock<Tracer> = OnceLock::new();

/// The variables that turn export on besides `--otlp-endpoint`.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether the environment asks for export.
pub fn requested() -> bool {
    ENDPOINT_VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Whether this process exports traces.
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// The export pipeline of one process: shut down (sending what is queued) when dropped.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

/// The export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The exporter refused its settings.
    #[error(
        "cannot export traces to the OTLP endpoint ({0}); check --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT (http://host:4318)"
    )]
    Exporter(String),
    /// The collector's CA certificate, named by a standard variable, is unusable.
    #[error(
        "cannot use {path} (from {var}) as the OTLP collector's CA certificate: {reason}; mount the PEM certificate there or unset {var}"
    )]
    Certificate {
        /// The variable that named it.
        var: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A second set-up in one process.
    #[error("traces were set up twice in one process")]
    Twice,
}

/// The variables naming the CA certificate (PEM) an `https://` collector is verified against,
/// instead of the system's trust store; the traces-only one wins, as the specification says.
pub const CERTIFICATE_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
];

/// How long one export may take (the specification's default, 10 s).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The exporter's HTTP client: `https://` collectors are verified against the CA the standard
/// variables name, else the system's trust store.
fn http_client() -> Result<reqwest::blocking::Client, TraceError> {
    let ca = CERTIFICATE_VARS.iter().find_map(|var| {
        let path = std::env::var(var).ok().filter(|p| !p.is_empty())?;
        Some((*var, path))
    });
    let ca = match ca {
        Some((var, path)) => {
            let bad = |reason: String| TraceError::Certificate {
                var,
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            certs
        }
        None => Vec::new(),
    };
    // The blocking client runs a runtime of its own, which cannot be made on one of tokio's
    // threads (the caller may be on one): it is made on a thread of its own.
    std::thread::spawn(move || {
        let mut b = reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT);
        for c in ca {
            b = b.add_root_certificate(c);
        }
        b.build()
    })
    .join()
    .map_err(|_| TraceError::Exporter("making its HTTP client panicked".into()))?
    .map_err(|e| TraceError::Exporter(e.to_string()))
}

/// Sets up the export of `component`'s spans (batched, on a thread of the SDK's) to `endpoint`
/// (a base URL: spans go to `/v1/traces`) or where the standard variables say.
pub fn export(component: &'static str, endpoint: Option<&str>) -> Result<Traces, TraceError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http_client()?);
    // The traces-only variable names the full URL and wins, as the specification says.
    if std::env::var_os(ENDPOINT_VARS[0]).is_none()
        && let Some(base) = endpoint.filter(|e| !e.is_empty())
    {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = exporter
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("stickyfarm-{component}"));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    if TRACER.set(provider.tracer(component)).is_err() {
        return Err(TraceError::Twice);
    }
    tracing::info!(component, "exporting traces over OTLP");
    Ok(Traces { provider })
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// A span of this process and the context it is current in; nothing when not exporting. The
/// span ends when the last clone of it is dropped (its future finished, its guard dropped).
#[derive(Clone, Default)]
pub struct Traced(Option<Context>);

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Traced").field(&self.0.is_some()).finish()
    }
}

impl Traced {
    /// The span of a request this process serves, continuing the trace its `traceparent`
    /// names (a missing or malformed one starts a new trace).
    pub fn request(name: &'static str, headers: &HeaderMap) -> Traced {
        let Some(tracer) = TRACER.get() else {
            return Traced(None);
        };
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        Traced(Some(parent.with_span(span)))
    }

    /// A phase of the current span (a child of it); nothing outside a traced request.
    pub fn phase(name: &'static str) -> Traced {
        Self::phase_with(name, Vec::new)
    }

    /// [`Traced::phase`] with attributes (made only when traced).
    pub fn phase_with(name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) -> Traced {
        let Some(tracer) = TRACER.get() else {
            return Traced(None);
        };
        let cx = Context::current();
        if !cx.has_active_span() {
            return Traced(None);
        }
        let span = tracer
            .span_builder(name)
            .with_attributes(attributes())
            .start_with_context(tracer, &cx);
        Traced(Some(cx.with_span(span)))
    }

    /// The span current here, to carry into a task spawned on its behalf (a spawned task
    /// starts outside every span); nothing outside a traced request.
    pub fn current() -> Traced {
        if TRACER.get().is_none() {
            return Traced(None);
        }
        let cx = Context::current();
        Traced(cx.has_active_span().then_some(cx))
    }

    /// Runs `work` with this span current (its phases become children). Not traced, `work`
    /// runs as it is: no wrapper future is moved around on the request path (an `async fn`
    /// wrapper here cost the gateway about a tenth of its throughput in copies).
    pub fn run<F: Future>(self, work: F) -> Run<F> {
        match self.0 {
            Some(cx) => Run::Traced {
                work: Box::pin(work.with_context(cx)),
            },
            None => Run::Plain { work },
        }
    }

    /// Makes this span current on this thread until the guard is dropped (for synchronous
    /// phases); the span ends with the guard.
    pub fn enter(self) -> Option<opentelemetry::ContextGuard> {
        self.0.map(Context::attach)
    }

    /// Names this span as the parent in the headers of a request to the next hop.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(cx) = &self.0 {
            TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
        }
    }

    /// Records an attribute on the span (made only when traced).
    pub fn set(&self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(attribute());
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Traced::run`]: the work itself, or (traced) the work in its span's
    /// context, boxed so that the untraced variant is no larger than the work.
    #[project = RunProjection]
    #[allow(missing_docs)]
    pub enum Run<F> {
        /// Not traced: the work itself.
        Plain { #[pin] work: F },
        /// Traced: the work with its span's context attached at every poll.
        Traced { work: std::pin::Pin<Box<opentelemetry::trace::WithContext<F>>> },
    }
}

impl<F: Future> Future for Run<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.project() {
            RunProjection::Plain { work } => work.poll(cx),
            RunProjection::Traced { work } => work.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_nothing_is_made_and_headers_pass_unchanged() {
        // Not exporting in this test process: every span is empty.
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let request = Traced::request("request", &headers);
        assert!(request.0.is_none());
        let before = headers.clone();
        request.inject(&mut headers);
        assert_eq!(headers, before);
        assert!(Traced::phase("route").0.is_none());
    }
}
