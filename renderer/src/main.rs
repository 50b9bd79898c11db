//! `renderer run`: renders queued timelapses (cluster mode: PostgreSQL + S3) until
//! SIGTERM. Its own Deployment, scaled by render backlog; see docs/operations.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lapseguard_core::catalog::PgCatalog;
use lapseguard_core::config::{self, InfraSettings};
use lapseguard_core::objects::S3Store;
use renderer::{Renderer, RendererSettings};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "renderer",
    version,
    about = "lapseguard renderer: turns a project's anonymized frames into a timelapse video",
    long_about = "lapseguard renderer: turns a project's anonymized frames into a timelapse video.\n\n\
Renders are requested with POST /v1/projects/{slug}/timelapses on the backend. The renderer \
claims one at a time from PostgreSQL, streams the anonymized frames (never an original) from \
the output bucket through ffmpeg into an H.264 MP4, and stores it in the timelapse bucket. \
Settings come from an optional TOML file (--config or LAPSEGUARD_CONFIG) and LAPSEGUARD_* \
environment variables; see docs/configuration.md."
)]
struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render queued timelapses until SIGTERM.
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lapseguard_core::install_crypto_provider();
    let cli = Cli::parse();
    let infra: InfraSettings = config::load(cli.config.as_deref())?;
    lapseguard_core::telemetry::init("renderer", infra.log_format, &infra.log_filter);
    match cli.command {
        Command::Run => {
            infra.require_cluster().map_err(anyhow::Error::msg)?;
            let settings: RendererSettings = config::load(cli.config.as_deref())?;
            let ready = Arc::new(AtomicBool::new(false));
            let listener = tokio::net::TcpListener::bind(&settings.renderer_listen)
                .await
                .with_context(|| format!("binding {}", settings.renderer_listen))?;
            let router = renderer::health_router(ready.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            let shutdown = CancellationToken::new();
            tokio::spawn(lapseguard_core::shutdown::cancel_on_signal(
                shutdown.clone(),
            ));
            let r = Arc::new(Renderer {
                catalog: Arc::new(PgCatalog::connect_lazy(&infra)?),
                objects: Arc::new(S3Store::new(&infra)),
                infra: Arc::new(infra),
                settings,
                ready,
            });
            r.run(shutdown).await;
            tracing::info!("renderer stopped");
            Ok(())
        }
    }
}
