//! Gallery on a 10,000-image project: time to render the first page, a page deep in the
//! project, and the JSON listing of the same page size (the API's own keyset listing,
//! the baseline the HTML page is built on); then a thumbnail made from a 1080p
//! anonymized image the first time versus served from its cache.
//!
//! Runs over the embedded adapters (SQLite, local folder), no servers needed:
//!   cargo run --release -p backend --example gallery_bench [-- IMAGES]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use backend::AppState;
use backend::settings::BackendSettings;
use chrono::{DateTime, Utc};
use lapseguard_core::catalog::{Catalog, Inserted, JobResult, NewImage};
use lapseguard_core::config::InfraSettings;
use lapseguard_core::embedded::{self, SqliteCatalog, SqliteQueue};
use lapseguard_core::job::{JOB_MESSAGE_VERSION, JobMessage};
use lapseguard_core::objects::{FsStore, ObjectStore};
use tower::ServiceExt;
use uuid::Uuid;

const TOKEN: &str = "bench-admin-token";

async fn get(app: &axum::Router, uri: &str) -> (u16, usize, Duration) {
    let t = Instant::now();
    let resp = app
        .clone()
        .oneshot(
            Request::get(uri)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, body.len(), t.elapsed())
}

async fn median(app: &axum::Router, uri: &str, runs: usize) -> Duration {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (status, _, t) = get(app, uri).await;
        assert_eq!(status, 200, "{uri}");
        times.push(t);
    }
    times.sort();
    times[runs / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("lg-gallery-bench-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let pool = embedded::open(&dir.join("lapseguard.db")).await?;
    let catalog = Arc::new(SqliteCatalog::new(pool.clone()));
    let objects = Arc::new(FsStore::new(dir.join("objects")));
    let infra = InfraSettings::default();
    for b in [&infra.input_bucket, &infra.output_bucket] {
        objects.ensure_bucket(b).await?;
    }
    let project = catalog.create_project("bench", "Bench site").await?;
    let camera = catalog.create_camera(project.id, "north", b"h").await?;

    eprintln!("seeding {n} images…");
    let t = Instant::now();
    let start = DateTime::<Utc>::from_timestamp(1_780_000_000, 0).unwrap_or_default();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let img = NewImage {
            id: Uuid::now_v7(),
            project_id: project.id,
            project: project.slug.clone(),
            camera_id: camera.id,
            captured_at: start + chrono::Duration::minutes(i as i64),
            sha256: format!("{i:064x}"),
            bytes: 1,
            content_type: "image/jpeg".into(),
            width: 1920,
            height: 1080,
            input_key: format!("bench/{i}.jpg"),
        };
        let job = JobMessage {
            version: JOB_MESSAGE_VERSION,
            job_id: Uuid::now_v7(),
            image_id: img.id,
            project: img.project.clone(),
            camera: camera.id,
            input_bucket: infra.input_bucket.clone(),
            input_key: img.input_key.clone(),
            sha256: img.sha256.clone(),
            content_type: img.content_type.clone(),
        };
        if let Inserted::New(img) = catalog.insert_image(img, &job).await? {
            // 9 of 10 anonymized, the rest still queued: the page shows both kinds.
            if i % 10 != 9 {
                catalog.claim_job(img.id).await?;
                catalog
                    .complete_job(
                        img.id,
                        &JobResult {
                            faces: (i % 4) as i32,
                            boxes: serde_json::json!([]),
                            model: "bench".into(),
                            duration_ms: 1,
                            output_key: format!("bench/{i}.jpg"),
                        },
                    )
                    .await?;
            }
            ids.push(img.id);
        }
    }
    eprintln!("seeded in {:.1} s", t.elapsed().as_secs_f64());

    // One real 1080p anonymized image behind the first frame, for the thumbnail.
    let frame = image::RgbImage::from_fn(1920, 1080, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(frame).write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )?;
    objects
        .put(
            &infra.output_bucket,
            "bench/0.jpg",
            jpeg.into(),
            "image/jpeg",
        )
        .await?;

    let settings = BackendSettings {
        admin_token: TOKEN.into(),
        ..Default::default()
    };
    let page = settings.gallery_page_size;
    let state = AppState::embedded(
        infra,
        settings,
        catalog.clone(),
        objects,
        Arc::new(SqliteQueue::new(pool, Duration::from_secs(60))),
    );
    let app = backend::router(state);

    // A cursor near the end: the page that starts at image n - 100.
    let deep = ids.len().saturating_sub(100);
    let img = catalog.image(ids[deep]).await?.expect("seeded image");
    let cursor = lapseguard_core::catalog::Cursor {
        captured_at: img.captured_at,
        id: img.id,
    }
    .encode();
    let runs = 21;
    let (_, html_bytes, _) = get(&app, "/projects/bench").await;
    let first = median(&app, "/projects/bench", runs).await;
    let deep_t = median(&app, &format!("/projects/bench?after={cursor}"), runs).await;
    let json = median(
        &app,
        &format!("/v1/projects/bench/images?limit={page}"),
        runs,
    )
    .await;
    let thumb_uri = format!("/projects/bench/thumbs/{}.jpg", ids[0]);
    let (s1, thumb_bytes, made) = get(&app, &thumb_uri).await;
    assert_eq!(s1, 200);
    let cached = median(&app, &thumb_uri, runs).await;

    println!(
        "gallery over {n} images, {page} per page, median of {runs} (embedded: SQLite + local folder)"
    );
    println!("| request | time |");
    println!("|---|---|");
    println!(
        "| HTML gallery, first page ({html_bytes} bytes) | {:.2} ms |",
        first.as_secs_f64() * 1e3
    );
    println!(
        "| HTML gallery, page at image {deep} | {:.2} ms |",
        deep_t.as_secs_f64() * 1e3
    );
    println!(
        "| JSON listing of {page} (baseline) | {:.2} ms |",
        json.as_secs_f64() * 1e3
    );
    println!(
        "| thumbnail of a 1080p image, first request (made, {thumb_bytes} bytes) | {:.2} ms |",
        made.as_secs_f64() * 1e3
    );
    println!(
        "| same thumbnail, cached | {:.2} ms |",
        cached.as_secs_f64() * 1e3
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
