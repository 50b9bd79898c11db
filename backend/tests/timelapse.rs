//! Timelapse rendering on the real services (PostgreSQL, MinIO) with the real renderer
//! and ffmpeg: the video read back with ffprobe matches the request, a failed frame is
//! skipped and reported, and no original is ever read.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::{ADMIN, Opts, TestApp};
use lapseguard_core::objects::{ObjectError, ObjectStore, ObjectStream};
use renderer::{Renderer, RendererSettings};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The real object store, with every read recorded.
struct Recording {
    inner: lapseguard_core::objects::S3Store,
    reads: Mutex<Vec<String>>,
}

#[async_trait]
impl ObjectStore for Recording {
    async fn put(&self, b: &str, k: &str, body: Bytes, ct: &str) -> Result<(), ObjectError> {
        self.inner.put(b, k, body, ct).await
    }
    async fn get(&self, b: &str, k: &str) -> Result<Bytes, ObjectError> {
        self.reads.lock().unwrap().push(b.to_string());
        self.inner.get(b, k).await
    }
    async fn put_file(&self, b: &str, k: &str, p: &Path, ct: &str) -> Result<(), ObjectError> {
        self.inner.put_file(b, k, p, ct).await
    }
    async fn get_stream(&self, b: &str, k: &str) -> Result<ObjectStream, ObjectError> {
        self.reads.lock().unwrap().push(b.to_string());
        self.inner.get_stream(b, k).await
    }
    async fn delete(&self, b: &str, k: &str) -> Result<(), ObjectError> {
        self.inner.delete(b, k).await
    }
    async fn exists(&self, b: &str, k: &str) -> Result<bool, ObjectError> {
        self.inner.exists(b, k).await
    }
    async fn list(&self, b: &str, p: &str) -> Result<Vec<String>, ObjectError> {
        self.inner.list(b, p).await
    }
    async fn check_bucket(&self, b: &str) -> Result<(), ObjectError> {
        self.inner.check_bucket(b).await
    }
    async fn ensure_bucket(&self, b: &str) -> Result<(), ObjectError> {
        self.inner.ensure_bucket(b).await
    }
}

