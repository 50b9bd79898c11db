//! Ingest benchmark (not a test): upload throughput and latency of `POST /v1/images`
//! compared with raw S3 PUTs of the same bytes to the same S3 server, in the same run.
//!
//! Run it through `bench/ingest.sh`, which starts the services and a release backend.
//! By hand: services up, `set -a; . target/services.env; set +a`, a backend serving on
//! `--backend`, then `cargo run --release -p backend --example ingest_bench -- --help`.
//!
//! What it does:
//! 1. encodes one noisy 1920x1080 JPEG (quality 90) just below `--size-mb` and pads it
//!    to exactly that size with COM segments; every request gets its own copy with a
//!    distinct id inside the first COM segment (valid JPEGs, identical sizes, distinct
//!    SHA-256, so the backend's idempotency never short-cuts an upload);
//! 2. creates a project and a camera through the admin API;
//! 3. warms up both paths, then runs `--rounds` rounds of raw PUTs and backend uploads
//!    (order alternating, raw first: raw, backend, backend, raw, ...) at `--concurrency`,
//!    the same images on both paths;
//! 4. with `--duplicates`, sends the measured images to the backend once more (200 from
//!    the SHA-256 lookup: the backend's cost without the S3 PUT and the insert);
//! 5. prints requests, seconds, req/s, MB/s and latency percentiles per path, the
//!    backend/raw ratios and PASS/FAIL against the targets, plus how busy the machine
//!    was and the CPU milliseconds per request of every process (Linux `/proc`, other
//!    users' processes included) to show where the time goes.
//!
//! Raw PUTs go through `lapseguard_core::objects::S3Store`, the very client (and
//! settings: path-style, endpoint, timeouts, retries) the backend uses. MB = 10^6 bytes.
//!
//! Exit status: 0 when every request succeeded (whatever the verdict), 1 when some
//! failed or the setup did, 3 with `--strict` when a target was missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use lapseguard_core::config::InfraSettings;
use lapseguard_core::objects::{ObjectStore, S3Store};

#[derive(Parser, Debug)]
#[command(
    name = "ingest_bench",
    about = "Backend upload throughput/latency vs raw S3 PUTs of the same bytes"
)]
struct Args {
    /// Base URL of a running backend.
    #[arg(
        long,
        env = "LAPSEGUARD_BENCH_BACKEND",
        default_value = "http://127.0.0.1:8080"
    )]
    backend: String,
    /// Measured requests per path (raw and backend each), split over the rounds.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Size of every image in MB (10^6 bytes).
    #[arg(long, default_value_t = 2.0)]
    size_mb: f64,
    /// Unmeasured requests per path before the first round.
    #[arg(long, default_value_t = 32)]
    warmup: usize,
    /// Rounds; each runs both paths on `requests / rounds` images, order alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Bucket for the raw PUTs (created when missing; its objects are deleted afterwards).
    #[arg(long, default_value = "lapseguard-bench-raw")]
    raw_bucket: String,
    /// Admin bearer token of the backend.
    #[arg(
        long,
        env = "LAPSEGUARD_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    admin_token: String,
    /// Target: backend req/s at least this fraction of raw req/s.
    #[arg(long, default_value_t = 0.7)]
    min_rate_ratio: f64,
    /// Target: backend p99 at most this multiple of raw p99.
    #[arg(long, default_value_t = 2.0)]
    max_p99_ratio: f64,
    /// Pause between phases, so that one phase's tail (outbox relay, MinIO flushes)
    /// does not run into the next.
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
    /// Keep the uploaded objects (raw bucket and the backend's input bucket).
    #[arg(long)]
    keep: bool,
    /// After the rounds, also send every measured image to the backend a second time
    /// (answered 200 from the SHA-256 lookup: no S3 PUT, no insert) and report it as a
    /// third path, to split the backend's overhead.
    #[arg(long)]
    duplicates: bool,
    /// Exit with status 3 when a target is missed.
    #[arg(long)]
    strict: bool,
    /// Only create the backend's input and output buckets and the raw bucket, then exit
    /// (the backend is not ready before its buckets exist).
    #[arg(long)]
    create_buckets: bool,
}

