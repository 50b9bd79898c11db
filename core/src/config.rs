//! Settings from an optional TOML file plus `LAPSEGUARD_*` environment variables.
//!
//! Keys are flat: the file key `database_url` is the variable
//! `LAPSEGUARD_DATABASE_URL`. Environment wins over the file; the file wins over the
//! defaults. Every binary loads the structs it needs from the same sources, so one
//! file or one set of variables configures a whole deployment. Every key is
//! documented in `docs/configuration.md`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::job::Topology;

/// Environment variable naming the configuration file (the `--config` flag wins).
pub const CONFIG_FILE_ENV: &str = "LAPSEGUARD_CONFIG";

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(#[from] config::ConfigError);

/// Loads `T` from defaults, then `file` (or `$LAPSEGUARD_CONFIG`), then the environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    let file: Option<PathBuf> = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("LAPSEGUARD")
            .prefix_separator("_")
            .try_parsing(true),
    );
    Ok(builder.build()?.try_deserialize()?)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

/// Connection settings of the infrastructure shared by the backend and the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct InfraSettings {
    /// PostgreSQL URL, e.g. `postgres://user:pass@host:5432/db`.
    pub database_url: String,
    /// Maximum connections in the PostgreSQL pool.
    pub database_max_connections: u32,
    /// Seconds to wait for a pooled connection before answering 503.
    pub database_acquire_timeout_secs: u64,
    /// AMQP URL of RabbitMQ, e.g. `amqp://user:pass@host:5672/%2f`.
    pub amqp_url: String,
    /// Prefix of exchange/queue names (`{prefix}.jobs`, `{prefix}.anonymize`, ...).
    pub amqp_prefix: String,
    /// Quorum-queue `x-delivery-limit` (safety net; the worker counts attempts itself).
    pub amqp_delivery_limit: u32,
    /// S3 endpoint URL (MinIO, Garage, AWS...). Empty = AWS default resolution.
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    /// Path-style addressing (`http://host/bucket/key`), needed by MinIO.
    pub s3_force_path_style: bool,
    /// Bucket for originals (never served).
    pub input_bucket: String,
    /// Bucket for anonymized images.
    pub output_bucket: String,
    /// Bucket for rendered timelapse videos.
    pub timelapse_bucket: String,
    /// `auto`, `json` or `pretty`.
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info,backend=debug`.
    pub log_filter: String,
}

impl Default for InfraSettings {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            database_max_connections: 16,
            database_acquire_timeout_secs: 5,
            amqp_url: String::new(),
            amqp_prefix: "lapseguard".into(),
            amqp_delivery_limit: 20,
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            s3_force_path_style: true,
            input_bucket: "lapseguard-input".into(),
            output_bucket: "lapseguard-output".into(),
            timelapse_bucket: "lapseguard-timelapses".into(),
            log_format: LogFormat::Auto,
            log_filter: "info".into(),
        }
    }
}

impl InfraSettings {
    pub fn topology(&self) -> Topology {
        Topology::with_prefix(&self.amqp_prefix, self.amqp_delivery_limit)
    }

    /// Checks that the settings needed to reach the cluster services are present.
    pub fn require_cluster(&self) -> Result<(), String> {
        let missing: Vec<&str> = [
            ("LAPSEGUARD_DATABASE_URL", self.database_url.is_empty()),
            ("LAPSEGUARD_AMQP_URL", self.amqp_url.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing required settings: {}", missing.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("lg-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lapseguard.toml");
        std::fs::write(
            &file,
            "input_bucket = \"from-file\"\noutput_bucket = \"out-file\"\namqp_delivery_limit = 7\n",
        )
        .unwrap();
        // Environment overrides the file. The variable name is unique to this test.
        // SAFETY: no other test reads or writes LAPSEGUARD_OUTPUT_BUCKET.
        unsafe { std::env::set_var("LAPSEGUARD_OUTPUT_BUCKET", "out-env") };
        let s: InfraSettings = load(Some(&file)).unwrap();
        unsafe { std::env::remove_var("LAPSEGUARD_OUTPUT_BUCKET") };
        assert_eq!(s.input_bucket, "from-file");
        assert_eq!(s.output_bucket, "out-env");
        assert_eq!(s.amqp_delivery_limit, 7);
        assert_eq!(s.s3_region, "us-east-1", "defaults fill the rest");
        assert_eq!(s.topology().queue, "lapseguard.anonymize");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<InfraSettings>(Some(Path::new("/nonexistent/lapseguard.toml")));
        assert!(err.is_err());
    }
}
