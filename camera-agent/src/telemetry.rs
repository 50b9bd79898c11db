//! `tracing` setup: one JSON object per line on stdout with `"service":"camera-agent"`
//! when stdout is not a terminal (what a log collector expects, same shape as the
//! backend's and the worker's lines), the human format on a terminal. With the `loki`
//! cargo feature and a `loki_url`, events are also pushed to Grafana Loki, for cameras
//! that no cluster log collector can reach.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

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

/// Where to push logs besides stdout (`loki_url`), with the labels of every stream.
#[derive(Debug, Clone, Default)]
pub struct LogPush {
    pub loki_url: String,
    pub labels: Vec<(String, String)>,
}

type Base = Layered<EnvFilter, Registry>;

/// Initialises the global subscriber (later calls are no-ops). `RUST_LOG` wins over
/// `filter`. Must run inside the tokio runtime when `push` names a Loki URL (its sender
/// is a task).
pub fn init(service: &'static str, format: LogFormat, filter: &str, push: &LogPush) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let stdout: Box<dyn Layer<Base> + Send + Sync> = if json {
        let inner = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithService { service, inner })
            .with_writer(std::io::stdout)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let (loki, problem) = loki_layer(service, push);
    let mut layers = vec![stdout];
    layers.extend(loki);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}

#[cfg(feature = "loki")]
fn loki_layer(
    service: &'static str,
    push: &LogPush,
) -> (Option<Box<dyn Layer<Base> + Send + Sync>>, Option<String>) {
    if push.loki_url.is_empty() {
        return (None, None);
    }
    let url = match reqwest::Url::parse(&push.loki_url) {
        Ok(u) => u,
        Err(e) => {
            return (
                None,
                Some(format!("loki_url {:?} ignored: {e}", push.loki_url)),
            );
        }
    };
    let mut b = tracing_loki::builder();
    let labels = std::iter::once(("service".to_string(), service.to_string()))
        .chain(push.labels.iter().cloned());
    for (k, v) in labels {
        b = match b.label(k.as_str(), v) {
            Ok(b) => b,
            Err(e) => return (None, Some(format!("loki label {k}: {e}"))),
        };
    }
    match b.build_url(url) {
        Ok((layer, task)) => {
            tokio::spawn(task);
            (Some(layer.boxed()), None)
        }
        Err(e) => (
            None,
            Some(format!("loki_url {:?} ignored: {e}", push.loki_url)),
        ),
    }
}

#[cfg(not(feature = "loki"))]
fn loki_layer(
    _service: &'static str,
    push: &LogPush,
) -> (Option<Box<dyn Layer<Base> + Send + Sync>>, Option<String>) {
    if push.loki_url.is_empty() {
        (None, None)
    } else {
        (
            None,
            Some("loki_url is set but this camera-agent was built without the `loki` feature; logs go to stdout only".into()),
        )
    }
}
