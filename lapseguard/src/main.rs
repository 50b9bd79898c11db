//! `lapseguard up`: the whole pipeline in one process, no servers needed. The backend
//! (HTTP API, gallery, outbox relay) and the worker (face detection and blurring) run
//! over the embedded adapters: objects in a local folder, the catalog and a durable job
//! queue in one SQLite file, all under one data directory. With `--demo`, a camera-agent
//! in the same process uploads sample frames like a real camera.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use backend::AppState;
use backend::settings::BackendSettings;
use chrono::{DateTime, TimeZone, Utc};
use clap::{Args, Parser, Subcommand};
use lapseguard_core::catalog::{Catalog, CatalogError, Project};
use lapseguard_core::config::{self, InfraSettings};
use lapseguard_core::embedded::{self, DataDirLock, SqliteCatalog, SqliteQueue};
use lapseguard_core::objects::{FsStore, ObjectStore};
use renderer::{Renderer, RendererSettings};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use worker::consumer::{Consumer, Health};
use worker::settings::WorkerSettings;

#[derive(Parser)]
#[command(
    name = "lapseguard",
    version,
    about = "lapseguard all-in-one: camera images in, faces blurred, no servers needed",
    long_about = "lapseguard all-in-one: the backend and the worker in one process.\n\n\
Everything lives in one data directory: objects (originals and anonymized images) in \
a local folder, the catalog and a durable job queue in a SQLite file. Stop it at any \
moment: queued jobs run after the next start. The same business logic runs in cluster \
mode (PostgreSQL, RabbitMQ, S3) as separate `backend` and `worker` services.\n\n\
On first run the face model and ONNX Runtime are fetched by scripts/fetch-models.sh \
unless LAPSEGUARD_MODEL_PATH and ORT_DYLIB_PATH point at them. Settings come from an \
optional TOML file (--config or LAPSEGUARD_CONFIG) and LAPSEGUARD_* environment \
variables; see docs/configuration.md."
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
    /// Run backend, worker and timelapse renderer over the data directory until Ctrl-C.
    Up(UpArgs),
}

#[derive(Args)]
struct UpArgs {
    /// Data directory [default: lapseguard-data, or $LAPSEGUARD_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the HTTP API and gallery [default: 127.0.0.1:8080, or
    /// $LAPSEGUARD_EMBEDDED_LISTEN].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Also run a demo camera that uploads the sample images as timelapse frames.
    #[arg(long)]
    demo: bool,
    /// Folder of sample images for the demo camera [default: the repository's testdata/].
    #[arg(long, value_name = "DIR")]
    demo_source: Option<PathBuf>,
    /// Frames the demo camera captures.
    #[arg(long, value_name = "N")]
    demo_frames: Option<u64>,
    /// Exit once every demo frame is anonymized (or failed) instead of serving on.
    #[arg(long, requires = "demo")]
    exit_when_done: bool,
}

