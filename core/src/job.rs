//! The anonymization job message: what the backend queues and the worker consumes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Current version of [`JobMessage`]. A consumer rejects versions it does not know
/// (permanently: retrying will not teach it a new format).
pub const JOB_MESSAGE_VERSION: u32 = 1;

/// One anonymization job, serialized as JSON into a persistent AMQP message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// Message format version, see [`JOB_MESSAGE_VERSION`].
    pub version: u32,
    /// Unique per job; also the AMQP `message_id`.
    pub job_id: Uuid,
    pub image_id: Uuid,
    /// Project slug (for logs and key layout).
    pub project: String,
    /// Camera id.
    pub camera: Uuid,
    /// Bucket and key of the original.
    pub input_bucket: String,
    pub input_key: String,
    /// Hex SHA-256 of the original, so the worker can verify what it fetched.
    pub sha256: String,
    pub content_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JobDecodeError {
    #[error("job message is not valid JSON for this schema: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "job message version {0} is not supported (this build reads version {JOB_MESSAGE_VERSION})"
    )]
    UnsupportedVersion(u32),
}

impl JobMessage {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and uuids cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, JobDecodeError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(bytes)?;
        if v.version != JOB_MESSAGE_VERSION {
            return Err(JobDecodeError::UnsupportedVersion(v.version));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Names of the RabbitMQ objects the backend publishes to and the worker consumes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Durable direct exchange jobs are published to.
    pub exchange: String,
    /// Durable quorum queue the workers consume.
    pub queue: String,
    /// Routing key binding `queue` to `exchange`.
    pub routing_key: String,
    /// Dead-letter exchange and queue for jobs that failed for good.
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Quorum-queue delivery limit (a safety net; the worker counts attempts itself).
    pub delivery_limit: u32,
}

impl Topology {
    /// Topology with every name derived from one prefix (`lapseguard` in production;
    /// tests use a unique prefix each).
    pub fn with_prefix(prefix: &str, delivery_limit: u32) -> Self {
        Self {
            exchange: format!("{prefix}.jobs"),
            queue: format!("{prefix}.anonymize"),
            routing_key: "anonymize".to_string(),
            dead_letter_exchange: format!("{prefix}.dead-letter"),
            dead_letter_queue: format!("{prefix}.anonymize.dead"),
            delivery_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JobMessage {
        JobMessage {
            version: JOB_MESSAGE_VERSION,
            job_id: Uuid::now_v7(),
            image_id: Uuid::now_v7(),
            project: "site-a".into(),
            camera: Uuid::now_v7(),
            input_bucket: "in".into(),
            input_key: "site-a/c/2026/01/01/x.jpg".into(),
            sha256: "ab".repeat(32),
            content_type: "image/jpeg".into(),
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(JobMessage::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn rejects_unknown_version_and_garbage() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["version"] = 2.into();
        let err = JobMessage::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, JobDecodeError::UnsupportedVersion(2)));
        assert!(matches!(
            JobMessage::from_json(b"{not json").unwrap_err(),
            JobDecodeError::Malformed(_)
        ));
        assert!(matches!(
            JobMessage::from_json(br#"{"version":1}"#).unwrap_err(),
            JobDecodeError::Malformed(_)
        ));
    }
}
