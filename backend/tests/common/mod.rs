//! Test harness for integration tests against the real PostgreSQL, RabbitMQ and S3
//! started by `scripts/services.sh` (settings in `target/services.env`).
//!
//! Each test gets its own database, buckets and queue names, so tests run in parallel.
//! Faults are injected with a TCP proxy between the backend and a real server: "down"
//! closes every open connection and refuses new ones, which is what a crashed or
//! partitioned server looks like to the client.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backend::AppState;
use backend::settings::BackendSettings;
use lapin::options::BasicGetOptions;
use lapseguard_core::catalog::PgCatalog;
use lapseguard_core::config::InfraSettings;
use lapseguard_core::job::JobMessage;
use lapseguard_core::objects::{ObjectStore, S3Store};
use reqwest::Url;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ADMIN: &str = "test-admin-token";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set. Integration tests need the real services: run scripts/test.sh, \
             or scripts/services.sh start && set -a && . target/services.env && set +a"
        )
    })
}

/// Settings that reach the real services directly.
pub fn base_infra() -> InfraSettings {
    InfraSettings {
        database_url: env("LAPSEGUARD_DATABASE_URL"),
        amqp_url: env("LAPSEGUARD_AMQP_URL"),
        s3_endpoint: env("LAPSEGUARD_S3_ENDPOINT"),
        s3_region: std::env::var("LAPSEGUARD_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
        s3_access_key_id: env("LAPSEGUARD_S3_ACCESS_KEY_ID"),
        s3_secret_access_key: env("LAPSEGUARD_S3_SECRET_ACCESS_KEY"),
        ..InfraSettings::default()
    }
}

/// A TCP proxy whose upstream can be made unreachable.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let up = upstream.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(up).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().await.push(h);
            }
        });
        Proxy {
            port,
            down,
            conns,
            acceptor,
        }
    }

    pub async fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for h in self.conns.lock().await.drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

fn host_port(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
}

fn via(url: &str, proxy: &Proxy) -> String {
    let mut u = Url::parse(url).unwrap();
    u.set_port(Some(proxy.port)).unwrap();
    u.to_string()
}

