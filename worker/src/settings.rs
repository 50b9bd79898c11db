//! Worker settings (the shared ones are [`lapseguard_core::config::InfraSettings`]).

use std::path::PathBuf;

use serde::Deserialize;

use crate::anonymize::{AnonymizeConfig, BlurMode, MaskShape};
use crate::detect::{DetectorConfig, Device, parse_frame_sizes};
use crate::pipeline::OutputConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Address of `/livez`, `/readyz` and `/metrics`.
    pub worker_listen: String,
    /// Jobs in flight at once (AMQP prefetch).
    pub worker_concurrency: u16,
    /// Detector instances (each an inference session, one image at a time); 0 = auto
    /// (CPU: one per `worker_cpus / worker_threads`; CUDA: 1).
    pub worker_detectors: usize,
    /// Attempts before a job is given up (failed + dead-lettered) on transient errors.
    pub worker_max_attempts: i32,
    /// Seconds to finish in-flight jobs after SIGTERM.
    pub worker_shutdown_grace_secs: u64,
    pub worker_device: Device,
    /// ONNX Runtime intra-op threads per detector; 0 = auto (CPU: 1 when detectors are
    /// auto, else `worker_cpus / worker_detectors`; CUDA: runtime default).
    pub worker_threads: usize,
    /// CPU cores inference may use (0 = all this process may run on, cgroup limits
    /// included).
    pub worker_cpus: usize,
    pub model_path: PathBuf,
    /// Path of `libonnxruntime.so`; empty = `ORT_DYLIB_PATH`.
    pub ort_dylib_path: PathBuf,
    pub detect_threshold: f32,
    pub detect_nms_iou: f32,
    pub detect_max_side: u32,
    pub detect_tile_size: u32,
    pub detect_tile_overlap: u32,
    pub detect_upscale: f32,
    pub detect_upscale_threshold: f32,
    pub detect_confirm_below: f32,
    pub detect_confirm_threshold: f32,
    /// Frame sizes to warm each detector up on at start-up, `WIDTHxHEIGHT,...`
    /// (empty = a 16:9 frame of `detect_max_side`).
    pub detect_warmup_frames: String,
    pub blur_mode: BlurMode,
    pub mask_shape: MaskShape,
    pub mask_scale: f32,
    pub jpeg_quality: u8,
    pub keep_capture_time: bool,
    pub max_image_pixels: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        let d = DetectorConfig::default();
        let a = AnonymizeConfig::default();
        let o = OutputConfig::default();
        Self {
            worker_listen: "0.0.0.0:9090".into(),
            worker_concurrency: 3,
            worker_detectors: 0,
            worker_max_attempts: 5,
            worker_shutdown_grace_secs: 60,
            worker_device: Device::Cpu,
            worker_threads: 0,
            worker_cpus: 0,
            model_path: PathBuf::new(),
            ort_dylib_path: PathBuf::new(),
            detect_threshold: d.threshold,
            detect_nms_iou: d.nms_iou,
            detect_max_side: d.max_side,
            detect_tile_size: d.tile_size,
            detect_tile_overlap: d.tile_overlap,
            detect_upscale: d.upscale,
            detect_upscale_threshold: d.upscale_threshold,
            detect_confirm_below: d.confirm_below,
            detect_confirm_threshold: d.confirm_threshold,
            detect_warmup_frames: String::new(),
            blur_mode: a.mode,
            mask_shape: a.shape,
            mask_scale: a.mask_scale,
            jpeg_quality: o.jpeg_quality,
            keep_capture_time: o.keep_capture_time,
            max_image_pixels: o.max_pixels,
        }
    }
}

impl WorkerSettings {
    /// How many detector instances to run and how many intra-op threads each gets,
    /// for `cores` usable CPU cores (see `worker_cpus`).
    ///
    /// On CPU the default is one single-threaded session per core: sessions never wait
    /// for each other, so decoding and encoding of other images fill the gaps, where one
    /// session with N threads stalls all of them at every operator whenever one core is
    /// busy elsewhere (measured: 2 cores, 1080p, int8 model: ~8.2 vs ~7.0 images/s).
    /// Explicit values are kept as given.
    pub fn inference_layout(&self, cores: usize) -> (usize, usize) {
        let cores = if self.worker_cpus > 0 {
            self.worker_cpus
        } else {
            cores.max(1)
        };
        if self.worker_device != Device::Cpu {
            return (self.worker_detectors.max(1), self.worker_threads);
        }
        match (self.worker_detectors, self.worker_threads) {
            (0, 0) => (cores, 1),
            (0, t) => ((cores / t).max(1), t),
            (d, 0) => (d, (cores / d).max(1)),
            (d, t) => (d, t),
        }
    }