/// Settings of the all-in-one mode (the backend's and worker's own settings apply too).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct EmbeddedSettings {
    /// Where objects, the database and the demo camera's folders live.
    data_dir: PathBuf,
    /// Address of the HTTP API and gallery.
    embedded_listen: String,
    /// Seconds a job stays leased to the worker before it is delivered again.
    queue_lease_secs: u64,
    /// Script that fetches the model and ONNX Runtime on first run.
    fetch_models_script: PathBuf,
    demo_source: PathBuf,
    demo_frames: u64,
    /// Time between two demo frames.
    demo_interval_ms: u64,
    demo_project: String,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Self {
            data_dir: "lapseguard-data".into(),
            embedded_listen: "127.0.0.1:8080".into(),
            queue_lease_secs: 600,
            fetch_models_script: repo.join("scripts/fetch-models.sh"),
            demo_source: repo.join("testdata"),
            demo_frames: 24,
            demo_interval_ms: 250,
            demo_project: "demo".into(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lapseguard_core::install_crypto_provider();
    let cli = Cli::parse();
    let infra: InfraSettings = config::load(cli.config.as_deref())?;
    lapseguard_core::telemetry::init("lapseguard", infra.log_format, &infra.log_filter);
    match cli.command {
        Command::Up(args) => {
            let mut emb: EmbeddedSettings = config::load(cli.config.as_deref())?;
            if let Some(d) = args.data_dir.clone() {
                emb.data_dir = d;
            }
            if let Some(l) = args.listen.clone() {
                emb.embedded_listen = l;
            }
            if let Some(s) = args.demo_source.clone() {
                emb.demo_source = s;
            }
            if let Some(n) = args.demo_frames {
                emb.demo_frames = n;
            }
            let backend: BackendSettings = config::load(cli.config.as_deref())?;
            let worker: WorkerSettings = config::load(cli.config.as_deref())?;
            let render: RendererSettings = config::load(cli.config.as_deref())?;
            up(infra, backend, worker, render, emb, &args).await
        }
    }
}

/// Runs `scripts/fetch-models.sh` (progress on stderr) unless the model and the
/// runtime library are configured and present.
fn ensure_model(worker: &mut WorkerSettings, script: &Path) -> anyhow::Result<()> {
    let have = |p: &Path| !p.as_os_str().is_empty() && p.is_file();
    let ort_env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let ort_ok = have(&worker.ort_dylib_path) || ort_env.as_deref().is_some_and(have);
    if have(&worker.model_path) && ort_ok {
        return Ok(());
    }
    tracing::info!(script = %script.display(), "fetching the face model and ONNX Runtime (first run only; a minute or two)");
    let out = std::process::Command::new("bash")
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed ({}); set LAPSEGUARD_MODEL_PATH and ORT_DYLIB_PATH by hand",
            script.display(),
            out.status
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        // printf %q quoting: only backslash escapes occur in these paths.
        let v = PathBuf::from(v.replace('\\', ""));
        match k {
            "ORT_DYLIB_PATH" => worker.ort_dylib_path = v,
            "LAPSEGUARD_MODEL_PATH" => worker.model_path = v,
            _ => {}
        }
    }
    if !have(&worker.model_path) || !have(&worker.ort_dylib_path) {
        anyhow::bail!(
            "{} did not report a model and a runtime library",
            script.display()
        );
    }
    Ok(())
}

