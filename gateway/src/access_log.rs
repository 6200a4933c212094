//! The access log (off by default): one line per request, JSON or logfmt, written when the
//! answer's body ends (so it has the bytes sent and the whole duration), to stdout or a file.
//!
//! Lines go through a bounded queue to one writer task: a slow disk or a full pipe never holds
//! up a request. A line that finds the queue full is dropped and counted
//! (`stickyfarm_gateway_access_log_dropped_total`). A session appears only as a keyed hash
//! (HMAC-SHA256 under a key made at start, 16 hex digits): lines of one gateway process can be
//! grouped by session, but no line holds a credential.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::ValueEnum;
use hmac::{Hmac, KeyInit, Mac};
use hyper::body::{Body, Frame, SizeHint};
use serde::Serialize;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::proxy::ResponseBody;

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// One JSON object per line.
    Json,
    /// `key=value` pairs (logfmt).
    Logfmt,
}

/// Lines waiting for the writer at most; more are dropped.
const QUEUE: usize = 8192;

/// What one request did, as its line says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccessRecord {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The client's address (the trusted proxy's last `X-Forwarded-For` hop with
    /// `--trust-forwarded`).
    pub client: IpAddr,
    /// Method.
    pub method: String,
    /// Path, without the query unless `--access-log-query` (queries carry tokens and personal
    /// data more often than paths).
    pub path: String,
    /// Status sent.
    pub status: u16,
    /// The unit that answered; none for the gateway's own answers.
    pub unit: Option<String>,
    /// The unit's instance id, when known.
    pub instance: Option<String>,
    /// The session, as a keyed hash.
    pub session: Option<String>,
    /// Request body bytes declared (`Content-Length`).
    pub bytes_in: Option<u64>,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// From the request's arrival to its answer's last byte.
    pub duration_ms: f64,
    /// From forwarding to the unit's answer head.
    pub upstream_ms: Option<f64>,
    /// Attempts after the first (another connection or another unit).
    pub retried: u32,
    /// Served by a backup rather than the unit the request named.
    pub failed_over: bool,
    /// The request id.
    pub request_id: String,
}

impl AccessRecord {
    /// The line in `format` (without the newline).
    pub fn line(&self, format: AccessLogFormat) -> String {
        match format {
            AccessLogFormat::Json | AccessLogFormat::Off => {
                serde_json::to_string(self).expect("a record is always serialisable")
            }
            AccessLogFormat::Logfmt => self.logfmt(),
        }
    }

    fn logfmt(&self) -> String {
        let mut out = String::with_capacity(256);
        let ms = |v: f64| format!("{v:.3}");
        let pairs: [(&str, Option<String>); 15] = [
            ("time", Some(self.time.clone())),
            ("client", Some(self.client.to_string())),
            ("method", Some(self.method.clone())),
            ("path", Some(self.path.clone())),
            ("status", Some(self.status.to_string())),
            ("unit", self.unit.clone()),
            ("instance", self.instance.clone()),
            ("session", self.session.clone()),
            ("bytes_in", self.bytes_in.map(|b| b.to_string())),
            ("bytes_out", Some(self.bytes_out.to_string())),
            ("duration_ms", Some(ms(self.duration_ms))),
            ("upstream_ms", self.upstream_ms.map(ms)),
            ("retried", Some(self.retried.to_string())),
            ("failed_over", Some(self.failed_over.to_string())),
            ("request_id", Some(self.request_id.clone())),
        ];
        for (key, value) in pairs {
            if !out.is_empty() {
                out.push(' ');
            }
            let value = value.unwrap_or_default();
            let plain = !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=');
            if plain {
                let _ = write!(out, "{key}={value}");
            } else {
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = write!(out, "{key}=\"{escaped}\"");
            }
        }
        out
    }
}

