//! State shared by the watcher, the uploaders, the heartbeat and the command handler:
//! paused or not (persisted: a camera paused remotely stays paused across a reboot),
//! the heartbeat interval, rescan requests, upload statistics and warnings.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What the uploaders last experienced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UplinkState {
    /// Nothing attempted yet.
    #[default]
    Idle,
    /// The last upload succeeded.
    Ok,
    /// Transient failures: retrying with backoff.
    Retrying,
    /// The backend refuses the token (401/403): retrying slowly, nothing is dropped.
    Unauthorized,
}

#[derive(Debug, Clone, Default)]
pub struct UploadStats {
    pub uplink: UplinkState,
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    pub last_upload_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    paused: bool,
}

pub struct Control {
    paused: watch::Sender<bool>,
    heartbeat_secs: watch::Sender<u64>,
    rescan: AtomicBool,
    stopping: AtomicBool,
    state_file: PathBuf,
    stats: Mutex<UploadStats>,
    warnings: Mutex<Vec<String>>,
    pub started_at: DateTime<Utc>,
}

impl Control {
    /// Loads the persisted pause state from `state.json` in the spool folder.
    pub fn load(spool_dir: &Path, heartbeat_secs: u64) -> Control {
        let state_file = spool_dir.join("state.json");
        let persisted: Persisted = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Control {
            paused: watch::Sender::new(persisted.paused),
            heartbeat_secs: watch::Sender::new(heartbeat_secs),
            rescan: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            state_file,
            stats: Mutex::new(UploadStats::default()),
            warnings: Mutex::new(Vec::new()),
            started_at: Utc::now(),
        }
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn subscribe_paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// Pauses or resumes uploads and persists the choice (blocking I/O, small).
    pub fn set_paused(&self, paused: bool) -> std::io::Result<()> {
        let json = serde_json::to_vec(&Persisted { paused }).map_err(std::io::Error::other)?;
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.state_file)?;
        self.paused.send_replace(paused);
        Ok(())
    }

    pub fn heartbeat_secs(&self) -> u64 {
        *self.heartbeat_secs.borrow()
    }

    pub fn subscribe_heartbeat(&self) -> watch::Receiver<u64> {
        self.heartbeat_secs.subscribe()
    }

    pub fn set_heartbeat_secs(&self, secs: u64) {
        self.heartbeat_secs.send_replace(secs);
    }

    pub fn request_rescan(&self) {
        self.rescan.store(true, Ordering::SeqCst);
    }

    /// True once per request.
    pub fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::SeqCst)
    }

    /// No new uploads start after this (shutdown).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once no upload is in flight.
    pub async fn wait_idle(&self, spool: &crate::spool::Spool) {
        while spool.stats().in_flight > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn stats(&self) -> UploadStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_stats(&self, f: impl FnOnce(&mut UploadStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_warnings(&self, w: Vec<String>) {
        *self.warnings.lock().unwrap_or_else(|p| p.into_inner()) = w;
    }
}
