//! Fleet view: which cameras are alive, what they have not sent yet, when they last
//! uploaded.
//!
//! Cameras publish a retained heartbeat on the MQTT topic
//! `{fleet_topic_prefix}/cameras/{camera id}/status` (and their broker-published last
//! will, `offline`, on the same topic). RabbitMQ's MQTT plugin routes MQTT publishes into
//! the `amq.topic` exchange with `/` turned into `.`, so the backend reads them over the
//! AMQP connection it already has: queue `{amqp_prefix}.camera-status`, bound with
//! `{fleet_topic_prefix}.cameras.*.status`. Replicas share the queue (each heartbeat is
//! recorded once); heartbeats are only worth their latest value, so the queue is bounded
//! (oldest dropped), messages expire after five minutes, and the queue itself after an
//! hour without consumers.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapseguard_core::catalog::CatalogError;
use lapseguard_core::fleet::{FleetCamera, Heartbeat};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiError, Problem};

/// Heartbeats larger than this are not camera heartbeats.
const MAX_HEARTBEAT_BYTES: usize = 64 * 1024;
const MAX_INTERVAL_SECS: u64 = 86_400;
const QUEUE_MAX_LENGTH: i64 = 10_000;
const MESSAGE_TTL_MS: i64 = 5 * 60 * 1000;
const QUEUE_EXPIRES_MS: i64 = 60 * 60 * 1000;

/// The camera id of a routing key `{prefix}.cameras.{id}.status`.
pub fn camera_of(routing_key: &str, topic_prefix: &str) -> Option<Uuid> {
    let id = routing_key
        .strip_prefix(topic_prefix)?
        .strip_prefix(".cameras.")?
        .strip_suffix(".status")?;
    Uuid::try_parse(id).ok()
}