const MB: f64 = 1_000_000.0;
const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
/// Marker at the start of the first COM segment; the 16 hex digits after it are the id.
const TAG: &[u8] = b"lapseguard-bench id=";
const ID_LEN: usize = 16;

// ---------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------

/// Small deterministic PRNG (xorshift64*), enough for image noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A camera-like frame: smooth gradients and shapes plus sensor noise of `noise` levels.
fn encode_frame(w: u32, h: u32, noise: u32) -> anyhow::Result<Vec<u8>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let sky = fy < 0.4;
            let base = if sky {
                [110.0 + 60.0 * fy, 150.0 + 40.0 * fy, 210.0 - 30.0 * fy]
            } else {
                [
                    90.0 + 50.0 * fx,
                    80.0 + 40.0 * (fx * 9.0).sin(),
                    60.0 + 30.0 * (fy * 23.0).cos(),
                ]
            };
            // Building-like blocks, so there are edges as in a real scene.
            let block = ((x / 97 + y / 61) % 5) as f32 * 12.0;
            for b in base {
                let n = if noise == 0 {
                    0.0
                } else {
                    (rng.next() % (2 * noise as u64 + 1)) as f32 - noise as f32
                };
                px.push((b + block + n).clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(&px, w, h, image::ExtendedColorType::Rgb8)
        .context("encoding the JPEG")?;
    Ok(out)
}

/// Encodes a frame of at most `max` bytes, as close to it as the noise level allows.
fn frame_below(max: usize) -> anyhow::Result<Vec<u8>> {
    let (mut w, mut h) = (WIDTH, HEIGHT);
    loop {
        let quiet = encode_frame(w, h, 0)?;
        if quiet.len() <= max {
            break;
        }
        if w < 64 {
            bail!("cannot make a JPEG as small as {max} bytes");
        }
        (w, h) = (w / 2, h / 2);
    }
    // Largest noise level whose encoding still fits.
    let (mut lo, mut hi) = (0u32, 128u32);
    let mut best = encode_frame(w, h, 0)?;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let f = encode_frame(w, h, mid)?;
        if f.len() <= max {
            lo = mid;
            best = f;
        } else {
            hi = mid - 1;
        }
    }
    Ok(best)
}

/// Inserts COM segments after SOI (and APP0 when present) so that the file is exactly
/// `size` bytes. Returns the file and the offset of the id digits.
fn pad_jpeg(jpeg: &[u8], size: usize) -> anyhow::Result<(Vec<u8>, usize)> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        bail!("not a JPEG");
    }
    let mut at = 2;
    if jpeg.get(2..4) == Some(&[0xFF, 0xE0]) {
        let len = u16::from_be_bytes([jpeg[4], jpeg[5]]) as usize;
        at = 4 + len;
    }
    let min_first = 4 + TAG.len() + ID_LEN;
    let mut pad = size
        .checked_sub(jpeg.len())
        .filter(|p| *p >= min_first)
        .with_context(|| format!("{} bytes leave no room for padding to {size}", jpeg.len()))?;
    const MAX_SEG: usize = 4 + 65533;
    let mut segments = Vec::with_capacity(pad);
    let mut filler = Rng(42);
    let mut first = true;
    while pad > 0 {
        let mut seg = pad.min(MAX_SEG);
        if (1..4).contains(&(pad - seg)) {
            // The rest would be too short for a segment of its own.
            seg -= 8;
        }
        let payload = seg - 2;
        segments.extend_from_slice(&[0xFF, 0xFE]);
        segments.extend_from_slice(&(payload as u16).to_be_bytes());
        let mut body = Vec::with_capacity(payload - 2);
        if first {
            body.extend_from_slice(TAG);
            body.extend_from_slice(&[b'0'; ID_LEN]);
            first = false;
        }
        while body.len() < payload - 2 {
            body.push(b' ' + (filler.next() % 94) as u8);
        }
        segments.extend_from_slice(&body);
        pad -= seg;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&jpeg[..at]);
    let id_offset = at + 4 + TAG.len();
    out.extend_from_slice(&segments);
    out.extend_from_slice(&jpeg[at..]);
    debug_assert_eq!(out.len(), size);
    Ok((out, id_offset))
}

