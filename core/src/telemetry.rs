//! `tracing` setup shared by every lapseguard binary.
//!
//! In cluster mode (stdout is not a terminal) each event is one JSON object per line
//! with a constant `service` field, so a log collector can route and filter without
//! parsing; on a terminal the human format is used.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Wraps the JSON formatter and adds `"service":"<name>"` as the first field.
struct WithService {
    service: &'static str,
    inner: Format<Json>,
}

impl<S, N> FormatEvent<S, N> for WithService
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"service\":\"{}\",{}", self.service, rest),
            None => writer.write_str(&line),
        }
    }
}

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Services: JSON on stdout for the log collector, human format on a terminal
    /// (to stderr, so a terminal shows it beside any output).
    Stdout,
    /// Commands whose stdout carries their results (e.g. `worker detect`'s JSON
    /// lines): every format goes to stderr.
    Stderr,
}

/// Initialises the global subscriber for a service. Safe to call more than once
/// (later calls are no-ops).
pub fn init(service: &'static str, format: LogFormat, filter: &str) {
    init_to(service, format, filter, Sink::Stdout)
}

/// As [`init`], with the events sent to `sink`; `Auto` picks JSON when that stream
/// is not a terminal.
pub fn init_to(service: &'static str, format: LogFormat, filter: &str, sink: Sink) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => match sink {
            Sink::Stdout => !std::io::stdout().is_terminal(),
            Sink::Stderr => !std::io::stderr().is_terminal(),
        },
    };
    if json {
        let inner = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .fmt_fields(JsonFields::new())
            .event_format(WithService { service, inner });
        let _ = match sink {
            Sink::Stdout => builder.with_writer(std::io::stdout).try_init(),
            Sink::Stderr => builder.with_writer(std::io::stderr).try_init(),
        };
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The process-wide Prometheus recorder (installed once, shared by every component).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
