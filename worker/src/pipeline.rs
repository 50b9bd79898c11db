//! One image through the whole anonymization: decode → detect → blur → encode.
//!
//! CPU-heavy steps run on blocking threads; detection runs on a bounded pool of
//! detector instances, so while one image is in the detector the next one is being
//! fetched and decoded and the previous one encoded and uploaded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::anonymize::{AnonymizeConfig, anonymize};
use crate::codec::{self, CodecError, Format};
use crate::detect::{DetectError, Face, FaceDetector};

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default)]
pub struct OutputConfig {
    /// JPEG quality of anonymized JPEGs.
    pub jpeg_quality: u8,
    /// Keep the capture time (EXIF DateTimeOriginal) in the output; all other
    /// metadata (GPS, camera serials, thumbnails) is always dropped.
    pub keep_capture_time: bool,
    /// Refuse images with more pixels than this (decompression bombs).
    pub max_pixels: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            jpeg_quality: 90,
            keep_capture_time: false,
            max_pixels: 100_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The input itself is bad: retrying cannot help.
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error("worker task failed: {0}")]
    Task(String),
}

impl ProcessError {
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ProcessError::Codec(
                CodecError::UnsupportedFormat | CodecError::Decode(_) | CodecError::TooLarge(_)
            )
        )
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub decode: Duration,
    pub detect: Duration,
    pub anonymize: Duration,
    pub encode: Duration,
}

pub struct Processed {
    pub bytes: Vec<u8>,
    pub format: Format,
    pub faces: Vec<Face>,
    pub width: u32,
    pub height: u32,
    pub timings: Timings,
}

/// A bounded set of detector instances shared by concurrent jobs.
pub struct DetectorPool {
    free: Mutex<Vec<Box<dyn FaceDetector>>>,
    permits: Semaphore,
    model_id: String,
}

impl DetectorPool {
    pub fn new(detectors: Vec<Box<dyn FaceDetector>>) -> Arc<Self> {
        let model_id = detectors.first().map(|d| d.model_id()).unwrap_or_default();
        Arc::new(Self {
            permits: Semaphore::new(detectors.len()),
            free: Mutex::new(detectors),
            model_id,
        })
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub async fn detect(
        self: &Arc<Self>,
        image: Arc<image::RgbImage>,
    ) -> Result<Vec<Face>, ProcessError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ProcessError::Task(e.to_string()))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut det = pool
                .free
                .lock()
                .map_err(|_| ProcessError::Task("detector pool poisoned".into()))?
                .pop()
                .ok_or_else(|| ProcessError::Task("no free detector".into()))?;
            let result = det.detect(&image);
            if let Ok(mut free) = pool.free.lock() {
                free.push(det);
            }
            Ok(result?)
        })
        .await
        .map_err(|e| ProcessError::Task(e.to_string()))?
    }
}

pub struct Processor {
    pub detectors: Arc<DetectorPool>,
    pub anonymize: AnonymizeConfig,
    pub output: OutputConfig,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProcessError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProcessError::Task(e.to_string()))
}

impl Processor {
    /// Anonymizes one encoded image. Fail-closed: there is no output unless detection
    /// completed.
    pub async fn process(&self, bytes: bytes::Bytes) -> Result<Processed, ProcessError> {
        let max_pixels = self.output.max_pixels;
        let t = Instant::now();
        let decoded = blocking(move || codec::decode(&bytes, max_pixels)).await??;
        let decode = t.elapsed();
        metrics::histogram!("lapseguard_worker_stage_seconds", "stage" => "decode")
            .record(decode.as_secs_f64());
        let (format, capture) = (decoded.format, decoded.capture_time);
        let image = Arc::new(decoded.image);

        let t = Instant::now();
        let faces = self.detectors.detect(image.clone()).await?;
        let detect = t.elapsed();
        metrics::histogram!("lapseguard_worker_stage_seconds", "stage" => "detect")
            .record(detect.as_secs_f64());

        let (acfg, ocfg) = (self.anonymize, self.output);
        let faces_for_blur = faces.clone();
        let (bytes, width, height, anonymize_t, encode) = blocking(move || {
            let mut img = Arc::try_unwrap(image).unwrap_or_else(|shared| (*shared).clone());
            let t = Instant::now();
            anonymize(&mut img, &faces_for_blur, &acfg);
            let a = t.elapsed();
            let t = Instant::now();
            let keep = if ocfg.keep_capture_time {
                capture
            } else {
                None
            };
            let out = codec::encode(&img, format, ocfg.jpeg_quality, keep);
            out.map(|b| (b, img.width(), img.height(), a, t.elapsed()))
        })
        .await??;
        metrics::histogram!("lapseguard_worker_stage_seconds", "stage" => "anonymize")
            .record(anonymize_t.as_secs_f64());
        metrics::histogram!("lapseguard_worker_stage_seconds", "stage" => "encode")
            .record(encode.as_secs_f64());
        Ok(Processed {
            bytes,
            format,
            faces,
            width,
            height,
            timings: Timings {
                decode,
                detect,
                anonymize: anonymize_t,
                encode,
            },
        })
    }
}