/// The admin token: configured, or generated once and kept in the data directory.
fn admin_token(configured: &str, data: &Path) -> anyhow::Result<String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = data.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let token = format!("lga_{}", hex::encode(rand::random::<[u8; 32]>()));
    write_private(&path, &token)?;
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn up(
    infra: InfraSettings,
    mut backend_settings: BackendSettings,
    mut worker_settings: WorkerSettings,
    render_settings: RendererSettings,
    emb: EmbeddedSettings,
    args: &UpArgs,
) -> anyhow::Result<()> {
    let data = emb.data_dir.clone();
    let _lock = DataDirLock::acquire(&data)
        .with_context(|| format!("taking the data directory {}", data.display()))?;
    ensure_model(&mut worker_settings, &emb.fetch_models_script)?;
    worker_settings.validate().map_err(anyhow::Error::msg)?;
    let configured_admin = !backend_settings.admin_token.is_empty();
    backend_settings.admin_token = admin_token(&backend_settings.admin_token, &data)?;
    backend_settings.listen = emb.embedded_listen.clone();

    let pool = embedded::open(&data.join("lapseguard.db")).await?;
    let catalog = Arc::new(SqliteCatalog::new(pool.clone()));
    let queue = SqliteQueue::new(pool, Duration::from_secs(emb.queue_lease_secs.max(1)));
    let objects_root = data.join("objects");
    let objects = Arc::new(FsStore::new(&objects_root));
    for bucket in [
        &infra.input_bucket,
        &infra.output_bucket,
        &infra.timelapse_bucket,
    ] {
        objects.ensure_bucket(bucket).await?;
    }
    let recovered = queue.recover().await?;
    if recovered > 0 {
        tracing::info!(
            jobs = recovered,
            "jobs in flight when the last run stopped are queued again"
        );
    }

    let s = worker_settings.clone();
    let processor = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let detectors = worker::load_detectors_for_host(&s).context("loading the face detector")?;
        Ok(worker::processor(&s, detectors))
    })
    .await??;
    tracing::info!(
        model = processor.detectors.model_id(),
        "face detector loaded"
    );

    let state = AppState::embedded(
        infra.clone(),
        backend_settings.clone(),
        catalog.clone(),
        objects.clone(),
        Arc::new(queue.clone()),
    );
    let listener = tokio::net::TcpListener::bind(&backend_settings.listen)
        .await
        .with_context(|| format!("binding {}", backend_settings.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(lapseguard_core::shutdown::cancel_on_signal(
        shutdown.clone(),
    ));
    let server = tokio::spawn(backend::serve(listener, state.clone(), shutdown.clone()));

    let consumer = Arc::new(Consumer {
        catalog: catalog.clone(),
        objects: objects.clone(),
        processor: Arc::new(processor),
        infra: Arc::new(infra.clone()),
        max_attempts: worker_settings.worker_max_attempts,
        prefetch: worker_settings.worker_concurrency,
        shutdown_grace: Duration::from_secs(worker_settings.worker_shutdown_grace_secs),
        health: Arc::new(Health::default()),
    });
    let consuming = tokio::spawn(consumer.run_embedded(queue.clone(), shutdown.clone()));

    // Timelapse renders (POST /v1/projects/{slug}/timelapses), when ffmpeg is installed.
    let rendering = match renderer::ffmpeg_version(&render_settings.ffmpeg_path).await {
        Some(_) => {
            let r = Arc::new(Renderer {
                catalog: catalog.clone(),
                objects: objects.clone(),
                infra: Arc::new(infra.clone()),
                settings: RendererSettings {
                    render_work_dir: data.join("render"),
                    ..render_settings
                },
                ready: Arc::new(AtomicBool::new(false)),
            });
            Some(tokio::spawn(r.run(shutdown.clone())))
        }
        None => {
            tracing::warn!(
                ffmpeg = %render_settings.ffmpeg_path.display(),
                "ffmpeg not found: timelapse requests stay queued until it is installed"
            );
            None
        }
    };

    let base = format!("http://{addr}");
    println!("lapseguard is up at {base}");
    println!("  data directory:   {}", data.display());
    if configured_admin {
        println!("  admin token:      from configuration (admin_token)");
    } else {
        println!("  admin token:      {}", data.join("admin-token").display());
    }

    let mut demo_task = None;
    let mut demo_project = None;
    if args.demo {
        let project = demo_project_and_camera(&*catalog, &emb, &data).await?;
        let link =
            backend::gallery::make_viewer_link(&state, &project.0.slug, chrono::Duration::days(7))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("  gallery:          {base}{}", link.path);
        println!(
            "  anonymized files: {}",
            objects_root
                .join(&infra.output_bucket)
                .join(&project.0.slug)
                .display()
        );
        demo_task = Some(tokio::spawn(run_demo(
            emb.clone(),
            data.clone(),
            base.clone(),
            project.1.clone(),
            shutdown.clone(),
        )));
        demo_project = Some(project.0);
    }

    report_progress(
        &*catalog,
        &queue,
        demo_project.as_ref(),
        args.exit_when_done.then_some(emb.demo_frames),
        &shutdown,
    )
    .await;
    shutdown.cancel();
    if let Some(t) = demo_task {
        match t.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "demo camera stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "demo camera task failed"),
            Ok(Ok(())) => {}
        }
    }
    consuming.await??;
    if let Some(r) = rendering {
        r.await?;
    }
    server.await??;
    if let Some(p) = demo_project {
        let counts = catalog.status_counts(p.id).await?;
        println!(
            "demo project: {} images, {} anonymized, {} failed",
            counts.total(),
            counts.done,
            counts.failed
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// The demo project and its camera's token (created once, the token kept in the data
/// directory because only its hash is stored).
async fn demo_project_and_camera(
    catalog: &dyn Catalog,
    emb: &EmbeddedSettings,
    data: &Path,
) -> anyhow::Result<(Project, String)> {
    let project = match catalog.project_by_slug(&emb.demo_project).await? {
        Some(p) => p,
        None => match catalog
            .create_project(&emb.demo_project, "Demo timelapse")
            .await
        {
            Ok(p) => p,
            Err(CatalogError::Conflict(_)) => catalog
                .project_by_slug(&emb.demo_project)
                .await?
                .context("demo project vanished")?,
            Err(e) => return Err(e.into()),
        },
    };
    let token_file = data.join("demo").join("camera-token");
    if let Ok(t) = std::fs::read_to_string(&token_file)
        && catalog
            .camera_by_token(&backend::auth::hash_token(t.trim()))
            .await?
            .is_some()
    {
        return Ok((project, t.trim().to_string()));
    }
    std::fs::create_dir_all(data.join("demo"))?;
    let (token, hash) = backend::auth::new_camera_token();
    catalog
        .create_camera(project.id, "demo-camera", &hash)
        .await?;
    write_private(&token_file, &token)?;
    Ok((project, token))
}

/// Capture time of demo frame `seq`: a frame every ten minutes from a fixed morning,
/// so that a replayed frame is byte-identical.
fn demo_capture_time(seq: u64) -> DateTime<Utc> {
    let start = Utc
        .with_ymd_and_hms(2026, 6, 1, 6, 0, 0)
        .single()
        .unwrap_or_default();
    start + chrono::Duration::minutes(10 * seq as i64)
}

/// Plays a timelapse camera: writes the frames into a capture folder the way cameras do
/// and runs the camera-agent on it (durable spool, uploads over HTTP). Frames already
/// written by an earlier run are not written again; one written but not yet recorded is
/// rewritten byte for byte, and the backend takes the same bytes only once.
async fn run_demo(
    emb: EmbeddedSettings,
    data: PathBuf,
    backend_url: String,
    token: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sources = camera_agent::simulate::source_images(&emb.demo_source)?;
    let demo = data.join("demo");
    let capture = demo.join("capture");
    std::fs::create_dir_all(&capture)?;
    let watch = camera_agent::settings::WatchSettings {
        backend: backend_url,
        token,
        capture_dir: capture.clone(),
        spool_dir: demo.join("spool"),
        settle_ms: 200,
        stable_secs: 1,
        retry_initial_ms: 250,
        retry_max_secs: 5,
        ..Default::default()
    };
    watch.validate().map_err(anyhow::Error::msg)?;
    let agent = tokio::spawn(camera_agent::agent::run(watch, shutdown.clone()));
    let fed_file = demo.join("frames-written");
    let mut seq: u64 = std::fs::read_to_string(&fed_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if seq > 0 && seq < emb.demo_frames {
        tracing::info!(written = seq, of = emb.demo_frames, "demo camera resumes");
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(emb.demo_interval_ms.max(1)));
    while seq < emb.demo_frames {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let source = sources[(seq % sources.len() as u64) as usize].clone();
        let dir = capture.clone();
        let t = demo_capture_time(seq);
        tokio::task::spawn_blocking(move || {
            camera_agent::simulate::write_frame_with_nonce(&dir, "demo", &source, t, seq, seq)
        })
        .await??;
        seq += 1;
        std::fs::write(&fed_file, seq.to_string())?;
    }
    if seq >= emb.demo_frames {
        tracing::info!(frames = seq, "demo camera captured all its frames");
    }
    agent.await??;
    Ok(())
}

/// Logs progress while anything changes; with `exit_after`, returns once that many
/// demo images are finished and nothing is left in the queue.
async fn report_progress(
    catalog: &dyn Catalog,
    queue: &SqliteQueue,
    project: Option<&Project>,
    exit_after: Option<u64>,
    shutdown: &CancellationToken,
) {
    let mut last = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(p) = project else { continue };
        let (Ok(c), Ok((live, dead)), Ok(outbox)) = (
            catalog.status_counts(p.id).await,
            queue.depth().await,
            catalog.outbox_len().await,
        ) else {
            continue;
        };
        let now = (c, live, dead, outbox);
        if last != Some(now) {
            tracing::info!(
                images = c.total(),
                anonymized = c.done,
                waiting = c.queued + c.processing,
                failed = c.failed,
                queue = live,
                dead_letters = dead,
                "progress"
            );
            last = Some(now);
        }
        if let Some(n) = exit_after
            && c.done + c.failed >= n as i64
            && c.queued + c.processing == 0
            && live == 0
            && outbox == 0
        {
            tracing::info!(images = c.total(), "every demo frame is finished");
            return;
        }
    }
}