#[derive(Default, Clone, Copy)]
pub struct Opts {
    pub proxy_db: bool,
    pub proxy_s3: bool,
    pub proxy_amqp: bool,
    pub max_upload_bytes: Option<usize>,
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    /// Direct (unproxied) settings for this test's database, buckets and queues.
    pub infra: InfraSettings,
    pub db: sqlx::PgPool,
    pub objects: S3Store,
    pub db_proxy: Option<Proxy>,
    pub s3_proxy: Option<Proxy>,
    pub amqp_proxy: Option<Proxy>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn start(opts: Opts) -> TestApp {
        lapseguard_core::install_crypto_provider();
        let id = Uuid::new_v4().simple().to_string();
        let short = &id[..12];
        let mut infra = base_infra();
        // Own database, migrated.
        let admin = sqlx::PgPool::connect(&infra.database_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE lg_{short}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut db_url = Url::parse(&infra.database_url).unwrap();
        db_url.set_path(&format!("/lg_{short}"));
        infra.database_url = db_url.to_string();
        infra.input_bucket = format!("lg-{short}-in");
        infra.output_bucket = format!("lg-{short}-out");
        infra.timelapse_bucket = format!("lg-{short}-tl");
        infra.amqp_prefix = format!("lgtest.{short}");
        PgCatalog::connect_lazy(&infra)
            .unwrap()
            .migrate()
            .await
            .unwrap();
        let objects = S3Store::new(&infra);
        objects.ensure_bucket(&infra.input_bucket).await.unwrap();
        objects.ensure_bucket(&infra.output_bucket).await.unwrap();
        objects
            .ensure_bucket(&infra.timelapse_bucket)
            .await
            .unwrap();

        // What the backend sees: possibly through proxies.
        let mut seen = infra.clone();
        let db_proxy = if opts.proxy_db {
            let p = Proxy::start(host_port(&Url::parse(&infra.database_url).unwrap())).await;
            seen.database_url = via(&infra.database_url, &p);
            Some(p)
        } else {
            None
        };
        let s3_proxy = if opts.proxy_s3 {
            let p = Proxy::start(host_port(&Url::parse(&infra.s3_endpoint).unwrap())).await;
            seen.s3_endpoint = via(&infra.s3_endpoint, &p);
            Some(p)
        } else {
            None
        };
        let amqp_proxy = if opts.proxy_amqp {
            let p = Proxy::start(host_port(&Url::parse(&infra.amqp_url).unwrap())).await;
            seen.amqp_url = via(&infra.amqp_url, &p);
            Some(p)
        } else {
            None
        };
        // Short pool timeout so "database down" answers quickly.
        seen.database_acquire_timeout_secs = 2;
        let settings = BackendSettings {
            listen: "127.0.0.1:0".into(),
            admin_token: ADMIN.into(),
            max_upload_bytes: opts.max_upload_bytes.unwrap_or(50 * 1024 * 1024),
            relay_interval_ms: 200,
            ..BackendSettings::default()
        };
        let state = AppState::cluster(seen, settings).unwrap();
        // Declare the topology now so that messages are routable from the first upload.
        let conn = lapseguard_core::queue::connect(&infra.amqp_url, "test-setup")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        lapseguard_core::queue::declare_topology(&ch, &infra.topology())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            async move {
                backend::serve(listener, state, shutdown).await.unwrap();
            }
        });
        let db = sqlx::PgPool::connect(&infra.database_url).await.unwrap();
        TestApp {
            base,
            http: reqwest::Client::new(),
            state,
            infra,
            db,
            objects,
            db_proxy,
            s3_proxy,
            amqp_proxy,
            shutdown,
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn create_project(&self, slug: &str) -> serde_json::Value {
        let r = self
            .http
            .post(self.url("/v1/projects"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"slug": slug, "name": format!("Project {slug}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create project");
        r.json().await.unwrap()
    }

    /// Returns (camera id, token).
    pub async fn create_camera(&self, slug: &str, name: &str) -> (String, String) {
        let r = self
            .http
            .post(self.url(&format!("/v1/projects/{slug}/cameras")))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create camera");
        let v: serde_json::Value = r.json().await.unwrap();
        (
            v["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    }

    pub async fn upload(
        &self,
        token: &str,
        body: Vec<u8>,
        content_type: &str,
        captured_at: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("/v1/images"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body);
        if let Some(c) = captured_at {
            req = req.header("x-captured-at", c);
        }
        req.send().await.unwrap()
    }

    /// Takes every message currently in this test's job queue.
    pub async fn drain_queue(&self) -> Vec<JobMessage> {
        let conn = lapseguard_core::queue::connect(&self.infra.amqp_url, "test-drain")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                self.infra.topology().queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(JobMessage::from_json(&m.delivery.data).unwrap());
        }
        out
    }

    /// Waits until the queue held `n` messages in total (drained as they come), then
    /// makes sure no extra message follows.
    pub async fn expect_jobs(&self, n: usize) -> Vec<JobMessage> {
        let mut got = Vec::new();
        for _ in 0..100 {
            got.extend(self.drain_queue().await);
            if got.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        got.extend(self.drain_queue().await);
        assert_eq!(
            got.len(),
            n,
            "expected exactly {n} job messages, got {got:?}"
        );
        got
    }

    pub async fn image_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM images")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn input_objects(&self) -> Vec<String> {
        self.objects
            .list(&self.infra.input_bucket, "")
            .await
            .unwrap()
    }

    /// What a worker does once an image is anonymized: the output in the output bucket,
    /// the image recorded `done`. Returns the output key.
    pub async fn record_done(&self, id: &str, output: Vec<u8>) -> String {
        let id = Uuid::parse_str(id).unwrap();
        let img = self.state.catalog.image(id).await.unwrap().unwrap();
        let key = format!("{}.out.png", img.input_key);
        self.objects
            .put(&self.infra.output_bucket, &key, output.into(), "image/png")
            .await
            .unwrap();
        self.state.catalog.claim_job(id).await.unwrap();
        self.state
            .catalog
            .complete_job(
                id,
                &lapseguard_core::catalog::JobResult {
                    faces: 2,
                    boxes: serde_json::json!([]),
                    model: "test".into(),
                    duration_ms: 1,
                    output_key: key.clone(),
                },
            )
            .await
            .unwrap();
        key
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
        }
    }
}

/// Repository test image.
pub fn testdata(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A small, valid, unique PNG (distinct bytes for every seed).
pub fn png(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x.wrapping_mul(7).wrapping_add(seed)) as u8,
            (y.wrapping_mul(3).wrapping_add(seed >> 8)) as u8,
            (seed.wrapping_mul(31)) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn jpeg(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x.wrapping_add(seed)) as u8,
            (y.wrapping_add(seed * 5)) as u8,
            (seed.wrapping_mul(17)) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}