/// `count` distinct valid JPEGs of exactly `size` bytes.
fn make_images(count: usize, size: usize) -> anyhow::Result<Vec<Bytes>> {
    let frame = frame_below(size - size / 50 - 64)?;
    let (template, id_at) = pad_jpeg(&frame, size)?;
    let decoded = image::load_from_memory(&template).context("padded JPEG does not decode")?;
    eprintln!(
        "image: {}x{} JPEG q90, {} bytes of entropy-coded image + {} bytes of COM padding",
        decoded.width(),
        decoded.height(),
        frame.len(),
        size - frame.len()
    );
    let run: u32 = rand::random();
    Ok((0..count)
        .map(|i| {
            let mut b = template.clone();
            let id = format!("{run:08x}{:08x}", i as u32);
            b[id_at..id_at + ID_LEN].copy_from_slice(id.as_bytes());
            Bytes::from(b)
        })
        .collect())
}

// ---------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Raw,
    Backend,
    /// The backend path again with bytes it already has (200, no PUT, no insert):
    /// what auth, body collection, validation, SHA-256 and the lookup cost alone.
    Duplicate,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Raw => "raw S3 PUT",
            Path::Backend => "backend POST /v1/images",
            Path::Duplicate => "backend duplicate (200)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Path::Raw => "raw",
            Path::Backend => "backend",
            Path::Duplicate => "duplicate",
        }
    }
}

struct Target {
    http: reqwest::Client,
    backend: String,
    camera_token: String,
    s3: S3Store,
    raw_bucket: String,
    raw_prefix: String,
    images: Vec<Bytes>,
}

impl Target {
    async fn send(&self, path: Path, i: usize) -> Result<(), String> {
        let body = self.images[i].clone();
        match path {
            Path::Raw => self
                .s3
                .put(
                    &self.raw_bucket,
                    &format!("{}/{i:06}.jpg", self.raw_prefix),
                    body,
                    "image/jpeg",
                )
                .await
                .map_err(|e| e.to_string()),
            Path::Backend | Path::Duplicate => {
                let r = self
                    .http
                    .post(format!("{}/v1/images", self.backend))
                    .bearer_auth(&self.camera_token)
                    .header("content-type", "image/jpeg")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("request failed: {e}"))?;
                let status = r.status();
                let text = r
                    .text()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?;
                match (status.as_u16(), path) {
                    (201, Path::Backend) | (200, Path::Duplicate) => Ok(()),
                    // 2xx, but it means the bytes were not new: the run is not measuring
                    // what it should.
                    (200, _) => Err("200 duplicate (bytes not distinct)".into()),
                    (s, _) => Err(format!(
                        "{s}: {}",
                        text.chars().take(200).collect::<String>()
                    )),
                }
            }
        }
    }
}

#[derive(Default)]
struct Phase {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: Vec<String>,
    /// CPU seconds per process name during the phase.
    cpu: HashMap<String, f64>,
    /// CPU seconds the whole machine was busy (every process, other users' included).
    machine_busy: f64,
}

impl Phase {
    fn merge(&mut self, other: Phase) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.errors.extend(other.errors);
        for (k, v) in other.cpu {
            *self.cpu.entry(k).or_default() += v;
        }
        self.machine_busy += other.machine_busy;
    }

    fn ok(&self) -> usize {
        self.requests - self.errors.len()
    }

    /// Successful requests per second.
    fn rate(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile in milliseconds.
    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies.clone();
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1].as_secs_f64() * 1000.0
    }
}

/// Sends images `range` on `path` with `concurrency` workers (each its own task, so the
/// client's CPU work spreads over the runtime's threads like the backend's does).
async fn run_phase(
    target: &Arc<Target>,
    path: Path,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(range.start));
    let cpu_before = CpuSnapshot::take();
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (target, next, end) = (target.clone(), next.clone(), range.end);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        break;
                    }
                    let t = Instant::now();
                    match target.send(path, i).await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(e) => errs.push(format!("#{i}: {e}")),
                    }
                }
                (lat, errs)
            })
        })
        .collect();
    let mut phase = Phase {
        requests: range.len(),
        ..Phase::default()
    };
    for w in workers {
        let (lat, errs) = w.await.expect("worker panicked");
        phase.latencies.extend(lat);
        phase.errors.extend(errs);
    }
    phase.elapsed = start.elapsed();
    let cpu_after = CpuSnapshot::take();
    (phase.cpu, phase.machine_busy) = cpu_after.since(&cpu_before);
    phase
}

