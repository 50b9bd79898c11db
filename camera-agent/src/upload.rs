//! Uploads frames from the spool, oldest capture first.
//!
//! * `upload_concurrency` workers share one backoff: when the backend (or the uplink) is
//!   down, every worker waits, instead of each hammering it on its own schedule.
//! * Backoff: `retry_initial_ms`, doubled per consecutive failure up to `retry_max_secs`,
//!   "equal jitter" (half fixed, half random) so a fleet that lost the same backend does
//!   not come back in lock-step. A `Retry-After` from the backend is honoured (it wins
//!   when longer, capped at one hour).
//! * Each attempt takes the oldest pending frame again, so a frame that arrives late but
//!   was captured earlier goes first.
//! * Classification of answers: see [`classify`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use rand::Rng;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capture;
use crate::control::{Control, UplinkState};
use crate::spool::{Entry, Spool};

const CHUNK: usize = 64 * 1024;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
const MAX_REASON: usize = 2000;

#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub backend: Url,
    pub token: String,
    pub concurrency: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_bytes_per_sec: u64,
    pub keep_sent: bool,
    pub sent_max_bytes: u64,
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// 2xx: the backend has the frame (201 new, 200 already had it).
    Sent {
        status: u16,
        image_id: Option<String>,
    },
    /// The backend will never take this file as it is.
    Rejected { status: u16, reason: String },
    /// Try again later.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        unauthorized: bool,
    },
    /// The file is gone from `pending/`.
    Vanished,
}

/// * 200/201 → sent.
/// * 400, 413, 415, 422 → rejected (bad request for this file, too large, not JPEG/PNG,
///   undecodable or too many pixels: retrying the same bytes cannot help).
/// * 401/403 → retried with the longest backoff (a token can be fixed or re-issued;
///   frames are never dropped for it).
/// * everything else (408, 429, 5xx, a proxy's 404 or 502, ...) → retried.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Sent {
            status: status.as_u16(),
            image_id: serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned)),
        },
        400 | 413 | 415 | 422 => Outcome::Rejected {
            status: status.as_u16(),
            reason: problem_text(status, body),
        },
        s => Outcome::Retry {
            reason: problem_text(status, body),
            retry_after,
            unauthorized: s == 401 || s == 403,
        },
    }
}

/// `"422 Unprocessable Entity: <detail>"` from a problem+json body (or its raw text).
fn problem_text(status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("detail")
                .or_else(|| v.get("title"))
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let mut s = format!("{status}");
    if !detail.is_empty() {
        s.push_str(": ");
        s.push_str(&detail);
    }
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Consecutive failures and when the next attempt may start, shared by all workers.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    fn delay(&self, initial: Duration, max: Duration) -> Duration {
        let exp = initial
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(20))
            .min(max);
        let half = exp / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// Records a failure; returns how long every worker now waits.
    fn fail(
        &mut self,
        initial: Duration,
        max: Duration,
        retry_after: Option<Duration>,
        unauthorized: bool,
    ) -> Duration {
        let now = Instant::now();
        // Failures of uploads that were already in flight when the first one failed
        // are one outage, not several.
        if self.not_before.is_none_or(|t| now >= t) {
            self.failures = self.failures.saturating_add(1);
        }
        let mut d = if unauthorized {
            max
        } else {
            self.delay(initial, max)
        };
        if let Some(ra) = retry_after {
            d = d.max(ra);
        }
        let until = now + d;
        self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
        d
    }

    fn reset(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}

/// Shared upload bandwidth cap: a token bucket that may go into debt, so that chunks of
/// any size pass and concurrent uploads share the rate fairly.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        let rate = bytes_per_sec.max(1) as f64;
        RateLimiter {
            rate,
            burst: (rate / 4.0).max(CHUNK as f64),
            state: tokio::sync::Mutex::new((0.0, Instant::now())),
        }
    }

    pub async fn acquire(&self, n: usize) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

pub struct Uploader {
    cfg: UploadConfig,
    url: Url,
    client: reqwest::Client,
    spool: Arc<Spool>,
    control: Arc<Control>,
    backoff: Mutex<Backoff>,
    limiter: Option<Arc<RateLimiter>>,
}

