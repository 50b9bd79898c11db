//! HTTP API v1 handlers.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use lapseguard_core::catalog::{Cursor, Image, ImageStatus, ListQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Principal, new_camera_token};
use crate::ingest::{self, Outcome};
use crate::problem::{ApiError, Problem};

/// JSON body extractor whose rejections are problem+json.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

#[derive(Deserialize, ToSchema)]
pub struct NewProject {
    /// Lowercase letters, digits and dashes; 1–63 characters.
    pub slug: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize, ToSchema)]
pub struct NewCamera {
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct CameraCreated {
    pub id: Uuid,
    pub name: String,
    /// Bearer token of the camera. Shown only in this answer; stored only as a hash.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct ImageView {
    pub id: Uuid,
    /// Project slug.
    pub project: String,
    /// Camera id.
    pub camera: Uuid,
    pub captured_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub sha256: String,
    pub bytes: i64,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    /// `queued`, `processing`, `done` or `failed`.
    pub status: String,
    /// Number of faces blurred (once `done`).
    pub faces: Option<i32>,
    /// Why processing failed (or why the last attempt did).
    pub error: Option<String>,
    pub attempts: i32,
    pub updated_at: DateTime<Utc>,
}

impl From<Image> for ImageView {
    fn from(i: Image) -> Self {
        ImageView {
            id: i.id,
            project: i.project,
            camera: i.camera_id,
            captured_at: i.captured_at,
            received_at: i.received_at,
            sha256: i.sha256,
            bytes: i.bytes,
            content_type: i.content_type,
            width: i.width,
            height: i.height,
            status: i.status.as_str().to_string(),
            faces: i.faces,
            error: i.error,
            attempts: i.attempts,
            updated_at: i.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ImagePage {
    pub items: Vec<ImageView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct ListParams {
    /// Only images with this status.
    pub status: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn parse_id(s: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s).map_err(|_| ApiError::NotFound(format!("no {what} {s:?}")))
}

/// Create a project (admin).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    security(("bearer" = [])),
    responses((status = 201, body = ProjectView), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<NewProject>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    principal.require_admin()?;
    if !valid_slug(&body.slug) {
        return Err(ApiError::BadRequest(
            "slug must be 1-63 lowercase letters, digits or dashes, starting with a letter or digit"
                .into(),
        ));
    }
    if body.name.trim().is_empty() {
        return Err(ApiError::BadRequest("name must not be empty".into()));
    }
    let p = state
        .catalog
        .create_project(&body.slug, body.name.trim())
        .await
        .map_err(|e| match e {
            lapseguard_core::catalog::CatalogError::Conflict(_) => {
                ApiError::Conflict(format!("project {:?} already exists", body.slug))
            }
            other => ApiError::from_catalog(other, state.settings.retry_after_secs),
        })?;
    tracing::info!(project = %p.slug, "project created");
    Ok((
        StatusCode::CREATED,
        Json(ProjectView {
            id: p.id,
            slug: p.slug,
            name: p.name,
            created_at: p.created_at,
        }),
    ))
}

pub(crate) async fn project_for(
    state: &AppState,
    slug: &str,
) -> Result<lapseguard_core::catalog::Project, ApiError> {
    state
        .catalog
        .project_by_slug(slug)
        .await
        .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?
        .ok_or_else(|| ApiError::NotFound(format!("no project {slug:?}")))
}

/// Register a camera in a project (admin). The token is shown once.
#[utoipa::path(post, path = "/v1/projects/{slug}/cameras", tag = "cameras", request_body = NewCamera,
    params(("slug" = String, Path, description = "Project slug")), security(("bearer" = [])),
    responses((status = 201, body = CameraCreated), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn create_camera(
    State(state): State<AppState>,
    principal: Principal,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<NewCamera>,
) -> Result<(StatusCode, Json<CameraCreated>), ApiError> {
    principal.require_admin()?;
    if body.name.trim().is_empty() {
        return Err(ApiError::BadRequest("name must not be empty".into()));
    }
    let project = project_for(&state, &slug).await?;
    let (token, hash) = new_camera_token();
    let cam = state
        .catalog
        .create_camera(project.id, body.name.trim(), &hash)
        .await
        .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?;
    tracing::info!(project = %slug, camera = %cam.id, "camera registered");
    Ok((
        StatusCode::CREATED,
        Json(CameraCreated {
            id: cam.id,
            name: cam.name,
            token,
        }),
    ))
}

/// Revoke a camera's token (admin).
#[utoipa::path(delete, path = "/v1/projects/{slug}/cameras/{id}", tag = "cameras",
    params(("slug" = String, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), (status = 404, body = Problem)))]
pub async fn revoke_camera(
    State(state): State<AppState>,
    principal: Principal,
    Path((slug, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    let project = project_for(&state, &slug).await?;
    let id = parse_id(&id, "camera")?;
    if state
        .catalog
        .revoke_camera(project.id, id)
        .await
        .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?
    {
        tracing::info!(project = %slug, camera = %id, "camera revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no camera {id} in {slug:?}")))
    }
}

/// Upload an image (camera token). Idempotent on the SHA-256 of the bytes.
#[utoipa::path(post, path = "/v1/images", tag = "images",
    request_body(content = Vec<u8>, content_type = "image/jpeg", description = "The raw JPEG or PNG bytes (Content-Type image/jpeg or image/png)"),
    params(("X-Captured-At" = Option<String>, Header, description = "Capture time, RFC 3339; default now")),
    security(("bearer" = [])),
    responses((status = 201, description = "Stored and queued", body = ImageView),
        (status = 200, description = "These bytes were already uploaded to this project", body = ImageView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 413, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn upload_image(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    let camera = match principal {
        Principal::Camera(c) => c,
        Principal::Admin => {
            return Err(ApiError::Forbidden(
                "uploads need a camera token (it names project and camera)".into(),
            ));
        }
    };
    let limit = state.settings.max_upload_bytes;
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > limit as u64) {
        metrics::counter!("lapseguard_uploads_total", "result" => "too_large").increment(1);
        return Err(ApiError::PayloadTooLarge(format!(
            "body of {} bytes exceeds the limit of {limit} bytes",
            declared_len.unwrap_or_default()
        )));
    }
    // Stream with a hard cap: a body without (or lying about) Content-Length is cut at
    // the limit instead of being buffered whole.
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                metrics::counter!("lapseguard_uploads_total", "result" => "too_large").increment(1);
                return Err(ApiError::PayloadTooLarge(format!(
                    "body exceeds the limit of {limit} bytes"
                )));
            }
            return Err(ApiError::BadRequest(format!(
                "reading the body failed: {e}"
            )));
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let captured_at = match headers.get("x-captured-at") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("X-Captured-At is not ASCII".into()))?,
        ),
    };
    let size = bytes.len();
    let result = ingest::ingest(&state, &camera, content_type, captured_at, bytes).await;
    let label = match &result {
        Ok(Outcome::Created(_)) => "created",
        Ok(Outcome::Existing(_)) => "duplicate",
        Err(e) if e.status().is_server_error() => "error",
        Err(_) => "rejected",
    };
    metrics::counter!("lapseguard_uploads_total", "result" => label).increment(1);
    match result? {
        Outcome::Created(img) => {
            metrics::counter!("lapseguard_upload_bytes_total").increment(size as u64);
            tracing::info!(image_id = %img.id, project = %img.project, camera = %img.camera_id, bytes = size, "image accepted");
            Ok((StatusCode::CREATED, Json(img.into())))
        }
        Outcome::Existing(img) => {
            tracing::info!(image_id = %img.id, project = %img.project, "duplicate upload; existing image returned");
            Ok((StatusCode::OK, Json(img.into())))
        }
    }
}

async fn visible_image(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Image, ApiError> {
    let uuid = parse_id(id, "image")?;
    let img = state
        .catalog
        .image(uuid)
        .await
        .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?
        .filter(|i| principal.may_read_project(i.project_id))
        .ok_or_else(|| ApiError::NotFound(format!("no image {id}")))?;
    Ok(img)
}

/// Status of one image.
#[utoipa::path(get, path = "/v1/images/{id}", tag = "images", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = ImageView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_image(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ImageView>, ApiError> {
    Ok(Json(visible_image(&state, &principal, &id).await?.into()))
}

/// The anonymized image, once `done`. Originals are never served.
#[utoipa::path(get, path = "/v1/images/{id}/anonymized", tag = "images", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, description = "Anonymized JPEG or PNG", content_type = "image/jpeg"),
        (status = 404, body = Problem), (status = 409, description = "Not done yet", body = Problem)))]
