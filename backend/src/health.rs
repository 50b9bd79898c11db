//! `/livez`, `/readyz` and `/metrics`.
//!
//! - liveness: the process answers HTTP (its runtime is not wedged). It never checks
//!   dependencies: restarting the backend cannot fix a database outage.
//! - readiness: PostgreSQL answers and the schema is migrated, both buckets are
//!   reachable; RabbitMQ is reported, and only fails readiness when
//!   `readiness_requires_amqp` is set (uploads keep working through the outbox).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

#[derive(Serialize, ToSchema)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Whether a failure of this check makes the service not ready.
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn timed<F, E>(f: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Liveness: answers while the process serves requests.
#[utoipa::path(get, path = "/livez", tag = "health", responses((status = 200, description = "Alive")))]
pub async fn livez() -> &'static str {
    "ok"
}

/// Readiness: dependencies reachable, schema migrated.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (db, input, output, amqp) = tokio::join!(
        timed(state.catalog.ping()),
        timed(state.objects.check_bucket(&state.infra.input_bucket)),
        timed(state.objects.check_bucket(&state.infra.output_bucket)),
        timed(async {
            if state.publisher.is_connected() || state.probe_publisher().await {
                Ok(())
            } else {
                Err("not connected")
            }
        }),
    );
    let checks = vec![
        Check::new("database", true, db),
        Check::new("input_bucket", true, input),
        Check::new("output_bucket", true, output),
        Check::new("amqp", state.settings.readiness_requires_amqp, amqp),
    ];
    let ready = checks.iter().all(|c| c.ok || !c.required);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, checks }))
}

impl Check {
    fn new(name: &'static str, required: bool, r: Result<(), String>) -> Self {
        Check {
            name,
            ok: r.is_ok(),
            required,
            error: r.err(),
        }
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics_endpoint(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
