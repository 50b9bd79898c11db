//! The queue consumer: one job = claim → fetch → verify → anonymize → write output →
//! record → ack (RabbitMQ in cluster mode, the embedded queue in all-in-one mode).
//! Nothing is acknowledged before the result is recorded, and no output object exists
//! unless detection completed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapseguard_core::catalog::{Catalog, Claim, JobResult};
use lapseguard_core::config::InfraSettings;
use lapseguard_core::embedded::{Lease, SqliteQueue};
use lapseguard_core::job::JobMessage;
use lapseguard_core::objects::{ObjectError, ObjectStore};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::pipeline::Processor;

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Anonymized and recorded: ack.
    Done { faces: usize },
    /// Already done or failed earlier (a redelivery): ack.
    Skipped,
    /// Given up for good, recorded as `failed`: dead-letter.
    Failed(String),
    /// Transient problem: requeue after `delay`.
    Retry { reason: String, delay: Duration },
}

/// Liveness/readiness state shared with the health endpoints.
#[derive(Default)]
pub struct Health {
    pub consuming: AtomicBool,
}

pub struct Consumer {
    pub catalog: Arc<dyn Catalog>,
    pub objects: Arc<dyn ObjectStore>,
    pub processor: Arc<Processor>,
    pub infra: Arc<InfraSettings>,
    pub max_attempts: i32,
    pub prefetch: u16,
    pub shutdown_grace: Duration,
    pub health: Arc<Health>,
}

/// Output key: the input key with the output format's extension (deterministic, so a
/// redelivered job overwrites rather than duplicates).
pub fn output_key(input_key: &str, ext: &str) -> String {
    match input_key.rsplit_once('.') {
        Some((stem, old)) if !stem.is_empty() && !stem.ends_with('/') && !old.contains('/') => {
            format!("{stem}.{ext}")
        }
        _ => format!("{input_key}.{ext}"),
    }
}

fn retry_delay(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 6) - 1;
    Duration::from_millis(500u64 << exp).min(Duration::from_secs(30))
}

