//! Backend-specific settings (the shared ones are [`lapseguard_core::config::InfraSettings`]).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BackendSettings {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Bearer token of the administrator (creates projects and cameras, reads everything).
    pub admin_token: String,
    /// Largest accepted upload body in bytes (413 above it, checked before buffering).
    pub max_upload_bytes: usize,
    /// Largest accepted image in pixels (width × height); protects the worker from
    /// decompression bombs (422 above it).
    pub max_image_pixels: u64,
    /// `Retry-After` seconds sent with 503 answers.
    pub retry_after_secs: u64,
    /// How often the outbox relay looks for rows written by other replicas or left
    /// behind by a crash (it is also woken at once after each upload).
    pub relay_interval_ms: u64,
    /// Outbox rows published per broker round trip.
    pub relay_batch: i64,
    /// Whole-request timeout in seconds.
    pub request_timeout_secs: u64,
    /// Whether `/readyz` fails while RabbitMQ is unreachable. Off by default: uploads
    /// keep working through the outbox, so taking every replica out of the Service
    /// during a broker outage would turn a queueing delay into lost uploads.
    pub readiness_requires_amqp: bool,
    /// Default and maximum page size of image listings.
    pub default_page_size: i64,
    pub max_page_size: i64,
    /// Exchange the MQTT broker publishes camera heartbeats to (RabbitMQ's MQTT plugin:
    /// `amq.topic`).
    pub fleet_exchange: String,
    /// First level of the cameras' MQTT topics (`{prefix}/cameras/{id}/status`).
    pub fleet_topic_prefix: String,
    /// Heartbeat interval assumed for a message that does not state its own.
    pub fleet_default_interval_secs: u64,
    /// Secret that signs gallery viewer links. Empty: derived from `admin_token`
    /// (rotating the admin token then also invalidates every viewer link).
    pub gallery_secret: String,
    /// Thumbnails per gallery page.
    pub gallery_page_size: i64,
    /// Longer side of gallery thumbnails in pixels.
    pub thumbnail_max_side: u32,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            admin_token: String::new(),
            max_upload_bytes: 50 * 1024 * 1024,
            max_image_pixels: 100_000_000,
            retry_after_secs: 5,
            relay_interval_ms: 1000,
            relay_batch: 100,
            request_timeout_secs: 60,
            readiness_requires_amqp: false,
            default_page_size: 50,
            max_page_size: 500,
            fleet_exchange: "amq.topic".into(),
            fleet_topic_prefix: "lapseguard".into(),
            fleet_default_interval_secs: 30,
            gallery_secret: String::new(),
            gallery_page_size: 48,
            thumbnail_max_side: 320,
        }
    }
}
