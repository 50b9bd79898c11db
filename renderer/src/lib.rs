//! lapseguard renderer: turns a project's anonymized frames into a timelapse video.
//!
//! A render is claimed from the catalog with a lease (see
//! [`lapseguard_core::timelapse`]). Frames are read one at a time from the **output**
//! bucket only (the renderer never asks for an original), scaled and letterboxed to the
//! requested size, and piped as raw RGB into ffmpeg, which writes an H.264/yuv420p MP4
//! with the index at the front (faststart). Memory holds one frame plus ffmpeg's encoder
//! state, whatever the number of frames; the disk holds only the video being written.
//! Frames whose anonymization failed or is unfinished are skipped and counted.
//!
//! A render that crashes is taken again from the start by the next renderer once its
//! lease runs out; the video key is deterministic, so a second run overwrites.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use image::{DynamicImage, RgbImage};
use lapseguard_core::catalog::{Catalog, CatalogError, Cursor, ImageStatus, ListQuery};
use lapseguard_core::config::InfraSettings;
use lapseguard_core::objects::{ObjectError, ObjectStore};
use lapseguard_core::timelapse::{RenderProgress, Timelapse, video_key};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Renderer settings (the shared ones are [`InfraSettings`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RendererSettings {
    /// Address of `/livez`, `/readyz` and `/metrics`.
    pub renderer_listen: String,
    /// The ffmpeg executable.
    pub ffmpeg_path: PathBuf,
    /// Where the video being encoded is written before upload (empty = system temp).
    pub render_work_dir: PathBuf,
    /// Seconds a claimed render stays ours without a progress report.
    pub render_lease_secs: u64,
    /// How often an idle renderer looks for a queued render.
    pub render_poll_ms: u64,
    /// Attempts before a render that keeps dying is marked failed.
    pub render_max_attempts: i32,
    /// x264 preset (speed vs size) and constant rate factor (quality; lower is better).
    pub x264_preset: String,
    pub x264_crf: u8,
}

impl Default for RendererSettings {
    fn default() -> Self {
        Self {
            renderer_listen: "0.0.0.0:9091".into(),
            ffmpeg_path: "ffmpeg".into(),
            render_work_dir: PathBuf::new(),
            render_lease_secs: 120,
            render_poll_ms: 2000,
            render_max_attempts: 3,
            x264_preset: "veryfast".into(),
            x264_crf: 23,
        }
    }
}

impl RendererSettings {
    pub fn work_dir(&self) -> PathBuf {
        if self.render_work_dir.as_os_str().is_empty() {
            std::env::temp_dir()
        } else {
            self.render_work_dir.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Worth another attempt (store or catalog unavailable).
    #[error("{0}")]
    Transient(String),
    /// Will fail again (no frames, ffmpeg refused).
    #[error("{0}")]
    Permanent(String),
    #[error("stopped before the render finished")]
    Stopped,
}

impl From<CatalogError> for RenderError {
    fn from(e: CatalogError) -> Self {
        RenderError::Transient(e.to_string())
    }
}

/// Whether `ffmpeg` runs (readiness; a renderer without it can do nothing).
pub async fn ffmpeg_version(ffmpeg: &Path) -> Option<String> {
    let out = tokio::process::Command::new(ffmpeg)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("ffmpeg")
            .to_string()
    })
}

/// Scales `img` to fit `w`×`h` keeping its aspect ratio, centred on black.
pub fn fit_frame(img: DynamicImage, w: u32, h: u32) -> RgbImage {
    let rgb = if img.width() == w && img.height() == h {
        return img.to_rgb8();
    } else {
        img.resize(w, h, image::imageops::FilterType::Triangle)
            .to_rgb8()
    };
    let mut canvas = RgbImage::new(w, h);
    let x = i64::from((w - rgb.width().min(w)) / 2);
    let y = i64::from((h - rgb.height().min(h)) / 2);
    image::imageops::overlay(&mut canvas, &rgb, x, y);
    canvas
}

pub struct Renderer {
    pub catalog: Arc<dyn Catalog>,
    pub objects: Arc<dyn ObjectStore>,
    pub infra: Arc<InfraSettings>,
    pub settings: RendererSettings,
    /// Ready: the catalog answered and ffmpeg runs.
    pub ready: Arc<AtomicBool>,
}

const PAGE: i64 = 500;

impl Renderer {
    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.render_lease_secs.max(5))
    }

    /// Looks for queued renders until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let ffmpeg = ffmpeg_version(&self.settings.ffmpeg_path).await;
        match &ffmpeg {
            Some(v) => tracing::info!(ffmpeg = %v, "renderer waiting for timelapse requests"),
            None => tracing::error!(
                ffmpeg = %self.settings.ffmpeg_path.display(),
                "ffmpeg does not run; renders stay queued"
            ),
        }
        while !shutdown.is_cancelled() {
            let ok = ffmpeg.is_some() && self.catalog.ping().await.is_ok();
            self.ready.store(ok, Ordering::SeqCst);
            let rendered = if ok {
                match self.render_next(&shutdown).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim a render");
                        false
                    }
                }
            } else {
                false
            };
            if !rendered {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(self.settings.render_poll_ms.max(50))) => {}
                }
            }
        }
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Claims and renders one queued render. False when there was none.
    pub async fn render_next(&self, shutdown: &CancellationToken) -> Result<bool, CatalogError> {
        let Some(t) = self.catalog.claim_timelapse(self.lease()).await? else {
            return Ok(false);
        };
        let span = tracing::info_span!("render", timelapse_id = %t.id, project = %t.project);
        self.render_claimed(t, shutdown).instrument(span).await?;
        Ok(true)
    }

    async fn render_claimed(
        &self,
        t: Timelapse,
        shutdown: &CancellationToken,
    ) -> Result<(), CatalogError> {
        if t.attempts > self.settings.render_max_attempts {
            let reason = format!("gave up after {} attempts", t.attempts - 1);
            tracing::error!(error = %reason, "render failed for good");
            self.catalog.fail_timelapse(t.id, &reason).await?;
            return Ok(());
        }
        tracing::info!(
            attempt = t.attempts,
            fps = t.fps,
            width = t.width,
            height = t.height,
            "rendering"
        );
        let started = Instant::now();
        match self.render(&t, shutdown).await {
            Ok(p) => {
                metrics::counter!("lapseguard_renders_total", "result" => "done").increment(1);
                tracing::info!(
                    frames = p.frames_rendered,
                    skipped = p.frames_skipped,
                    seconds = started.elapsed().as_secs_f64(),
                    "timelapse rendered"
                );
            }
            Err(RenderError::Permanent(reason)) => {
                metrics::counter!("lapseguard_renders_total", "result" => "failed").increment(1);
                tracing::error!(error = %reason, "render failed");
                self.catalog.fail_timelapse(t.id, &reason).await?;
            }
            Err(RenderError::Transient(reason)) => {
                metrics::counter!("lapseguard_renders_total", "result" => "retried").increment(1);
                tracing::warn!(error = %reason, "render interrupted; it runs again when its lease ends");
            }
            Err(RenderError::Stopped) => {
                // Hand it back at once rather than after the lease.
                let _ = self
                    .catalog
                    .timelapse_progress(t.id, RenderProgress::default(), Duration::ZERO)
                    .await;
                tracing::info!("render handed back for another renderer");
            }
        }
        Ok(())
    }

    /// The frames of the selection, one page at a time, in capture order.
    async fn page(
        &self,
        t: &Timelapse,
        after: Option<Cursor>,
    ) -> Result<Vec<lapseguard_core::catalog::Image>, RenderError> {
        Ok(self
            .catalog
            .list_images(&ListQuery {
                project_id: t.project_id,
                limit: PAGE,
                after,
                oldest_first: true,
                camera_id: t.camera_id,
                captured_from: t.captured_from,
                captured_to: t.captured_to,
                ..Default::default()
            })
            .await?)
    }

    async fn count(&self, t: &Timelapse) -> Result<i32, RenderError> {
        let mut after = None;
        let mut n = 0i32;
        loop {
            let page = self.page(t, after).await?;
            n = n.saturating_add(page.len() as i32);
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => {
                    after = Some(Cursor {
                        captured_at: last.captured_at,
                        id: last.id,
                    })
                }
                _ => return Ok(n),
            }
        }
    }

    /// Renders `t` into the timelapse bucket and records it done.
    pub async fn render(
        &self,
        t: &Timelapse,
        shutdown: &CancellationToken,
    ) -> Result<RenderProgress, RenderError> {
        let (w, h) = (t.width as u32, t.height as u32);
        let mut progress = RenderProgress {
            frames_total: self.count(t).await?,
            ..Default::default()
        };
        self.catalog
            .timelapse_progress(t.id, progress, self.lease())
            .await?;
        let work = self.settings.work_dir();
        std::fs::create_dir_all(&work)
            .map_err(|e| RenderError::Transient(format!("work dir {}: {e}", work.display())))?;
        let out = TempFile(work.join(format!("lapseguard-render-{}.mp4", t.id)));
        let mut child = tokio::process::Command::new(&self.settings.ffmpeg_path)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
            .args(["-s", &format!("{w}x{h}"), "-framerate", &t.fps.to_string()])
            .args(["-i", "pipe:0"])
            .args(["-c:v", "libx264", "-preset", &self.settings.x264_preset])
            .args(["-crf", &self.settings.x264_crf.to_string()])
            .args(["-pix_fmt", "yuv420p", "-movflags", "+faststart"])
            .args(["-f", "mp4"])
            .arg(&out.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                RenderError::Transient(format!(
                    "starting {}: {e}",
                    self.settings.ffmpeg_path.display()
                ))
            })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| RenderError::Transient("ffmpeg has no stdin".into()))?;
        let stderr = child.stderr.take();
        let stderr_task = tokio::spawn(async move {
            let mut buf = String::new();
            if let Some(mut e) = stderr {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut buf).await;
            }
            buf
        });

        let mut after = None;
        let mut last_report = Instant::now();
        'pages: loop {
            let page = self.page(t, after).await?;
            let full = page.len() as i64 == PAGE;
            if let Some(last) = page.last() {
                after = Some(Cursor {
                    captured_at: last.captured_at,
                    id: last.id,
                });
            }
            for img in page {
                if shutdown.is_cancelled() {
                    return Err(RenderError::Stopped);
                }
                let key = match (img.status, img.output_key) {
                    (ImageStatus::Done, Some(k)) => k,
                    _ => {
                        progress.frames_skipped += 1;
                        continue;
                    }
                };
                // Only the output bucket: a timelapse is made of anonymized frames alone.
                let bytes = match self.objects.get(&self.infra.output_bucket, &key).await {
                    Ok(b) => b,
                    Err(ObjectError::NotFound { .. }) => {
                        tracing::warn!(image_id = %img.id, key, "anonymized frame missing; skipped");
                        progress.frames_skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(RenderError::Transient(format!("reading {key}: {e}"))),
                };
                let frame = tokio::task::spawn_blocking(move || {
                    image::load_from_memory(&bytes).map(|i| fit_frame(i, w, h))
                })
                .await
                .map_err(|e| RenderError::Transient(e.to_string()))?;
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(image_id = %img.id, error = %e, "anonymized frame unreadable; skipped");
                        progress.frames_skipped += 1;
                        continue;
                    }
                };
                if let Err(e) = stdin.write_all(frame.as_raw()).await {
                    let _ = child.kill().await;
                    let log = stderr_task.await.unwrap_or_default();
                    return Err(RenderError::Permanent(format!(
                        "ffmpeg stopped reading frames ({e}): {}",
                        log.trim()
                    )));
                }
                progress.frames_rendered += 1;
                if last_report.elapsed() >= Duration::from_secs(2) {
                    self.catalog
                        .timelapse_progress(t.id, progress, self.lease())
                        .await?;
                    last_report = Instant::now();
                }
            }
            if !full {
                break 'pages;
            }
        }
        drop(stdin);
        let status = child
            .wait()
            .await
            .map_err(|e| RenderError::Transient(format!("waiting for ffmpeg: {e}")))?;
        let log = stderr_task.await.unwrap_or_default();
        if progress.frames_rendered == 0 {
            return Err(RenderError::Permanent(format!(
                "no anonymized frames in the selection ({} skipped)",
                progress.frames_skipped
            )));
        }
        if !status.success() {
            return Err(RenderError::Permanent(format!(
                "ffmpeg failed ({status}): {}",
                log.trim()
            )));
        }
        let bytes = std::fs::metadata(&out.0)
            .map_err(|e| RenderError::Transient(format!("reading the video: {e}")))?
            .len();
        let key = video_key(&t.project, t.id);
        self.objects
            .put_file(&self.infra.timelapse_bucket, &key, &out.0, "video/mp4")
            .await
            .map_err(|e| RenderError::Transient(format!("uploading the video: {e}")))?;
        self.catalog
            .finish_timelapse(t.id, progress, &key, bytes as i64)
            .await?;
        Ok(progress)
    }
}

/// Removes the file when dropped (also on errors and cancellation).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Clone)]
struct HealthState {
    ready: Arc<AtomicBool>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// `/livez` (the process serves), `/readyz` (catalog reachable and ffmpeg runs),
/// `/metrics`.
pub fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HealthState>| async move {
                if s.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "catalog or ffmpeg unavailable",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<HealthState>| async move { s.metrics.render() }),
        )
        .with_state(HealthState {
            ready,
            metrics: lapseguard_core::telemetry::metrics_handle(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_letterboxed_to_the_requested_size() {
        let wide =
            DynamicImage::ImageRgb8(RgbImage::from_pixel(400, 100, image::Rgb([200, 10, 10])));
        let f = fit_frame(wide, 320, 240);
        assert_eq!((f.width(), f.height()), (320, 240));
        // Bars above and below, picture in the middle.
        assert_eq!(f.get_pixel(160, 0), &image::Rgb([0, 0, 0]));
        assert_eq!(f.get_pixel(160, 120)[0], 200);
        let same = DynamicImage::ImageRgb8(RgbImage::new(320, 240));
        assert_eq!(fit_frame(same, 320, 240).dimensions(), (320, 240));
    }
}
