//! How every Stickyfarm binary logs: the same two settings (`--log-filter`/`RUST_LOG` and
//! `--log-format`/`STICKYFARM_LOG_FORMAT`), the same output, the same field names.
//!
//! Field names in events, so that one query finds an event whichever component wrote it:
//! `unit` (a unit's name), `farm` (namespace/name), `instance` (an instance id), `error` (what
//! failed), `session` (only ever a stored id, the keyed hash, or a [`crate::SessionId`]'s
//! redacted `Debug`: a session id is a bearer credential), `address`/`*_addr` (listen
//! addresses). Credentials (passwords, tokens, database URLs with a password, cookie values)
//! are never fields: a test per component drives traffic at `trace` level and searches the
//! output for them.
//!
//! JSON lines carry `timestamp`, `level`, `target`, `message` and the event's fields at the top
//! level (`flatten_event`), which is what Loki, Elasticsearch and `jq` users expect.

use clap::{Args, ValueEnum};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::trace::{TraceError, Traces};

/// The filter when none is given.
pub const DEFAULT_FILTER: &str = "info";

/// Log settings, the same flags in every binary (flatten them into its clap parser).
#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    /// Which events are written, in `RUST_LOG` syntax: a level (`info`), or per module
    /// (`info,stickyfarm_gateway::proxy=debug`).
    #[arg(
        long = "log-filter",
        visible_alias = "log-level",
        env = "RUST_LOG",
        default_value = DEFAULT_FILTER,
        value_name = "FILTER",
        value_parser = parse_filter,
    )]
    pub filter: String,

    /// Output: human-readable lines, or one JSON object per line (what log collectors read).
    #[arg(
        long = "log-format",
        env = "STICKYFARM_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub format: LogFormat,

    /// Export traces over OTLP (HTTP/protobuf) to this collector, e.g.
    /// `http://otel-collector:4318` (spans go to `/v1/traces`); off when unset. The standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and, for an
    /// `https://` collector with a private CA, `OTEL_EXPORTER_OTLP_CERTIFICATE` apply.
    #[arg(
        long = "otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// As written on a command line or in `STICKYFARM_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The settings could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A logger was installed already (a second call in one process).
    #[error("the logger is already installed: {0}")]
    AlreadyInstalled(String),
    /// Traces were asked for and cannot be exported.
    #[error(transparent)]
    Traces(#[from] TraceError),
}

fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a log filter ({e}); use a level such as `info` or per module such as `info,stickyfarm_gateway=debug`"))
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            filter: DEFAULT_FILTER.to_owned(),
            format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

impl LogSettings {
    /// Installs the process's logger, writing to standard error (standard output stays for
    /// what a command prints), and with an OTLP endpoint the export of `component`'s traces
    /// ([`crate::trace`]). Keep the returned guard until the process ends: dropping it sends
    /// the last spans.
    pub fn init(&self, component: &'static str) -> Result<Option<Traces>, LogError> {
        self.subscriber(std::io::stderr)
            .try_init()
            .map_err(|e| LogError::AlreadyInstalled(e.to_string()))?;
        if self.otlp_endpoint.is_some() || crate::trace::requested() {
            return Ok(Some(crate::trace::export(
                component,
                self.otlp_endpoint.as_deref(),
            )?));
        }
        Ok(None)
    }

    /// The logger these settings describe, writing to `writer` (a test captures an in-process
    /// component's output with it).
    pub fn subscriber<W>(&self, writer: W) -> Box<dyn Subscriber + Send + Sync>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = EnvFilter::try_new(&self.filter).unwrap_or_else(|_| {
            // Settings made in code rather than parsed: the default rather than nothing.
            EnvFilter::new(DEFAULT_FILTER)
        });
        let logs = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_env_filter(filter);
        match self.format {
            LogFormat::Text => Box::new(logs.finish()),
            LogFormat::Json => Box::new(
                // The current span's fields (the request id of the request being served) go
                // under `span`; the list of outer spans would only repeat them.
                logs.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .finish(),
            ),
        }
    }

    /// The same settings as environment variables, for a process this one starts (farmctl's
    /// units and gateway, the operator's pods).
    pub fn as_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("RUST_LOG", self.filter.clone()),
            ("STICKYFARM_LOG_FORMAT", self.format.as_str().to_owned()),
        ];
        if let Some(endpoint) = &self.otlp_endpoint {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        logs: LogSettings,
    }

    #[test]
    fn filters_and_formats_parse_and_bad_ones_are_refused_with_the_syntax() {
        let cli =
            Cli::try_parse_from(["x", "--log-filter", "warn,stickyfarm_gateway=debug"]).unwrap();
        assert_eq!(cli.logs.filter, "warn,stickyfarm_gateway=debug");
        assert_eq!(cli.logs.format, LogFormat::Text);
        let cli =
            Cli::try_parse_from(["x", "--log-level", "debug", "--log-format", "json"]).unwrap();
        assert_eq!(cli.logs.filter, "debug");
        assert_eq!(cli.logs.format, LogFormat::Json);
        let err = Cli::try_parse_from(["x", "--log-filter", "stickyfarm=loud"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a log filter"), "{err}");
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn json_lines_carry_the_events_fields_at_the_top_level() {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let settings = LogSettings {
            filter: "debug".into(),
            format: LogFormat::Json,
            otlp_endpoint: None,
        };
        let logger = settings.subscriber(move || Sink(sink.clone()));
        tracing::subscriber::with_default(logger, || {
            tracing::info!(
                unit = "web-0",
                error = "refused",
                "the app refused the connection"
            );
            tracing::trace!("filtered out");
            let request = tracing::info_span!("request", request_id = "3f2a");
            request.in_scope(|| tracing::warn!("inside a request"));
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["unit"], "web-0");
        assert!(lines[0].get("span").is_none());
        // Every line about a request names it.
        assert_eq!(lines[1]["span"]["request_id"], "3f2a");
        assert_eq!(lines[1]["message"], "inside a request");
        assert_eq!(lines[0]["error"], "refused");
        assert_eq!(lines[0]["message"], "the app refused the connection");
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0]["timestamp"].is_string() && lines[0]["target"].is_string());
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_settings_travel_as_the_variables_they_are_read_from() {
        let s = LogSettings {
            filter: "debug".into(),
            format: LogFormat::Json,
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
        };
        let env = s.as_env();
        assert_eq!(env[0], ("RUST_LOG", "debug".to_owned()));
        assert_eq!(env[1], ("STICKYFARM_LOG_FORMAT", "json".to_owned()));
        let cmd = clap::Command::new("x");
        let cmd = LogSettings::augment_args(cmd);
        for arg in cmd.get_arguments() {
            let var = arg.get_env().unwrap().to_str().unwrap();
            assert!(env.iter().any(|(k, _)| *k == var), "{var} is passed on");
        }
    }
}
