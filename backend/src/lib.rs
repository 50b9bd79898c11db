//! lapseguard backend: accepts camera images, stores originals, records them with their
//! anonymization job (transactional outbox), relays jobs to the queue, and serves
//! status and anonymized images. Every dependency sits behind a port of
//! [`lapseguard_core`], so the same code runs against PostgreSQL/RabbitMQ/S3 or the
//! embedded adapters.

pub mod api;
pub mod auth;
pub mod fleet;
pub mod gallery;
pub mod health;
pub mod ingest;
pub mod openapi;
pub mod problem;
pub mod relay;
pub mod settings;
pub mod timelapses;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use lapseguard_core::catalog::{Catalog, PgCatalog};
use lapseguard_core::config::InfraSettings;
use lapseguard_core::objects::{ObjectStore, S3Store};
use lapseguard_core::queue::{AmqpPublisher, JobPublisher};
use lapseguard_core::telemetry::metrics_handle;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::settings::BackendSettings;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<dyn Catalog>,
    pub objects: Arc<dyn ObjectStore>,
    pub publisher: Arc<dyn JobPublisher>,
    /// Connection probe for readiness; `None` when the publisher needs none.
    pub amqp: Option<Arc<AmqpPublisher>>,
    pub settings: Arc<BackendSettings>,
    pub infra: Arc<InfraSettings>,
    pub relay_wake: Arc<Notify>,
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// Cluster-mode state: PostgreSQL, S3 and RabbitMQ from the settings. Nothing is
    /// contacted yet (the pool and the broker link connect lazily).
    pub fn cluster(infra: InfraSettings, settings: BackendSettings) -> anyhow::Result<Self> {
        infra.require_cluster().map_err(anyhow::Error::msg)?;
        if settings.admin_token.is_empty() {
            anyhow::bail!("missing required setting LAPSEGUARD_ADMIN_TOKEN");
        }
        let catalog = Arc::new(PgCatalog::connect_lazy(&infra)?);
        let objects = Arc::new(S3Store::new(&infra));
        let amqp = Arc::new(AmqpPublisher::new(
            infra.amqp_url.clone(),
            format!("backend@{}", hostname()),
            infra.topology(),
        ));
        Ok(Self {
            catalog,
            objects,
            publisher: amqp.clone(),
            amqp: Some(amqp),
            settings: Arc::new(settings),
            infra: Arc::new(infra),
            relay_wake: Arc::new(Notify::new()),
            metrics: metrics_handle(),
        })
    }

    /// Embedded-mode state: the objects under a local folder, the catalog and the job
    /// queue in one SQLite database (the caller owns the data directory's lock).
    pub fn embedded(
        infra: InfraSettings,
        settings: BackendSettings,
        catalog: Arc<dyn Catalog>,
        objects: Arc<dyn ObjectStore>,
        publisher: Arc<dyn JobPublisher>,
    ) -> Self {
        Self {
            catalog,
            objects,
            publisher,
            amqp: None,
            settings: Arc::new(settings),
            infra: Arc::new(infra),
            relay_wake: Arc::new(Notify::new()),
            metrics: metrics_handle(),
        }
    }

    pub(crate) async fn probe_publisher(&self) -> bool {
        match &self.amqp {
            Some(a) => a.probe().await,
            None => self.publisher.is_connected(),
        }
    }

    /// The outbox relay for this state.
    pub fn relay(&self) -> relay::Relay {
        relay::Relay {
            catalog: self.catalog.clone(),
            publisher: self.publisher.clone(),
            wake: self.relay_wake.clone(),
            interval: Duration::from_millis(self.settings.relay_interval_ms),
            batch: self.settings.relay_batch,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into())
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("lapseguard_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("lapseguard_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The HTTP API with its middleware stack.
pub fn router(state: AppState) -> Router {
    let timeout = Duration::from_secs(state.settings.request_timeout_secs);
    let api = Router::new()
        .route("/v1/projects", post(api::create_project))
        .route(
            "/v1/projects/{slug}/cameras",
            post(api::create_camera).get(fleet::list_cameras),
        )
        .route(
            "/v1/projects/{slug}/cameras/{id}",
            delete(api::revoke_camera),
        )
        .route("/v1/projects/{slug}/images", get(api::list_images))
        .route("/v1/images", post(api::upload_image))
        .route("/v1/images/{id}", get(api::get_image))
        .route("/v1/images/{id}/anonymized", get(api::get_anonymized))
        .route(
            "/v1/projects/{slug}/viewer-links",
            post(gallery::create_viewer_link),
        )
        .route("/v1/projects/{slug}/timelapses", post(timelapses::create))
        .route("/v1/timelapses/{id}", get(timelapses::get))
        .route("/v1/timelapses/{id}/video", get(timelapses::video))
        .route("/projects/{slug}", get(gallery::page))
        .route("/projects/{slug}/thumbs/{file}", get(gallery::thumbnail))
        .route("/projects/{slug}/images/{id}", get(gallery::full_image))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics_endpoint))
        .route("/openapi.json", get(openapi::serve))
        .fallback(api::not_found)
        .route_layer(middleware::from_fn(record_metrics));
    api.layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let request_id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "request",
                    request_id,
                    method = %req.method(),
                    path = %req.uri().path(),
                    project = tracing::field::Empty,
                    camera = tracing::field::Empty,
                )
            }))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
            .layer(CatchPanicLayer::new())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                timeout,
            )),
    )
    .with_state(state)
}

/// Serves the API and runs the outbox relay until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let relay = tokio::spawn(state.relay().run(shutdown.clone()));
    // Camera heartbeats arrive through RabbitMQ (its MQTT plugin); the embedded mode
    // has no broker and shows the last received image per camera instead.
    let heartbeats = state
        .amqp
        .is_some()
        .then(|| tokio::spawn(fleet::consume(state.clone(), shutdown.clone())));
    let app = router(state);
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    shutdown.cancel();
    let _ = relay.await;
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    Ok(())
}
