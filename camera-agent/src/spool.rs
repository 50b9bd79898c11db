//! The durable spool: where a frame lives from the moment it is finished until the
//! backend has it.
//!
//! ```text
//! capture/IMG_0001.jpg ──rename──▶ spool/pending/00000017...-IMG_0001.jpg ──2xx──▶ deleted, or spool/sent/...
//!                                                                        └─400/413/415/422─▶ spool/rejected/... + .reason.json
//! ```
//!
//! * `pending/` holds every frame not yet acknowledged by the backend. A file name starts
//!   with the capture time in microseconds since the epoch (20 digits), so the name order
//!   is the capture order and nothing else needs to be stored: after a crash or a power
//!   cut the directory *is* the queue.
//! * Each move is one `rename` on the same filesystem followed by an `fsync` of the
//!   directories, so a frame is always in exactly one place (or, after a power cut in
//!   the middle of a cross-filesystem copy, in two — which the backend's idempotency on
//!   the bytes' SHA-256 turns into one image).
//! * Only a 2xx from the backend removes a file from `pending/`; nothing unsent is ever
//!   deleted by the agent, whatever the disk usage.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::Notify;

const PREFIX_LEN: usize = 20;

/// A frame in `pending/`, ordered by capture time, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// Capture time, microseconds since the epoch.
    pub captured_micros: i64,
    /// File name inside `pending/`.
    pub name: String,
}

impl Entry {
    pub fn captured_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.captured_micros).unwrap_or_default()
    }

    /// `X-Captured-At`: RFC 3339 in UTC, microseconds.
    pub fn captured_at_header(&self) -> String {
        self.captured_at()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// The name the frame had in the capture folder.
    pub fn original_name(&self) -> &str {
        split_name(&self.name).map_or(self.name.as_str(), |(_, rest)| rest)
    }
}

/// `00000001767225600000000-IMG_1.jpg` → (micros, `IMG_1.jpg`).
fn split_name(name: &str) -> Option<(i64, &str)> {
    let (digits, rest) = (name.get(..PREFIX_LEN)?, name.get(PREFIX_LEN..)?);
    let rest = rest.strip_prefix('-')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    Some((digits.parse().ok()?, rest))
}

/// Why the backend refused a frame for good; written next to it in `rejected/`.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
    pub original_name: String,
    pub captured_at: String,
    pub rejected_at: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Frames in `pending/` (in flight included).
    pub backlog: u64,
    pub backlog_bytes: u64,
    pub in_flight: u64,
    /// Frames in `rejected/`.
    pub rejected: u64,
}

#[derive(Default)]
struct Index {
    pending: BTreeMap<Entry, u64>,
    in_flight: HashSet<Entry>,
    bytes: u64,
    rejected: u64,
    sent_bytes: u64,
}

pub struct Spool {
    root: PathBuf,
    pending: PathBuf,
    sent: PathBuf,
    rejected: PathBuf,
    tmp: PathBuf,
    index: Mutex<Index>,
    /// Woken when a frame becomes available to upload.
    pub available: Notify,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn is_cross_device(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EXDEV)
}

