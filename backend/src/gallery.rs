//! The project gallery: a server-rendered HTML page per project (`/projects/{slug}`) with
//! thumbnails of the anonymized images in capture order, their status and face counts,
//! and the project's cameras online/offline. No JavaScript.
//!
//! Only anonymized images are ever served here: thumbnails are made from the output
//! object (never the original), once, and cached next to it in the output bucket.
//!
//! Access: the admin bearer token, or a viewer link made by an admin
//! (`POST /v1/projects/{slug}/viewer-links`): `/projects/{slug}?key=…` carries a signed,
//! expiring key for that one project; the first visit turns it into an HttpOnly cookie
//! scoped to the project's pages and redirects to the clean URL.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use lapseguard_core::catalog::{Cursor, Image, ImageStatus, ListQuery};
use lapseguard_core::objects::ObjectError;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::AppState;
use crate::api::project_for as project;
use crate::auth::{Principal, bearer_token, constant_time_eq};
use crate::problem::ApiError;

const COOKIE_NAME: &str = "lapseguard_gallery";
/// Largest number of thumbnails decoded at once (each holds a decoded image).
const THUMB_WORKERS: usize = 2;

type HmacSha256 = Hmac<Sha256>;

/// The key that signs viewer links: `gallery_secret`, or one derived from the admin
/// token when that is not set (rotating either invalidates every link).
fn signing_key(state: &AppState) -> Option<Vec<u8>> {
    let s = &state.settings;
    if !s.gallery_secret.is_empty() {
        return Some(s.gallery_secret.as_bytes().to_vec());
    }
    if s.admin_token.is_empty() {
        return None;
    }
    let mut mac = HmacSha256::new_from_slice(s.admin_token.as_bytes()).ok()?;
    mac.update(b"lapseguard gallery viewer links v1");
    Some(mac.finalize().into_bytes().to_vec())
}