fn time(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn int(v: &serde_json::Value) -> Option<i64> {
    v.as_u64().and_then(|n| i64::try_from(n).ok())
}

/// Parses a heartbeat (or last will) of `camera`. The routing key names the camera; the
/// payload's own `camera` field, if any, must agree.
pub fn parse_heartbeat(
    camera: Uuid,
    body: &[u8],
    default_interval_secs: u64,
) -> Result<Heartbeat, String> {
    if body.len() > MAX_HEARTBEAT_BYTES {
        return Err(format!("{} bytes is too large for a heartbeat", body.len()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    if let Some(named) = v.get("camera").and_then(|c| c.as_str())
        && Uuid::try_parse(named).ok() != Some(camera)
    {
        return Err(format!(
            "payload names camera {named:?}, topic names {camera}"
        ));
    }
    let state = match v.get("state").and_then(|s| s.as_str()) {
        Some(s @ ("running" | "paused" | "offline")) => s.to_string(),
        Some(other) => return Err(format!("unknown state {other:?}")),
        None => return Err("no state".into()),
    };
    let interval = v
        .get("interval_secs")
        .and_then(|i| i.as_u64())
        .filter(|i| (1..=MAX_INTERVAL_SECS).contains(i))
        .unwrap_or(default_interval_secs.clamp(1, MAX_INTERVAL_SECS));
    Ok(Heartbeat {
        camera_id: camera,
        state,
        interval_secs: i32::try_from(interval).unwrap_or(i32::MAX),
        sent_at: time(&v["sent_at"]),
        backlog: int(&v["backlog"]),
        backlog_bytes: int(&v["backlog_bytes"]),
        last_upload_at: time(&v["last_upload_at"]),
        disk_free_bytes: int(&v["disk_free_bytes"]),
        version: v
            .get("version")
            .and_then(|s| s.as_str())
            .map(|s| s.chars().take(64).collect()),
        payload: v,
    })
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// Consumes heartbeats until `shutdown`, reconnecting after any broker failure.
pub async fn consume(state: AppState, shutdown: CancellationToken) {
    let queue = format!("{}.camera-status", state.infra.amqp_prefix);
    let binding = format!("{}.cameras.*.status", state.settings.fleet_topic_prefix);
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let name = format!(
            "backend-fleet@{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into())
        );
        let setup = async {
            let conn = lapseguard_core::queue::connect(&state.infra.amqp_url, &name).await?;
            let ch = conn.create_channel().await?;
            ch.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                table(&[
                    ("x-max-length", AMQPValue::LongLongInt(QUEUE_MAX_LENGTH)),
                    (
                        "x-overflow",
                        AMQPValue::LongString(LongString::from("drop-head")),
                    ),
                    ("x-message-ttl", AMQPValue::LongLongInt(MESSAGE_TTL_MS)),
                    ("x-expires", AMQPValue::LongLongInt(QUEUE_EXPIRES_MS)),
                ]),
            )
            .await?;
            ch.queue_bind(
                queue.as_str().into(),
                state.settings.fleet_exchange.as_str().into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.basic_qos(100, BasicQosOptions::default()).await?;
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((conn, ch, consumer))
        };
        let (conn, channel, mut consumer) = match setup.await {
            Ok(x) => x,
            Err(e) => {
                failures += 1;
                let delay = Duration::from_millis(250 * 2u64.pow(failures.min(6)));
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "fleet view: cannot consume camera heartbeats");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        tracing::info!(%queue, %binding, "fleet view: consuming camera heartbeats");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    let _ = channel.close(200, "backend shutting down".into()).await;
                    let _ = conn.close(200, "backend shutting down".into()).await;
                    return;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        record(&state, delivery.routing_key.as_str(), &delivery.data).await;
                        // Heartbeats are never redelivered: the next one follows anyway.
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "fleet view: heartbeat consumer failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("fleet view: heartbeat consumer cancelled; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

async fn record(state: &AppState, routing_key: &str, body: &[u8]) {
    let result = match camera_of(routing_key, &state.settings.fleet_topic_prefix) {
        None => Err(format!("routing key {routing_key:?} names no camera id")),
        Some(camera) => parse_heartbeat(camera, body, state.settings.fleet_default_interval_secs),
    };
    let label = match result {
        Err(reason) => {
            tracing::debug!(routing_key, %reason, "fleet view: message ignored");
            "invalid"
        }
        Ok(hb) => match state.catalog.record_heartbeat(&hb).await {
            Ok(true) => "recorded",
            // Unknown camera (another deployment on the same broker?) or out of order.
            Ok(false) => "ignored",
            Err(e) => {
                tracing::warn!(camera = %hb.camera_id, error = %e, "fleet view: heartbeat not recorded");
                "error"
            }
        },
    };
    metrics::counter!("lapseguard_fleet_heartbeats_total", "result" => label).increment(1);
}

#[derive(Serialize, ToSchema)]
pub struct CameraStatus {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Set when the camera's token was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// A heartbeat arrived within 3 of the camera's heartbeat intervals, and its last word
    /// was not `offline` (its last will, published by the broker when the connection
    /// died, or a clean stop).
    pub online: bool,
    /// `running`, `paused` or `offline`; null when the camera never sent a heartbeat.
    pub state: Option<String>,
    /// When the backend received the last heartbeat.
    pub last_seen_at: Option<DateTime<Utc>>,
    pub heartbeat_interval_secs: Option<i32>,
    /// Frames waiting in the camera's spool, and their size.
    pub backlog: Option<i64>,
    pub backlog_bytes: Option<i64>,
    /// Last successful upload, as the camera reported it.
    pub last_upload_at: Option<DateTime<Utc>>,
    /// Last image this backend received from the camera.
    pub last_received_at: Option<DateTime<Utc>>,
    pub disk_free_bytes: Option<i64>,
    /// camera-agent version.
    pub version: Option<String>,
    /// Warnings of the last heartbeat (spool or disk above their thresholds).
    pub warnings: Vec<String>,
    /// Last upload error the camera reported, if its last upload failed.
    pub last_error: Option<String>,
}

impl From<FleetCamera> for CameraStatus {
    fn from(c: FleetCamera) -> Self {
        let hb = c.heartbeat.unwrap_or_default();
        CameraStatus {
            id: c.id,
            name: c.name,
            created_at: c.created_at,
            revoked_at: c.revoked_at,
            online: c.online,
            state: c.state,
            last_seen_at: c.last_seen_at,
            heartbeat_interval_secs: c.interval_secs,
            backlog: c.backlog,
            backlog_bytes: c.backlog_bytes,
            last_upload_at: c.last_upload_at,
            last_received_at: c.last_received_at,
            disk_free_bytes: c.disk_free_bytes,
            version: c.version,
            warnings: hb["warnings"]
                .as_array()
                .map(|w| {
                    w.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            last_error: hb["last_error"].as_str().map(str::to_owned),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Fleet {
    pub items: Vec<CameraStatus>,
}

/// The cameras of a project with their liveness, backlog and last upload.
#[utoipa::path(get, path = "/v1/projects/{slug}/cameras", tag = "cameras",
    params(("slug" = String, Path, description = "Project slug")), security(("bearer" = [])),
    responses((status = 200, body = Fleet), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)))]
pub async fn list_cameras(
    State(state): State<AppState>,
    principal: Principal,
    Path(slug): Path<String>,
) -> Result<Json<Fleet>, ApiError> {
    let unavailable = |e: CatalogError| ApiError::from_catalog(e, state.settings.retry_after_secs);
    let project = crate::api::project_for(&state, &slug).await?;
    if !principal.may_read_project(project.id) {
        return Err(ApiError::Forbidden(format!(
            "this token may not read project {slug:?}"
        )));
    }
    let cameras = state.catalog.fleet(project.id).await.map_err(unavailable)?;
    Ok(Json(Fleet {
        items: cameras.into_iter().map(CameraStatus::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys() {
        let id = Uuid::now_v7();
        assert_eq!(
            camera_of(&format!("lapseguard.cameras.{id}.status"), "lapseguard"),
            Some(id)
        );
        assert_eq!(
            camera_of(&format!("other.cameras.{id}.status"), "lapseguard"),
            None
        );
        assert_eq!(
            camera_of("lapseguard.cameras.cam-1.status", "lapseguard"),
            None
        );
        assert_eq!(
            camera_of(&format!("lapseguard.cameras.{id}.replies"), "lapseguard"),
            None
        );
    }

    #[test]
    fn heartbeats_and_wills() {
        let id = Uuid::now_v7();
        let hb = parse_heartbeat(
            id,
            format!(
                r#"{{"camera":"{id}","state":"paused","sent_at":"2026-01-01T00:00:00Z","interval_secs":5,
                   "backlog":3,"backlog_bytes":300,"last_upload_at":null,"disk_free_bytes":1000,"version":"0.1.0"}}"#
            )
            .as_bytes(),
            30,
        )
        .unwrap();
        assert_eq!(hb.state, "paused");
        assert_eq!(hb.interval_secs, 5);
        assert_eq!(hb.backlog, Some(3));
        assert!(!hb.is_will());
        let will =
            parse_heartbeat(id, br#"{"state":"offline","reason":"connection lost"}"#, 30).unwrap();
        assert!(will.is_will());
        assert_eq!(will.interval_secs, 30);
        let other = Uuid::now_v7();
        assert!(
            parse_heartbeat(
                id,
                format!(r#"{{"camera":"{other}","state":"running"}}"#).as_bytes(),
                30
            )
            .is_err()
        );
        assert!(parse_heartbeat(id, br#"{"state":"exploded"}"#, 30).is_err());
        assert!(parse_heartbeat(id, b"[1]", 30).is_err());
        assert!(parse_heartbeat(id, b"\xff", 30).is_err());
        assert!(
            parse_heartbeat(id, br#"{"state":"running","interval_secs":0}"#, 30)
                .is_ok_and(|h| h.interval_secs == 30)
        );
    }
}