impl Uploader {
    pub fn new(
        cfg: UploadConfig,
        client: reqwest::Client,
        spool: Arc<Spool>,
        control: Arc<Control>,
    ) -> anyhow::Result<Uploader> {
        let mut base = cfg.backend.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let url = base.join("v1/images")?;
        let limiter =
            (cfg.max_bytes_per_sec > 0).then(|| Arc::new(RateLimiter::new(cfg.max_bytes_per_sec)));
        Ok(Uploader {
            cfg,
            url,
            client,
            spool,
            control,
            backoff: Mutex::new(Backoff::default()),
            limiter,
        })
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `concurrency` workers until `shutdown`; in-flight uploads are abandoned then
    /// (safe: the frame stays in `pending/`, and a repeated upload is answered 200).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut workers = tokio::task::JoinSet::new();
        for n in 0..self.cfg.concurrency {
            let me = self.clone();
            let stop = shutdown.clone();
            workers.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = me.worker(n) => {}
                }
            });
        }
        while workers.join_next().await.is_some() {}
    }

    async fn worker(&self, n: usize) {
        let mut paused = self.control.subscribe_paused();
        loop {
            if self.control.is_stopping() {
                return;
            }
            // Paused: wait for resume.
            if *paused.borrow_and_update() {
                if paused.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // Backing off: wait (a resume or pause does not shorten it).
            let not_before = self.backoff().not_before;
            if let Some(t) = not_before
                && t > Instant::now()
            {
                tokio::time::sleep_until(t).await;
                continue;
            }
            let Some((entry, _)) = self.spool.next() else {
                tokio::select! {
                    _ = self.spool.available.notified() => {}
                    _ = paused.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            };
            let outcome = self.upload(&entry).await;
            self.settle(n, entry, outcome).await;
        }
    }

    async fn settle(&self, worker: usize, entry: Entry, outcome: Outcome) {
        match outcome {
            Outcome::Sent { status, image_id } => {
                self.backoff().reset();
                let size = std::fs::metadata(self.spool.path(&entry))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let spool = self.spool.clone();
                let (keep, max) = (self.cfg.keep_sent, self.cfg.sent_max_bytes);
                let e = entry.clone();
                let done = tokio::task::spawn_blocking(move || spool.complete(&e, keep, max)).await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        // Still in pending/: it will be sent again and answered 200.
                        tracing::error!(file = %entry.name, error = %err, "uploaded, but could not remove it from the spool");
                        self.spool.release(&entry);
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "spool task failed");
                        self.spool.release(&entry);
                    }
                }
                self.control.update_stats(|s| {
                    s.uplink = UplinkState::Ok;
                    s.uploaded += 1;
                    s.uploaded_bytes += size;
                    s.last_upload_at = Some(Utc::now());
                    s.last_error = None;
                });
                tracing::info!(
                    worker,
                    file = %entry.original_name(),
                    captured_at = %entry.captured_at_header(),
                    status,
                    image_id = image_id.as_deref().unwrap_or(""),
                    bytes = size,
                    "frame uploaded"
                );
            }
            Outcome::Rejected { status, reason } => {
                let spool = self.spool.clone();
                let e = entry.clone();
                let r = reason.clone();
                let done = tokio::task::spawn_blocking(move || spool.reject(&e, status, &r)).await;
                if !matches!(done, Ok(Ok(()))) {
                    tracing::error!(file = %entry.name, result = ?done, "could not move rejected frame to rejected/");
                    self.spool.release(&entry);
                }
                tracing::warn!(
                    file = %entry.original_name(),
                    status,
                    reason = %reason,
                    "frame rejected by the backend; moved to rejected/"
                );
            }
            Outcome::Retry {
                reason,
                retry_after,
                unauthorized,
            } => {
                self.spool.release(&entry);
                let wait = self.backoff().fail(
                    self.cfg.retry_initial,
                    self.cfg.retry_max,
                    retry_after,
                    unauthorized,
                );
                let failures = self.backoff().failures;
                self.control.update_stats(|s| {
                    s.uplink = if unauthorized {
                        UplinkState::Unauthorized
                    } else {
                        UplinkState::Retrying
                    };
                    s.last_error = Some(reason.clone());
                });
                if unauthorized {
                    tracing::error!(reason = %reason, retry_in = ?wait, "the backend refuses this camera's token; frames are kept");
                } else {
                    tracing::warn!(
                        file = %entry.original_name(),
                        reason = %reason,
                        failures,
                        retry_in = ?wait,
                        "upload failed; retrying"
                    );
                }
            }
            Outcome::Vanished => {
                tracing::warn!(file = %entry.name, "frame disappeared from pending/ before it was uploaded");
                self.spool.forget(&entry);
            }
        }
    }

    /// One attempt: streams the file from the spool (under the bandwidth cap).
    pub async fn upload(&self, entry: &Entry) -> Outcome {
        let path = self.spool.path(entry);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Vanished,
            Err(e) => return local_error(&path, e),
        };
        let len = match file.metadata().await {
            Ok(m) => m.len(),
            Err(e) => return local_error(&path, e),
        };
        let mut head = [0u8; 16];
        let mut got = 0;
        while got < head.len() {
            match file.read(&mut head[got..]).await {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return local_error(&path, e),
            }
        }
        let content_type = capture::content_type(&head[..got], &path);
        let prefix = bytes::Bytes::copy_from_slice(&head[..got]);
        let rest = tokio_util::io::ReaderStream::with_capacity(file, CHUNK);
        let chunks =
            futures::stream::once(async move { Ok::<_, std::io::Error>(prefix) }).chain(rest);
        let body = match &self.limiter {
            Some(limiter) => {
                let limiter = limiter.clone();
                reqwest::Body::wrap_stream(chunks.then(move |chunk| {
                    let limiter = limiter.clone();
                    async move {
                        if let Ok(c) = &chunk {
                            limiter.acquire(c.len()).await;
                        }
                        chunk
                    }
                }))
            }
            None => reqwest::Body::wrap_stream(chunks),
        };
        let resp = self
            .client
            .post(self.url.clone())
            .bearer_auth(&self.cfg.token)
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, len)
            .header("x-captured-at", entry.captured_at_header())
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    reason: error_chain(&e),
                    retry_after: None,
                    unauthorized: false,
                };
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        match resp.bytes().await {
            Ok(body) => classify(status, retry_after, &body),
            // A 2xx whose body was cut still means the backend committed the image.
            Err(_) if status.is_success() => classify(status, retry_after, b""),
            Err(e) => Outcome::Retry {
                reason: format!("{status}; reading the answer failed: {}", error_chain(&e)),
                retry_after,
                unauthorized: false,
            },
        }
    }
}