fn signature(secret: &[u8], slug: &str, expires: i64) -> Option<String> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(format!("v1\n{slug}\n{expires}").as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// A viewer key for one project: `v1.{expires unix seconds}.{hex HMAC-SHA256}`.
pub fn viewer_key(secret: &[u8], slug: &str, expires: DateTime<Utc>) -> Option<String> {
    let exp = expires.timestamp();
    Some(format!("v1.{exp}.{}", signature(secret, slug, exp)?))
}

/// Whether `key` is a valid, unexpired viewer key for `slug`; returns its expiry.
pub fn verify_viewer_key(
    secret: &[u8],
    slug: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut parts = key.split('.');
    let (Some("v1"), Some(exp), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let exp: i64 = exp.parse().ok()?;
    let expires = DateTime::from_timestamp(exp, 0)?;
    if expires <= now {
        return None;
    }
    let want = signature(secret, slug, exp)?;
    constant_time_eq(want.as_bytes(), sig.as_bytes()).then_some(expires)
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_string())
}

/// Admin bearer token, or the project's viewer cookie.
fn authorize(state: &AppState, headers: &HeaderMap, slug: &str) -> Result<(), ApiError> {
    let admin = state.settings.admin_token.as_bytes();
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_token);
    if let Some(token) = bearer
        && !admin.is_empty()
        && constant_time_eq(token.as_bytes(), admin)
    {
        return Ok(());
    }
    let secret = signing_key(state);
    match (cookie_value(headers), secret) {
        (Some(key), Some(secret)) if verify_viewer_key(&secret, slug, &key, Utc::now()).is_some() => {
            Ok(())
        }
        (Some(_), _) => Err(ApiError::Unauthorized(
            "this gallery link has expired or is not for this project; ask for a new one".into(),
        )),
        (None, _) => Err(ApiError::Unauthorized(
            "the gallery needs a viewer link (POST /v1/projects/{slug}/viewer-links) or the admin token"
                .into(),
        )),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageParams {
    /// Viewer key from a viewer link (exchanged for a cookie, then redirected away).
    key: Option<String>,
    /// Cursor of the last image of the previous page.
    after: Option<String>,
}

/// `GET /projects/{slug}`: the gallery page.
pub async fn page(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(params): Query<PageParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(key) = params.key {
        let secret = signing_key(&state)
            .ok_or_else(|| ApiError::Unauthorized("viewer links are not configured".into()))?;
        let now = Utc::now();
        let expires = verify_viewer_key(&secret, &slug, &key, now).ok_or_else(|| {
            ApiError::Unauthorized(
                "this gallery link has expired or is not for this project".into(),
            )
        })?;
        let max_age = (expires - now).num_seconds().max(0);
        let cookie = format!(
            "{COOKIE_NAME}={key}; Path=/projects/{slug}; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        );
        return Ok((
            StatusCode::SEE_OTHER,
            [
                (LOCATION, format!("/projects/{slug}")),
                (SET_COOKIE, cookie),
            ],
        )
            .into_response());
    }
    authorize(&state, &headers, &slug)?;
    let unavailable = |e| ApiError::from_catalog(e, state.settings.retry_after_secs);
    let project = project(&state, &slug).await?;
    let after = match params.after.as_deref() {
        Some(c) => Some(
            Cursor::decode(c).ok_or_else(|| ApiError::BadRequest(format!("bad cursor {c:?}")))?,
        ),
        None => None,
    };
    let limit = state.settings.gallery_page_size.clamp(1, 500);
    let mut images = state
        .catalog
        .list_images(&ListQuery {
            project_id: project.id,
            status: None,
            limit: limit + 1,
            after,
            oldest_first: true,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let next = if images.len() as i64 > limit {
        images.truncate(limit as usize);
        images.last().map(|i| {
            Cursor {
                captured_at: i.captured_at,
                id: i.id,
            }
            .encode()
        })
    } else {
        None
    };
    let counts = state
        .catalog
        .status_counts(project.id)
        .await
        .map_err(unavailable)?;
    let cameras = state.catalog.fleet(project.id).await.map_err(unavailable)?;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (project.name) " — lapseguard gallery" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (project.name) }
                    p.summary {
                        (counts.total()) " images: "
                        span.done { (counts.done) " anonymized" } ", "
                        span.queued { (counts.queued + counts.processing) " in progress" } ", "
                        span.failed { (counts.failed) " failed" }
                    }
                    @if !cameras.is_empty() {
                        ul.cameras {
                            @for c in &cameras {
                                li class=(if c.online { "online" } else if c.state.is_none() { "unknown" } else { "offline" }) {
                                    strong { (c.name) } " "
                                    @if c.revoked_at.is_some() { "revoked" }
                                    @else if c.online { "online" }
                                    @else if c.state.is_none() { "no heartbeat yet" }
                                    @else { "offline" }
                                    @if let Some(t) = c.last_received_at {
                                        " · last image " (t.format("%Y-%m-%d %H:%M:%S UTC"))
                                    }
                                }
                            }
                        }
                    }
                }
                main.grid {
                    @if images.is_empty() { p { "No images yet." } }
                    @for img in &images { (tile(&slug, img)) }
                }
                nav {
                    @if after.is_some() { a href={"/projects/" (slug)} { "« first" } " " }
                    @if let Some(n) = &next { a rel="next" href={"/projects/" (slug) "?after=" (n)} { "next »" } }
                }
            }
        }
    };
    Ok((
        [(CACHE_CONTROL, "private, no-store")],
        Html(markup.into_string()),
    )
        .into_response())
}

