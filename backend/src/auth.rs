//! Bearer-token authentication: the admin token from configuration, or a camera token
//! (stored only as its SHA-256).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use lapseguard_core::catalog::CameraIdentity;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::problem::ApiError;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Admin,
    Camera(CameraIdentity),
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Camera(_) => Err(ApiError::Forbidden(
                "this operation needs the admin token".into(),
            )),
        }
    }

    /// Admin reads every project; a camera only its own.
    pub fn may_read_project(&self, project_id: Uuid) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Camera(c) => c.project_id == project_id,
        }
    }
}

/// A new camera token (shown once) and the hash that is stored.
pub fn new_camera_token() -> (String, Vec<u8>) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!("lgc_{}", hex::encode(raw));
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer_token(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Constant-time comparison, so the admin token cannot be guessed byte by byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
        let admin = state.settings.admin_token.as_bytes();
        if !admin.is_empty() && constant_time_eq(token.as_bytes(), admin) {
            return Ok(Principal::Admin);
        }
        match state
            .catalog
            .camera_by_token(&hash_token(token))
            .await
            .map_err(|e| ApiError::from_catalog(e, state.settings.retry_after_secs))?
        {
            Some(camera) => {
                let span = tracing::Span::current();
                span.record("project", camera.project_slug.as_str());
                span.record("camera", tracing::field::display(camera.camera_id));
                Ok(Principal::Camera(camera))
            }
            None => Err(ApiError::Unauthorized("unknown or revoked token".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_matches() {
        let (t1, h1) = new_camera_token();
        let (t2, _) = new_camera_token();
        assert_ne!(t1, t2);
        assert!(t1.starts_with("lgc_") && t1.len() == 68);
        assert_eq!(hash_token(&t1), h1);
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