// ---------------------------------------------------------------------------------
// Machine load (Linux /proc; empty elsewhere)
// ---------------------------------------------------------------------------------

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on every Linux port
/// that matters).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system) used so far by every process, and by the whole machine.
struct CpuSnapshot {
    /// pid → (name, CPU seconds).
    procs: HashMap<u32, (String, f64)>,
    /// Busy CPU seconds of the machine (`/proc/stat`).
    machine: f64,
}

impl CpuSnapshot {
    fn take() -> Self {
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(p) = std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|s| parse_proc_stat(&s))
                {
                    procs.insert(pid, p);
                }
            }
        }
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.strip_prefix("cpu ")?.to_string();
                let v: Vec<f64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                let busy = v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?;
                Some(busy / TICKS)
            })
            .unwrap_or(0.0);
        Self { procs, machine }
    }

    /// CPU seconds per process name since `before`, and busy seconds of the machine.
    /// Per pid, so that processes started in between count from zero and renamed
    /// kernel workers do not count twice.
    fn since(&self, before: &CpuSnapshot) -> (HashMap<String, f64>, f64) {
        let mut by_name: HashMap<String, f64> = HashMap::new();
        for (pid, (name, after)) in &self.procs {
            let prev = before.procs.get(pid).map_or(0.0, |(_, t)| *t);
            if *after > prev {
                *by_name.entry(group_name(name)).or_default() += after - prev;
            }
        }
        (by_name, (self.machine - before.machine).max(0.0))
    }
}

/// `(name, CPU seconds)` from the text of `/proc/PID/stat`.
fn parse_proc_stat(stat: &str) -> Option<(String, f64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the name: state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt
    // cmajflt utime(11) stime(12).
    let t = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((stat[open + 1..close].to_string(), t / TICKS))
}

