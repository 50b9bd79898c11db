//! Finds *finished* frames in the capture folder and hands them to the spool.
//!
//! A file is finished when
//! * it was closed after writing (`IN_CLOSE_WRITE`) or renamed into the folder
//!   (`IN_MOVED_TO`: the temp-name-then-rename pattern), and nothing changed for
//!   `settle_ms` since; or
//! * no close event was seen for it (found by a scan at start-up or by the periodic
//!   rescan; network filesystems; a writer that never closes) and its size and mtime
//!   have not changed for `stable_secs`.
//!
//! Hidden files (`.name`), editor backups (`name~`) and other extensions (`.tmp`,
//! `.part`, ...) are never taken. Empty files are only taken by the stable rule.
//!
//! The state machine runs on its own thread: notify's callback feeds it, a 250 ms tick
//! evaluates candidates, and claiming (fsync + rename) is blocking I/O anyway.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher as _};
use tokio_util::sync::CancellationToken;

use crate::capture;
use crate::control::Control;
use crate::spool::Spool;

const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub dir: PathBuf,
    pub extensions: Vec<String>,
    pub settle: Duration,
    pub stable: Duration,
    /// Zero: no periodic rescan.
    pub rescan_every: Duration,
}

#[derive(Debug)]
struct Candidate {
    /// Closed after writing or renamed in since the last data change.
    closed: bool,
    changed_at: Instant,
    size: u64,
    mtime: Option<SystemTime>,
}

/// Whether a file name can be a frame.
pub fn eligible(name: &str, extensions: &[String]) -> bool {
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => {
            let ext = ext.to_ascii_lowercase();
            extensions.contains(&ext)
        }
        _ => false,
    }
}

struct State {
    cfg: WatchConfig,
    spool: Arc<Spool>,
    control: Arc<Control>,
    candidates: HashMap<PathBuf, Candidate>,
}

impl State {
    fn is_frame(&self, path: &Path) -> bool {
        path.parent() == Some(self.cfg.dir.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| eligible(n, &self.cfg.extensions))
    }

    fn touch(&mut self, path: &Path, closed: bool) {
        if !self.is_frame(path) {
            return;
        }
        let now = Instant::now();
        let c = self
            .candidates
            .entry(path.to_path_buf())
            .or_insert(Candidate {
                closed,
                changed_at: now,
                size: u64::MAX,
                mtime: None,
            });
        c.closed = closed;
        c.changed_at = now;
    }

    fn on_event(&mut self, event: Event) -> bool {
        if event.need_rescan() {
            return true;
        }
        match event.kind {
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                for p in &event.paths {
                    self.touch(p, false);
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for p in &event.paths {
                    self.touch(p, true);
                }
            }
            // Attribute changes (e.g. the camera setting the mtime after closing) restart
            // the quiet period but say nothing about whether the file is still open.
            EventKind::Modify(ModifyKind::Metadata(_)) => {
                let now = Instant::now();
                for p in &event.paths {
                    if let Some(c) = self.candidates.get_mut(p) {
                        c.changed_at = now;
                    }
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                for p in &event.paths {
                    self.candidates.remove(p);
                }
            }
            // A rename we could not pair, or anything else: look at the folder again.
            EventKind::Modify(ModifyKind::Name(RenameMode::Any | RenameMode::Other)) => {
                return true;
            }
            _ => {}
        }
        false
    }

    /// Adds every eligible file not tracked yet, to be taken by the stable rule.
    fn rescan(&mut self) {
        let entries = match fs::read_dir(&self.cfg.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.cfg.dir.display(), error = %e, "cannot list the capture folder");
                return;
            }
        };
        let now = Instant::now();
        let mut added = 0;
        for e in entries.flatten() {
            let path = e.path();
            if self.candidates.contains_key(&path) || !self.is_frame(&path) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            self.candidates.insert(
                path,
                Candidate {
                    closed: false,
                    changed_at: now,
                    size: meta.len(),
                    mtime: meta.modified().ok(),
                },
            );
            added += 1;
        }
        if added > 0 {
            tracing::info!(
                files = added,
                "rescan found files in the capture folder; taking them once stable"
            );
        }
    }

    /// Claims every candidate that is finished.
    fn evaluate(&mut self) {
        let now = Instant::now();
        let mut ready = Vec::new();
        self.candidates.retain(|path, c| {
            let meta = match fs::metadata(path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot stat candidate");
                    return true;
                }
            };
            let mtime = meta.modified().ok();
            if meta.len() != c.size || mtime != c.mtime {
                c.size = meta.len();
                c.mtime = mtime;
                c.changed_at = now;
                return true;
            }
            let quiet = now.saturating_duration_since(c.changed_at);
            let finished = if c.closed && c.size > 0 {
                quiet >= self.cfg.settle
            } else {
                quiet >= self.cfg.stable
            };
            if finished {
                ready.push(path.clone());
                false
            } else {
                true
            }
        });
        ready.sort();
        for path in ready {
            self.claim(&path);
        }
    }

    fn claim(&self, path: &Path) {
        let result = (|| -> io::Result<_> {
            let mut f = fs::File::open(path)?;
            let mtime = f.metadata()?.modified()?;
            let (captured, source) = capture::capture_time(&mut f, mtime);
            drop(f);
            Ok((self.spool.claim(path, captured)?, source))
        })();
        match result {
            Ok((entry, source)) => tracing::info!(
                file = %entry.original_name(),
                captured_at = %entry.captured_at_header(),
                time_from = ?source,
                "frame spooled"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Left in the capture folder: the next rescan tries again.
            Err(e) => tracing::error!(path = %path.display(), error = %e, "could not spool frame"),
        }
    }
}

