//! Accepting one image: validate, store the original, record it with its job.
//!
//! Order of effects and what a failure at each step leaves behind:
//! 1. validation (type, magic bytes, header, pixel limit) — nothing written;
//! 2. duplicate check by SHA-256 — the existing image is returned, nothing written;
//! 3. original → input bucket at a deterministic key — on failure 503, nothing recorded;
//! 4. image row + outbox row in one transaction — on failure the object from step 3 is
//!    deleted again (compensation) and the client gets 503. If the process dies between
//!    3 and 4 the object stays, but the client saw no 2xx and retries: the retry writes
//!    the same key (same bytes, same capture time) and records it.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use lapseguard_core::catalog::{CameraIdentity, Image, Inserted, NewImage};
use lapseguard_core::job::{JOB_MESSAGE_VERSION, JobMessage};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::problem::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
}

impl ImageKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "image/jpeg" | "image/jpg" => Some(ImageKind::Jpeg),
            "image/png" => Some(ImageKind::Png),
            _ => None,
        }
    }

    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageKind::Jpeg)
        } else if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
            Some(ImageKind::Png)
        } else {
            None
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
        }
    }
}

/// What validation learned about an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub kind: ImageKind,
    pub width: u32,
    pub height: u32,
}

/// Checks type, magic bytes, header and pixel limit without decoding the pixels.
pub fn validate(
    content_type: Option<&str>,
    body: &[u8],
    max_pixels: u64,
) -> Result<Validated, ApiError> {
    let declared = content_type
        .and_then(ImageKind::from_content_type)
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "Content-Type must be image/jpeg or image/png, got {}",
                content_type.unwrap_or("nothing")
            ))
        })?;
    let sniffed = ImageKind::sniff(body).ok_or_else(|| {
        ApiError::UnsupportedMediaType("body is neither a JPEG nor a PNG file".into())
    })?;
    if sniffed != declared {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type says {} but the body is {}",
            declared.mime(),
            sniffed.mime()
        )));
    }
    let size = imagesize::blob_size(body)
        .map_err(|e| ApiError::InvalidImage(format!("cannot read the image header: {e}")))?;
    if size.width == 0 || size.height == 0 {
        return Err(ApiError::InvalidImage(
            "image has zero width or height".into(),
        ));
    }
    let pixels = size.width as u64 * size.height as u64;
    if pixels > max_pixels {
        return Err(ApiError::ImageTooLarge(format!(
            "{}x{} = {pixels} pixels exceeds the limit of {max_pixels}",
            size.width, size.height
        )));
    }
    let width = u32::try_from(size.width)
        .map_err(|_| ApiError::ImageTooLarge("width out of range".into()))?;
    let height = u32::try_from(size.height)
        .map_err(|_| ApiError::ImageTooLarge("height out of range".into()))?;
    Ok(Validated {
        kind: sniffed,
        width,
        height,
    })
}

pub fn parse_captured_at(value: Option<&str>) -> Result<DateTime<Utc>, ApiError> {
    match value {
        None => Ok(Utc::now()),
        Some(v) => DateTime::parse_from_rfc3339(v.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                ApiError::BadRequest(format!("X-Captured-At must be RFC 3339 ({e}): {v:?}"))
            }),
    }
}

/// `{project}/{camera}/{yyyy}/{mm}/{dd}/{captured_at}_{sha256 prefix}.{ext}`
pub fn object_key(
    project: &str,
    camera: Uuid,
    captured_at: DateTime<Utc>,
    sha256: &str,
    kind: ImageKind,
) -> String {
    format!(
        "{project}/{camera}/{}/{}_{}.{}",
        captured_at.format("%Y/%m/%d"),
        captured_at.format("%Y%m%dT%H%M%S%.3fZ"),
        &sha256[..16.min(sha256.len())],
        kind.ext()
    )
}

pub enum Outcome {
    Created(Image),
    Existing(Image),
}