fn local_error(path: &std::path::Path, e: std::io::Error) -> Outcome {
    Outcome::Retry {
        reason: format!("reading {}: {e}", path.display()),
        retry_after: None,
        unauthorized: false,
    }
}

/// "error sending request: connection refused" instead of only the outermost message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let problem = br#"{"type":"about:blank","title":"Unprocessable Entity","status":422,"detail":"not a decodable JPEG"}"#;
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, None, problem),
            Outcome::Rejected {
                status: 422,
                reason: "422 Unprocessable Entity: not a decodable JPEG".into()
            }
        );
        assert!(matches!(
            classify(StatusCode::OK, None, br#"{"id":"abc"}"#),
            Outcome::Sent { status: 200, image_id: Some(ref id) } if id == "abc"
        ));
        assert!(matches!(
            classify(StatusCode::CREATED, None, b""),
            Outcome::Sent {
                status: 201,
                image_id: None
            }
        ));
        for s in [400, 413, 415] {
            assert!(matches!(
                classify(StatusCode::from_u16(s).unwrap(), None, b""),
                Outcome::Rejected { .. }
            ));
        }
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, Some(Duration::from_secs(5)), b""),
            Outcome::Retry { retry_after: Some(d), unauthorized: false, .. } if d == Duration::from_secs(5)
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, None, b""),
            Outcome::Retry {
                unauthorized: true,
                ..
            }
        ));
        for s in [404, 408, 429, 500, 502] {
            assert!(matches!(
                classify(StatusCode::from_u16(s).unwrap(), None, b""),
                Outcome::Retry {
                    unauthorized: false,
                    ..
                }
            ));
        }
    }

    #[test]
    fn retry_after() {
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn backoff_grows_with_jitter_and_resets() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::default();
        let mut last = Duration::ZERO;
        for n in 1..=8u32 {
            // Pretend the previous window is over.
            b.not_before = None;
            let d = b.fail(initial, max, None, false);
            let exp = (initial * 2u32.pow(n - 1)).min(max);
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {n}: {d:?} not in [{:?}, {exp:?}]",
                exp / 2
            );
            last = d;
        }
        assert!(last >= max / 2);
        // Retry-After wins when longer; unauthorized waits the maximum.
        b.not_before = None;
        assert!(
            b.fail(initial, max, Some(Duration::from_secs(30)), false) >= Duration::from_secs(30)
        );
        b.reset();
        assert_eq!(b.failures, 0);
        assert_eq!(b.fail(initial, max, None, true), max);
        // A second failure inside the window is the same outage.
        let before = b.failures;
        b.fail(initial, max, None, false);
        assert_eq!(b.failures, before);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_holds_the_rate() {
        let l = RateLimiter::new(100_000);
        let start = Instant::now();
        for _ in 0..50 {
            l.acquire(10_000).await;
        }
        // 500 kB at 100 kB/s, minus the initial burst (25 kB).
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4700) && took <= Duration::from_millis(5100),
            "{took:?}"
        );
    }
}