fn tile(slug: &str, img: &Image) -> Markup {
    let when = img.captured_at.format("%Y-%m-%d %H:%M:%S").to_string();
    html! {
        figure id={"image-" (img.id)} {
            @match img.status {
                ImageStatus::Done => {
                    a href={"/projects/" (slug) "/images/" (img.id)} {
                        img.thumb src={"/projects/" (slug) "/thumbs/" (img.id) ".jpg"}
                            alt={"frame captured " (when)};
                    }
                }
                ImageStatus::Failed => {
                    div.pending.failed title=(img.error.as_deref().unwrap_or("")) { "failed" }
                }
                status => { div.pending { (status.as_str()) } }
            }
            figcaption {
                (when) br;
                (img.status.as_str())
                @if let Some(f) = img.faces { " · " (f) @if f == 1 { " face" } @else { " faces" } }
            }
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem 2rem;background:#fafafa;color:#222}\
h1{margin:.2rem 0}.summary .failed{color:#b00}.cameras{list-style:none;padding:0;display:flex;gap:1rem;flex-wrap:wrap}\
.cameras li{padding:.2rem .6rem;border-radius:1rem;background:#eee}.cameras li.online{background:#d8f3dc}\
.cameras li.offline{background:#f8d7da}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:.8rem}\
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}\
figure img{display:block;width:100%;height:150px;object-fit:cover}\
.pending{height:150px;display:flex;align-items:center;justify-content:center;background:#eee;color:#666}\
.pending.failed{background:#f8d7da;color:#b00}figcaption{font-size:.8rem;padding:.3rem .5rem}nav{margin:1rem 0;font-size:1.1rem}";

async fn done_image(state: &AppState, slug: &str, id: &str) -> Result<(Image, String), ApiError> {
    let project = project(state, slug).await?;
    let uuid = Uuid::try_parse(id).map_err(|_| ApiError::NotFound(format!("no image {id}")))?;
    let img = state
        .catalog
        .image(uuid)
        .await
        .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?
        .filter(|i| i.project_id == project.id)
        .ok_or_else(|| ApiError::NotFound(format!("no image {id} in project {slug:?}")))?;
    match (img.status, img.output_key.clone()) {
        (ImageStatus::Done, Some(key)) => Ok((img, key)),
        (status, _) => Err(ApiError::NotReady(format!(
            "image {id} is {}; only anonymized images are shown",
            status.as_str()
        ))),
    }
}

/// Where the thumbnail of an output object is cached (output bucket, next to it).
pub fn thumbnail_key(output_key: &str) -> String {
    match output_key.rsplit_once('.') {
        Some((stem, ext)) if !ext.contains('/') => format!("{stem}.thumb.jpg"),
        _ => format!("{output_key}.thumb.jpg"),
    }
}

/// Scales an (anonymized) image down to fit `max_side` and encodes it as JPEG.
pub fn make_thumbnail(bytes: &[u8], max_side: u32) -> Result<Vec<u8>, String> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("decoding: {e}"))?;
    let thumb = img.thumbnail(max_side, max_side).to_rgb8();
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    thumb
        .write_with_encoder(enc)
        .map_err(|e| format!("encoding: {e}"))?;
    Ok(out)
}

fn thumb_permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(THUMB_WORKERS))
}

/// `GET /projects/{slug}/thumbs/{id}.jpg`: thumbnail of an anonymized image, made once.
pub async fn thumbnail(
    State(state): State<AppState>,
    Path((slug, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &slug)?;
    let id = file
        .strip_suffix(".jpg")
        .ok_or_else(|| ApiError::NotFound(format!("no thumbnail {file}")))?;
    let (_, output_key) = done_image(&state, &slug, id).await?;
    let bucket = &state.infra.output_bucket;
    let key = thumbnail_key(&output_key);
    let retry = state.settings.retry_after_secs;
    let bytes = match state.objects.get(bucket, &key).await {
        Ok(b) => b,
        Err(ObjectError::NotFound { .. }) => {
            let _permit = thumb_permits()
                .acquire()
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            // Only the anonymized output is read: a thumbnail can never show an original.
            let full = state
                .objects
                .get(bucket, &output_key)
                .await
                .map_err(|e| ApiError::from_objects(e, retry))?;
            let side = state.settings.thumbnail_max_side;
            let thumb = tokio::task::spawn_blocking(move || make_thumbnail(&full, side))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::Internal(format!("thumbnail of {output_key}: {e}")))?;
            if let Err(e) = state
                .objects
                .put(bucket, &key, thumb.clone().into(), "image/jpeg")
                .await
            {
                tracing::warn!(error = %e, key, "could not cache thumbnail");
            }
            metrics::counter!("lapseguard_gallery_thumbnails_made_total").increment(1);
            thumb.into()
        }
        Err(e) => return Err(ApiError::from_objects(e, retry)),
    };
    Ok((
        [
            (CONTENT_TYPE, "image/jpeg"),
            (CACHE_CONTROL, "private, max-age=86400, immutable"),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /projects/{slug}/images/{id}`: the full anonymized image.
pub async fn full_image(
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &slug)?;
    let (_, key) = done_image(&state, &slug, &id).await?;
    let bytes = state
        .objects
        .get(&state.infra.output_bucket, &key)
        .await
        .map_err(|e| ApiError::from_objects(e, state.settings.retry_after_secs))?;
    let mime = if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else {
        "image/jpeg"
    };
    Ok((
        [
            (CONTENT_TYPE, mime),
            (CACHE_CONTROL, "private, max-age=86400, immutable"),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewViewerLink {
    /// Hours the link stays valid (default 168 = 7 days, at most 8760).
    pub hours: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ViewerLink {
    /// Path of the gallery with the key; prefix it with the backend's public address.
    pub path: String,
    pub key: String,
    pub expires_at: DateTime<Utc>,
}

/// Makes a viewer link for a project's gallery (admin).
#[utoipa::path(post, path = "/v1/projects/{slug}/viewer-links", tag = "gallery",
    params(("slug" = String, Path)), request_body = NewViewerLink, security(("bearer" = [])),
    responses((status = 201, body = ViewerLink), (status = 401, body = crate::problem::Problem),
        (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
pub async fn create_viewer_link(
    State(state): State<AppState>,
    principal: Principal,
    Path(slug): Path<String>,
    body: Option<Json<NewViewerLink>>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let project = project(&state, &slug).await?;
    let hours = body.and_then(|b| b.0.hours).unwrap_or(168);
    if !(1..=8760).contains(&hours) {
        return Err(ApiError::BadRequest("hours must be 1 to 8760".into()));
    }
    let link = make_viewer_link(&state, &project.slug, Duration::hours(hours))?;
    Ok((StatusCode::CREATED, Json(link)).into_response())
}

/// A viewer link for `slug`, valid for `valid_for`.
pub fn make_viewer_link(
    state: &AppState,
    slug: &str,
    valid_for: Duration,
) -> Result<ViewerLink, ApiError> {
    let secret = signing_key(state).ok_or_else(|| {
        ApiError::Internal("set gallery_secret or admin_token to make viewer links".into())
    })?;
    let expires_at = Utc::now() + valid_for;
    let key = viewer_key(&secret, slug, expires_at)
        .ok_or_else(|| ApiError::Internal("signing the viewer link".into()))?;
    Ok(ViewerLink {
        path: format!("/projects/{slug}?key={key}"),
        key,
        expires_at: DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_keys_are_per_project_and_expire() {
        let now = Utc::now();
        let key = viewer_key(b"secret", "site-a", now + Duration::hours(1)).unwrap();
        assert!(verify_viewer_key(b"secret", "site-a", &key, now).is_some());
        assert!(verify_viewer_key(b"secret", "site-b", &key, now).is_none());
        assert!(verify_viewer_key(b"other", "site-a", &key, now).is_none());
        assert!(
            verify_viewer_key(b"secret", "site-a", &key, now + Duration::hours(2)).is_none(),
            "expired"
        );
        // A forged expiry breaks the signature.
        let forged = key.replacen(
            &format!(".{}.", (now + Duration::hours(1)).timestamp()),
            &format!(".{}.", (now + Duration::hours(100)).timestamp()),
            1,
        );
        assert!(verify_viewer_key(b"secret", "site-a", &forged, now).is_none());
        for junk in ["", "v1", "v1.x.y", "v2.1.abc", "v1.99999999999.00.extra"] {
            assert!(verify_viewer_key(b"secret", "site-a", junk, now).is_none());
        }
    }

    #[test]
    fn thumbnail_keys_sit_next_to_the_output() {
        assert_eq!(thumbnail_key("p/c/2026/a_b.jpg"), "p/c/2026/a_b.thumb.jpg");
        assert_eq!(thumbnail_key("p/c/2026/a_b.png"), "p/c/2026/a_b.thumb.jpg");
        assert_eq!(thumbnail_key("p/c.d/noext"), "p/c.d/noext.thumb.jpg");
    }

    #[test]
    fn thumbnails_fit_the_box_and_are_jpeg() {
        let img = image::RgbImage::from_fn(1200, 600, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let thumb = make_thumbnail(&png, 320).unwrap();
        let decoded = image::load_from_memory(&thumb).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 160));
        assert!(thumb.starts_with(&[0xFF, 0xD8]));
        assert!(make_thumbnail(b"not an image", 320).is_err());
    }
}
