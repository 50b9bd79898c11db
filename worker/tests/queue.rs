//! The worker against the real RabbitMQ, MinIO and PostgreSQL, with images uploaded
//! through the real backend. The worker runs as its own process (`worker run`), so it
//! can be killed like in production.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::services::{Opts, TestApp};
use common::{jpeg_bytes, model_settings, scene, testdata_rgb, variance};
use lapin::options::BasicGetOptions;
use lapseguard_core::objects::ObjectStore;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct WorkerProc {
    child: Child,
    port: u16,
}

impl WorkerProc {
    fn start(app: &TestApp) -> WorkerProc {
        let s = model_settings();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_worker"))
            .arg("run")
            .env("LAPSEGUARD_DATABASE_URL", &app.infra.database_url)
            .env("LAPSEGUARD_AMQP_URL", &app.infra.amqp_url)
            .env("LAPSEGUARD_AMQP_PREFIX", &app.infra.amqp_prefix)
            .env("LAPSEGUARD_INPUT_BUCKET", &app.infra.input_bucket)
            .env("LAPSEGUARD_OUTPUT_BUCKET", &app.infra.output_bucket)
            .env("LAPSEGUARD_MODEL_PATH", &s.model_path)
            .env("ORT_DYLIB_PATH", &s.ort_dylib_path)
            .env("LAPSEGUARD_WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("LAPSEGUARD_WORKER_THREADS", "2")
            .env("LAPSEGUARD_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        WorkerProc { child, port }
    }

    /// Reads the worker's JSON log until a line contains all `needles`.
    fn wait_for_log(&mut self, needles: &[&str], timeout: Duration) -> String {
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut reader = BufReader::new(stdout);
        let start = Instant::now();
        let mut line = String::new();
        while start.elapsed() < timeout {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if needles.iter().all(|n| line.contains(n)) {
                return line;
            }
        }
        panic!("worker never logged {needles:?}");
    }

    fn kill9(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    fn sigterm_and_wait(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "worker ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn image_json(app: &TestApp, id: &str) -> serde_json::Value {
    app.http
        .get(app.url(&format!("/v1/images/{id}")))
        .bearer_auth(common::services::ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_status(app: &TestApp, id: &str, want: &str, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = image_json(app, id).await;
        if v["status"] == want {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "image {id} stayed {} (wanted {want}): {v}",
            v["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn upload(app: &TestApp, token: &str, bytes: Vec<u8>) -> String {
    let r = app.upload(token, bytes, "image/jpeg", None).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn dead_letters(app: &TestApp) -> usize {
    let conn = lapseguard_core::queue::connect(&app.infra.amqp_url, "test-dlq")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut n = 0;
    while ch
        .basic_get(
            app.infra.topology().dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .is_some()
    {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_from_queued_to_done_with_the_right_face_count() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("w").await;
    let (_, token) = app.create_camera("w", "c").await;
    let portrait = upload(
        &app,
        &token,
        jpeg_bytes(&testdata_rgb("grace-hopper.jpg"), 92),
    )
    .await;
    let heights = [70, 110, 160];
    let (crowd_img, truth) = scene(1920, 1080, &heights);
    let crowd = upload(&app, &token, jpeg_bytes(&crowd_img, 92)).await;
    assert_eq!(image_json(&app, &crowd).await["status"], "queued");

    let worker = WorkerProc::start(&app);
    let done = wait_status(&app, &portrait, "done", Duration::from_secs(120)).await;
    assert_eq!(done["faces"], 1);
    assert!(done["error"].is_null());
    let done = wait_status(&app, &crowd, "done", Duration::from_secs(120)).await;
    assert_eq!(done["faces"], heights.len());

    // The anonymized image: same size, no metadata, faces destroyed.
    let r = app
        .http
        .get(app.url(&format!("/v1/images/{crowd}/anonymized")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = image::load_from_memory(&r.bytes().await.unwrap())
        .unwrap()
        .into_rgb8();
    assert_eq!(out.dimensions(), (1920, 1080));
    for t in &truth {
        assert!(
            variance(&out, t) < variance(&crowd_img, t) * 0.1,
            "{t:?} not blurred"
        );
    }
    // Readiness and metrics of the worker mean something.
    let base = format!("http://127.0.0.1:{}", worker.port);
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lapseguard_worker_jobs_total"),
        "{metrics}"
    );
    assert!(metrics.contains("stage=\"detect\""), "{metrics}");
    // SIGTERM: stops consuming and exits 0.
    assert!(worker.sigterm_and_wait().success());
    app.stop().await;
}

/// JPEG whose header is valid (the backend accepts it) but whose data is garbage.
fn corrupt_jpeg() -> Vec<u8> {
    let mut v = vec![
        0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0x00, 0x01, 0x00, 0x03,
    ];
    v.extend_from_slice(&[0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01]);
    v.extend(std::iter::repeat_n(0x5A, 4000));
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_image_fails_after_one_attempt_and_is_dead_lettered() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("bad").await;
    let (_, token) = app.create_camera("bad", "c").await;
    let id = upload(&app, &token, corrupt_jpeg()).await;
    let _worker = WorkerProc::start(&app);
    let v = wait_status(&app, &id, "failed", Duration::from_secs(60)).await;
    assert_eq!(v["attempts"], 1, "a permanent error is never retried: {v}");
    assert!(v["error"].as_str().unwrap().contains("decode"), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dead_letters(&app).await, 1);
    assert!(app.drain_queue().await.is_empty());
    assert!(
        app.objects
            .list(&app.infra.output_bucket, "")
            .await
            .unwrap()
            .is_empty(),
        "fail-closed: no output for an image that was not analysed"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_download_before_ack_redelivers_and_completes_once() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("kill").await;
    let (_, token) = app.create_camera("kill", "c").await;
    // A 4K frame: detection takes long enough to kill the worker inside it.
    let (img, truth) = scene(3840, 2160, &[50, 90, 140, 220]);
    let id = upload(&app, &token, jpeg_bytes(&img, 90)).await;

    let mut first = WorkerProc::start(&app);
    first.wait_for_log(&["original fetched", &id], Duration::from_secs(60));
    first.kill9();
    let v = image_json(&app, &id).await;
    assert_eq!(v["status"], "processing", "{v}");
    assert!(
        app.objects
            .list(&app.infra.output_bucket, "")
            .await
            .unwrap()
            .is_empty(),
        "nothing was written before the kill"
    );

    let _second = WorkerProc::start(&app);
    let v = wait_status(&app, &id, "done", Duration::from_secs(180)).await;
    assert_eq!(v["attempts"], 2, "redelivered once: {v}");
    assert_eq!(v["faces"], truth.len());
    let outputs = app
        .objects
        .list(&app.infra.output_bucket, "")
        .await
        .unwrap();
    assert_eq!(outputs.len(), 1, "exactly one output object: {outputs:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM images WHERE status = 'done'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        app.drain_queue().await.is_empty(),
        "the job was acknowledged"
    );
    assert_eq!(dead_letters(&app).await, 0);
    app.stop().await;
}