    pub fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            model_path: self.model_path.clone(),
            ort_dylib_path: self.ort_dylib_path.clone(),
            device: self.worker_device,
            threshold: self.detect_threshold,
            nms_iou: self.detect_nms_iou,
            max_side: self.detect_max_side,
            tile_size: self.detect_tile_size,
            tile_overlap: self.detect_tile_overlap,
            threads: self.worker_threads,
            upscale: self.detect_upscale,
            upscale_threshold: self.detect_upscale_threshold,
            confirm_below: self.detect_confirm_below,
            confirm_threshold: self.detect_confirm_threshold,
            // validate() reports a malformed list; an unchecked one warms up the default.
            warmup_frames: parse_frame_sizes(&self.detect_warmup_frames).unwrap_or_default(),
        }
    }

    pub fn anonymize(&self) -> AnonymizeConfig {
        AnonymizeConfig {
            mode: self.blur_mode,
            shape: self.mask_shape,
            mask_scale: self.mask_scale,
        }
    }

    pub fn output(&self) -> OutputConfig {
        OutputConfig {
            jpeg_quality: self.jpeg_quality,
            keep_capture_time: self.keep_capture_time,
            max_pixels: self.max_image_pixels,
        }
    }

    /// Checks values a typo would make meaningless.
    pub fn validate(&self) -> Result<(), String> {
        if self.model_path.as_os_str().is_empty() {
            return Err(
                "LAPSEGUARD_MODEL_PATH is not set (scripts/fetch-models.sh prints it)".into(),
            );
        }
        if !(0.0..1.0).contains(&self.detect_threshold) {
            return Err("detect_threshold must be in [0, 1)".into());
        }
        if !self.detect_max_side.is_multiple_of(32) || !self.detect_tile_size.is_multiple_of(32) {
            return Err("detect_max_side and detect_tile_size must be multiples of 32".into());
        }
        if self.detect_tile_overlap >= self.detect_tile_size {
            return Err("detect_tile_overlap must be smaller than detect_tile_size".into());
        }
        parse_frame_sizes(&self.detect_warmup_frames)
            .map_err(|e| format!("detect_warmup_frames: {e}"))?;
        if self.mask_scale < 1.0 {
            return Err("mask_scale below 1.0 would leave parts of faces unblurred".into());
        }
        if self.worker_concurrency == 0 || self.worker_max_attempts < 1 {
            return Err("worker_concurrency and worker_max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_layout_per_device_and_setting() {
        use Device::{Auto, Cpu, Cuda};
        // (device, detectors, threads, worker_cpus, cores seen) -> (detectors, threads)
        let cases = [
            // CPU default: one single-threaded session per core; worker_cpus overrides
            // what the process sees.
            ((Cpu, 0, 0, 0, 4), (4, 1)),
            ((Cpu, 0, 0, 0, 0), (1, 1)),
            ((Cpu, 0, 0, 2, 16), (2, 1)),
            // CPU fills in the missing half.
            ((Cpu, 0, 2, 0, 8), (4, 2)),
            ((Cpu, 0, 4, 0, 2), (1, 4)),
            ((Cpu, 2, 0, 0, 8), (2, 4)),
            ((Cpu, 3, 0, 0, 2), (3, 1)),
            ((Cpu, 1, 2, 0, 16), (1, 2)),
            // GPU keeps one session unless told.
            ((Cuda, 0, 0, 0, 16), (1, 0)),
            ((Cuda, 2, 0, 0, 16), (2, 0)),
            ((Auto, 0, 4, 0, 16), (1, 4)),
        ];
        for ((device, detectors, threads, cpus, cores), want) in cases {
            let s = WorkerSettings {
                worker_device: device,
                worker_detectors: detectors,
                worker_threads: threads,
                worker_cpus: cpus,
                ..WorkerSettings::default()
            };
            assert_eq!(
                s.inference_layout(cores),
                want,
                "{device:?} detectors={detectors} threads={threads} cpus={cpus} cores={cores}"
            );
        }
    }
}
