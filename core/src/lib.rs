//! What the lapseguard backend and worker agree on.
//!
//! - [`job`]: the versioned job message and the queue topology names.
//! - [`config`]: loading settings from a file plus `LAPSEGUARD_*` environment variables.
//! - [`telemetry`]: `tracing` setup (JSON on stdout when not on a terminal).
//! - Ports (small traits) with their adapters, so the cluster mode (S3, RabbitMQ,
//!   PostgreSQL) and the embedded mode share every line of business logic:
//!   [`objects`] (object store), [`queue`] (job publishing), [`catalog`] (metadata store).
//! - [`embedded`]: the same ports over one SQLite file (metadata store and durable
//!   job queue) for the all-in-one mode.
//! - [`timelapse`]: timelapse render requests and their progress (kept by the catalog).
//! - [`fleet`]: camera heartbeats and the fleet view's rows (kept by the catalog).

pub mod catalog;
pub mod config;
pub mod embedded;
pub mod fleet;
pub mod job;
pub mod objects;
pub mod queue;
pub mod shutdown;
pub mod telemetry;
pub mod timelapse;

/// Installs the process-wide rustls crypto provider.
///
/// Both `ring` and `aws-lc-rs` end up in the dependency tree (through different
/// clients); rustls refuses to pick one on its own and panics when a client config
/// is built. Call this first thing in `main` and in tests.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
