//! Timelapse renders: request one for a project (admin), follow its progress, stream the
//! video. The rendering itself is done by the renderer (`renderer/`), which claims the
//! request from the catalog.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use lapseguard_core::catalog::{ImageStatus, ListQuery};
use lapseguard_core::timelapse::{NewTimelapse, Timelapse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::api::project_for;
use crate::auth::Principal;
use crate::problem::{ApiError, Problem};

/// Largest default frame size: frames are fitted into 1920×1080 unless a size is given.
const DEFAULT_BOX: (i32, i32) = (1920, 1080);

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTimelapseRequest {
    /// Only frames captured at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Only frames captured before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Only this camera's frames.
    pub camera: Option<Uuid>,
    /// Frames per second of the video (1-120, default 24).
    pub fps: Option<i32>,
    /// Video size (both or neither; even, 16-7680 × 16-4320). Default: the first frame's
    /// size fitted into 1920×1080. Frames of another aspect ratio are letterboxed.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Skip frames that are not anonymized (failed or still in progress) and count them
    /// (default). With `false`, the request is refused while any frame is unfinished.
    pub skip_unfinished: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimelapseView {
    pub id: Uuid,
    pub project: String,
    /// queued, rendering, done or failed.
    pub status: String,
    pub camera: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub fps: i32,
    pub width: i32,
    pub height: i32,
    /// Frames in the selection (known once rendering started).
    pub frames_total: Option<i32>,
    pub frames_rendered: i32,
    /// Frames left out because their anonymization failed or was unfinished.
    pub frames_skipped: i32,
    /// Share of the selection processed, 0.0-1.0.
    pub progress: f64,
    pub attempts: i32,
    /// Size of the video in bytes, once done.
    pub bytes: Option<i64>,
    /// Where to fetch the video, once done.
    pub video: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Timelapse> for TimelapseView {
    fn from(t: Timelapse) -> Self {
        let progress = match t.frames_total {
            Some(n) if n > 0 => {
                (f64::from(t.frames_rendered + t.frames_skipped) / f64::from(n)).min(1.0)
            }
            _ if t.status == lapseguard_core::timelapse::TimelapseStatus::Done => 1.0,
            _ => 0.0,
        };
        Self {
            video: (t.status == lapseguard_core::timelapse::TimelapseStatus::Done)
                .then(|| format!("/v1/timelapses/{}/video", t.id)),
            id: t.id,
            project: t.project,
            status: t.status.as_str().into(),
            camera: t.camera_id,
            from: t.captured_from,
            to: t.captured_to,
            fps: t.fps,
            width: t.width,
            height: t.height,
            frames_total: t.frames_total,
            frames_rendered: t.frames_rendered,
            frames_skipped: t.frames_skipped,
            progress,
            attempts: t.attempts,
            bytes: t.bytes,
            error: t.error,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// `w`×`h` fitted into `bounds` keeping the aspect ratio, rounded down to even numbers.
pub fn fit_even(w: i32, h: i32, bounds: (i32, i32)) -> (i32, i32) {
    let (bw, bh) = bounds;
    let scale = (f64::from(bw) / f64::from(w.max(1)))
        .min(f64::from(bh) / f64::from(h.max(1)))
        .min(1.0);
    let even = |v: f64| ((v as i32) / 2 * 2).max(16);
    (even(f64::from(w) * scale), even(f64::from(h) * scale))
}

/// Request a timelapse of a project's anonymized frames (admin).
#[utoipa::path(post, path = "/v1/projects/{slug}/timelapses", tag = "timelapses",
    params(("slug" = String, Path)), request_body = NewTimelapseRequest, security(("bearer" = [])),
    responses((status = 202, body = TimelapseView), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(slug): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    // An empty body asks for the defaults.
    let req: NewTimelapseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        NewTimelapseRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid timelapse request: {e}")))?
    };
    let unavailable = |e| ApiError::from_catalog(e, state.settings.retry_after_secs);
    let project = project_for(&state, &slug).await?;
    let fps = req.fps.unwrap_or(24);
    if !(1..=120).contains(&fps) {
        return Err(ApiError::BadRequest("fps must be 1 to 120".into()));
    }
    if let (Some(from), Some(to)) = (req.from, req.to)
        && from >= to
    {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    if let Some(camera) = req.camera {
        let cameras = state.catalog.fleet(project.id).await.map_err(unavailable)?;
        if !cameras.iter().any(|c| c.id == camera) {
            return Err(ApiError::NotFound(format!(
                "no camera {camera} in project {slug:?}"
            )));
        }
    }
    let select = |status: Option<ImageStatus>| ListQuery {
        project_id: project.id,
        status,
        limit: 1,
        oldest_first: true,
        camera_id: req.camera,
        captured_from: req.from,
        captured_to: req.to,
        ..Default::default()
    };
    if req.skip_unfinished == Some(false) {
        for status in [
            ImageStatus::Failed,
            ImageStatus::Queued,
            ImageStatus::Processing,
        ] {
            let any = state
                .catalog
                .list_images(&select(Some(status)))
                .await
                .map_err(unavailable)?;
            if let Some(img) = any.first() {
                return Err(ApiError::Conflict(format!(
                    "frame {} is {}; wait for it, or allow skipping unfinished frames",
                    img.id,
                    status.as_str()
                )));
            }
        }
    }
    let first = state
        .catalog
        .list_images(&select(Some(ImageStatus::Done)))
        .await
        .map_err(unavailable)?;
    let Some(first) = first.first() else {
        return Err(ApiError::InvalidImage(
            "no anonymized frames in the selection".into(),
        ));
    };
    let (width, height) = match (req.width, req.height) {
        (Some(w), Some(h)) => {
            if !(16..=7680).contains(&w) || !(16..=4320).contains(&h) || w % 2 != 0 || h % 2 != 0 {
                return Err(ApiError::BadRequest(
                    "width and height must be even, 16-7680 × 16-4320 (H.264 4:2:0)".into(),
                ));
            }
            (w, h)
        }
        (None, None) => fit_even(first.width, first.height, DEFAULT_BOX),
        _ => {
            return Err(ApiError::BadRequest(
                "give both width and height, or neither".into(),
            ));
        }
    };
    let t = state
        .catalog
        .create_timelapse(&NewTimelapse {
            id: Uuid::now_v7(),
            project_id: project.id,
            camera_id: req.camera,
            captured_from: req.from,
            captured_to: req.to,
            fps,
            width,
            height,
        })
        .await
        .map_err(unavailable)?;
    tracing::info!(timelapse_id = %t.id, project = %slug, fps, width, height, "timelapse requested");
    let location = format!("/v1/timelapses/{}", t.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(TimelapseView::from(t)),
    )
        .into_response())
}

async fn find(state: &AppState, id: &str) -> Result<Timelapse, ApiError> {
    let uuid =
        Uuid::try_parse(id).map_err(|_| ApiError::NotFound(format!("no timelapse {id:?}")))?;
    state
        .catalog
        .timelapse(uuid)
        .await
        .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?
        .ok_or_else(|| ApiError::NotFound(format!("no timelapse {id}")))
}

/// Status and progress of a timelapse render (admin).
#[utoipa::path(get, path = "/v1/timelapses/{id}", tag = "timelapses", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = TimelapseView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<TimelapseView>, ApiError> {
    principal.require_admin()?;
    Ok(Json(find(&state, &id).await?.into()))
}

/// The rendered video (H.264 MP4, streamed) (admin).
#[utoipa::path(get, path = "/v1/timelapses/{id}/video", tag = "timelapses", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, content_type = "video/mp4", description = "the video"),
        (status = 401, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn video(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let t = find(&state, &id).await?;
    let key = match (t.status, t.video_key) {
        (lapseguard_core::timelapse::TimelapseStatus::Done, Some(k)) => k,
        (status, _) => {
            return Err(ApiError::NotReady(format!(
                "timelapse {id} is {}; the video exists once it is done",
                status.as_str()
            )));
        }
    };
    let stream = state
        .objects
        .get_stream(&state.infra.timelapse_bucket, &key)
        .await
        .map_err(|e| ApiError::from_objects(e, state.settings.retry_after_secs))?;
    let mut resp = Response::new(Body::from_stream(stream.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("video/mp4"),
    );
    if let Some(len) = stream.len {
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    }
    if let Ok(v) = header::HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-{}.mp4\"",
        t.project, t.id
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sizes_fit_the_box_and_are_even() {
        assert_eq!(fit_even(4000, 3000, DEFAULT_BOX), (1440, 1080));
        assert_eq!(fit_even(1920, 1080, DEFAULT_BOX), (1920, 1080));
        assert_eq!(fit_even(641, 481, DEFAULT_BOX), (640, 480));
        assert_eq!(fit_even(3840, 2160, DEFAULT_BOX), (1920, 1080));
        assert_eq!(fit_even(2, 2, DEFAULT_BOX), (16, 16));
    }
}
