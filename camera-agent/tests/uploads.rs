//! The agent against the real backend (PostgreSQL, RabbitMQ, MinIO of the test harness):
//! nothing lost, nothing duplicated, capture order kept, bad files set aside.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::services::{Opts, Proxy, TestApp};
use common::{
    Agent, TestDir, base_time, eventually, noise_jpeg, sha256_hex, write_direct, write_renamed,
};
use lapseguard_core::objects::ObjectStore;

async fn rows(app: &TestApp) -> Vec<(DateTime<Utc>, String)> {
    sqlx::query_as("SELECT captured_at, sha256 FROM images ORDER BY received_at, id")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

async fn camera(app: &TestApp, slug: &str) -> (String, String) {
    app.create_project(slug).await;
    app.create_camera(slug, "cam").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_200_frames_arrive_once_in_capture_order() {
    let app = TestApp::start(Opts::default()).await;
    let (_, token) = camera(&app, "down").await;
    let proxy = Proxy::start(app.base.trim_start_matches("http://").to_string()).await;
    proxy.set_down(true).await;
    let dir = TestDir::new("down");
    let mut agent = Agent::watch(
        &dir,
        &format!("http://127.0.0.1:{}", proxy.port),
        &token,
        &[],
        &[],
    );

    // 200 frames, written in a scrambled order; the capture time (mtime) decides.
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let bytes = services_jpeg(i);
        let captured = base_time() + chrono::Duration::seconds(10 * i64::from(i));
        expected.push((captured, sha256_hex(&bytes), bytes));
    }
    let mut order: Vec<usize> = (0..200).collect();
    order.sort_by_key(|i| (i * 7919) % 200);
    for (n, &i) in order.iter().enumerate() {
        let (captured, _, bytes) = &expected[i];
        let name = format!("IMG_{i:04}.jpg");
        if n % 2 == 0 {
            write_direct(&dir.capture(), &name, bytes, *captured);
        } else {
            write_renamed(&dir.capture(), &name, bytes, *captured);
        }
    }
    eventually(
        Duration::from_secs(60),
        "all 200 frames spooled",
        || async { (dir.spooled("pending").len() == 200).then_some(()) },
    )
    .await;
    assert!(
        dir.in_capture().is_empty(),
        "capture folder emptied: {:?}",
        dir.in_capture()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.image_rows().await,
        0,
        "backend unreachable: nothing arrived"
    );
    agent.assert_running();

    proxy.set_down(false).await;
    eventually(
        Duration::from_secs(120),
        "200 images in the backend",
        || async { (app.image_rows().await >= 200).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(10), "spool drained", || async {
        dir.spooled("pending").is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = rows(&app).await;
    assert_eq!(got.len(), 200, "exactly once");
    // Arrival order (received_at) is capture order, and capture times are exact.
    let want: Vec<(DateTime<Utc>, String)> = expected
        .iter()
        .map(|(t, sha, _)| (*t, sha.clone()))
        .collect();
    assert_eq!(got, want);
    assert!(dir.spooled("rejected").is_empty());
    app.expect_jobs(200).await;
    agent.stop();
    app.stop().await;
}

fn services_jpeg(i: u32) -> Vec<u8> {
    common::services::jpeg(i, 64, 48)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_loses_nothing_and_duplicates_nothing() {
    let app = TestApp::start(Opts::default()).await;
    let (_, token) = camera(&app, "kill").await;
    let dir = TestDir::new("kill");
    // ~60 kB frames at 300 kB/s: an upload is in flight almost all the time.
    let limit = [("LAPSEGUARD_UPLOAD_MAX_BYTES_PER_SEC", "300000".to_string())];
    let mut shas = BTreeSet::new();
    for i in 0..30u64 {
        let bytes = noise_jpeg(i, 200, 150);
        shas.insert(sha256_hex(&bytes));
        write_direct(
            &dir.capture(),
            &format!("f{i:02}.jpg"),
            &bytes,
            base_time() + chrono::Duration::seconds(i as i64),
        );
    }
    let mut agent = Agent::watch(&dir, &app.base, &token, &[], &limit);
    eventually(Duration::from_secs(60), "some frames uploaded", || async {
        (app.image_rows().await >= 6).then_some(())
    })
    .await;
    agent.kill();
    let at_kill = app.image_rows().await;
    assert!(
        at_kill < 30,
        "killed before the end ({at_kill} of 30 arrived)"
    );
    // Every frame is somewhere: in the backend or still in the spool.
    assert!(at_kill as usize + dir.spooled("pending").len() >= 30);

    let mut again = Agent::watch(&dir, &app.base, &token, &[], &limit);
    eventually(Duration::from_secs(90), "all 30 images", || async {
        (app.image_rows().await >= 30).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "spool drained", || async {
        dir.spooled("pending").is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: BTreeSet<String> = rows(&app).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(app.image_rows().await, 30, "no duplicate rows");
    assert_eq!(got, shas, "no loss");
    app.expect_jobs(30).await;
    again.stop();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowly_written_file_is_uploaded_once_and_complete() {
    let app = TestApp::start(Opts::default()).await;
    let (_, token) = camera(&app, "slow").await;
    let dir = TestDir::new("slow");
    let mut agent = Agent::watch(&dir, &app.base, &token, &[], &[]);
    let bytes = noise_jpeg(42, 400, 300);
    assert!(bytes.len() > 100_000);
    // Written in 12 chunks with pauses longer than settle_ms (200 ms), file kept open.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.capture().join("slow.jpg")).unwrap();
        for chunk in bytes.chunks(bytes.len().div_ceil(12)) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(
                dir.spooled("pending").is_empty(),
                "taken while still being written"
            );
            assert_eq!(app.image_rows().await, 0);
        }
    }
    eventually(Duration::from_secs(30), "the image", || async {
        (app.image_rows().await == 1).then_some(())
    })
    .await;
    let key: String = sqlx::query_scalar("SELECT input_key FROM images")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let stored = app
        .objects
        .get(&app.infra.input_bucket, &key)
        .await
        .unwrap();
    assert_eq!(stored.len(), bytes.len());
    assert!(
        stored.as_ref() == bytes.as_slice(),
        "stored bytes equal the written file"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.image_rows().await, 1, "uploaded once");
    assert!(dir.spooled("pending").is_empty() && dir.spooled("rejected").is_empty());
    agent.stop();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_file_is_rejected_with_a_reason_and_the_rest_keeps_flowing() {
    let app = TestApp::start(Opts::default()).await;
    let (_, token) = camera(&app, "corrupt").await;
    let dir = TestDir::new("corrupt");
    let t = |s: i64| base_time() + chrono::Duration::seconds(s);
    write_direct(&dir.capture(), "a.jpg", &services_jpeg(1), t(1));
    // A JPEG cut inside its header (undecodable: 422) and a text file named .jpg (415).
    let truncated = services_jpeg(2)[..24].to_vec();
    write_direct(&dir.capture(), "b.jpg", &truncated, t(2));
    write_direct(&dir.capture(), "d.jpg", b"this is not a JPEG at all", t(4));
    write_direct(
        &dir.capture(),
        "c.png",
        &common::services::png(3, 32, 32),
        t(3),
    );
    write_direct(&dir.capture(), "notes.txt", b"not a frame", t(6));
    write_direct(&dir.capture(), ".hidden.jpg", &services_jpeg(5), t(5));
    let mut agent = Agent::watch(&dir, &app.base, &token, &[], &[]);
    eventually(Duration::from_secs(30), "two good images", || async {
        (app.image_rows().await == 2).then_some(())
    })
    .await;
    let rejected = eventually(Duration::from_secs(10), "the rejected frames", || async {
        let r = dir.spooled("rejected");
        (r.len() == 4).then_some(r)
    })
    .await;
    for (name, bytes, status) in [
        ("b.jpg", truncated.as_slice(), 422),
        ("d.jpg", b"this is not a JPEG at all".as_slice(), 415),
    ] {
        let frame = rejected
            .iter()
            .find(|n| n.ends_with(&format!("-{name}")))
            .unwrap_or_else(|| panic!("{name} not in {rejected:?}"));
        assert_eq!(
            std::fs::read(dir.spool().join("rejected").join(frame)).unwrap(),
            bytes
        );
        let reason: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                dir.spool()
                    .join("rejected")
                    .join(format!("{frame}.reason.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(reason["status"], status, "{reason}");
        assert!(
            reason["reason"]
                .as_str()
                .unwrap()
                .starts_with(&status.to_string()),
            "{reason}"
        );
        assert_eq!(reason["original_name"], name);
    }
    // Not frames: left alone.
    assert_eq!(dir.in_capture(), vec![".hidden.jpg", "notes.txt"]);
    assert!(dir.spooled("pending").is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.image_rows().await,
        2,
        "the rejected frame is not retried"
    );
    agent.stop();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_captured_while_the_agent_was_down_are_picked_up_at_start() {
    let app = TestApp::start(Opts::default()).await;
    let (_, token) = camera(&app, "restart").await;
    let dir = TestDir::new("restart");
    for i in 0..5u32 {
        write_direct(
            &dir.capture(),
            &format!("old{i}.jpg"),
            &services_jpeg(100 + i),
            base_time() + chrono::Duration::seconds(i.into()),
        );
    }
    let mut agent = Agent::watch(&dir, &app.base, &token, &[], &[]);
    eventually(Duration::from_secs(30), "5 images", || async {
        (app.image_rows().await == 5).then_some(())
    })
    .await;
    // SIGTERM: a clean exit.
    assert!(agent.stop().success(), "{}", agent.log_text());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simulated_cameras_feed_two_agents() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("sim").await;
    let source = TestDir::new("sim-source");
    for name in ["grace-hopper.jpg", "cameraman.png"] {
        std::fs::write(
            source.capture().join(name),
            common::services::testdata(name),
        )
        .unwrap();
    }
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    let mut sims = Vec::new();
    for n in 0..2 {
        let dir = TestDir::new(&format!("sim{n}"));
        let (_, token) = app.create_camera("sim", &format!("sim-{n}")).await;
        agents.push(Agent::watch(&dir, &app.base, &token, &[], &[]));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_camera-agent"));
        cmd.arg("simulate")
            .arg(format!("--source={}", source.capture().display()))
            .arg(format!("--capture-dir={}", dir.capture().display()))
            .arg("--interval=200ms")
            .arg("--count=4");
        sims.push(Agent::spawn(cmd, dir.log("simulate"), &[]));
        dirs.push(dir);
    }
    for s in &mut sims {
        let status = s.child.wait().unwrap();
        assert!(status.success(), "{}", s.log_text());
    }
    eventually(Duration::from_secs(30), "8 images", || async {
        (app.image_rows().await == 8).then_some(())
    })
    .await;
    // Each camera got its 4 frames; capture times are the simulator's stamps (recent).
    let per_camera: Vec<(i64,)> =
        sqlx::query_as("SELECT count(*) FROM images GROUP BY camera_id ORDER BY 1")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(per_camera, vec![(4,), (4,)]);
    let oldest: DateTime<Utc> = sqlx::query_scalar("SELECT min(captured_at) FROM images")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        Utc::now() - oldest < chrono::Duration::minutes(5),
        "stamped capture time {oldest}"
    );
    for d in &dirs {
        assert!(
            d.in_capture().is_empty(),
            "no temp files left: {:?}",
            d.in_capture()
        );
    }
    for a in &mut agents {
        a.stop();
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_keeps_every_frame() {
    let app = TestApp::start(Opts::default()).await;
    camera(&app, "token").await;
    let dir = TestDir::new("token");
    write_direct(&dir.capture(), "a.jpg", &services_jpeg(7), base_time());
    let agent = Agent::watch(&dir, &app.base, "not-a-valid-token", &[], &[]);
    eventually(Duration::from_secs(30), "the agent to hit 401", || async {
        agent
            .log_text()
            .contains("refuses this camera's token")
            .then_some(())
    })
    .await;
    assert_eq!(
        dir.spooled("pending").len(),
        1,
        "kept for when the token is fixed"
    );
    assert!(
        dir.spooled("rejected").is_empty(),
        "a token problem is not the frame's fault"
    );
    assert_eq!(app.image_rows().await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_503_retry_after_is_honoured_then_frames_arrive() {
    let app = TestApp::start(Opts {
        proxy_db: true,
        ..Opts::default()
    })
    .await;
    let (_, token) = camera(&app, "retry-after").await;
    let dir = TestDir::new("retry-after");
    // Retry-After (5 s, the backend's default) is longer than the agent's own backoff (2 s).
    let agent = Agent::watch(&dir, &app.base, &token, &[], &[]);
    app.db_proxy.as_ref().unwrap().set_down(true).await;
    write_direct(&dir.capture(), "a.jpg", &services_jpeg(8), base_time());
    let line = eventually(
        Duration::from_secs(30),
        "a 503 with Retry-After",
        || async {
            agent
                .log_text()
                .lines()
                .find(|l| l.contains("upload failed; retrying") && l.contains("503"))
                .map(str::to_owned)
        },
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let retry_in = v["retry_in"].as_str().unwrap().to_string();
    let secs: f64 = retry_in.trim_end_matches('s').parse().unwrap_or(0.0);
    assert!(
        secs >= 5.0,
        "Retry-After 5 s honoured, agent waits {retry_in}"
    );
    app.db_proxy.as_ref().unwrap().set_down(false).await;
    eventually(
        Duration::from_secs(40),
        "the image after the outage",
        || async { (app.image_rows().await == 1).then_some(()) },
    )
    .await;
    app.stop().await;
}