impl Spool {
    /// Opens (creating) the spool under `root` and loads `pending/` into the index.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let spool = Spool {
            root: root.to_path_buf(),
            pending: root.join("pending"),
            sent: root.join("sent"),
            rejected: root.join("rejected"),
            tmp: root.join("tmp"),
            index: Mutex::new(Index::default()),
            available: Notify::new(),
        };
        for d in [&spool.pending, &spool.sent, &spool.rejected, &spool.tmp] {
            fs::create_dir_all(d)?;
        }
        // Half-copied files of an interrupted cross-filesystem claim: the source is
        // still in the capture folder.
        for e in fs::read_dir(&spool.tmp)?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut index = Index::default();
        for e in fs::read_dir(&spool.pending)?.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %e.path().display(), "file name is not UTF-8; left in pending/");
                continue;
            };
            if !meta.is_file() || name.starts_with('.') {
                continue;
            }
            // A file put there by hand has no time prefix: order it by its mtime.
            let captured_micros = match split_name(&name) {
                Some((micros, _)) => micros,
                None => meta
                    .modified()
                    .map(|t| DateTime::<Utc>::from(t).timestamp_micros().max(0))
                    .unwrap_or(0),
            };
            index.bytes += meta.len();
            index.pending.insert(
                Entry {
                    captured_micros,
                    name,
                },
                meta.len(),
            );
        }
        for e in fs::read_dir(&spool.rejected)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !name.ends_with(".reason.json") && !name.starts_with('.') {
                index.rejected += 1;
            }
        }
        for e in fs::read_dir(&spool.sent)?.flatten() {
            index.sent_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        *spool.lock() = index;
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way
        // that matters more than stopping would: keep going with what is there.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pending_dir(&self) -> &Path {
        &self.pending
    }

    pub fn rejected_dir(&self) -> &Path {
        &self.rejected
    }

    pub fn sent_dir(&self) -> &Path {
        &self.sent
    }

    pub fn path(&self, entry: &Entry) -> PathBuf {
        self.pending.join(&entry.name)
    }

    /// Moves a finished frame from the capture folder into `pending/` (blocking I/O).
    pub fn claim(&self, src: &Path, captured: DateTime<Utc>) -> io::Result<Entry> {
        let original = src
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "file name is not UTF-8"))?;
        let micros = captured.timestamp_micros().max(0);
        let mut name = format!("{micros:020}-{original}");
        let mut k = 1;
        while self.pending.join(&name).exists() {
            name = format!("{micros:020}-{k}-{original}");
            k += 1;
        }
        let dest = self.pending.join(&name);
        // The data must be on disk before the rename makes it a spooled frame.
        File::open(src)?.sync_all()?;
        match fs::rename(src, &dest) {
            Ok(()) => {}
            Err(e) if is_cross_device(&e) => {
                let tmp = self.tmp.join(&name);
                fs::copy(src, &tmp)?;
                File::open(&tmp)?.sync_all()?;
                fs::rename(&tmp, &dest)?;
                sync_dir(&self.pending)?;
                fs::remove_file(src)?;
            }
            Err(e) => return Err(e),
        }
        sync_dir(&self.pending)?;
        if let Some(parent) = src.parent() {
            sync_dir(parent)?;
        }
        let size = fs::metadata(&dest)?.len();
        let entry = Entry {
            captured_micros: micros,
            name,
        };
        {
            let mut idx = self.lock();
            idx.bytes += size;
            idx.pending.insert(entry.clone(), size);
        }
        self.available.notify_one();
        Ok(entry)
    }

    /// The oldest frame not already being uploaded; it is in flight until
    /// [`Spool::release`], [`Spool::complete`], [`Spool::reject`] or [`Spool::forget`].
    pub fn next(&self) -> Option<(Entry, u64)> {
        let mut idx = self.lock();
        let found = idx
            .pending
            .iter()
            .find(|(e, _)| !idx.in_flight.contains(*e))
            .map(|(e, s)| (e.clone(), *s));
        if let Some((e, _)) = &found {
            idx.in_flight.insert(e.clone());
        }
        found
    }

    /// Back into the queue (the upload failed transiently).
    pub fn release(&self, entry: &Entry) {
        self.lock().in_flight.remove(entry);
        self.available.notify_one();
    }

    fn drop_entry(&self, entry: &Entry) -> u64 {
        let mut idx = self.lock();
        idx.in_flight.remove(entry);
        let size = idx.pending.remove(entry).unwrap_or(0);
        idx.bytes = idx.bytes.saturating_sub(size);
        size
    }

    /// The backend has the frame: delete it, or move it to `sent/` (blocking I/O).
    pub fn complete(&self, entry: &Entry, keep_sent: bool, sent_max_bytes: u64) -> io::Result<()> {
        let path = self.path(entry);
        let result = if keep_sent {
            fs::rename(&path, self.sent.join(&entry.name))
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => sync_dir(&self.pending)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let size = self.drop_entry(entry);
        if keep_sent {
            let over = {
                let mut idx = self.lock();
                idx.sent_bytes += size;
                idx.sent_bytes > sent_max_bytes
            };
            if over {
                self.prune_sent(sent_max_bytes)?;
            }
        }
        Ok(())
    }

    /// Deletes the oldest frames of `sent/` (already uploaded) until it fits `max_bytes`.
    fn prune_sent(&self, max_bytes: u64) -> io::Result<()> {
        let mut files: Vec<(String, u64)> = fs::read_dir(&self.sent)?
            .flatten()
            .filter_map(|e| {
                let len = e.metadata().ok()?.len();
                Some((e.file_name().to_str()?.to_owned(), len))
            })
            .collect();
        files.sort();
        let mut total: u64 = files.iter().map(|(_, l)| l).sum();
        for (name, len) in files {
            if total <= max_bytes {
                break;
            }
            fs::remove_file(self.sent.join(&name))?;
            total -= len;
        }
        self.lock().sent_bytes = total;
        Ok(())
    }

    /// The backend refused the frame for good: move it to `rejected/` with the reason.
    pub fn reject(&self, entry: &Entry, status: u16, reason: &str) -> io::Result<()> {
        let rejection = Rejection {
            status,
            reason: reason.to_string(),
            original_name: entry.original_name().to_string(),
            captured_at: entry.captured_at_header(),
            rejected_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        let json = serde_json::to_vec_pretty(&rejection).map_err(io::Error::other)?;
        let reason_path = self.rejected.join(format!("{}.reason.json", entry.name));
        let tmp = self.tmp.join(format!("{}.reason.json", entry.name));
        fs::write(&tmp, json)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &reason_path)?;
        match fs::rename(self.path(entry), self.rejected.join(&entry.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        sync_dir(&self.rejected)?;
        sync_dir(&self.pending)?;
        self.drop_entry(entry);
        self.lock().rejected += 1;
        Ok(())
    }

    /// The file disappeared from `pending/` (removed by hand): stop tracking it.
    pub fn forget(&self, entry: &Entry) {
        self.drop_entry(entry);
    }

    pub fn stats(&self) -> SpoolStats {
        let idx = self.lock();
        SpoolStats {
            backlog: idx.pending.len() as u64,
            backlog_bytes: idx.bytes,
            in_flight: idx.in_flight.len() as u64,
            rejected: idx.rejected,
        }
    }

    /// (free, total) bytes of the spool's filesystem, for unprivileged users.
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        disk_space(&self.root)
    }
}

/// (available, total) bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// Whether two paths are on the same filesystem (a claim is then one atomic rename).
pub fn same_filesystem(a: &Path, b: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    Some(fs::metadata(a).ok()?.dev() == fs::metadata(b).ok()?.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "lg-spool-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn oldest_capture_first_and_survives_reopen() {
        let root = tempdir("order");
        let capture = root.join("capture");
        fs::create_dir_all(&capture).unwrap();
        let spool = Spool::open(&root.join("spool")).unwrap();
        for (name, t) in [("c.jpg", 300), ("a.jpg", 100), ("b.jpg", 200)] {
            fs::write(capture.join(name), name).unwrap();
            spool.claim(&capture.join(name), at(t)).unwrap();
            assert!(!capture.join(name).exists(), "moved, not copied");
        }
        assert_eq!(spool.stats().backlog, 3);
        assert_eq!(spool.stats().backlog_bytes, 15);
        let (first, _) = spool.next().unwrap();
        assert_eq!(first.original_name(), "a.jpg");
        assert_eq!(first.captured_at_header(), "1970-01-01T00:01:40.000000Z");
        let (second, _) = spool.next().unwrap();
        assert_eq!(
            second.original_name(),
            "b.jpg",
            "in-flight frames are skipped"
        );
        spool.release(&first);
        spool.complete(&second, false, 0).unwrap();
        // Reopen: the directory is the queue.
        drop(spool);
        let spool = Spool::open(&root.join("spool")).unwrap();
        let names: Vec<String> = std::iter::from_fn(|| spool.next())
            .map(|(e, _)| e.original_name().to_string())
            .collect();
        assert_eq!(names, vec!["a.jpg", "c.jpg"]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn same_name_and_time_do_not_overwrite() {
        let root = tempdir("dup");
        let spool = Spool::open(&root.join("spool")).unwrap();
        for body in ["one", "two"] {
            fs::write(root.join("x.jpg"), body).unwrap();
            spool.claim(&root.join("x.jpg"), at(5)).unwrap();
        }
        assert_eq!(spool.stats().backlog, 2);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn rejected_keeps_file_and_reason() {
        let root = tempdir("reject");
        let spool = Spool::open(&root.join("spool")).unwrap();
        fs::write(root.join("bad.jpg"), "garbage").unwrap();
        let e = spool.claim(&root.join("bad.jpg"), at(7)).unwrap();
        let (e2, _) = spool.next().unwrap();
        assert_eq!(e, e2);
        spool.reject(&e, 422, "undecodable").unwrap();
        assert_eq!(
            spool.stats(),
            SpoolStats {
                rejected: 1,
                ..SpoolStats::default()
            }
        );
        let kept = fs::read(spool.rejected_dir().join(&e.name)).unwrap();
        assert_eq!(kept, b"garbage");
        let reason: serde_json::Value = serde_json::from_slice(
            &fs::read(spool.rejected_dir().join(format!("{}.reason.json", e.name))).unwrap(),
        )
        .unwrap();
        assert_eq!(reason["status"], 422);
        assert_eq!(reason["original_name"], "bad.jpg");
        assert_eq!(
            Spool::open(&root.join("spool")).unwrap().stats().rejected,
            1
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn sent_retention_prunes_oldest() {
        let root = tempdir("sent");
        let spool = Spool::open(&root.join("spool")).unwrap();
        for i in 0..4 {
            let p = root.join(format!("{i}.jpg"));
            fs::write(&p, [0u8; 10]).unwrap();
            spool.claim(&p, at(i)).unwrap();
            let (e, _) = spool.next().unwrap();
            spool.complete(&e, true, 25).unwrap();
        }
        let mut left: Vec<String> = fs::read_dir(spool.sent_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 2);
        assert!(left[0].ends_with("-2.jpg") && left[1].ends_with("-3.jpg"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn names() {
        assert_eq!(
            split_name("00000000000000000042-IMG-1.jpg"),
            Some((42, "IMG-1.jpg"))
        );
        assert_eq!(split_name("IMG-1.jpg"), None);
        assert_eq!(split_name("0000000000000000004x-a"), None);
        assert_eq!(split_name("00000000000000000042-"), None);
    }
}
