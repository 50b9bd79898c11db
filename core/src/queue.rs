//! Job queue port and its RabbitMQ adapter.
//!
//! Publishing is only "done" when the broker confirmed it (publisher confirms,
//! mandatory flag, persistent messages): the outbox relay deletes a row only then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::job::{JobMessage, Topology};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused message {job_id}: {reason}")]
    Refused { job_id: uuid::Uuid, reason: String },
}

/// Publishes jobs durably. Returns only after the broker took responsibility for
/// every job in the batch.
#[async_trait]
pub trait JobPublisher: Send + Sync + 'static {
    async fn publish(&self, jobs: &[JobMessage]) -> Result<(), QueueError>;
    /// Whether the last interaction with the broker succeeded (readiness, metrics).
    fn is_connected(&self) -> bool;
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Declares exchanges and queues (idempotent; both the backend and the worker call it).
pub async fn declare_topology(ch: &Channel, t: &Topology) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        t.dead_letter_exchange.as_str().into(),
        ExchangeKind::Direct,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        t.dead_letter_queue.as_str().into(),
        durable_queue,
        table(&[("x-queue-type", long("quorum"))]),
    )
    .await?;
    ch.queue_bind(
        t.dead_letter_queue.as_str().into(),
        t.dead_letter_exchange.as_str().into(),
        t.routing_key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        t.exchange.as_str().into(),
        ExchangeKind::Direct,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        t.queue.as_str().into(),
        durable_queue,
        table(&[
            ("x-queue-type", long("quorum")),
            ("x-dead-letter-exchange", long(&t.dead_letter_exchange)),
            ("x-dead-letter-routing-key", long(&t.routing_key)),
            (
                "x-delivery-limit",
                AMQPValue::LongInt(t.delivery_limit.min(i32::MAX as u32) as i32),
            ),
        ]),
    )
    .await?;
    ch.queue_bind(
        t.queue.as_str().into(),
        t.exchange.as_str().into(),
        t.routing_key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Opens a connection named after the service (shown in the RabbitMQ management UI).
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(LongString::from(name)),
    )
    .await
}

struct Link {
    _conn: Connection,
    channel: Channel,
}

/// RabbitMQ publisher with confirms. Connects lazily and reconnects after any failure.
pub struct AmqpPublisher {
    url: String,
    name: String,
    topology: Topology,
    link: Mutex<Option<Link>>,
    connected: Arc<AtomicBool>,
}

impl AmqpPublisher {
    pub fn new(url: impl Into<String>, name: impl Into<String>, topology: Topology) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            topology,
            link: Mutex::new(None),
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Connects now (and declares the topology); used at start-up and by readiness.
    pub async fn ensure_connected(&self) -> Result<(), QueueError> {
        let mut guard = self.link.lock().await;
        self.link_or_connect(&mut guard).await.map(|_| ())
    }

    async fn link_or_connect<'a>(
        &self,
        guard: &'a mut Option<Link>,
    ) -> Result<&'a Channel, QueueError> {
        let healthy = guard
            .as_ref()
            .is_some_and(|l| l.channel.status().connected());
        if !healthy {
            *guard = None;
            let conn = connect(&self.url, &self.name).await.map_err(unavailable)?;
            let channel = conn.create_channel().await.map_err(unavailable)?;
            declare_topology(&channel, &self.topology)
                .await
                .map_err(unavailable)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            *guard = Some(Link {
                _conn: conn,
                channel,
            });
        }
        match guard.as_ref() {
            Some(l) => Ok(&l.channel),
            None => Err(QueueError::Unavailable("no channel".into())),
        }
    }
}

fn unavailable(e: lapin::Error) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// AMQP properties of a job message: persistent JSON with the job id as message id.
pub fn job_properties(job: &JobMessage) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(job.job_id.to_string()))
        .with_type(ShortString::from(format!("anonymize.v{}", job.version)))
}

#[async_trait]
impl JobPublisher for AmqpPublisher {
    async fn publish(&self, jobs: &[JobMessage]) -> Result<(), QueueError> {
        let mut guard = self.link.lock().await;
        let result = async {
            let ch = self.link_or_connect(&mut guard).await?;
            let mut pending = Vec::with_capacity(jobs.len());
            for job in jobs {
                let confirm = ch
                    .basic_publish(
                        self.topology.exchange.as_str().into(),
                        self.topology.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &job.to_json(),
                        job_properties(job),
                    )
                    .await
                    .map_err(unavailable)?;
                pending.push((job.job_id, confirm));
            }
            for (job_id, confirm) in pending {
                let confirmation = confirm.await.map_err(unavailable)?;
                if !confirmation.is_ack() {
                    return Err(QueueError::Refused {
                        job_id,
                        reason: "negative acknowledgement".into(),
                    });
                }
                if let Some(returned) = confirmation.take_message() {
                    return Err(QueueError::Refused {
                        job_id,
                        reason: format!("unroutable: {}", returned.reply_text),
                    });
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // Start from a fresh connection next time: the channel may be closed or
            // in an unknown state after a failed publish.
            *guard = None;
        }
        self.connected.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

impl AmqpPublisher {
    /// Marks the link state after an explicit connection attempt.
    pub async fn probe(&self) -> bool {
        let ok = self.ensure_connected().await.is_ok();
        self.connected.store(ok, Ordering::Relaxed);
        ok
    }
}
