//! What the fleet view keeps per camera: its last heartbeat (camera-agent → MQTT →
//! RabbitMQ's `amq.topic` → backend) and what the project listing shows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// One heartbeat, or a last will (`state == "offline"` without `sent_at`).
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub camera_id: Uuid,
    /// `running`, `paused` or `offline`.
    pub state: String,
    /// The camera's heartbeat interval (online = a heartbeat within 3 of them).
    pub interval_secs: i32,
    /// The camera's clock when it sent the heartbeat; `None` for a last will, which the
    /// broker publishes on the camera's behalf.
    pub sent_at: Option<DateTime<Utc>>,
    pub backlog: Option<i64>,
    pub backlog_bytes: Option<i64>,
    pub last_upload_at: Option<DateTime<Utc>>,
    pub disk_free_bytes: Option<i64>,
    pub version: Option<String>,
    /// The whole message as received.
    pub payload: serde_json::Value,
}

impl Heartbeat {
    /// A last will: the broker noticed the camera's connection die.
    pub fn is_will(&self) -> bool {
        self.state == "offline" && self.sent_at.is_none()
    }
}

/// A camera of a project with what its heartbeats said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetCamera {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// A heartbeat within 3 intervals and the last word was not `offline`.
    pub online: bool,
    /// Last reported state; `None` when the camera never sent a heartbeat.
    pub state: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub interval_secs: Option<i32>,
    pub backlog: Option<i64>,
    pub backlog_bytes: Option<i64>,
    /// Last successful upload as the camera reported it.
    pub last_upload_at: Option<DateTime<Utc>>,
    /// Last image the backend received from this camera.
    pub last_received_at: Option<DateTime<Utc>>,
    pub disk_free_bytes: Option<i64>,
    pub version: Option<String>,
    pub heartbeat: Option<serde_json::Value>,
}