/// Kernel threads (`kworker/1:2-events`, `ksoftirqd/0`) grouped by their kind.
fn group_name(name: &str) -> String {
    match name.split_once('/') {
        Some((kind, _)) => format!("[{kind}]"),
        None => name.to_string(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

// ---------------------------------------------------------------------------------
// Setup and report
// ---------------------------------------------------------------------------------

async fn admin_post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = r.status();
    let text = r.text().await?;
    if status.as_u16() != 201 {
        bail!("POST {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

async fn delete_prefix(s3: &S3Store, bucket: &str, prefix: &str) -> anyhow::Result<usize> {
    use futures::StreamExt;
    let keys = s3.list(bucket, prefix).await?;
    let n = keys.len();
    let results: Vec<_> = futures::stream::iter(keys)
        .map(|k| async move { s3.delete(bucket, &k).await })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(n)
}

fn print_phase(p: &Phase, path: Path, size: usize) {
    let secs = p.elapsed.as_secs_f64();
    println!(
        "{:<24} {:>8} {:>6} {:>8.2} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        path.label(),
        p.requests,
        p.errors.len(),
        secs,
        p.rate(),
        p.ok() as f64 * size as f64 / MB / secs,
        p.pct(50.0),
        p.pct(99.0),
        p.pct(100.0),
    );
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ingest_bench: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run() -> anyhow::Result<i32> {
    lapseguard_core::install_crypto_provider();
    let args = Args::parse();
    if args.requests == 0 || args.rounds == 0 || args.concurrency == 0 {
        bail!("--requests, --rounds and --concurrency must be positive");
    }
    let infra: InfraSettings =
        lapseguard_core::config::load(None).context("loading LAPSEGUARD_* settings")?;
    if infra.s3_endpoint.is_empty() {
        bail!("LAPSEGUARD_S3_ENDPOINT is not set (source target/services.env)");
    }
    let s3 = S3Store::new(&infra);
    if args.create_buckets {
        for b in [&infra.input_bucket, &infra.output_bucket, &args.raw_bucket] {
            s3.ensure_bucket(b)
                .await
                .with_context(|| format!("creating bucket {b}"))?;
        }
        eprintln!(
            "buckets ready: {}, {}, {}",
            infra.input_bucket, infra.output_bucket, args.raw_bucket
        );
        return Ok(0);
    }
    if args.admin_token.is_empty() {
        bail!("LAPSEGUARD_ADMIN_TOKEN (or --admin-token) is not set");
    }
    let backend = args.backend.trim_end_matches('/').to_string();
    let size = (args.size_mb * MB).round() as usize;
    if size < 4096 {
        bail!("--size-mb is too small");
    }
    let total = args.warmup + args.requests;

    let t = Instant::now();
    let images = tokio::task::spawn_blocking(move || make_images(total, size)).await??;
    eprintln!(
        "generated {total} distinct images of {size} bytes in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    s3.ensure_bucket(&args.raw_bucket)
        .await
        .with_context(|| format!("creating bucket {}", args.raw_bucket))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    let ready = http
        .get(format!("{backend}/readyz"))
        .send()
        .await
        .with_context(|| format!("backend at {backend} not reachable"))?;
    if !ready.status().is_success() {
        bail!(
            "backend not ready: {} {}",
            ready.status(),
            ready.text().await?
        );
    }
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let slug = format!("bench-{stamp}-{:04x}", rand::random::<u16>());
    admin_post(
        &http,
        format!("{backend}/v1/projects"),
        &args.admin_token,
        serde_json::json!({"slug": slug, "name": format!("ingest benchmark {stamp}")}),
    )
    .await?;
    let camera = admin_post(
        &http,
        format!("{backend}/v1/projects/{slug}/cameras"),
        &args.admin_token,
        serde_json::json!({"name": "bench"}),
    )
    .await?;
    let camera_token = camera["token"]
        .as_str()
        .context("camera answer has no token")?
        .to_string();

    let target = Arc::new(Target {
        http,
        backend: backend.clone(),
        camera_token,
        s3: s3.clone(),
        raw_bucket: args.raw_bucket.clone(),
        raw_prefix: slug.clone(),
        images,
    });
    let pause = Duration::from_millis(args.pause_ms);

    println!(
        "ingest benchmark: {} requests/path x {:.2} MB, concurrency {}, {} round(s) \
         (order raw,backend then alternating), warm-up {} each; backend {backend}, \
         S3 {}",
        args.requests,
        size as f64 / MB,
        args.concurrency,
        args.rounds,
        args.warmup,
        infra.s3_endpoint
    );
    println!("load average before: {}", loadavg());

    // Warm-up: connections, pools, caches. Same images on both paths.
    let mut warm_errors = Vec::new();
    if args.warmup > 0 {
        for path in [Path::Raw, Path::Backend] {
            let p = run_phase(&target, path, 0..args.warmup, args.concurrency).await;
            warm_errors.extend(
                p.errors
                    .into_iter()
                    .map(|e| format!("warm-up {} {e}", path.short())),
            );
            tokio::time::sleep(pause).await;
        }
    }

    let mut raw = Phase::default();
    let mut back = Phase::default();
    let mut order = Vec::new();
    for round in 0..args.rounds {
        let lo = args.warmup + args.requests * round / args.rounds;
        let hi = args.warmup + args.requests * (round + 1) / args.rounds;
        let paths = if round % 2 == 0 {
            [Path::Raw, Path::Backend]
        } else {
            [Path::Backend, Path::Raw]
        };
        for path in paths {
            let p = run_phase(&target, path, lo..hi, args.concurrency).await;
            order.push(format!(
                "{}#{} {:.1} req/s ({:.2} CPUs busy)",
                path.short(),
                round + 1,
                p.rate(),
                p.machine_busy / p.elapsed.as_secs_f64()
            ));
            match path {
                Path::Raw => raw.merge(p),
                _ => back.merge(p),
            }
            tokio::time::sleep(pause).await;
        }
    }
    let dup = if args.duplicates {
        let p = run_phase(
            &target,
            Path::Duplicate,
            args.warmup..total,
            args.concurrency,
        )
        .await;
        order.push(format!(
            "duplicate {:.1} req/s ({:.2} CPUs busy)",
            p.rate(),
            p.machine_busy / p.elapsed.as_secs_f64()
        ));
        Some(p)
    } else {
        None
    };
    let load_after = loadavg();
    let mut phases = vec![(Path::Raw, &raw), (Path::Backend, &back)];
    if let Some(d) = &dup {
        phases.push((Path::Duplicate, d));
    }

    println!();
    println!(
        "{:<24} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "path", "requests", "errors", "seconds", "req/s", "MB/s", "p50 ms", "p99 ms", "max ms"
    );
    for (path, p) in &phases {
        print_phase(p, *path, size);
    }
    println!("phases in order: {}", order.join(", "));
    println!("load average after: {load_after}");

    // Machine load and where the CPU went, per process name, in CPU ms per request.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!("machine ({cpus} CPUs) busy while each path ran, all processes:");
    for (path, p) in &phases {
        let secs = p.elapsed.as_secs_f64();
        println!(
            "  {:<24} {:>5.2} CPUs ({:>3.0}%); processes alive at the end {:.2} CPUs",
            path.label(),
            p.machine_busy / secs,
            p.machine_busy / secs / cpus as f64 * 100.0,
            p.cpu.values().sum::<f64>() / secs
        );
    }
    let per_req =
        |p: &Phase, n: &str| p.cpu.get(n).copied().unwrap_or(0.0) * 1000.0 / p.requests as f64;
    let mut names: Vec<&String> = phases.iter().flat_map(|(_, p)| p.cpu.keys()).collect();
    names.sort();
    names.dedup();
    names.retain(|n| phases.iter().any(|(_, p)| per_req(p, n) >= 0.5));
    names.sort_by(|a, b| per_req(&back, b).total_cmp(&per_req(&back, a)));
    println!();
    print!("CPU ms per request by process (>= 0.5 ms) {:<5}", "");
    for (path, _) in &phases {
        print!(" {:>10}", path.short());
    }
    println!();
    for n in names {
        print!("  {n:<45}");
        for (_, p) in &phases {
            print!(" {:>10.1}", per_req(p, n));
        }
        println!();
    }

    let rate_ratio = back.rate() / raw.rate();
    let p99_ratio = back.pct(99.0) / raw.pct(99.0);
    let rate_ok = rate_ratio >= args.min_rate_ratio;
    let p99_ok = p99_ratio <= args.max_p99_ratio;
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!();
    println!(
        "rate ratio backend/raw: {rate_ratio:.2}x (target >= {:.2}x) {}",
        args.min_rate_ratio,
        verdict(rate_ok)
    );
    println!(
        "p99 ratio  backend/raw: {p99_ratio:.2}x (target <= {:.2}x) {}",
        args.max_p99_ratio,
        verdict(p99_ok)
    );

    let errors: Vec<String> = warm_errors
        .into_iter()
        .chain(raw.errors.iter().map(|e| format!("raw {e}")))
        .chain(back.errors.iter().map(|e| format!("backend {e}")))
        .chain(
            dup.iter()
                .flat_map(|d| d.errors.iter().map(|e| format!("duplicate {e}"))),
        )
        .collect();
    if !errors.is_empty() {
        println!(
            "{} request(s) failed (non-2xx or transport error):",
            errors.len()
        );
        for e in errors.iter().take(10) {
            println!("  {e}");
        }
    }
    let passed = rate_ok && p99_ok && errors.is_empty();
    println!("RESULT: {}", verdict(passed));

    if !args.keep {
        let r = delete_prefix(&s3, &args.raw_bucket, &format!("{slug}/")).await;
        let b = delete_prefix(&s3, &infra.input_bucket, &format!("{slug}/")).await;
        match (r, b) {
            (Ok(r), Ok(b)) => eprintln!(
                "cleanup: deleted {r} raw objects and {b} backend originals (prefix {slug}/)"
            ),
            (r, b) => eprintln!("cleanup incomplete: raw {r:?}, backend {b:?}"),
        }
    }

    Ok(if !errors.is_empty() {
        1
    } else if args.strict && !passed {
        3
    } else {
        0
    })
}
