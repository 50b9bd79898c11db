//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{api, fleet, gallery, health, problem, timelapses};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "lapseguard API", description = "Ingest camera images, follow their anonymization, fetch anonymized images. Originals are never served."),
    paths(
        api::create_project, api::create_camera, api::revoke_camera, api::upload_image,
        api::get_image, api::get_anonymized, api::list_images, fleet::list_cameras,
        gallery::create_viewer_link, timelapses::create, timelapses::get, timelapses::video,
        health::livez, health::readyz, health::metrics_endpoint,
    ),
    components(schemas(problem::Problem, api::ImageView, api::ImagePage, api::ProjectView,
        api::CameraCreated, api::NewProject, api::NewCamera, fleet::Fleet, fleet::CameraStatus,
        health::Readiness, health::Check, gallery::NewViewerLink, gallery::ViewerLink,
        timelapses::NewTimelapseRequest, timelapses::TimelapseView)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The OpenAPI document of this API.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
