//! `camera-agent watch`: wires the watcher, the spool, the uploaders, the disk monitor
//! and (optionally) MQTT together, and stops them in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::mqtt::{self, MqttAgent, Topics};
use crate::settings::WatchSettings;
use crate::spool::{self, Spool};
use crate::upload::{UploadConfig, Uploader};
use crate::watch::{self, WatchConfig};

/// How long in-flight uploads may finish after SIGTERM before they are abandoned (safe:
/// the frame stays in the spool and is sent again next time).
const UPLOAD_GRACE: Duration = Duration::from_secs(5);
const REPEAT_WARNING: Duration = Duration::from_secs(600);

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

/// Checks spool size and free disk every heartbeat interval (at most every 30 s); warns
/// loudly on crossing a threshold and every ten minutes while above it. Never deletes
/// anything unsent.
async fn monitor(
    settings: WatchSettings,
    spool: Arc<Spool>,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let stats = spool.stats();
        let mut warnings = Vec::new();
        if settings.spool_warn_bytes > 0 && stats.backlog_bytes > settings.spool_warn_bytes {
            warnings.push(format!(
                "spool backlog {} ({} frames) is above spool_warn_bytes {}",
                gib(stats.backlog_bytes),
                stats.backlog,
                gib(settings.spool_warn_bytes)
            ));
        }
        if let Some((free, total)) = spool.disk_space()
            && total > 0
        {
            let pct = free.saturating_mul(100) / total;
            if pct < u64::from(settings.disk_warn_free_percent) {
                warnings.push(format!(
                    "only {pct}% ({}) free on the spool's filesystem (disk_warn_free_percent {})",
                    gib(free),
                    settings.disk_warn_free_percent
                ));
            }
        }
        let was_clear = control.warnings().is_empty();
        if !warnings.is_empty()
            && (was_clear || last_warned.is_none_or(|t| t.elapsed() >= REPEAT_WARNING))
        {
            for w in &warnings {
                tracing::warn!(
                    backlog = stats.backlog,
                    backlog_bytes = stats.backlog_bytes,
                    "{w}; unsent frames are kept, never deleted"
                );
            }
            last_warned = Some(tokio::time::Instant::now());
        } else if warnings.is_empty() && !was_clear {
            tracing::info!("spool and disk back below their warning thresholds");
        }
        control.set_warnings(warnings);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(control.heartbeat_secs().clamp(1, 30))) => {}
        }
    }
}

pub async fn run(settings: WatchSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    settings.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&settings.capture_dir)
        .with_context(|| format!("creating capture folder {}", settings.capture_dir.display()))?;
    let spool = Arc::new(
        Spool::open(&settings.spool_dir)
            .with_context(|| format!("opening spool {}", settings.spool_dir.display()))?,
    );
    if spool::same_filesystem(&settings.capture_dir, &settings.spool_dir) == Some(false) {
        tracing::warn!(
            capture_dir = %settings.capture_dir.display(),
            spool_dir = %settings.spool_dir.display(),
            "capture folder and spool are on different filesystems: frames are copied and fsynced instead of renamed (slower; still never lost)"
        );
    }
    let control = Arc::new(Control::load(&settings.spool_dir, settings.heartbeat_secs));
    let stats = spool.stats();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        backend = %settings.backend,
        capture_dir = %settings.capture_dir.display(),
        spool_dir = %settings.spool_dir.display(),
        backlog = stats.backlog,
        backlog_bytes = stats.backlog_bytes,
        rejected = stats.rejected,
        paused = control.is_paused(),
        mqtt = !settings.mqtt.is_empty(),
        "camera agent started"
    );

    let backend = reqwest::Url::parse(&settings.backend).context("backend URL")?;
    let needs_tls = backend.scheme() == "https"
        || settings.mqtt.starts_with("mqtts")
        || settings.mqtt.starts_with("ssl");
    let tls = if needs_tls {
        Some(Arc::new(crate::tls::client_config(&settings.tls_ca_file)?))
    } else {
        None
    };
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(settings.connect_timeout_secs.max(1)))
        .timeout(Duration::from_secs(settings.upload_timeout_secs.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "lapseguard-camera-agent/",
            env!("CARGO_PKG_VERSION")
        ))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_keepalive(Duration::from_secs(30));
    if let Some(cfg) = &tls {
        http = http.use_preconfigured_tls((**cfg).clone());
    }
    let http = http.build().context("building the HTTP client")?;

    let uploader = Arc::new(Uploader::new(
        UploadConfig {
            backend,
            token: settings.token.clone(),
            concurrency: settings.upload_concurrency,
            retry_initial: settings.retry_initial(),
            retry_max: settings.retry_max(),
            max_bytes_per_sec: settings.upload_max_bytes_per_sec,
            keep_sent: settings.keep_sent,
            sent_max_bytes: settings.sent_max_bytes,
        },
        http,
        spool.clone(),
        control.clone(),
    )?);

    // Each part gets its own token, so they stop in order: first no new frames, then
    // the uploads, then the goodbye heartbeat.
    let stop_watch = CancellationToken::new();
    let stop_uploads = CancellationToken::new();
    let stop_mqtt = CancellationToken::new();

    let watcher = watch::start(
        WatchConfig {
            dir: settings.capture_dir.clone(),
            extensions: settings.extension_list(),
            settle: Duration::from_millis(settings.settle_ms),
            stable: Duration::from_secs(settings.stable_secs),
            rescan_every: Duration::from_secs(settings.rescan_secs),
        },
        spool.clone(),
        control.clone(),
        stop_watch.clone(),
    )?;
    let uploads = tokio::spawn(uploader.run(stop_uploads.clone()));
    let monitor = tokio::spawn(monitor(
        settings.clone(),
        spool.clone(),
        control.clone(),
        stop_mqtt.clone(),
    ));
    let mqtt = if settings.mqtt.is_empty() {
        None
    } else {
        let broker = mqtt::parse_broker(
            &settings.mqtt,
            &settings.mqtt_username,
            &settings.mqtt_password,
        )
        .map_err(anyhow::Error::msg)?;
        let agent = MqttAgent {
            tls: if broker.tls { tls.clone() } else { None },
            broker,
            topics: Topics::new(&settings.mqtt_topic_prefix, &settings.camera_id),
            camera: settings.camera_id.clone(),
            spool: spool.clone(),
            control: control.clone(),
        };
        Some(tokio::spawn(agent.run(stop_mqtt.clone())))
    };

    shutdown.cancelled().await;
    tracing::info!("stopping: no new frames; letting in-flight uploads finish");
    stop_watch.cancel();
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
    // Uploads in flight get a grace period; new ones do not start.
    control.set_stopping();
    let _ = tokio::time::timeout(UPLOAD_GRACE, control.wait_idle(&spool)).await;
    stop_uploads.cancel();
    let _ = uploads.await;
    stop_mqtt.cancel();
    if let Some(m) = mqtt {
        let _ = m.await;
    }
    let _ = monitor.await;
    let stats = spool.stats();
    tracing::info!(backlog = stats.backlog, "camera agent stopped");
    Ok(())
}
