//! The agent's settings. Every key can come from the configuration file or from
//! `LAPSEGUARD_<KEY>`; the command-line flags of `watch` and `simulate` override the
//! keys of the same name. Every key is documented in `docs/configuration.md`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::LogFormat;

/// Settings of `camera-agent watch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WatchSettings {
    /// Base URL of the lapseguard backend, e.g. `https://lapseguard.example.com`.
    pub backend: String,
    /// Bearer token of this camera (from `POST /v1/projects/{slug}/cameras`).
    pub token: String,
    /// Folder the camera writes its frames into.
    pub capture_dir: PathBuf,
    /// Durable spool (`pending/`, `sent/`, `rejected/`); must be on the same filesystem
    /// as the capture folder for the hand-over to be one atomic rename.
    pub spool_dir: PathBuf,
    /// MQTT broker URL (`mqtt://host:1883`, `mqtts://host:8883`, credentials may be in
    /// the URL). Empty: no heartbeats and no remote commands.
    pub mqtt: String,
    /// MQTT user name and password (override the URL's).
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// First level of the MQTT topics: `{prefix}/cameras/{camera_id}/status`.
    pub mqtt_topic_prefix: String,
    /// Identity of this camera in MQTT topics: the camera id the backend assigned.
    pub camera_id: String,
    /// Seconds between heartbeats (changeable remotely with `set-interval`).
    pub heartbeat_secs: u64,
    /// File extensions (comma-separated, case-insensitive) that are frames.
    pub extensions: String,
    /// Quiet time after a file was closed or renamed into the folder before it is taken.
    pub settle_ms: u64,
    /// A file without a close event (found by a scan, or whose writer never closed it)
    /// is taken once its size and mtime have not changed for this long.
    pub stable_secs: u64,
    /// Full scan of the capture folder every this many seconds (safety net for missed
    /// events and network filesystems); 0 = only at start and on `rescan`.
    pub rescan_secs: u64,
    /// Uploads in flight. 1 (default) keeps the arrival order equal to the capture order.
    pub upload_concurrency: usize,
    /// Whole-request timeout of one upload, seconds.
    pub upload_timeout_secs: u64,
    /// TCP/TLS connect timeout, seconds.
    pub connect_timeout_secs: u64,
    /// Upload bandwidth cap in bytes per second over all uploads; 0 = none.
    pub upload_max_bytes_per_sec: u64,
    /// First retry delay after a transient failure, milliseconds (doubles each time, with jitter).
    pub retry_initial_ms: u64,
    /// Longest retry delay, seconds (a longer `Retry-After` from the backend still wins).
    pub retry_max_secs: u64,
    /// Keep uploaded frames in `sent/` (pruned oldest first above `sent_max_bytes`)
    /// instead of deleting them.
    pub keep_sent: bool,
    pub sent_max_bytes: u64,
    /// Warn (log + heartbeat) when the unsent backlog is larger than this; 0 = never.
    /// Nothing unsent is ever deleted.
    pub spool_warn_bytes: u64,
    /// Warn (log + heartbeat) when the spool's filesystem has less than this % free.
    pub disk_warn_free_percent: u8,
    /// Extra CA certificates (PEM) trusted for the backend and the broker, besides the
    /// system store and the bundled Mozilla roots.
    pub tls_ca_file: String,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Push log events to Grafana Loki at this URL (e.g. `https://loki.example:3100`);
    /// needs the `loki` cargo feature. Empty: stdout only.
    pub loki_url: String,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            backend: String::new(),
            token: String::new(),
            capture_dir: PathBuf::new(),
            spool_dir: PathBuf::new(),
            mqtt: String::new(),
            mqtt_username: String::new(),
            mqtt_password: String::new(),
            mqtt_topic_prefix: "lapseguard".into(),
            camera_id: String::new(),
            heartbeat_secs: 30,
            extensions: "jpg,jpeg,png".into(),
            settle_ms: 500,
            stable_secs: 10,
            rescan_secs: 60,
            upload_concurrency: 1,
            upload_timeout_secs: 120,
            connect_timeout_secs: 10,
            upload_max_bytes_per_sec: 0,
            retry_initial_ms: 1000,
            retry_max_secs: 300,
            keep_sent: false,
            sent_max_bytes: 100 * 1024 * 1024,
            spool_warn_bytes: 0,
            disk_warn_free_percent: 10,
            tls_ca_file: String::new(),
            log_format: LogFormat::Auto,
            log_filter: "info".into(),
            loki_url: String::new(),
        }
    }
}

