//! `backend serve` runs the HTTP API and the outbox relay; `backend migrate` applies the
//! database schema (run it as a separate step before a rollout).

use std::path::PathBuf;

use anyhow::Context;
use backend::AppState;
use backend::settings::BackendSettings;
use clap::{Parser, Subcommand};
use lapseguard_core::catalog::PgCatalog;
use lapseguard_core::config::{self, InfraSettings};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "backend",
    version,
    about = "lapseguard backend: accepts camera images and queues their anonymization",
    long_about = "lapseguard backend: accepts camera images and queues their anonymization.\n\n\
Settings come from an optional TOML file (--config or LAPSEGUARD_CONFIG) and LAPSEGUARD_* \
environment variables (e.g. LAPSEGUARD_DATABASE_URL, LAPSEGUARD_AMQP_URL, LAPSEGUARD_S3_ENDPOINT, \
LAPSEGUARD_ADMIN_TOKEN, LAPSEGUARD_LISTEN). See docs/configuration.md for every key."
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
    /// Serve the HTTP API and relay queued jobs to RabbitMQ.
    Serve,
    /// Apply pending database migrations and exit (safe to run concurrently).
    Migrate,
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Create the input, output and timelapse buckets if missing (local setups; in Kubernetes the
    /// MinIO bootstrap Job does this, with lifecycle rules).
    InitBuckets,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lapseguard_core::install_crypto_provider();
    let cli = Cli::parse();
    let infra: InfraSettings = config::load(cli.config.as_deref())?;
    lapseguard_core::telemetry::init("backend", infra.log_format, &infra.log_filter);
    match cli.command {
        Command::Openapi => {
            use utoipa::OpenApi;
            println!("{}", backend::openapi::ApiDoc::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::InitBuckets => {
            use lapseguard_core::objects::ObjectStore;
            let store = lapseguard_core::objects::S3Store::new(&infra);
            for bucket in [
                &infra.input_bucket,
                &infra.output_bucket,
                &infra.timelapse_bucket,
            ] {
                store
                    .ensure_bucket(bucket)
                    .await
                    .with_context(|| format!("creating bucket {bucket}"))?;
                tracing::info!(bucket = %bucket, "bucket ready");
            }
            Ok(())
        }
        Command::Migrate => {
            if infra.database_url.is_empty() {
                anyhow::bail!("missing required setting LAPSEGUARD_DATABASE_URL");
            }
            let catalog = PgCatalog::connect_lazy(&infra)?;
            catalog.migrate().await.context("applying migrations")?;
            tracing::info!("database schema is up to date");
            Ok(())
        }
        Command::Serve => {
            let settings: BackendSettings = config::load(cli.config.as_deref())?;
            let listen = settings.listen.clone();
            let state = AppState::cluster(infra, settings)?;
            if let Some(amqp) = &state.amqp
                && !amqp.probe().await
            {
                tracing::warn!(
                    "RabbitMQ not reachable yet; uploads are kept in the outbox until it is"
                );
            }
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, "backend listening");
            let shutdown = CancellationToken::new();
            tokio::spawn(lapseguard_core::shutdown::cancel_on_signal(
                shutdown.clone(),
            ));
            backend::serve(listener, state, shutdown).await?;
            tracing::info!("backend stopped");
            Ok(())
        }
    }
}
