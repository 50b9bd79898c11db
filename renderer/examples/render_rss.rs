//! Peak memory of a render against its frame count (bench/timelapse.sh runs it).
//!
//!   render_rss seed DIR N      N anonymized 1280×720 JPEG frames in an embedded store
//!   render_rss render DIR      renders them to 1280×720 @ 24 fps, prints peak RSS
//!
//! Seeding and rendering are separate processes so that the render's peak resident
//! memory (VmHWM) is its own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lapseguard_core::catalog::{Catalog, Inserted, JobResult, NewImage};
use lapseguard_core::config::InfraSettings;
use lapseguard_core::embedded::{self, SqliteCatalog};
use lapseguard_core::job::{JOB_MESSAGE_VERSION, JobMessage};
use lapseguard_core::objects::{FsStore, ObjectStore};
use lapseguard_core::timelapse::NewTimelapse;
use renderer::{Renderer, RendererSettings};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const W: u32 = 1280;
const H: u32 = 720;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn open(dir: &Path) -> anyhow::Result<(Arc<SqliteCatalog>, Arc<FsStore>, InfraSettings)> {
    std::fs::create_dir_all(dir)?;
    let pool = embedded::open(&dir.join("lapseguard.db")).await?;
    let objects = Arc::new(FsStore::new(dir.join("objects")));
    let infra = InfraSettings::default();
    for b in [
        &infra.input_bucket,
        &infra.output_bucket,
        &infra.timelapse_bucket,
    ] {
        objects.ensure_bucket(b).await?;
    }
    Ok((Arc::new(SqliteCatalog::new(pool)), objects, infra))
}

async fn seed(dir: &Path, n: u32) -> anyhow::Result<()> {
    let (catalog, objects, infra) = open(dir).await?;
    let project = catalog.create_project("site", "Site").await?;
    let camera = catalog.create_camera(project.id, "north", b"h").await?;
    let start = chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default();
    for i in 0..n {
        // A moving gradient: every frame differs, like a real timelapse.
        let img = image::RgbImage::from_fn(W, H, |x, y| {
            image::Rgb([
                ((x + i * 3) % 256) as u8,
                ((y + i) % 256) as u8,
                ((x / 4 + y / 4 + i) % 256) as u8,
            ])
        });
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(img).write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )?;
        let key = format!("site/{i:06}.jpg");
        objects
            .put(&infra.output_bucket, &key, jpeg.into(), "image/jpeg")
            .await?;
        let new = NewImage {
            id: Uuid::now_v7(),
            project_id: project.id,
            project: "site".into(),
            camera_id: camera.id,
            captured_at: start + chrono::Duration::minutes(i.into()),
            sha256: format!("{i:064x}"),
            bytes: 1,
            content_type: "image/jpeg".into(),
            width: W as i32,
            height: H as i32,
            input_key: key.clone(),
        };
        let job = JobMessage {
            version: JOB_MESSAGE_VERSION,
            job_id: Uuid::now_v7(),
            image_id: new.id,
            project: "site".into(),
            camera: camera.id,
            input_bucket: infra.input_bucket.clone(),
            input_key: key.clone(),
            sha256: new.sha256.clone(),
            content_type: "image/jpeg".into(),
        };
        if let Inserted::New(img) = catalog.insert_image(new, &job).await? {
            catalog.claim_job(img.id).await?;
            catalog
                .complete_job(
                    img.id,
                    &JobResult {
                        faces: 0,
                        boxes: serde_json::json!([]),
                        model: "bench".into(),
                        duration_ms: 1,
                        output_key: key,
                    },
                )
                .await?;
        }
    }
    catalog
        .create_timelapse(&NewTimelapse {
            id: Uuid::now_v7(),
            project_id: project.id,
            camera_id: None,
            captured_from: None,
            captured_to: None,
            fps: 24,
            width: W as i32,
            height: H as i32,
        })
        .await?;
    Ok(())
}

async fn render(dir: &Path) -> anyhow::Result<()> {
    let (catalog, objects, infra) = open(dir).await?;
    let r = Renderer {
        catalog: catalog.clone(),
        objects,
        infra: Arc::new(infra),
        settings: RendererSettings {
            render_work_dir: dir.join("work"),
            ..Default::default()
        },
        ready: Arc::new(AtomicBool::new(true)),
    };
    let t = Instant::now();
    if !r.render_next(&CancellationToken::new()).await? {
        anyhow::bail!("nothing to render in {}", dir.display());
    }
    let secs = t.elapsed().as_secs_f64();
    // The render's own record tells how many frames went in.
    let pool = embedded::open(&dir.join("lapseguard.db")).await?;
    let frames: i64 = sqlx::query_scalar("SELECT frames_rendered FROM timelapses LIMIT 1")
        .fetch_one(&pool)
        .await?;
    // ffmpeg's peak too: the largest finished child's maximum resident set.
    // SAFETY: getrusage fills the struct it is given.
    let ffmpeg_kib = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss as u64
    };
    println!(
        "frames={frames} seconds={secs:.1} fps={:.1} renderer_peak_rss_mib={:.1} ffmpeg_peak_rss_mib={:.1}",
        frames as f64 / secs,
        peak_rss_kib() as f64 / 1024.0,
        ffmpeg_kib as f64 / 1024.0
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("seed") => {
            let n = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(200);
            seed(Path::new(&args[2]), n).await
        }
        Some("render") => render(Path::new(&args[2])).await,
        _ => anyhow::bail!("usage: render_rss seed DIR N | render DIR"),
    }
}