/// Stores and records one upload. See the module docs for the failure model.
pub async fn ingest(
    state: &AppState,
    camera: &CameraIdentity,
    content_type: Option<&str>,
    captured_at: Option<&str>,
    body: Bytes,
) -> Result<Outcome, ApiError> {
    let retry = state.settings.retry_after_secs;
    let captured_at = parse_captured_at(captured_at)?;
    let v = validate(content_type, &body, state.settings.max_image_pixels)?;
    let sha256 = hex::encode(Sha256::digest(&body));

    if let Some(existing) = state
        .catalog
        .image_by_sha(camera.project_id, &sha256)
        .await
        .map_err(|e| ApiError::from_catalog(e, retry))?
    {
        return Ok(Outcome::Existing(existing));
    }

    let key = object_key(
        &camera.project_slug,
        camera.camera_id,
        captured_at,
        &sha256,
        v.kind,
    );
    let bucket = &state.infra.input_bucket;
    state
        .objects
        .put_with_sha256(bucket, &key, body.clone(), v.kind.mime(), &sha256)
        .await
        .map_err(|e| ApiError::from_objects(e, retry))?;

    let image_id = Uuid::now_v7();
    let job = JobMessage {
        version: JOB_MESSAGE_VERSION,
        job_id: Uuid::now_v7(),
        image_id,
        project: camera.project_slug.clone(),
        camera: camera.camera_id,
        input_bucket: bucket.clone(),
        input_key: key.clone(),
        sha256: sha256.clone(),
        content_type: v.kind.mime().into(),
    };
    let new = NewImage {
        id: image_id,
        project_id: camera.project_id,
        project: camera.project_slug.clone(),
        camera_id: camera.camera_id,
        captured_at,
        sha256,
        bytes: body.len() as i64,
        content_type: v.kind.mime().into(),
        width: v.width as i32,
        height: v.height as i32,
        input_key: key.clone(),
    };
    match state.catalog.insert_image(new, &job).await {
        Ok(Inserted::New(image)) => {
            state.relay_wake.notify_one();
            Ok(Outcome::Created(image))
        }
        Ok(Inserted::Existing(existing)) => {
            // A concurrent upload of the same bytes won. Its object has another key only
            // when its capture time differs; then ours is an orphan.
            if existing.input_key != key {
                remove_orphan(state, bucket, &key).await;
            }
            Ok(Outcome::Existing(existing))
        }
        Err(e) => {
            remove_orphan(state, bucket, &key).await;
            Err(ApiError::from_catalog(e, retry))
        }
    }
}

async fn remove_orphan(state: &AppState, bucket: &str, key: &str) {
    match state.objects.delete(bucket, key).await {
        Ok(()) => tracing::info!(bucket, key, "removed original that could not be recorded"),
        Err(e) => {
            metrics::counter!("lapseguard_orphan_objects_total").increment(1);
            tracing::error!(bucket, key, error = %e, "could not remove unrecorded original");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_1X1: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];

    fn png_with_size(w: u32, h: u32) -> Vec<u8> {
        let mut v = PNG_1X1.to_vec();
        v[16..20].copy_from_slice(&w.to_be_bytes());
        v[20..24].copy_from_slice(&h.to_be_bytes());
        v
    }

    #[test]
    fn accepts_png() {
        let v = validate(Some("image/png"), PNG_1X1, 100).unwrap();
        assert_eq!((v.kind, v.width, v.height), (ImageKind::Png, 1, 1));
    }

    #[test]
    fn content_type_cases() {
        assert!(matches!(
            validate(Some("text/plain"), PNG_1X1, 100),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            validate(None, PNG_1X1, 100),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            validate(Some("image/jpeg"), PNG_1X1, 100),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            validate(Some("image/png"), b"GIF89a....", 100),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(validate(Some("IMAGE/PNG; charset=binary"), PNG_1X1, 100).is_ok());
    }

    #[test]
    fn header_and_bomb_cases() {
        assert!(matches!(
            validate(Some("image/jpeg"), &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0], 100),
            Err(ApiError::InvalidImage(_))
        ));
        assert!(matches!(
            validate(
                Some("image/png"),
                &png_with_size(100_000, 100_000),
                100_000_000
            ),
            Err(ApiError::ImageTooLarge(_))
        ));
        assert!(matches!(
            validate(Some("image/png"), &png_with_size(0, 10), 100),
            Err(ApiError::InvalidImage(_))
        ));
    }

    #[test]
    fn captured_at_parsing() {
        let t = parse_captured_at(Some("2026-11-26T05:15:00+01:00")).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-26T04:15:00+00:00");
        assert!(matches!(
            parse_captured_at(Some("yesterday")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(parse_captured_at(None).is_ok());
    }

    #[test]
    fn key_layout() {
        let cam = Uuid::parse_str("0190b3c2-0000-7000-8000-000000000001").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-03-04T05:06:07.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let k = object_key("site-a", cam, t, &"ab".repeat(32), ImageKind::Jpeg);
        assert_eq!(
            k,
            "site-a/0190b3c2-0000-7000-8000-000000000001/2026/03/04/20260304T050607.250Z_abababababababab.jpg"
        );
    }
}
