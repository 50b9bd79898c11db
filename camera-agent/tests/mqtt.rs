//! MQTT through RabbitMQ's MQTT plugin: heartbeats, last-will, remote commands.

mod common;

use std::time::Duration;

use common::services::{Opts, TestApp};
use common::{Agent, TestDir, TestMqtt, base_time, eventually, mqtt_env, write_direct};
use serde_json::json;

fn mqtt_agent(dir: &TestDir, app: &TestApp, camera: &str, token: &str) -> Agent {
    let (url, mut env) = mqtt_env();
    env.push(("LAPSEGUARD_HEARTBEAT_SECS", "1".into()));
    Agent::watch(
        dir,
        &app.base,
        token,
        &[&format!("--mqtt={url}"), &format!("--camera-id={camera}")],
        &env,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_uploads_resume_drains_every_command_acknowledged() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("pause").await;
    let (camera, token) = app.create_camera("pause", "cam").await;
    let topic = |t: &str| format!("lapseguard/cameras/{camera}/{t}");
    let mut mqtt = TestMqtt::connect(&topic("#")).await;
    let dir = TestDir::new("pause");
    let mut agent = mqtt_agent(&dir, &app, &camera, &token);
    let hb = mqtt
        .expect("/status", Duration::from_secs(20), |v| {
            v["state"] == "running"
        })
        .await;
    assert_eq!(hb["camera"], camera.as_str());
    assert_eq!(hb["interval_secs"], 1);
    assert_eq!(hb["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        hb["disk_free_bytes"].as_u64().is_some_and(|b| b > 0),
        "{hb}"
    );

    mqtt.publish(&topic("commands"), json!({"id": "p1", "command": "pause"}))
        .await;
    let ack = mqtt
        .expect("/replies", Duration::from_secs(10), |v| v["id"] == "p1")
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["command"], "pause");
    assert_eq!(ack["state"], "paused");

    for i in 0..5u32 {
        let bytes = common::services::jpeg(500 + i, 48, 32);
        write_direct(
            &dir.capture(),
            &format!("p{i}.jpg"),
            &bytes,
            base_time() + chrono::Duration::seconds(i.into()),
        );
    }
    eventually(Duration::from_secs(20), "5 frames spooled", || async {
        (dir.spooled("pending").len() == 5).then_some(())
    })
    .await;
    let hb = mqtt
        .expect("/status", Duration::from_secs(10), |v| v["backlog"] == 5)
        .await;
    assert_eq!(hb["state"], "paused", "{hb}");
    assert!(hb["backlog_bytes"].as_u64().is_some_and(|b| b > 0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.image_rows().await, 0, "paused: frames accumulate");

    // The pause survives a restart of the agent.
    assert!(agent.stop().success());
    let stopped = mqtt
        .expect("/status", Duration::from_secs(10), |v| {
            v["state"] == "offline"
        })
        .await;
    assert_eq!(stopped["reason"], "stopped", "{stopped}");
    let mut agent = mqtt_agent(&dir, &app, &camera, &token);
    mqtt.expect("/status", Duration::from_secs(20), |v| {
        v["state"] == "paused"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.image_rows().await, 0, "still paused after restart");

    mqtt.publish(&topic("commands"), json!({"id": "r1", "command": "resume"}))
        .await;
    let ack = mqtt
        .expect("/replies", Duration::from_secs(10), |v| v["id"] == "r1")
        .await;
    assert_eq!(
        (ack["ok"].clone(), ack["state"].clone()),
        (json!(true), json!("running")),
        "{ack}"
    );
    eventually(Duration::from_secs(30), "5 images after resume", || async {
        (app.image_rows().await == 5).then_some(())
    })
    .await;
    mqtt.expect("/status", Duration::from_secs(10), |v| {
        v["backlog"] == 0 && v["uploaded"] == 5 && v["last_upload_at"].is_string()
    })
    .await;

    // The other commands, JSON and plain text, and a refused one.
    mqtt.publish(
        &topic("commands"),
        json!({"id": 3, "command": "set-interval", "seconds": 2}),
    )
    .await;
    let ack = mqtt
        .expect("/replies", Duration::from_secs(10), |v| v["id"] == 3)
        .await;
    assert_eq!(
        (ack["ok"].clone(), ack["interval_secs"].clone()),
        (json!(true), json!(2)),
        "{ack}"
    );
    mqtt.expect("/status", Duration::from_secs(10), |v| {
        v["interval_secs"] == 2
    })
    .await;
    mqtt.client
        .publish(
            topic("commands"),
            rumqttc::QoS::AtLeastOnce,
            false,
            "rescan",
        )
        .await
        .unwrap();
    let ack = mqtt
        .expect("/replies", Duration::from_secs(10), |v| {
            v["command"] == "rescan"
        })
        .await;
    assert_eq!(ack["ok"], true);
    mqtt.publish(
        &topic("commands"),
        json!({"id": "x", "command": "self-destruct"}),
    )
    .await;
    let ack = mqtt
        .expect("/replies", Duration::from_secs(10), |v| v["id"] == "x")
        .await;
    assert_eq!(ack["ok"], false);
    assert!(
        ack["error"].as_str().unwrap().contains("unknown command"),
        "{ack}"
    );

    // SIGKILL: the broker publishes the last will.
    agent.kill();
    let will = mqtt
        .expect("/status", Duration::from_secs(20), |v| {
            v["state"] == "offline"
        })
        .await;
    assert_eq!(will["reason"], "connection lost", "{will}");
    app.stop().await;
}

async fn fleet_entry(app: &TestApp, camera: &str) -> serde_json::Value {
    let v: serde_json::Value = app
        .http
        .get(app.url("/v1/projects/fleet/cameras"))
        .bearer_auth(common::services::ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == camera)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reach_the_fleet_view_and_a_killed_agent_turns_offline() {
    let app = TestApp::start(Opts::default()).await;
    app.create_project("fleet").await;
    let (camera, token) = app.create_camera("fleet", "roof").await;
    let (idle, _) = app.create_camera("fleet", "never-started").await;
    let dir = TestDir::new("fleet");
    let mut agent = mqtt_agent(&dir, &app, &camera, &token);
    let v = eventually(
        Duration::from_secs(30),
        "camera online in the fleet view",
        || async {
            let v = fleet_entry(&app, &camera).await;
            (v["online"] == true).then_some(v)
        },
    )
    .await;
    assert_eq!(v["state"], "running");
    assert_eq!(v["heartbeat_interval_secs"], 1);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["disk_free_bytes"].as_i64().is_some_and(|b| b > 0), "{v}");
    let never = fleet_entry(&app, &idle).await;
    assert_eq!(
        (never["online"].clone(), never["state"].clone()),
        (json!(false), serde_json::Value::Null)
    );

    // An upload shows as the last upload (camera's report) and last received (backend's).
    write_direct(
        &dir.capture(),
        "one.jpg",
        &common::services::jpeg(9, 40, 30),
        base_time(),
    );
    let v = eventually(
        Duration::from_secs(30),
        "last upload in the fleet view",
        || async {
            let v = fleet_entry(&app, &camera).await;
            (v["last_upload_at"].is_string() && v["backlog"] == 0).then_some(v)
        },
    )
    .await;
    assert!(v["last_received_at"].is_string(), "{v}");

    agent.kill();
    let v = eventually(
        Duration::from_secs(20),
        "offline after SIGKILL (last will)",
        || async {
            let v = fleet_entry(&app, &camera).await;
            (v["state"] == "offline").then_some(v)
        },
    )
    .await;
    assert_eq!(v["online"], false);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_over_quota_warns_in_log_and_heartbeat_and_keeps_every_frame() {
    // A backend that is not there: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let camera = uuid::Uuid::new_v4().to_string();
    let topic = format!("lapseguard/cameras/{camera}/#");
    let mut mqtt = TestMqtt::connect(&topic).await;
    let dir = TestDir::new("quota");
    let (url, mut env) = mqtt_env();
    env.push(("LAPSEGUARD_HEARTBEAT_SECS", "1".into()));
    env.push(("LAPSEGUARD_SPOOL_WARN_BYTES", "1000".into()));
    // Only the backlog quota is under test; a nearly full disk on the test
    // machine must not change which warning comes first.
    env.push(("LAPSEGUARD_DISK_WARN_FREE_PERCENT", "0".into()));
    let agent = Agent::watch(
        &dir,
        &format!("http://127.0.0.1:{port}"),
        "some-token",
        &[&format!("--mqtt={url}"), &format!("--camera-id={camera}")],
        &env,
    );
    for i in 0..3u32 {
        let bytes = common::noise_jpeg(u64::from(i), 64, 64);
        write_direct(
            &dir.capture(),
            &format!("q{i}.jpg"),
            &bytes,
            base_time() + chrono::Duration::seconds(i.into()),
        );
    }
    let hb = mqtt
        .expect("/status", Duration::from_secs(30), |v| {
            v["backlog"] == 3
                && v["warnings"].as_array().is_some_and(|w| {
                    w.iter()
                        .any(|x| x.as_str().is_some_and(|s| s.contains("spool_warn_bytes")))
                })
        })
        .await;
    let warnings = hb["warnings"].as_array().expect("warnings array");
    assert_eq!(warnings.len(), 1, "only the backlog warning: {hb}");
    assert_eq!(hb["uplink"], "retrying", "{hb}");
    assert!(
        hb["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{hb}"
    );
    assert!(
        agent.log_text().contains("unsent frames are kept"),
        "{}",
        agent.log_text()
    );
    assert_eq!(dir.spooled("pending").len(), 3, "nothing unsent is deleted");
}
