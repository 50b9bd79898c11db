//! `camera-agent simulate`: plays a timelapse camera. Every interval it takes the next
//! image of the source folder, stamps it with the capture time (EXIF
//! `DateTimeOriginal`/`SubSecTimeOriginal`/`OffsetTimeOriginal`, replacing any EXIF of the
//! source, plus a comment that makes the bytes unique) and writes it the way cameras do:
//! to a hidden temporary name, fsync, mtime set to the capture time, then one rename to
//! the final name. Several simulators (one per capture folder) can run at once.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use tokio_util::sync::CancellationToken;

use crate::settings::SimulateSettings;

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error("not a JPEG file")]
    NotJpeg,
    #[error("not a PNG file")]
    NotPng,
    #[error("truncated or malformed {0} structure")]
    Malformed(&'static str),
    #[error("EXIF segment too large")]
    TooLarge,
}

/// A little-endian TIFF structure holding only the Exif IFD with the capture time.
fn exif_tiff(t: DateTime<Utc>) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    v.extend_from_slice(b"II\x2a\x00");
    v.extend_from_slice(&8u32.to_le_bytes());
    // IFD0: one entry, the pointer to the Exif IFD.
    let exif_ifd: u32 = 8 + 2 + 12 + 4;
    v.extend_from_slice(&1u16.to_le_bytes());
    entry(&mut v, 0x8769, 4, 1, exif_ifd);
    v.extend_from_slice(&0u32.to_le_bytes());
    // Exif IFD: DateTimeOriginal, OffsetTimeOriginal, SubSecTimeOriginal (sorted by tag).
    let data: u32 = exif_ifd + 2 + 3 * 12 + 4;
    let datetime = format!("{}\0", t.format("%Y:%m:%d %H:%M:%S"));
    let offset = "+00:00\0";
    let millis = t.nanosecond().min(999_999_999) / 1_000_000;
    let subsec = format!("{millis:03}\0");
    v.extend_from_slice(&3u16.to_le_bytes());
    entry(&mut v, 0x9003, 2, datetime.len() as u32, data);
    entry(
        &mut v,
        0x9011,
        2,
        offset.len() as u32,
        data + datetime.len() as u32,
    );
    let mut inline = [0u8; 4];
    inline.copy_from_slice(subsec.as_bytes());
    v.extend_from_slice(&0x9291u16.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&4u32.to_le_bytes());
    v.extend_from_slice(&inline);
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(datetime.as_bytes());
    v.extend_from_slice(offset.as_bytes());
    v
}

fn entry(v: &mut Vec<u8>, tag: u16, typ: u16, count: u32, value: u32) {
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&typ.to_le_bytes());
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
}