/// The access log of one gateway.
pub struct AccessLog {
    format: AccessLogFormat,
    with_query: bool,
    key: [u8; 32],
    lines: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Starts the writer (to `path`, or stdout for `-`) and returns the log, or `None` when the
    /// format is `off`.
    pub async fn start(
        format: AccessLogFormat,
        path: &str,
        with_query: bool,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<Arc<AccessLog>>> {
        if format == AccessLogFormat::Off {
            return Ok(None);
        }
        let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = if path == "-" {
            Box::new(tokio::io::stdout())
        } else {
            Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(PathBuf::from(path))
                    .await?,
            )
        };
        let (lines, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64 * 1024);
            while let Some(line) = rx.recv().await {
                batch.extend_from_slice(line.as_bytes());
                batch.push(b'\n');
                // Everything already queued goes in the same write.
                while let Ok(line) = rx.try_recv() {
                    batch.extend_from_slice(line.as_bytes());
                    batch.push(b'\n');
                }
                if let Err(e) = out.write_all(&batch).await {
                    tracing::warn!(error = %e, "writing the access log failed");
                }
                let _ = out.flush().await;
                batch.clear();
            }
        });
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source failed");
        Ok(Some(Arc::new(AccessLog {
            format,
            with_query,
            key,
            lines,
            metrics,
        })))
    }

    /// The path as logged.
    pub fn path(&self, uri: &http::Uri) -> String {
        match (self.with_query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str().to_owned(),
            _ => uri.path().to_owned(),
        }
    }

    /// A session id as logged.
    pub fn session(&self, session: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(session);
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn write(&self, record: &AccessRecord) {
        if self.lines.try_send(record.line(self.format)).is_err() {
            self.metrics.access_log_dropped();
        }
    }
}

/// The time of a request's arrival as logged.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// An answer's body that counts the bytes sent and writes the request's line when it ends
/// (or when the client goes away first).
pub struct Logged {
    inner: ResponseBody,
    log: Arc<AccessLog>,
    record: Option<AccessRecord>,
    started: Instant,
}

impl Logged {
    /// `body` of the request `record` describes, which arrived at `started`.
    pub fn new(
        body: ResponseBody,
        log: Arc<AccessLog>,
        record: AccessRecord,
        started: Instant,
    ) -> Logged {
        Logged {
            inner: body,
            log,
            record: Some(record),
            started,
        }
    }

    fn finish(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.duration_ms = ms(self.started.elapsed());
            self.log.write(&record);
        }
    }
}

/// A duration in milliseconds, as logged.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Body for Logged {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(record) = self.record.as_mut() {
                    record.bytes_out += n;
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
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

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            time: timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            client: "10.0.0.7".parse().unwrap(),
            method: "GET".into(),
            path: "/cart".into(),
            status: 200,
            unit: Some("web-0".into()),
            instance: None,
            session: Some("00ff".into()),
            bytes_in: None,
            bytes_out: 12,
            duration_ms: 1.25,
            upstream_ms: Some(1.0),
            retried: 0,
            failed_over: false,
            request_id: "r-1".into(),
        }
    }

    #[test]
    fn a_json_line_has_every_field() {
        let line: serde_json::Value =
            serde_json::from_str(&record().line(AccessLogFormat::Json)).unwrap();
        assert_eq!(line["time"], "1970-01-01T00:00:01.500Z");
        assert_eq!(line["unit"], "web-0");
        assert_eq!(line["instance"], serde_json::Value::Null);
        assert_eq!(line["bytes_out"], 12);
        assert_eq!(line["request_id"], "r-1");
    }

    #[test]
    fn a_logfmt_line_quotes_what_would_break_it() {
        let mut r = record();
        r.path = "/a b\"c=d\\".into();
        let line = r.line(AccessLogFormat::Logfmt);
        assert!(line.starts_with("time=1970-01-01T00:00:01.500Z client=10.0.0.7 method=GET "));
        assert!(line.contains(r#"path="/a b\"c=d\\""#), "{line}");
        assert!(line.contains(" unit=web-0 instance=\"\" "), "{line}");
        assert!(
            line.contains(" duration_ms=1.250 upstream_ms=1.000 "),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
