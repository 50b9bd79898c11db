//! Timelapse renders: what an admin asks for, and what the renderer reports back.
//!
//! A render is a row in the catalog, not a broker message: renders are rare and long
//! (minutes for tens of thousands of frames), longer than a broker should hold an
//! unacknowledged delivery. A renderer claims a row with a lease that it extends while it
//! works; when it dies the lease runs out and another renderer takes the render again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimelapseStatus {
    Queued,
    Rendering,
    Done,
    Failed,
}

impl TimelapseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelapseStatus::Queued => "queued",
            TimelapseStatus::Rendering => "rendering",
            TimelapseStatus::Done => "done",
            TimelapseStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TimelapseStatus::Queued,
            "rendering" => TimelapseStatus::Rendering,
            "done" => TimelapseStatus::Done,
            "failed" => TimelapseStatus::Failed,
            _ => return None,
        })
    }
}

/// What to render: a project's anonymized frames in capture order, optionally of one
/// camera and a capture-time window `[from, to)`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTimelapse {
    pub id: Uuid,
    pub project_id: Uuid,
    pub camera_id: Option<Uuid>,
    pub captured_from: Option<DateTime<Utc>>,
    pub captured_to: Option<DateTime<Utc>>,
    pub fps: i32,
    pub width: i32,
    pub height: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timelapse {
    pub id: Uuid,
    pub project_id: Uuid,
    pub project: String,
    pub camera_id: Option<Uuid>,
    pub captured_from: Option<DateTime<Utc>>,
    pub captured_to: Option<DateTime<Utc>>,
    pub fps: i32,
    pub width: i32,
    pub height: i32,
    pub status: TimelapseStatus,
    pub attempts: i32,
    /// Frames in the selection (known once rendering started).
    pub frames_total: Option<i32>,
    /// Frames encoded so far.
    pub frames_rendered: i32,
    /// Frames left out because their anonymization failed or is not finished.
    pub frames_skipped: i32,
    pub video_key: Option<String>,
    pub bytes: Option<i64>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Progress a renderer reports (and with it, extends its lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenderProgress {
    pub frames_total: i32,
    pub frames_rendered: i32,
    pub frames_skipped: i32,
}

/// Where the video of render `id` of `project` is stored: deterministic, so a render
/// that runs again overwrites instead of leaving a second file.
pub fn video_key(project: &str, id: Uuid) -> String {
    format!("{project}/{id}.mp4")
}
