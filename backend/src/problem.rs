//! HTTP errors as RFC 9457 `application/problem+json`, each with a stable `type`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lapseguard_core::catalog::CatalogError;
use lapseguard_core::objects::ObjectError;
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:lapseguard:problem:unsupported-media-type`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidImage(String),
    #[error("{0}")]
    ImageTooLarge(String),
    #[error("{what} unavailable: {detail}")]
    Unavailable {
        what: &'static str,
        detail: String,
        retry_after: u64,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
            ),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Already exists"),
            NotReady(_) => (StatusCode::CONFLICT, "not-ready", "Not anonymized yet"),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            InvalidImage(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-image",
                "Image cannot be decoded",
            ),
            ImageTooLarge(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "image-too-large",
                "Image dimensions over the limit",
            ),
            Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn from_catalog(e: CatalogError, retry_after: u64) -> Self {
        match e {
            CatalogError::Conflict(d) => ApiError::Conflict(d),
            CatalogError::Unavailable(detail) => ApiError::Unavailable {
                what: "metadata store",
                detail,
                retry_after,
            },
            CatalogError::Other(d) => ApiError::Internal(d),
        }
    }

    pub fn from_objects(e: ObjectError, retry_after: u64) -> Self {
        match e {
            ObjectError::Unavailable(detail) => ApiError::Unavailable {
                what: "object store",
                detail,
                retry_after,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, kind = slug, "request failed");
        } else {
            tracing::info!(error = %self, kind = slug, "request refused");
        }
        // Internal details stay in the log; clients get a generic sentence.
        let detail = match &self {
            ApiError::Internal(_) => "an internal error occurred; see the server log".to_string(),
            other => other.to_string(),
        };
        let body = Problem {
            kind: format!("urn:lapseguard:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let ApiError::Unavailable { retry_after, .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lapseguard\""),
            );
        }
        resp
    }
}