impl WatchSettings {
    /// Checks required keys and ranges; the message names every problem at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.backend.is_empty() {
            problems.push("--backend / LAPSEGUARD_BACKEND is required".to_string());
        } else if reqwest::Url::parse(&self.backend).is_err() {
            problems.push(format!("backend {:?} is not a URL", self.backend));
        }
        if self.token.is_empty() {
            problems.push("--token / LAPSEGUARD_TOKEN is required".into());
        }
        if self.capture_dir.as_os_str().is_empty() {
            problems.push("--capture-dir / LAPSEGUARD_CAPTURE_DIR is required".into());
        }
        if self.spool_dir.as_os_str().is_empty() {
            problems.push("--spool-dir / LAPSEGUARD_SPOOL_DIR is required".into());
        }
        if !self.mqtt.is_empty() {
            if self.camera_id.is_empty() {
                problems.push(
                    "--camera-id / LAPSEGUARD_CAMERA_ID is required with --mqtt (it names the topics)"
                        .into(),
                );
            } else if !valid_topic_level(&self.camera_id) {
                problems.push(format!(
                    "camera id {:?} may only hold letters, digits, '-' and '_' (it is an MQTT topic level)",
                    self.camera_id
                ));
            }
            if !valid_topic_level(&self.mqtt_topic_prefix) {
                problems.push(format!(
                    "mqtt_topic_prefix {:?} may only hold letters, digits, '-' and '_'",
                    self.mqtt_topic_prefix
                ));
            }
        }
        if self.upload_concurrency == 0 {
            problems.push("upload_concurrency must be at least 1".into());
        }
        if self.heartbeat_secs == 0 {
            problems.push("heartbeat_secs must be at least 1".into());
        }
        if self.disk_warn_free_percent > 100 {
            problems.push("disk_warn_free_percent must be 0-100".into());
        }
        if self.extension_list().is_empty() {
            problems.push("extensions must name at least one extension".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn extension_list(&self) -> Vec<String> {
        self.extensions
            .split(',')
            .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect()
    }

    pub fn retry_initial(&self) -> Duration {
        Duration::from_millis(self.retry_initial_ms.max(1))
    }

    pub fn retry_max(&self) -> Duration {
        Duration::from_secs(self.retry_max_secs.max(1))
    }
}

/// One MQTT topic level that survives RabbitMQ's topic → routing-key mapping unchanged
/// (`/` becomes `.`, so a `.` in a level would split it) and contains no wildcard.
pub fn valid_topic_level(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Settings of `camera-agent simulate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SimulateSettings {
    /// Folder of sample JPEG/PNG images, written in name order, round after round.
    pub source: PathBuf,
    /// Folder the simulated camera writes into (the agent's capture folder).
    pub capture_dir: PathBuf,
    /// Time between frames, e.g. `2s`, `500ms`, `1m`.
    pub interval: String,
    /// Frames to write; 0 = until stopped.
    pub count: u64,
    /// File name prefix of the frames (`{prefix}-{capture time}-{seq}.jpg`).
    pub frame_prefix: String,
    pub log_format: LogFormat,
    pub log_filter: String,
}

impl Default for SimulateSettings {
    fn default() -> Self {
        Self {
            source: PathBuf::new(),
            capture_dir: PathBuf::new(),
            interval: "10s".into(),
            count: 0,
            frame_prefix: "frame".into(),
            log_format: LogFormat::Auto,
            log_filter: "info".into(),
        }
    }
}

impl SimulateSettings {
    pub fn interval(&self) -> Result<Duration, String> {
        parse_duration(&self.interval)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.source.as_os_str().is_empty() {
            problems.push("--source / LAPSEGUARD_SOURCE is required".to_string());
        }
        if self.capture_dir.as_os_str().is_empty() {
            problems.push("--capture-dir / LAPSEGUARD_CAPTURE_DIR is required".into());
        }
        if let Err(e) = self.interval() {
            problems.push(e);
        }
        if !valid_topic_level(&self.frame_prefix) {
            problems.push("frame_prefix may only hold letters, digits, '-' and '_'".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// `2s`, `500ms`, `1m 30s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("interval {s:?} must not be negative"));
    }
    humantime::parse_duration(s).map_err(|e| format!("interval {s:?} is not a duration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn topic_levels() {
        assert!(valid_topic_level("0d6f7c4e-2b1a-4c1e-9c55-0a1b2c3d4e5f"));
        assert!(valid_topic_level("cam_7"));
        assert!(!valid_topic_level(""));
        assert!(!valid_topic_level("a/b"));
        assert!(!valid_topic_level("a.b"));
        assert!(!valid_topic_level("+"));
        assert!(!valid_topic_level("#"));
    }

    #[test]
    fn validation_names_every_problem() {
        let s = WatchSettings {
            mqtt: "mqtt://broker".into(),
            ..WatchSettings::default()
        };
        let err = s.validate().unwrap_err();
        for needle in ["backend", "token", "capture-dir", "spool-dir", "camera-id"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        let ok = WatchSettings {
            backend: "http://127.0.0.1:8080".into(),
            token: "t".into(),
            capture_dir: "/c".into(),
            spool_dir: "/s".into(),
            ..WatchSettings::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.extension_list(), vec!["jpg", "jpeg", "png"]);
    }
}