/// The watcher thread. Dropping the handle does not stop it; cancel `shutdown`.
pub struct WatchHandle {
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// Waits for the thread to finish (after `shutdown` was cancelled).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching. The folder watch is set up before the first scan, so no file can
/// slip between the two.
pub fn start(
    cfg: WatchConfig,
    spool: Arc<Spool>,
    control: Arc<Control>,
    shutdown: CancellationToken,
) -> anyhow::Result<WatchHandle> {
    let (tx, rx) = mpsc::channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })?;
    watcher
        .watch(&cfg.dir, RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("watching {}: {e}", cfg.dir.display()))?;
    let thread = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let _watcher = watcher;
            let mut state = State {
                cfg,
                spool,
                control,
                candidates: HashMap::new(),
            };
            state.rescan();
            let mut last_rescan = Instant::now();
            let mut next_tick = Instant::now() + TICK;
            while !shutdown.is_cancelled() {
                let mut rescan = false;
                let wait = next_tick.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(Ok(ev)) => rescan |= state.on_event(ev),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "file watch error; rescanning");
                        rescan = true;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                // Drain what else is queued before evaluating.
                while let Ok(ev) = rx.try_recv() {
                    match ev {
                        Ok(ev) => rescan |= state.on_event(ev),
                        Err(_) => rescan = true,
                    }
                }
                let periodic = !state.cfg.rescan_every.is_zero()
                    && last_rescan.elapsed() >= state.cfg.rescan_every;
                if rescan || periodic || state.control.take_rescan() {
                    state.rescan();
                    last_rescan = Instant::now();
                }
                if Instant::now() >= next_tick {
                    state.evaluate();
                    next_tick = Instant::now() + TICK;
                }
            }
        })?;
    Ok(WatchHandle {
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::eligible;

    #[test]
    fn names() {
        let exts = vec!["jpg".to_string(), "jpeg".into(), "png".into()];
        assert!(eligible("IMG_0001.JPG", &exts));
        assert!(eligible("frame.png", &exts));
        assert!(!eligible(".IMG_0001.jpg", &exts), "hidden");
        assert!(!eligible("IMG_0001.jpg.tmp", &exts), "temp name");
        assert!(!eligible("IMG_0001.jpg.part", &exts));
        assert!(!eligible("IMG_0001.jpg~", &exts));
        assert!(!eligible("notes.txt", &exts));
        assert!(!eligible("jpg", &exts));
        assert!(!eligible(".jpg", &exts));
    }
}