fn ffprobe(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,nb_read_frames,r_frame_rate:format=duration",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (Debian package ffmpeg; scripts/services.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_120_frames_into_the_requested_video_skipping_a_failed_one() {
    const FRAMES: u32 = 121;
    let app = TestApp::start(Opts::default()).await;
    let slug = format!("t{}", &Uuid::new_v4().simple().to_string()[..8]);
    app.create_project(&slug).await;
    let (_, token) = app.create_camera(&slug, "north").await;
    let start = chrono::DateTime::parse_from_rfc3339("2026-06-01T06:00:00Z").unwrap();
    let mut ids = Vec::new();
    for i in 0..FRAMES {
        let at = (start + chrono::Duration::minutes(i.into())).to_rfc3339();
        let r = app
            .upload(&token, common::png(i, 64, 48), "image/png", Some(&at))
            .await;
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Every frame anonymized except one in the middle, whose anonymization failed.
    let failed = 60usize;
    for (i, id) in ids.iter().enumerate() {
        if i == failed {
            let uuid = Uuid::parse_str(id).unwrap();
            app.state.catalog.claim_job(uuid).await.unwrap();
            app.state
                .catalog
                .fail_job(uuid, "corrupt original")
                .await
                .unwrap();
        } else {
            app.record_done(id, common::png(1000 + i as u32, 64, 48))
                .await;
        }
    }

    let post = |body: serde_json::Value| {
        app.http
            .post(app.url(&format!("/v1/projects/{slug}/timelapses")))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    // Bad requests are refused with a reason and leave nothing queued.
    assert_eq!(
        post(serde_json::json!({"fps": 0})).await.unwrap().status(),
        400
    );
    assert_eq!(
        post(serde_json::json!({"width": 321, "height": 240}))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(serde_json::json!({"camera": Uuid::new_v4()}))
            .await
            .unwrap()
            .status(),
        404
    );
    let strict = post(serde_json::json!({"skip_unfinished": false}))
        .await
        .unwrap();
    assert_eq!(
        strict.status(),
        409,
        "a failed frame blocks a strict request"
    );
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{slug}/timelapses")))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "cameras cannot request renders");

    let r = post(serde_json::json!({"fps": 24, "width": 320, "height": 240}))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let t: serde_json::Value = r.json().await.unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["status"], "queued");

    let objects = Arc::new(Recording {
        inner: lapseguard_core::objects::S3Store::new(&app.infra),
        reads: Mutex::new(Vec::new()),
    });
    let renderer = Renderer {
        catalog: app.state.catalog.clone(),
        objects: objects.clone(),
        infra: Arc::new(app.infra.clone()),
        settings: RendererSettings::default(),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let stop = CancellationToken::new();
    assert!(
        renderer.render_next(&stop).await.unwrap(),
        "a render was claimed"
    );
    assert!(
        !renderer.render_next(&stop).await.unwrap(),
        "nothing else queued: the refused requests left no render behind"
    );

    let status: serde_json::Value = app
        .http
        .get(app.url(&format!("/v1/timelapses/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["frames_total"], FRAMES);
    assert_eq!(status["frames_rendered"], FRAMES - 1);
    assert_eq!(
        status["frames_skipped"], 1,
        "the failed frame is skipped and reported"
    );
    assert_eq!(status["progress"], 1.0);

    let r = app
        .http
        .get(app.url(&format!("/v1/timelapses/{id}/video")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    let video = r.bytes().await.unwrap();
    assert_eq!(status["bytes"], video.len() as u64);
    let dir = std::env::temp_dir().join(format!("lg-timelapse-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("video.mp4");
    std::fs::write(&file, &video).unwrap();
    let probe = ffprobe(&file);
    let stream = &probe["streams"][0];
    assert_eq!(stream["codec_name"], "h264", "{probe}");
    assert_eq!(stream["pix_fmt"], "yuv420p");
    assert_eq!(stream["width"], 320);
    assert_eq!(stream["height"], 240);
    assert_eq!(stream["r_frame_rate"], "24/1");
    assert_eq!(stream["nb_read_frames"], (FRAMES - 1).to_string());
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (duration - 120.0 / 24.0).abs() < 0.05,
        "duration {duration} s for 120 frames at 24 fps"
    );
    // faststart: the index comes before the media data.
    let find = |tag: &[u8]| video.windows(4).position(|w| w == tag).unwrap();
    assert!(
        find(b"moov") < find(b"mdat"),
        "moov before mdat (faststart)"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // The renderer read anonymized frames only.
    let reads = objects.reads.lock().unwrap().clone();
    assert_eq!(reads.len(), (FRAMES - 1) as usize);
    assert!(
        reads.iter().all(|b| *b == app.infra.output_bucket),
        "never an original: {reads:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_whose_renderer_died_is_taken_again_after_its_lease() {
    let app = TestApp::start(Opts::default()).await;
    let slug = format!("l{}", &Uuid::new_v4().simple().to_string()[..8]);
    app.create_project(&slug).await;
    let (_, token) = app.create_camera(&slug, "north").await;
    for i in 0..3u32 {
        let r = app
            .upload(&token, common::png(i, 64, 48), "image/png", None)
            .await;
        let v: serde_json::Value = r.json().await.unwrap();
        app.record_done(v["id"].as_str().unwrap(), common::png(500 + i, 64, 48))
            .await;
    }
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{slug}/timelapses")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "an empty body takes the defaults");
    let t: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (t["width"].as_i64(), t["height"].as_i64()),
        (Some(64), Some(48))
    );
    // A renderer claims it and dies (no progress, no finish).
    let claimed = app
        .state
        .catalog
        .claim_timelapse(Duration::from_millis(300))
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(claimed.attempts, 1);
    assert!(
        app.state
            .catalog
            .claim_timelapse(Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "leased: nobody else takes it"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let renderer = Renderer {
        catalog: app.state.catalog.clone(),
        objects: Arc::new(lapseguard_core::objects::S3Store::new(&app.infra)),
        infra: Arc::new(app.infra.clone()),
        settings: RendererSettings::default(),
        ready: Arc::new(AtomicBool::new(true)),
    };
    assert!(
        renderer
            .render_next(&CancellationToken::new())
            .await
            .unwrap()
    );
    let done = app
        .state
        .catalog
        .timelapse(claimed.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status.as_str(), "done");
    assert_eq!(done.attempts, 2);
    assert_eq!(done.frames_rendered, 3);
    app.stop().await;
}