pub async fn get_anonymized(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let img = visible_image(&state, &principal, &id).await?;
    let key = match (img.status, img.output_key.as_deref()) {
        (ImageStatus::Done, Some(key)) => key.to_string(),
        (status, _) => {
            return Err(ApiError::NotReady(format!(
                "image {} is {}; the anonymized version exists once it is done",
                img.id,
                status.as_str()
            )));
        }
    };
    let bytes = state
        .objects
        .get(&state.infra.output_bucket, &key)
        .await
        .map_err(|e| ApiError::from_objects(e, state.settings.retry_after_secs))?;
    Ok((
        [
            (header::CONTENT_TYPE, img.content_type),
            (
                header::CACHE_CONTROL,
                "private, max-age=86400, immutable".into(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Images of a project, newest capture first (keyset pagination).
#[utoipa::path(get, path = "/v1/projects/{slug}/images", tag = "images",
    params(("slug" = String, Path), ListParams), security(("bearer" = [])),
    responses((status = 200, body = ImagePage), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_images(
    State(state): State<AppState>,
    principal: Principal,
    Path(slug): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<ImagePage>, ApiError> {
    let project = project_for(&state, &slug).await?;
    if !principal.may_read_project(project.id) {
        return Err(ApiError::Forbidden(format!(
            "this token may not read project {slug:?}"
        )));
    }
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(ImageStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status must be queued, processing, done or failed, got {s:?}"
            ))
        })?),
    };
    let limit = params.limit.unwrap_or(state.settings.default_page_size);
    if !(1..=state.settings.max_page_size).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {}",
            state.settings.max_page_size
        )));
    }
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            Some(Cursor::decode(c).ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))?)
        }
    };
    let mut items = state
        .catalog
        .list_images(&ListQuery {
            project_id: project.id,
            status,
            limit: limit + 1,
            after,
            oldest_first: false,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|i| {
            Cursor {
                captured_at: i.captured_at,
                id: i.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Json(ImagePage {
        items: items.into_iter().map(ImageView::from).collect(),
        next_cursor,
    }))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

#[cfg(test)]
mod tests {
    use super::valid_slug;

    #[test]
    fn slugs() {
        assert!(valid_slug("site-a"));
        assert!(valid_slug("0abc"));
        assert!(!valid_slug(""));
        assert!(!valid_slug("-a"));
        assert!(!valid_slug("Site"));
        assert!(!valid_slug("a/b"));
        assert!(!valid_slug(&"a".repeat(64)));
    }
}
