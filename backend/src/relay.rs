//! The outbox relay: moves job rows from the database to RabbitMQ.
//!
//! Woken right after each upload and every `relay_interval_ms` (to pick up rows of
//! other replicas or rows left by a crash). A row is deleted only after the broker
//! confirmed its message, so a broker outage delays jobs but never loses them; a crash
//! between confirm and delete publishes a job twice, which the worker tolerates
//! (it skips images that are already `done`).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapseguard_core::catalog::Catalog;
use lapseguard_core::queue::JobPublisher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub struct Relay {
    pub catalog: Arc<dyn Catalog>,
    pub publisher: Arc<dyn JobPublisher>,
    pub wake: Arc<Notify>,
    pub interval: Duration,
    pub batch: i64,
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        loop {
            match self
                .catalog
                .relay_outbox(self.batch, &*self.publisher)
                .await
            {
                Ok(0) => {
                    delays = backoff.build();
                    if let Ok(pending) = self.catalog.outbox_len().await {
                        metrics::gauge!("lapseguard_outbox_pending").set(pending as f64);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.interval) => {}
                    }
                }
                Ok(n) => {
                    delays = backoff.build();
                    metrics::counter!("lapseguard_outbox_relayed_total").increment(n as u64);
                    tracing::debug!(relayed = n, "published outbox jobs");
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
                Err(e) => {
                    metrics::counter!("lapseguard_outbox_relay_errors_total").increment(1);
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "outbox relay failed; jobs stay in the outbox");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
