//! `camera-agent watch` uploads a camera's frames; `camera-agent simulate` plays a camera.

use std::path::PathBuf;

use camera_agent::config;
use camera_agent::settings::{SimulateSettings, WatchSettings};
use camera_agent::telemetry::LogPush;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "camera-agent",
    version,
    about = "lapseguard camera agent: uploads every captured frame exactly once",
    long_about = "lapseguard camera agent: uploads every captured frame exactly once.\n\n\
Every flag can also be set in the configuration file (--config or LAPSEGUARD_CONFIG) or as a \
LAPSEGUARD_* environment variable (--capture-dir is LAPSEGUARD_CAPTURE_DIR); flags win. \
Prefer LAPSEGUARD_TOKEN over --token: command lines are visible to every local user. \
See docs/configuration.md for every key and docs/camera-agent.md for how it works."
)]
struct Cli {
    /// TOML configuration file (environment variables and flags override it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the capture folder, spool finished frames durably and upload them.
    Watch(WatchArgs),
    /// Play a timelapse camera: write images from a folder into the capture folder.
    Simulate(SimulateArgs),
}

#[derive(Args)]
struct WatchArgs {
    /// Backend base URL [LAPSEGUARD_BACKEND].
    #[arg(long, value_name = "URL")]
    backend: Option<String>,
    /// Camera token [LAPSEGUARD_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Folder the camera writes frames into [LAPSEGUARD_CAPTURE_DIR].
    #[arg(long, value_name = "DIR")]
    capture_dir: Option<PathBuf>,
    /// Durable upload spool, same filesystem as the capture folder [LAPSEGUARD_SPOOL_DIR].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// MQTT broker for heartbeats and commands, mqtt:// or mqtts:// [LAPSEGUARD_MQTT].
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// This camera's id in MQTT topics (required with --mqtt) [LAPSEGUARD_CAMERA_ID].
    #[arg(long, value_name = "ID")]
    camera_id: Option<String>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Folder of sample JPEG/PNG images [LAPSEGUARD_SOURCE].
    #[arg(long, value_name = "DIR")]
    source: Option<PathBuf>,
    /// Folder to write frames into [LAPSEGUARD_CAPTURE_DIR].
    #[arg(long, value_name = "DIR")]
    capture_dir: Option<PathBuf>,
    /// Time between frames, e.g. 2s, 500ms, 1m [LAPSEGUARD_INTERVAL].
    #[arg(long, value_name = "DURATION")]
    interval: Option<String>,
    /// Number of frames, then exit; 0 = until stopped [LAPSEGUARD_COUNT].
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    camera_agent::tls::install_crypto_provider();
    // One thread is plenty for a camera's uplink and keeps the footprint small; file
    // I/O runs on tokio's blocking pool, the folder watch on its own thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("camera-agent")
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    match cli.command {
        Command::Watch(a) => {
            let mut s: WatchSettings = config::load(cli.config.as_deref())?;
            if let Some(v) = a.backend {
                s.backend = v;
            }
            if let Some(v) = a.token {
                s.token = v;
            }
            if let Some(v) = a.capture_dir {
                s.capture_dir = v;
            }
            if let Some(v) = a.spool_dir {
                s.spool_dir = v;
            }
            if let Some(v) = a.mqtt {
                s.mqtt = v;
            }
            if let Some(v) = a.camera_id {
                s.camera_id = v;
            }
            let mut labels = Vec::new();
            if !s.camera_id.is_empty() {
                labels.push(("camera".to_string(), s.camera_id.clone()));
            }
            let push = LogPush {
                loki_url: s.loki_url.clone(),
                labels,
            };
            camera_agent::telemetry::init("camera-agent", s.log_format, &s.log_filter, &push);
            camera_agent::agent::run(s, shutdown).await
        }
        Command::Simulate(a) => {
            let mut s: SimulateSettings = config::load(cli.config.as_deref())?;
            if let Some(v) = a.source {
                s.source = v;
            }
            if let Some(v) = a.capture_dir {
                s.capture_dir = v;
            }
            if let Some(v) = a.interval {
                s.interval = v;
            }
            if let Some(v) = a.count {
                s.count = v;
            }
            camera_agent::telemetry::init(
                "camera-agent",
                s.log_format,
                &s.log_filter,
                &LogPush::default(),
            );
            s.validate().map_err(anyhow::Error::msg)?;
            camera_agent::simulate::run(s, shutdown).await
        }
    }
}

async fn signal_shutdown(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
    token.cancel();
}
