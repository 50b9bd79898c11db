//! Fleet view: heartbeats that cameras publish over MQTT reach the backend through
//! RabbitMQ's `amq.topic` (what the MQTT plugin does with them is reproduced here with a
//! plain AMQP publish; camera-agent/tests/mqtt.rs covers the real MQTT path).

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, Opts, TestApp};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};

struct Broker {
    _conn: lapin::Connection,
    ch: lapin::Channel,
}

impl Broker {
    async fn connect(app: &TestApp) -> Broker {
        let conn = lapseguard_core::queue::connect(&app.infra.amqp_url, "test-fleet")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        Broker { _conn: conn, ch }
    }

    /// What RabbitMQ's MQTT plugin does with a publish on `lapseguard/cameras/{id}/status`.
    async fn status(&self, camera: &str, payload: Value) {
        self.ch
            .basic_publish(
                "amq.topic".into(),
                format!("lapseguard.cameras.{camera}.status")
                    .as_str()
                    .into(),
                BasicPublishOptions::default(),
                payload.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn fleet(app: &TestApp, slug: &str, token: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/v1/projects/{slug}/cameras")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn camera(app: &TestApp, slug: &str, id: &str) -> Value {
    let r = fleet(app, slug, ADMIN).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("camera {id} not in {v}"))
}

fn heartbeat(camera: &str, state: &str, sent_at: &str, backlog: u64) -> Value {
    json!({
        "camera": camera, "state": state, "sent_at": sent_at, "interval_secs": 1,
        "backlog": backlog, "backlog_bytes": backlog * 1000, "last_upload_at": "2026-05-01T06:00:00Z",
        "disk_free_bytes": 123456789, "version": "9.9.9", "warnings": ["disk almost full"],
        "last_error": null, "uplink": "ok",
    })
}

/// Publishes `payload` until the camera's view satisfies `pred` (the consumer may still be
/// binding its queue when the first one goes out).
async fn until(
    app: &TestApp,
    broker: &Broker,
    slug: &str,
    id: &str,
    payload: Option<Value>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(p) = &payload {
            broker.status(id, p.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let v = camera(app, slug, id).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "camera view never matched: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_make_cameras_online_wills_and_silence_make_them_offline() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("fleet").await;
    let (alive, alive_token) = app.create_camera("fleet", "a-alive").await;
    let (dies, _) = app.create_camera("fleet", "b-dies").await;
    let (never, _) = app.create_camera("fleet", "c-never").await;
    let broker = Broker::connect(&app).await;

    // Never seen: listed, offline, no state.
    let c = camera(&app, "fleet", &never).await;
    assert_eq!(
        (c["online"].clone(), c["state"].clone()),
        (json!(false), Value::Null)
    );
    assert_eq!(c["name"], "c-never");

    let now = chrono::Utc::now();
    let ts = |s: i64| (now + chrono::Duration::seconds(s)).to_rfc3339();
    let v = until(
        &app,
        &broker,
        "fleet",
        &alive,
        Some(heartbeat(&alive, "running", &ts(0), 7)),
        |v| v["online"] == true,
    )
    .await;
    assert_eq!(v["state"], "running");
    assert_eq!(v["backlog"], 7);
    assert_eq!(v["backlog_bytes"], 7000);
    assert_eq!(v["heartbeat_interval_secs"], 1);
    assert_eq!(v["version"], "9.9.9");
    assert_eq!(v["disk_free_bytes"], 123456789);
    assert_eq!(v["warnings"], json!(["disk almost full"]));
    assert!(
        v["last_upload_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-05-01T06:00:00")
    );
    assert!(v["last_seen_at"].is_string());
    assert_eq!(v["last_received_at"], Value::Null);

    // A newer heartbeat wins; an older one arriving late is ignored.
    until(
        &app,
        &broker,
        "fleet",
        &alive,
        Some(heartbeat(&alive, "paused", &ts(2), 3)),
        |v| v["backlog"] == 3,
    )
    .await;
    broker
        .status(&alive, heartbeat(&alive, "running", &ts(1), 99))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = camera(&app, "fleet", &alive).await;
    assert_eq!(
        (v["backlog"].clone(), v["state"].clone()),
        (json!(3), json!("paused")),
        "{v}"
    );

    // The backend's own record of the last upload.
    let up = app
        .upload(&alive_token, common::png(1, 8, 8), "image/png", None)
        .await;
    assert_eq!(up.status(), 201);
    let v = camera(&app, "fleet", &alive).await;
    assert!(v["last_received_at"].is_string(), "{v}");

    // Last will: offline at once, the last figures stay.
    until(
        &app,
        &broker,
        "fleet",
        &dies,
        Some(heartbeat(&dies, "running", &ts(0), 5)),
        |v| v["online"] == true,
    )
    .await;
    let v = until(
        &app,
        &broker,
        "fleet",
        &dies,
        Some(json!({"camera": dies, "state": "offline", "reason": "connection lost"})),
        |v| v["state"] == "offline",
    )
    .await;
    assert_eq!(v["online"], false);
    assert_eq!(v["backlog"], 5);
    // ... and the next heartbeat brings it back.
    until(
        &app,
        &broker,
        "fleet",
        &dies,
        Some(heartbeat(&dies, "running", &ts(3), 4)),
        |v| v["online"] == true && v["backlog"] == 4,
    )
    .await;

    // Silence: 3 intervals (3 s) without a heartbeat is offline, state unchanged.
    let v = until(&app, &broker, "fleet", &alive, None, |v| {
        v["online"] == false
    })
    .await;
    assert_eq!(v["state"], "paused");

    // Garbage and cameras of other deployments are ignored, not fatal.
    broker
        .status("not-a-uuid", json!({"state": "running"}))
        .await;
    broker
        .status(
            &uuid::Uuid::now_v7().to_string(),
            heartbeat("x", "running", &ts(0), 1),
        )
        .await;
    broker.status(&never, json!("nonsense")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = camera(&app, "fleet", &never).await;
    assert_eq!(c["state"], Value::Null);
    until(
        &app,
        &broker,
        "fleet",
        &never,
        Some(heartbeat(&never, "running", &ts(0), 0)),
        |v| v["online"] == true,
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_view_access_rules() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("mine").await;
    app.create_project("theirs").await;
    let (_, mine) = app.create_camera("mine", "cam").await;
    app.create_camera("theirs", "cam").await;
    assert_eq!(fleet(&app, "mine", ADMIN).await.status(), 200);
    let own = fleet(&app, "mine", &mine).await;
    assert_eq!(
        own.status(),
        200,
        "a camera may see its own project's fleet"
    );
    let v: Value = own.json().await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(fleet(&app, "theirs", &mine).await.status(), 403);
    assert_eq!(fleet(&app, "nope", ADMIN).await.status(), 404);
    assert_eq!(fleet(&app, "mine", "wrong-token").await.status(), 401);
    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/v1/projects/{slug}/cameras"]["get"].is_object());
    assert!(spec["components"]["schemas"]["CameraStatus"].is_object());
    app.stop().await;
}
