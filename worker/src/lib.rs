//! lapseguard worker: finds every face and blurs it.
//!
//! - [`detect`]: the detector port and the CenterFace/ONNX Runtime adapter (whole frame
//!   plus native-resolution tiles).
//! - [`anonymize`]: irreversible, face-scaled blurring inside elliptical masks.
//! - [`codec`]: decoding with EXIF orientation, encoding without metadata.
//! - [`pipeline`]: one image end to end, with a bounded detector pool.
//! - [`consumer`]: the RabbitMQ consumer (claim, fetch, anonymize, record, ack).

pub mod anonymize;
pub mod codec;
pub mod consumer;
pub mod detect;
pub mod pipeline;
pub mod settings;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::consumer::Health;
use crate::detect::{CenterFace, DetectError, FaceDetector};
use crate::pipeline::{DetectorPool, Processor};
use crate::settings::WorkerSettings;

/// Loads `n` detector instances (each with its own inference session).
pub fn load_detectors(
    settings: &WorkerSettings,
    n: usize,
) -> Result<Arc<DetectorPool>, DetectError> {
    let cfg = settings.detector();
    // Loaded and warmed up side by side: each is independent and, on CPU, runs on its
    // own core, so start-up takes one detector's time rather than n of them.
    let detectors = std::thread::scope(|scope| {
        let loading: Vec<_> = (0..n.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<Box<dyn FaceDetector>, DetectError> {
                    let mut det = CenterFace::load(&cfg)?;
                    det.warm_up()?;
                    Ok(Box::new(det))
                })
            })
            .collect();
        loading
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(DetectError::Inference("detector start-up panicked".into()))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(DetectorPool::new(detectors))
}

/// Detectors shaped by [`WorkerSettings::inference_layout`] for the cores this process
/// may run on (`available_parallelism` honours CPU affinity and cgroup quotas).
pub fn load_detectors_for_host(
    settings: &WorkerSettings,
) -> Result<Arc<DetectorPool>, DetectError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (n, threads) = settings.inference_layout(cores);
    tracing::info!(detectors = n, threads, "inference layout");
    let mut settings = settings.clone();
    settings.worker_threads = threads;
    load_detectors(&settings, n)
}

pub fn processor(settings: &WorkerSettings, detectors: Arc<DetectorPool>) -> Processor {
    Processor {
        detectors,
        anonymize: settings.anonymize(),
        output: settings.output(),
    }
}

#[derive(Clone)]
struct HealthState {
    health: Arc<Health>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// `/livez` (the process serves), `/readyz` (model loaded, consuming from RabbitMQ),
/// `/metrics`.
pub fn health_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HealthState>| async move {
                if s.health.consuming.load(std::sync::atomic::Ordering::SeqCst) {
                    (StatusCode::OK, "consuming")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not consuming")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<HealthState>| async move { s.metrics.render() }),
        )
        .with_state(HealthState {
            health,
            metrics: lapseguard_core::telemetry::metrics_handle(),
        })
}