fn comment(t: DateTime<Utc>, seq: u64, nonce: u64) -> String {
    format!(
        "lapseguard camera-agent simulate seq={seq} captured_at={} nonce={nonce:016x}",
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) -> Result<(), StampError> {
    let len = u16::try_from(payload.len() + 2).map_err(|_| StampError::TooLarge)?;
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The JPEG with its EXIF replaced by the capture time `t` and a unique comment.
pub fn stamp_jpeg(src: &[u8], t: DateTime<Utc>, seq: u64) -> Result<Vec<u8>, StampError> {
    stamp_jpeg_with_nonce(src, t, seq, rand::random())
}

/// [`stamp_jpeg`] with a chosen nonce: the same inputs give the same bytes (a demo that
/// replays its frames after a restart sends byte-identical, deduplicated images).
pub fn stamp_jpeg_with_nonce(
    src: &[u8],
    t: DateTime<Utc>,
    seq: u64,
    nonce: u64,
) -> Result<Vec<u8>, StampError> {
    if !src.starts_with(&[0xFF, 0xD8]) {
        return Err(StampError::NotJpeg);
    }
    let mut out = Vec::with_capacity(src.len() + 256);
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&exif_tiff(t));
    segment(&mut out, 0xE1, &app1)?;
    segment(&mut out, 0xFE, comment(t, seq, nonce).as_bytes())?;
    let mut pos = 2;
    loop {
        if pos >= src.len() {
            return Err(StampError::Malformed("JPEG"));
        }
        if src[pos] != 0xFF {
            return Err(StampError::Malformed("JPEG"));
        }
        let mut m = pos + 1;
        while src.get(m) == Some(&0xFF) {
            m += 1;
        }
        let marker = *src.get(m).ok_or(StampError::Malformed("JPEG"))?;
        match marker {
            // Start of scan or end of image: the rest is image data, copied verbatim.
            0xDA | 0xD9 => {
                out.extend_from_slice(&src[pos..]);
                return Ok(out);
            }
            0x01 | 0xD0..=0xD7 => {
                out.extend_from_slice(&src[pos..=m]);
                pos = m + 1;
            }
            _ => {
                let len_bytes = src.get(m + 1..m + 3).ok_or(StampError::Malformed("JPEG"))?;
                let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
                let end = m + 1 + len;
                if len < 2 || end > src.len() {
                    return Err(StampError::Malformed("JPEG"));
                }
                let is_exif = marker == 0xE1 && src[m + 3..end].starts_with(b"Exif\0\0");
                if !is_exif {
                    out.extend_from_slice(&src[pos..end]);
                }
                pos = end;
            }
        }
    }
}

fn png_chunk(out: &mut Vec<u8>, typ: &[u8; 4], data: &[u8]) -> Result<(), StampError> {
    let len = u32::try_from(data.len()).map_err(|_| StampError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(typ);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(typ);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    Ok(())
}

/// The PNG with an `eXIf` chunk holding the capture time (any previous one dropped) and a
/// unique `tEXt` comment, both right after `IHDR`.
pub fn stamp_png(src: &[u8], t: DateTime<Utc>, seq: u64) -> Result<Vec<u8>, StampError> {
    stamp_png_with_nonce(src, t, seq, rand::random())
}

/// [`stamp_png`] with a chosen nonce (deterministic output).
pub fn stamp_png_with_nonce(
    src: &[u8],
    t: DateTime<Utc>,
    seq: u64,
    nonce: u64,
) -> Result<Vec<u8>, StampError> {
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !src.starts_with(SIG) {
        return Err(StampError::NotPng);
    }
    let mut out = Vec::with_capacity(src.len() + 256);
    out.extend_from_slice(SIG);
    let mut pos = SIG.len();
    while pos < src.len() {
        let head = src.get(pos..pos + 8).ok_or(StampError::Malformed("PNG"))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let typ = &head[4..8];
        let end = pos
            .checked_add(12)
            .and_then(|p| p.checked_add(len))
            .ok_or(StampError::Malformed("PNG"))?;
        if end > src.len() {
            return Err(StampError::Malformed("PNG"));
        }
        if typ != b"eXIf" {
            out.extend_from_slice(&src[pos..end]);
        }
        if typ == b"IHDR" {
            png_chunk(&mut out, b"eXIf", &exif_tiff(t))?;
            let mut text = b"Comment\0".to_vec();
            text.extend_from_slice(comment(t, seq, nonce).as_bytes());
            png_chunk(&mut out, b"tEXt", &text)?;
        }
        pos = end;
    }
    Ok(out)
}

/// Stamps by content (JPEG or PNG).
pub fn stamp(src: &[u8], t: DateTime<Utc>, seq: u64) -> Result<Vec<u8>, StampError> {
    stamp_with_nonce(src, t, seq, rand::random())
}

/// Stamps by content with a chosen nonce: same inputs, same bytes.
pub fn stamp_with_nonce(
    src: &[u8],
    t: DateTime<Utc>,
    seq: u64,
    nonce: u64,
) -> Result<Vec<u8>, StampError> {
    if src.starts_with(&[0xFF, 0xD8]) {
        stamp_jpeg_with_nonce(src, t, seq, nonce)
    } else {
        stamp_png_with_nonce(src, t, seq, nonce)
    }
}

/// The JPEG and PNG files of `dir`, in name order.
pub fn source_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("reading source folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .is_some_and(|e| matches!(e.as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!("no .jpg, .jpeg or .png images in {}", dir.display());
    }
    Ok(files)
}

/// Writes one frame like a camera does; returns its final path.
pub fn write_frame(
    capture_dir: &Path,
    prefix: &str,
    source: &Path,
    t: DateTime<Utc>,
    seq: u64,
) -> anyhow::Result<PathBuf> {
    write_frame_with_nonce(capture_dir, prefix, source, t, seq, rand::random())
}

/// [`write_frame`] with a chosen nonce: writing the same frame twice gives the same
/// name and the same bytes.
pub fn write_frame_with_nonce(
    capture_dir: &Path,
    prefix: &str,
    source: &Path,
    t: DateTime<Utc>,
    seq: u64,
    nonce: u64,
) -> anyhow::Result<PathBuf> {
    let bytes = fs::read(source).map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
    let stamped = stamp_with_nonce(&bytes, t, seq, nonce)
        .map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
    let ext = if stamped.starts_with(&[0xFF, 0xD8]) {
        "jpg"
    } else {
        "png"
    };
    let name = format!("{prefix}-{}-{seq:06}.{ext}", t.format("%Y%m%dT%H%M%S%3fZ"));
    let tmp = capture_dir.join(format!(".{name}.tmp"));
    let dest = capture_dir.join(&name);
    let mut f = File::create(&tmp)?;
    f.write_all(&stamped)?;
    f.set_modified(t.into())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Runs the simulator until `count` frames are written or `shutdown` fires.
pub async fn run(settings: SimulateSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let interval = settings.interval().map_err(anyhow::Error::msg)?;
    let sources = source_images(&settings.source)?;
    fs::create_dir_all(&settings.capture_dir).map_err(|e| {
        anyhow::anyhow!(
            "creating capture folder {}: {e}",
            settings.capture_dir.display()
        )
    })?;
    tracing::info!(
        source = %settings.source.display(),
        images = sources.len(),
        capture_dir = %settings.capture_dir.display(),
        interval = ?interval,
        count = settings.count,
        "simulated camera started"
    );
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    while settings.count == 0 || seq < settings.count {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let source = sources[(seq % sources.len() as u64) as usize].clone();
        let (dir, prefix) = (settings.capture_dir.clone(), settings.frame_prefix.clone());
        let t = Utc::now();
        let written =
            tokio::task::spawn_blocking(move || write_frame(&dir, &prefix, &source, t, seq))
                .await??;
        tracing::info!(frame = %written.display(), seq, "frame captured");
        seq += 1;
    }
    tracing::info!(frames = seq, "simulated camera stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn jpeg_keeps_image_data_and_replaces_exif() {
        let src = crate::capture::tests::minimal_jpeg();
        let once = stamp_jpeg(&src, t(), 1).unwrap();
        let twice = stamp_jpeg(&once, t(), 2).unwrap();
        // The old EXIF segment is dropped, not accumulated; the comments differ.
        let count = |b: &[u8]| b.windows(6).filter(|w| w == b"Exif\0\0").count();
        assert_eq!(count(&once), 1);
        assert_eq!(count(&twice), 1);
        assert!(twice.ends_with(&[0xFF, 0xD9]));
        assert_ne!(once, stamp_jpeg(&src, t(), 1).unwrap(), "bytes are unique");
    }

    #[test]
    fn png_gets_exif_after_ihdr() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png_chunk(&mut png, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]).unwrap();
        png_chunk(&mut png, b"IDAT", b"x").unwrap();
        png_chunk(&mut png, b"IEND", b"").unwrap();
        let stamped = stamp_png(&png, t(), 3).unwrap();
        let (got, src) = crate::capture::capture_time(
            &mut std::io::Cursor::new(stamped.clone()),
            std::time::SystemTime::UNIX_EPOCH,
        );
        assert_eq!(src, crate::capture::TimeSource::Exif);
        assert_eq!(got, t());
        let again = stamp_png(&stamped, t(), 4).unwrap();
        assert_eq!(again.windows(4).filter(|w| w == b"eXIf").count(), 1);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        assert!(stamp_jpeg(&[0xFF, 0xD8, 0xFF], t(), 0).is_err());
        assert!(stamp_jpeg(&[0xFF, 0xD8, 0xFF, 0xE0, 0xFF, 0xFF], t(), 0).is_err());
        assert!(stamp_png(b"\x89PNG\r\n\x1a\n\xff\xff\xff\xffIDAT", t(), 0).is_err());
        assert!(stamp(b"hello", t(), 0).is_err());
    }
}
