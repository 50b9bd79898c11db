//! What a frame is: its capture time (EXIF `DateTimeOriginal`, else the file's mtime) and
//! its content type (from the magic bytes, else the extension).

use std::io::{Read, Seek};
use std::path::Path;
use std::time::SystemTime;

use chrono::{DateTime, FixedOffset, Local, NaiveDate, TimeZone, Utc};

/// EXIF lives in the first segments of a JPEG (APP1 is at most 64 KiB) and before the
/// image data of a PNG; reading more would only cost memory.
const EXIF_SCAN_BYTES: u64 = 512 * 1024;

/// Where a capture time came from (logged, and useful in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    Exif,
    Mtime,
}

/// The capture time of a frame: EXIF `DateTimeOriginal` (with `SubSecTimeOriginal` and
/// `OffsetTimeOriginal` when present; without an offset the time is the agent's local
/// time, which is what a camera writes), else the file's modification time.
pub fn capture_time(
    file: &mut (impl Read + Seek),
    mtime: SystemTime,
) -> (DateTime<Utc>, TimeSource) {
    match exif_time(file) {
        Some(t) => (t, TimeSource::Exif),
        None => (DateTime::<Utc>::from(mtime), TimeSource::Mtime),
    }
}

fn exif_time(file: &mut (impl Read + Seek)) -> Option<DateTime<Utc>> {
    file.rewind().ok()?;
    let mut head = Vec::new();
    file.by_ref()
        .take(EXIF_SCAN_BYTES)
        .read_to_end(&mut head)
        .ok()?;
    let exif = exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(head))
        .ok()?;
    let ascii = |tag| match exif.get_field(tag, exif::In::PRIMARY).map(|f| &f.value) {
        Some(exif::Value::Ascii(v)) => v.first().cloned(),
        _ => None,
    };
    let mut dt = exif::DateTime::from_ascii(&ascii(exif::Tag::DateTimeOriginal)?).ok()?;
    if let Some(sub) = ascii(exif::Tag::SubSecTimeOriginal) {
        let _ = dt.parse_subsec(&sub);
    }
    if let Some(off) = ascii(exif::Tag::OffsetTimeOriginal) {
        let _ = dt.parse_offset(&off);
    }
    // A camera whose clock was never set writes 1970 or 2000-01-01: its mtime is no
    // better, but at least it is the time the file was written on this machine.
    if dt.year < 2001 {
        return None;
    }
    let naive = NaiveDate::from_ymd_opt(dt.year.into(), dt.month.into(), dt.day.into())?
        .and_hms_nano_opt(
            dt.hour.into(),
            dt.minute.into(),
            dt.second.into(),
            dt.nanosecond.unwrap_or(0),
        )?;
    let t = match dt.offset {
        Some(minutes) => FixedOffset::east_opt(i32::from(minutes) * 60)?
            .from_local_datetime(&naive)
            .single()?
            .with_timezone(&Utc),
        None => Local
            .from_local_datetime(&naive)
            .earliest()?
            .with_timezone(&Utc),
    };
    Some(t)
}

/// `image/jpeg` or `image/png` from the first bytes; otherwise from the extension (the
/// backend then answers 422 for a corrupt file, which lands it in `rejected/`);
/// `application/octet-stream` for anything else (415, rejected as well).
pub fn content_type(head: &[u8], path: &Path) -> &'static str {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return "image/jpeg";
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return "image/png";
    }
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::Duration;

    #[test]
    fn mtime_when_no_exif() {
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (t, src) = capture_time(&mut Cursor::new(b"not an image".to_vec()), mtime);
        assert_eq!(src, TimeSource::Mtime);
        assert_eq!(t.timestamp(), 1_700_000_000);
    }

    #[test]
    fn exif_with_offset_and_subseconds() {
        let t = DateTime::parse_from_rfc3339("2026-03-04T05:06:07.250+02:00")
            .unwrap()
            .with_timezone(&Utc);
        let jpeg = crate::simulate::stamp_jpeg(&minimal_jpeg(), t, 1).unwrap();
        let (got, src) = capture_time(&mut Cursor::new(jpeg), SystemTime::UNIX_EPOCH);
        assert_eq!(src, TimeSource::Exif);
        assert_eq!(got, t);
    }

    #[test]
    fn sniffing() {
        assert_eq!(
            content_type(&[0xFF, 0xD8, 0xFF, 0xE0], Path::new("x")),
            "image/jpeg"
        );
        assert_eq!(
            content_type(b"\x89PNG\r\n\x1a\n..", Path::new("x.jpg")),
            "image/png"
        );
        assert_eq!(content_type(b"garbage", Path::new("x.JPG")), "image/jpeg");
        assert_eq!(
            content_type(b"garbage", Path::new("x.txt")),
            "application/octet-stream"
        );
    }

    /// SOI, a COM segment, EOI: enough for the EXIF writer and reader.
    pub(crate) fn minimal_jpeg() -> Vec<u8> {
        vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, b'h', b'i', 0xFF, 0xD9]
    }
}