impl Consumer {
    /// Runs one job to its outcome. Pure business logic over the ports (no AMQP).
    pub async fn handle(&self, data: &[u8]) -> Outcome {
        let job = match JobMessage::from_json(data) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "malformed job message; dead-lettering it");
                return Outcome::Failed(format!("malformed job message: {e}"));
            }
        };
        let span = tracing::info_span!("job", job_id = %job.job_id, image_id = %job.image_id, project = %job.project);
        self.handle_job(&job).instrument(span).await
    }

    async fn handle_job(&self, job: &JobMessage) -> Outcome {
        let start = Instant::now();
        let attempts = match self.catalog.claim_job(job.image_id).await {
            Ok(Claim::Started { attempts }) => attempts,
            Ok(Claim::AlreadyDone) | Ok(Claim::AlreadyFailed) => {
                tracing::info!("image already finished; redelivery acknowledged");
                return Outcome::Skipped;
            }
            Ok(Claim::NotFound) => {
                return Outcome::Failed(format!("image {} is not in the catalog", job.image_id));
            }
            Err(e) => {
                return Outcome::Retry {
                    reason: format!("claiming job: {e}"),
                    delay: retry_delay(1),
                };
            }
        };
        if attempts > self.max_attempts {
            return self
                .give_up(job, format!("gave up after {} attempts", attempts - 1))
                .await;
        }
        match self.run_job(job, attempts, start).await {
            Ok(faces) => Outcome::Done { faces },
            Err(JobError::Permanent(reason)) => self.give_up(job, reason).await,
            Err(JobError::Transient(reason)) if attempts >= self.max_attempts => {
                self.give_up(
                    job,
                    format!("gave up after {attempts} attempts; last error: {reason}"),
                )
                .await
            }
            Err(JobError::Transient(reason)) => {
                tracing::warn!(attempts, error = %reason, "transient failure; job will be retried");
                if let Err(e) = self.catalog.retry_job(job.image_id, &reason).await {
                    tracing::warn!(error = %e, "could not record the retry");
                }
                Outcome::Retry {
                    reason,
                    delay: retry_delay(attempts),
                }
            }
        }
    }

    async fn give_up(&self, job: &JobMessage, reason: String) -> Outcome {
        tracing::error!(error = %reason, "job failed for good; dead-lettering it");
        match self.catalog.fail_job(job.image_id, &reason).await {
            Ok(()) => Outcome::Failed(reason),
            // Could not record the failure: keep the job so the next attempt records it.
            Err(e) => Outcome::Retry {
                reason: format!("recording failure: {e}"),
                delay: retry_delay(3),
            },
        }
    }

    async fn run_job(
        &self,
        job: &JobMessage,
        attempts: i32,
        start: Instant,
    ) -> Result<usize, JobError> {
        let t = Instant::now();
        let original = self
            .objects
            .get(&job.input_bucket, &job.input_key)
            .await
            .map_err(|e| match e {
                ObjectError::NotFound { .. } => {
                    JobError::Permanent(format!("original missing: {e}"))
                }
                e if e.is_transient() => JobError::Transient(e.to_string()),
                e => JobError::Permanent(e.to_string()),
            })?;
        metrics::histogram!("lapseguard_worker_stage_seconds", "stage" => "fetch")
            .record(t.elapsed().as_secs_f64());
        tracing::info!(attempts, bytes = original.len(), "original fetched");
        let sha = hex::encode(Sha256::digest(&original));
        if sha != job.sha256 {
            return Err(JobError::Permanent(format!(
                "original does not match its checksum (expected {}, got {sha})",
                job.sha256
            )));
        }
        let processed = self.processor.process(original).await.map_err(|e| {
            if e.is_permanent() {
                JobError::Permanent(e.to_string())
            } else {
                JobError::Transient(e.to_string())
            }
        })?;
        let key = output_key(&job.input_key, processed.format.ext());
        let faces = processed.faces.len();
        let t = Instant::now();
        self.objects
            .put(
                &self.infra.output_bucket,
                &key,
                processed.bytes.into(),
                processed.format.mime(),
            )
            .await
            .map_err(|e| JobError::Transient(format!("writing output: {e}")))?;
        metrics::histogram!("lapseguard_worker_stage_seconds", "stage" => "upload")
            .record(t.elapsed().as_secs_f64());
        let result = JobResult {
            faces: faces as i32,
            boxes: serde_json::to_value(&processed.faces).unwrap_or_default(),
            model: self.processor.detectors.model_id().to_string(),
            duration_ms: start.elapsed().as_millis().min(i32::MAX as u128) as i32,
            output_key: key,
        };
        self.catalog
            .complete_job(job.image_id, &result)
            .await
            .map_err(|e| JobError::Transient(format!("recording result: {e}")))?;
        metrics::counter!("lapseguard_worker_faces_total").increment(faces as u64);
        tracing::info!(
            faces,
            width = processed.width,
            height = processed.height,
            detect_ms = processed.timings.detect.as_millis() as u64,
            total_ms = start.elapsed().as_millis() as u64,
            "image anonymized"
        );
        Ok(faces)
    }

    /// Consumes until `shutdown`, reconnecting after broker failures; then finishes
    /// in-flight jobs within the grace period.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let topology = self.infra.topology();
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let conn = match lapseguard_core::queue::connect(
                &self.infra.amqp_url,
                &format!("worker@{}", std::env::var("HOSTNAME").unwrap_or_default()),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_millis(250 * 2u64.pow(failures.min(5)));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let setup = async {
                let ch = conn.create_channel().await?;
                lapseguard_core::queue::declare_topology(&ch, &topology).await?;
                ch.basic_qos(self.prefetch, BasicQosOptions::default())
                    .await?;
                let consumer = ch
                    .basic_consume(
                        topology.queue.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok::<_, lapin::Error>((ch, consumer))
            };
            let (channel, mut consumer) = match setup.await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start consuming");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            failures = 0;
            self.health.consuming.store(true, Ordering::SeqCst);
            tracing::info!(queue = %topology.queue, prefetch = self.prefetch, "consuming");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = channel
                            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                            .await;
                        break;
                    }
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            let me = self.clone();
                            let stop = shutdown.clone();
                            metrics::gauge!("lapseguard_worker_in_flight").increment(1.0);
                            in_flight.spawn(async move {
                                me.settle(delivery, stop).await;
                                metrics::gauge!("lapseguard_worker_in_flight").decrement(1.0);
                            });
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "consumer failed; reconnecting");
                            break;
                        }
                        None => {
                            tracing::warn!("consumer cancelled by the broker; reconnecting");
                            break;
                        }
                    },
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                }
            }
            self.health.consuming.store(false, Ordering::SeqCst);
            if shutdown.is_cancelled() {
                tracing::info!(
                    in_flight = in_flight.len(),
                    "stopping: finishing in-flight jobs"
                );
                let drained = tokio::time::timeout(self.shutdown_grace, async {
                    while in_flight.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    tracing::warn!("grace period over; unfinished jobs will be redelivered");
                }
                let _ = channel.close(200, "worker shutting down".into()).await;
                let _ = conn.close(200, "worker shutting down".into()).await;
            }
        }
        Ok(())
    }

    async fn settle(&self, delivery: lapin::message::Delivery, shutdown: CancellationToken) {
        let outcome = self.handle(&delivery.data).await;
        let result = match &outcome {
            Outcome::Done { .. } => {
                metrics::counter!("lapseguard_worker_jobs_total", "result" => "done").increment(1);
                delivery.ack(BasicAckOptions::default()).await
            }
            Outcome::Skipped => {
                metrics::counter!("lapseguard_worker_jobs_total", "result" => "skipped")
                    .increment(1);
                delivery.ack(BasicAckOptions::default()).await
            }
            Outcome::Failed(_) => {
                metrics::counter!("lapseguard_worker_jobs_total", "result" => "failed")
                    .increment(1);
                delivery.reject(BasicRejectOptions { requeue: false }).await
            }
            Outcome::Retry { delay, .. } => {
                metrics::counter!("lapseguard_worker_jobs_total", "result" => "retried")
                    .increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(*delay) => {}
                }
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
        };
        if let Err(e) = result {
            // The broker will redeliver; the job is idempotent.
            tracing::warn!(error = %e, ?outcome, "could not settle delivery");
        }
    }
}

