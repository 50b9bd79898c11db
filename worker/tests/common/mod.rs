//! Shared by the worker's integration tests: the model, composed scenes, and the
//! backend test harness (real services) reused as is.
#![allow(dead_code)]

#[path = "../../../backend/tests/common/mod.rs"]
pub mod services;

use std::path::PathBuf;

use image::RgbImage;
use worker::detect::Face;
use worker::settings::WorkerSettings;

/// Settings with the model and runtime from `scripts/fetch-models.sh` (exported by
/// `scripts/test.sh`).
pub fn model_settings() -> WorkerSettings {
    let model = std::env::var("LAPSEGUARD_MODEL_PATH").expect(
        "LAPSEGUARD_MODEL_PATH is not set: run scripts/test.sh, or eval \"$(scripts/fetch-models.sh)\"",
    );
    let ort =
        std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH is not set: run scripts/test.sh");
    WorkerSettings {
        model_path: PathBuf::from(model),
        ort_dylib_path: PathBuf::from(ort),
        worker_threads: 2,
        ..WorkerSettings::default()
    }
}

pub fn testdata_rgb(name: &str) -> RgbImage {
    image::load_from_memory(&services::testdata(name))
        .unwrap()
        .into_rgb8()
}

/// Face crops of the test photos, each with the face box inside the crop as fractions
/// (x1, y1, x2, y2) — from the reference detections in docs/centerface.md.
pub fn face_crops() -> Vec<(RgbImage, [f32; 4])> {
    let crop = |name: &str, x: u32, y: u32, w: u32, h: u32, face: [f32; 4]| {
        let img = image::imageops::crop_imm(&testdata_rgb(name), x, y, w, h).to_image();
        let frac = [
            (face[0] - x as f32) / w as f32,
            (face[1] - y as f32) / h as f32,
            (face[2] - x as f32) / w as f32,
            (face[3] - y as f32) / h as f32,
        ];
        (img, frac)
    };
    vec![
        crop(
            "astronaut.png",
            160,
            35,
            130,
            165,
            [181.5, 58.2, 269.9, 177.8],
        ),
        crop(
            "grace-hopper.jpg",
            150,
            90,
            225,
            255,
            [170.1, 112.0, 354.0, 324.0],
        ),
    ]
}

/// A deterministic wide scene: textured background and face crops pasted at the given
/// heights (px) on a grid. Returns the image and the ground-truth face boxes.
pub fn scene(w: u32, h: u32, face_heights: &[u32]) -> (RgbImage, Vec<Face>) {
    let mut s: u32 = 7;
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let n = ((s >> 16) & 0x1f) as u8;
        image::Rgb([
            90u8.wrapping_add(n).wrapping_add((x / 64) as u8),
            110u8.wrapping_add(n),
            80u8.wrapping_add(n).wrapping_add((y / 64) as u8),
        ])
    });
    let crops = face_crops();
    let cols = (face_heights.len() as f64).sqrt().ceil() as u32;
    let rows = (face_heights.len() as u32).div_ceil(cols);
    let mut truth = Vec::new();
    for (i, &fh) in face_heights.iter().enumerate() {
        let (c, frac) = &crops[i % crops.len()];
        let fw = (c.width() as f64 * fh as f64 / c.height() as f64).round() as u32;
        let scaled = image::imageops::resize(c, fw, fh, image::imageops::FilterType::Triangle);
        let (col, row) = (i as u32 % cols, i as u32 / cols);
        let cx = w * (2 * col + 1) / (2 * cols);
        let cy = h * (2 * row + 1) / (2 * rows);
        let (x, y) = (cx - fw / 2, cy - fh / 2);
        image::imageops::replace(&mut img, &scaled, x as i64, y as i64);
        truth.push(Face {
            x1: x as f32 + fw as f32 * frac[0],
            y1: y as f32 + fh as f32 * frac[1],
            x2: x as f32 + fw as f32 * frac[2],
            y2: y as f32 + fh as f32 * frac[3],
            score: 1.0,
        });
    }
    (img, truth)
}

pub fn jpeg_bytes(img: &RgbImage, quality: u8) -> Vec<u8> {
    worker::codec::encode(img, worker::codec::Format::Jpeg, quality, None).unwrap()
}

/// Grey-level variance inside a box.
pub fn variance(img: &RgbImage, f: &Face) -> f64 {
    let mut vals = Vec::new();
    for y in f.y1.max(0.0) as u32..(f.y2 as u32).min(img.height()) {
        for x in f.x1.max(0.0) as u32..(f.x2 as u32).min(img.width()) {
            let p = img.get_pixel(x, y).0;
            vals.push((p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0);
        }
    }
    let mean = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
    vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len().max(1) as f64
}
