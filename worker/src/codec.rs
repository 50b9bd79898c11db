//! Decoding (EXIF orientation applied first) and encoding without metadata.

use std::io::Cursor;

use chrono::NaiveDateTime;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
        }
    }
    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a JPEG or PNG image")]
    UnsupportedFormat,
    #[error("image cannot be decoded: {0}")]
    Decode(String),
    #[error("image is larger than the configured limit of {0} pixels")]
    TooLarge(u64),
    #[error("encoding failed: {0}")]
    Encode(String),
}

pub struct Decoded {
    /// Upright pixels (EXIF orientation applied).
    pub image: RgbImage,
    pub format: Format,
    /// EXIF DateTimeOriginal of the source, if any.
    pub capture_time: Option<NaiveDateTime>,
}

/// Decodes a JPEG or PNG, refusing more than `max_pixels` before allocating them.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, CodecError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    let format = match reader.format() {
        Some(ImageFormat::Jpeg) => Format::Jpeg,
        Some(ImageFormat::Png) => Format::Png,
        _ => return Err(CodecError::UnsupportedFormat),
    };
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > max_pixels {
        return Err(CodecError::TooLarge(max_pixels));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    decoder
        .set_limits(limits)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    let orientation = decoder
        .orientation()
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| CodecError::Decode(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(Decoded {
        image: img.into_rgb8(),
        format,
        capture_time: capture_time(bytes),
    })
}

fn capture_time(bytes: &[u8]) -> Option<NaiveDateTime> {
    let exif = exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok()?;
    let field = exif.get_field(exif::Tag::DateTimeOriginal, exif::In::PRIMARY)?;
    match &field.value {
        exif::Value::Ascii(v) => {
            let s = std::str::from_utf8(v.first()?).ok()?;
            NaiveDateTime::parse_from_str(s.trim_end_matches('\0'), "%Y:%m:%d %H:%M:%S").ok()
        }
        _ => None,
    }
}

/// Encodes in `format`. Nothing of the source's metadata is carried over (no GPS, no
/// maker notes, no thumbnails); with `capture_time`, a minimal EXIF block holding only
/// DateTimeOriginal is written (JPEG only).
pub fn encode(
    img: &RgbImage,
    format: Format,
    jpeg_quality: u8,
    capture_time: Option<NaiveDateTime>,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    match format {
        Format::Jpeg => {
            let (w, h) = img.dimensions();
            let (w, h) = (
                u16::try_from(w).map_err(|_| CodecError::Encode("width over 65535".into()))?,
                u16::try_from(h).map_err(|_| CodecError::Encode("height over 65535".into()))?,
            );
            let mut enc = jpeg_encoder::Encoder::new(&mut out, jpeg_quality.clamp(1, 100));
            // Chroma at half resolution (4:2:0), as libjpeg and cameras write it and as
            // the timelapse video (yuv420p) shows it; jpeg-encoder would switch to 4:4:4
            // from quality 90 on, which costs ~40 % more encoding time for colour detail
            // the camera's own JPEG did not have.
            enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
            if let Some(t) = capture_time {
                enc.add_app_segment(1, &exif_capture_time(t))
                    .map_err(|e| CodecError::Encode(e.to_string()))?;
            }
            enc.encode(img.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| CodecError::Encode(e.to_string()))?;
        }
        Format::Png => {
            img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
                .map_err(|e| CodecError::Encode(e.to_string()))?;
        }
    }
    Ok(out)
}

/// An APP1 EXIF payload with IFD0 → Exif IFD → DateTimeOriginal only.
fn exif_capture_time(t: NaiveDateTime) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(b"Exif\0\0");
    // TIFF header, little endian, IFD0 at offset 8.
    v.extend_from_slice(b"II\x2a\x00");
    v.extend_from_slice(&8u32.to_le_bytes());
    // IFD0: one entry, ExifIFDPointer (0x8769, LONG) → offset 26.
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&0x8769u16.to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&26u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    // Exif IFD at 26: DateTimeOriginal (0x9003, ASCII, 20 bytes at offset 44).
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&0x9003u16.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&20u32.to_le_bytes());
    v.extend_from_slice(&44u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    let mut s = t.format("%Y:%m:%d %H:%M:%S").to_string().into_bytes();
    s.resize(19, b' ');
    v.extend_from_slice(&s);
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG with an EXIF block holding GPS data, orientation `o` and a capture time.
    pub(crate) fn jpeg_with_exif(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II\x2a\x00");
        tiff.extend_from_slice(&8u32.to_le_bytes());
        // IFD0 with 3 entries: Orientation, ExifIFD pointer, GPS IFD pointer.
        let ifd0_len = 2 + 3 * 12 + 4;
        let exif_ifd = 8 + ifd0_len as u32;
        let exif_len = 2 + 12 + 4 + 20;
        let gps_ifd = exif_ifd + exif_len as u32;
        tiff.extend_from_slice(&3u16.to_le_bytes());
        for (tag, typ, count, val) in [
            (0x0112u16, 3u16, 1u32, orientation as u32),
            (0x8769, 4, 1, exif_ifd),
            (0x8825, 4, 1, gps_ifd),
        ] {
            tiff.extend_from_slice(&tag.to_le_bytes());
            tiff.extend_from_slice(&typ.to_le_bytes());
            tiff.extend_from_slice(&count.to_le_bytes());
            tiff.extend_from_slice(&val.to_le_bytes());
        }
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x9003u16.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&20u32.to_le_bytes());
        tiff.extend_from_slice(&(exif_ifd + 18).to_le_bytes());
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(b"2026:11:26 06:07:08\0");
        // GPS IFD: GPSLatitudeRef = "N".
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x0001u16.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&2u32.to_le_bytes());
        tiff.extend_from_slice(b"N\0\0\0");
        tiff.extend_from_slice(&0u32.to_le_bytes());
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
        enc.add_app_segment(1, &app1).unwrap();
        let (w, h) = img.dimensions();
        enc.encode(
            img.as_raw(),
            w as u16,
            h as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
        out
    }

    fn has_exif(bytes: &[u8]) -> bool {
        exif::Reader::new()
            .read_from_container(&mut Cursor::new(bytes))
            .is_ok()
    }

    #[test]
    fn orientation_is_applied_before_anything_else() {
        // 40x20 image, left half red, right half blue; orientation 6 = rotate 90° CW.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let d = decode(&jpeg_with_exif(&img, 6), u64::MAX).unwrap();
        assert_eq!(d.image.dimensions(), (20, 40));
        // After a clockwise turn the left (red) half is on top.
        assert!(d.image.get_pixel(10, 5).0[0] > 200);
        assert!(d.image.get_pixel(10, 35).0[2] > 200);
        assert_eq!(d.capture_time.unwrap().to_string(), "2026-11-26 06:07:08");
    }

    #[test]
    fn output_carries_no_metadata_unless_capture_time_is_kept() {
        let img = RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9]));
        let src = jpeg_with_exif(&img, 1);
        assert!(has_exif(&src));
        let d = decode(&src, u64::MAX).unwrap();
        let out = encode(&d.image, Format::Jpeg, 90, None).unwrap();
        assert!(!has_exif(&out));
        assert!(!out.windows(4).any(|w| w == b"Exif"));
        let kept = encode(&d.image, Format::Jpeg, 90, d.capture_time).unwrap();
        let exif = exif::Reader::new()
            .read_from_container(&mut Cursor::new(&kept))
            .unwrap();
        assert!(
            exif.get_field(exif::Tag::DateTimeOriginal, exif::In::PRIMARY)
                .is_some()
        );
        assert_eq!(exif.fields().count(), 1, "only the capture time");
        assert!(
            exif.get_field(exif::Tag::GPSLatitudeRef, exif::In::PRIMARY)
                .is_none()
        );
        let png = encode(&d.image, Format::Png, 90, None).unwrap();
        assert!(decode(&png, u64::MAX).is_ok());
    }

    #[test]
    fn garbage_and_bombs_are_refused() {
        assert!(matches!(
            decode(b"hello", u64::MAX),
            Err(CodecError::UnsupportedFormat)
        ));
        assert!(matches!(
            decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F'], u64::MAX),
            Err(CodecError::Decode(_))
        ));
        let img = RgbImage::from_pixel(100, 100, image::Rgb([1, 2, 3]));
        let bytes = encode(&img, Format::Png, 90, None).unwrap();
        assert!(matches!(
            decode(&bytes, 50 * 50),
            Err(CodecError::TooLarge(_))
        ));
        let mut truncated = encode(&img, Format::Jpeg, 90, None).unwrap();
        truncated.truncate(truncated.len() / 3);
        assert!(decode(&truncated, u64::MAX).is_err());
    }
}
