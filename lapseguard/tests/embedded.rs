//! The all-in-one mode end to end, through the real binary: the demo camera uploads,
//! the worker anonymizes, a crash mid-run loses and duplicates nothing, the gallery
//! shows thumbnails in headless Chromium without ever exposing an original, and the
//! embedded renderer makes a timelapse of the demo frames.
//!
//! Needs the model (`eval "$(scripts/fetch-models.sh)"`) and, for the browser test,
//! Chromium and the Playwright driver (`eval "$(scripts/browser-deps.sh)"`); the test
//! command (`scripts/test.sh`) provides both.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapseguard_core::catalog::{Catalog, ImageStatus, ListQuery};
use lapseguard_core::embedded::{self, SqliteCatalog, SqliteQueue};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_lapseguard");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = repo().join("target/tmp").join(format!(
            "lapseguard-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(data: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = data.with_extension(format!("{}.log", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        // Only what this test sets: the test command exports the cluster services'
        // settings (admin token, bucket names...), which must not leak in.
        for (k, _) in std::env::vars() {
            if k.starts_with("LAPSEGUARD_") && k != "LAPSEGUARD_MODEL_PATH" {
                cmd.env_remove(k);
            }
        }
        cmd.args(["up", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--demo"])
            .args(extra)
            .env("LAPSEGUARD_LOG_FORMAT", "json")
            .env("LAPSEGUARD_DEMO_INTERVAL_MS", "100")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("starting lapseguard"),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "lapseguard did not finish in {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Object files under a bucket of the data directory (thumbnails excluded).
fn objects(data: &Path, bucket: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if !p.to_string_lossy().ends_with(".thumb.jpg")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("objects").join(bucket), &mut out);
    out
}

fn wait_for(what: &str, limit: Duration, run: &Running, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            run.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_it_finishes_the_queue_after_a_restart_nothing_lost_or_duplicated() {
    const FRAMES: usize = 12;
    let dir = TempDir::new("restart");
    let data = dir.0.join("data");
    let frames = FRAMES.to_string();
    let mut first = Running::start(&data, free_port(), &["--demo-frames", &frames], &[]);
    // Let some frames through the whole pipeline, then pull the plug.
    wait_for(
        "the first anonymized frames",
        Duration::from_secs(120),
        &first,
        || objects(&data, "lapseguard-output").len() >= 2,
    );
    first.kill();
    let done_before = objects(&data, "lapseguard-output").len();
    assert!(
        done_before < FRAMES,
        "the crash must come mid-run to prove anything ({done_before} of {FRAMES} already done)"
    );

    let mut second = Running::start(
        &data,
        free_port(),
        &["--demo-frames", &frames, "--exit-when-done"],
        &[],
    );
    let status = second.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "{}", second.log_text());

    let pool = embedded::open(&data.join("lapseguard.db")).await.unwrap();
    let catalog = SqliteCatalog::new(pool.clone());
    let project = catalog.project_by_slug("demo").await.unwrap().unwrap();
    let images = catalog
        .list_images(&ListQuery {
            project_id: project.id,
            status: None,
            limit: 1000,
            after: None,
            oldest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(images.len(), FRAMES, "every frame exactly once");
    let shas: HashSet<_> = images.iter().map(|i| i.sha256.clone()).collect();
    assert_eq!(shas.len(), FRAMES, "no frame twice");
    let times: Vec<_> = images.iter().map(|i| i.captured_at).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "capture order kept");
    for img in &images {
        assert_eq!(img.status, ImageStatus::Done, "{img:?}");
        let out = img.output_key.as_deref().unwrap();
        assert!(
            data.join("objects/lapseguard-output").join(out).is_file(),
            "output {out} on disk"
        );
    }
    assert_eq!(
        objects(&data, "lapseguard-output").len(),
        FRAMES,
        "one output per frame, no strays"
    );
    assert_eq!(
        objects(&data, "lapseguard-input").len(),
        FRAMES,
        "one original per frame, no orphans"
    );
    let queue = SqliteQueue::new(pool, Duration::from_secs(60));
    assert_eq!(queue.depth().await.unwrap(), (0, 0), "queue drained");
    assert_eq!(catalog.outbox_len().await.unwrap(), 0, "outbox drained");
}

fn chromium_tools() -> (PathBuf, PathBuf) {
    let script = repo().join("tests/browser/gallery.mjs");
    let modules = repo().join("tests/browser/node_modules/playwright-core");
    let chromium = std::env::var_os("LAPSEGUARD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        modules.is_dir() && chromium.is_file(),
        "the browser test needs Chromium and playwright-core: run `eval \"$(scripts/browser-deps.sh)\"` (scripts/test.sh does)"
    );
    (script, chromium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gallery_in_headless_chromium_shows_thumbnails_and_never_an_original() {
    const FRAMES: usize = 6;
    let (script, chromium) = chromium_tools();
    let dir = TempDir::new("gallery");
    let data = dir.0.join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let frames = FRAMES.to_string();
    let mut run = Running::start(
        &data,
        port,
        &["--demo-frames", &frames],
        // Two pages, so the pagination link is exercised too.
        &[("LAPSEGUARD_GALLERY_PAGE_SIZE", "4")],
    );
    wait_for(
        "every demo frame anonymized",
        Duration::from_secs(180),
        &run,
        || objects(&data, "lapseguard-output").len() >= FRAMES,
    );
    let admin = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let http = reqwest::Client::new();
    // Wait until the catalog says done too (the output is written before the record).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page: serde_json::Value = http
            .get(format!("{base}/v1/projects/demo/images?status=done"))
            .bearer_auth(admin.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["items"].as_array().is_some_and(|a| a.len() == FRAMES) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "catalog never showed all done: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // No access without a link; a made-up key is refused.
    let anon = http
        .get(format!("{base}/projects/demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let forged = http
        .get(format!("{base}/projects/demo?key=v1.99999999999.abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let link: serde_json::Value = http
        .post(format!("{base}/v1/projects/demo/viewer-links"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({"hours": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = link["path"].as_str().expect("viewer link path").to_string();

    // The originals the page must never lead to.
    let originals = dir.0.join("originals.txt");
    let shas: Vec<String> = objects(&data, "lapseguard-input")
        .iter()
        .map(|p| hex::encode(Sha256::digest(std::fs::read(p).unwrap())))
        .collect();
    assert_eq!(shas.len(), FRAMES);
    std::fs::write(&originals, shas.join("\n") + "\n").unwrap();

    let shot = repo().join("target/browser/gallery.png");
    let out = Command::new("node")
        .arg(&script)
        .args([
            "--url",
            &format!("{base}{path}"),
            "--expect",
            "4",
            "--originals",
        ])
        .arg(&originals)
        .arg("--screenshot")
        .arg(&shot)
        .env("LAPSEGUARD_CHROMIUM", &chromium)
        .output()
        .expect("running node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser check failed:\n{report}");
    assert!(report.contains("gallery OK"), "{report}");
    assert!(shot.is_file(), "screenshot saved for review");

    // Thumbnails were made once and cached next to the outputs.
    let thumbs = walk_thumbs(&data.join("objects/lapseguard-output"));
    assert!(thumbs >= 4, "{thumbs} cached thumbnails");

    // The embedded renderer turns the demo frames into a timelapse.
    let r = http
        .post(format!("{base}/v1/projects/demo/timelapses"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({"fps": 6, "width": 256, "height": 256}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let t: serde_json::Value = r.json().await.unwrap();
    let status_url = format!("{base}/v1/timelapses/{}", t["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let s: serde_json::Value = http
            .get(&status_url)
            .bearer_auth(admin.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["status"] == "done" || s["status"] == "failed" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "render never finished: {s}\n{}",
            run.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["frames_rendered"], FRAMES);
    let video = http
        .get(format!("{status_url}/video"))
        .bearer_auth(admin.trim())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let file = dir.0.join("demo.mp4");
    std::fs::write(&file, &video).unwrap();
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .expect("ffprobe");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        format!("256,256,{FRAMES}")
    );
    run.terminate();
}

fn walk_thumbs(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += walk_thumbs(&p);
        } else if p.to_string_lossy().ends_with(".thumb.jpg") {
            n += 1;
        }
    }
    n
}
