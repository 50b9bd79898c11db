//! Shared by the camera-agent's integration tests: the backend test harness (real
//! PostgreSQL, RabbitMQ with its MQTT plugin, MinIO) reused as is, the agent run as a
//! real process, and helpers to play a camera.
#![allow(dead_code)]

#[path = "../../../backend/tests/common/mod.rs"]
pub mod services;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// A fresh folder for one test (capture folder and spool share its filesystem).
pub struct TestDir {
    pub root: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "camera-agent-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(root.join("capture")).unwrap();
        TestDir { root }
    }

    pub fn capture(&self) -> PathBuf {
        self.root.join("capture")
    }

    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.log"))
    }

    /// Regular files in a spool sub-folder (`pending`, `rejected`, `sent`).
    pub fn spooled(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.spool().join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn in_capture(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.capture())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// The agent as a real process.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// `camera-agent watch` with the given flags; `env` adds LAPSEGUARD_* settings. The
    /// test process's own LAPSEGUARD_* variables are not passed on.
    pub fn watch(
        dir: &TestDir,
        backend: &str,
        token: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Agent {
        let log = dir.log(&format!("agent-{}", uuid::Uuid::new_v4().simple()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_camera-agent"));
        cmd.arg("watch")
            .arg(format!("--backend={backend}"))
            .arg(format!("--token={token}"))
            .arg(format!("--capture-dir={}", dir.capture().display()))
            .arg(format!("--spool-dir={}", dir.spool().display()))
            .args(extra);
        Self::spawn(cmd, log, env)
    }

    pub fn spawn(mut cmd: Command, log: PathBuf, env: &[(&str, String)]) -> Agent {
        for (k, _) in std::env::vars() {
            if k.starts_with("LAPSEGUARD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("LAPSEGUARD_LOG_FORMAT", "json")
            .env("LAPSEGUARD_LOG_FILTER", "info,camera_agent=debug")
            // Fast enough for tests, still exercising the same code paths.
            .env("LAPSEGUARD_SETTLE_MS", "200")
            .env("LAPSEGUARD_STABLE_SECS", "3")
            .env("LAPSEGUARD_RETRY_INITIAL_MS", "200")
            .env("LAPSEGUARD_RETRY_MAX_SECS", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start camera-agent");
        Agent { child, log }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no goodbye, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("camera-agent exited with {status}:\n{}", self.log_text());
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Polls `f` every 100 ms until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a frame the way a camera with close-after-write does.
pub fn write_direct(dir: &Path, name: &str, bytes: &[u8], captured: DateTime<Utc>) {
    let path = dir.join(name);
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    f.set_modified(captured.into()).unwrap();
}

/// Writes a frame the way a camera with temp-name-then-rename does.
pub fn write_renamed(dir: &Path, name: &str, bytes: &[u8], captured: DateTime<Utc>) {
    let tmp = dir.join(format!(".{name}.part"));
    let mut f = fs::File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    f.set_modified(captured.into()).unwrap();
    drop(f);
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A JPEG of random noise (compresses badly: about `w * h / 2` bytes), unique per seed.
pub fn noise_jpeg(seed: u64, w: u32, h: u32) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v = (s >> 33) as u32;
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn base_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-05-01T06:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// An MQTT client of the test broker (RabbitMQ's MQTT plugin), collecting every message
/// of one topic filter.
pub struct TestMqtt {
    pub client: rumqttc::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    task: tokio::task::JoinHandle<()>,
}

pub fn mqtt_env() -> (String, Vec<(&'static str, String)>) {
    let url = std::env::var("LAPSEGUARD_MQTT_URL")
        .expect("LAPSEGUARD_MQTT_URL is not set: scripts/services.sh start && set -a && . target/services.env");
    let env = vec![
        (
            "LAPSEGUARD_MQTT_USERNAME",
            std::env::var("LAPSEGUARD_MQTT_USERNAME").unwrap_or_default(),
        ),
        (
            "LAPSEGUARD_MQTT_PASSWORD",
            std::env::var("LAPSEGUARD_MQTT_PASSWORD").unwrap_or_default(),
        ),
    ];
    (url, env)
}

impl TestMqtt {
    pub async fn connect(filter: &str) -> TestMqtt {
        let (url, env) = mqtt_env();
        let broker = camera_agent::mqtt::parse_broker(&url, &env[0].1, &env[1].1).unwrap();
        let mut o = rumqttc::MqttOptions::new(
            format!("test-{}", uuid::Uuid::new_v4().simple()),
            broker.host,
            broker.port,
        );
        if let Some(u) = broker.username {
            o.set_credentials(u, broker.password.unwrap_or_default());
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let sub = client.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        sub.subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(t) = subscribed_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                            serde_json::Value::String(
                                String::from_utf8_lossy(&p.payload).into_owned(),
                            )
                        });
                        let _ = tx.send((p.topic.clone(), v));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("test MQTT client: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(15), subscribed_rx)
            .await
            .expect("test MQTT client subscribed")
            .unwrap();
        TestMqtt { client, rx, task }
    }

    /// The next message on a topic ending in `suffix` for which `pred` holds.
    pub async fn expect(
        &mut self,
        suffix: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no message on *{suffix} matching within {timeout:?}"))
                .expect("MQTT client stopped");
            if got.0.ends_with(suffix) && pred(&got.1) {
                return got.1;
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: serde_json::Value) {
        self.client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.to_string().into_bytes(),
            )
            .await
            .unwrap();
    }
}

impl Drop for TestMqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}