/// How often the embedded consumer looks for new jobs when the queue was empty.
const EMBEDDED_POLL: Duration = Duration::from_millis(200);

impl Consumer {
    /// Consumes from the embedded queue (all-in-one mode) until `shutdown`: the same
    /// [`Consumer::handle`] as with RabbitMQ, settled on the SQLite queue. Leases that
    /// are still open when the process dies are handed back at the next start
    /// ([`SqliteQueue::recover`]).
    pub async fn run_embedded(
        self: Arc<Self>,
        queue: SqliteQueue,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let capacity = usize::from(self.prefetch.max(1));
        self.health.consuming.store(true, Ordering::SeqCst);
        tracing::info!(prefetch = capacity, "consuming from the embedded queue");
        while !shutdown.is_cancelled() {
            let free = capacity.saturating_sub(in_flight.len());
            let leased = if free > 0 {
                match queue.lease(free as i64).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the embedded queue");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let idle = leased.is_empty();
            for lease in leased {
                let me = self.clone();
                let q = queue.clone();
                metrics::gauge!("lapseguard_worker_in_flight").increment(1.0);
                in_flight.spawn(async move {
                    me.settle_embedded(&q, lease).await;
                    metrics::gauge!("lapseguard_worker_in_flight").decrement(1.0);
                });
            }
            if idle || in_flight.len() >= capacity {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                    _ = tokio::time::sleep(EMBEDDED_POLL) => {}
                }
            }
        }
        self.health.consuming.store(false, Ordering::SeqCst);
        tracing::info!(
            in_flight = in_flight.len(),
            "stopping: finishing in-flight jobs"
        );
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over; unfinished jobs run again at the next start");
        }
        Ok(())
    }

    async fn settle_embedded(&self, queue: &SqliteQueue, lease: Lease) {
        let outcome = self.handle(&lease.payload).await;
        let (label, result) = match &outcome {
            Outcome::Done { .. } => ("done", queue.ack(lease.job_id).await),
            Outcome::Skipped => ("skipped", queue.ack(lease.job_id).await),
            Outcome::Failed(reason) => ("failed", queue.dead_letter(lease.job_id, reason).await),
            Outcome::Retry { delay, .. } => ("retried", queue.retry(lease.job_id, *delay).await),
        };
        metrics::counter!("lapseguard_worker_jobs_total", "result" => label).increment(1);
        if let Err(e) = result {
            // The lease runs out and the job comes again; the job is idempotent.
            tracing::warn!(error = %e, ?outcome, "could not settle job");
        }
    }
}

enum JobError {
    Permanent(String),
    Transient(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keys_are_deterministic() {
        assert_eq!(output_key("p/c/2026/a_b.png", "png"), "p/c/2026/a_b.png");
        assert_eq!(output_key("p/c/x.jpeg", "jpg"), "p/c/x.jpg");
        assert_eq!(output_key("p/c/noext", "jpg"), "p/c/noext.jpg");
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert!(retry_delay(1) < retry_delay(2));
        assert!(retry_delay(100) <= Duration::from_secs(30));
    }
}
