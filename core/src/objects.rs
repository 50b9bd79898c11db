//! Object store port and its adapters: S3 (MinIO, Garage, AWS) and a local folder.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::config::InfraSettings;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object {bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    /// The store could not be reached or answered with a server error: retry later.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad request, access denied, invalid key...).
    #[error("object store error: {0}")]
    Other(String),
}

impl ObjectError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjectError::Unavailable(_))
    }
}

/// A streamed object body.
pub struct ObjectStream {
    pub len: Option<u64>,
    pub body: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// A small object store: what lapseguard needs and nothing more.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), ObjectError>;
    /// Like [`ObjectStore::put`] when the caller already knows the body's SHA-256
    /// (lower-case hex): adapters that sign requests reuse it instead of hashing again.
    async fn put_with_sha256(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
        _sha256_hex: &str,
    ) -> Result<(), ObjectError> {
        self.put(bucket, key, body, content_type).await
    }
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, ObjectError>;
    /// Uploads a local file without reading it into memory (videos).
    async fn put_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<(), ObjectError>;
    /// An object as a stream of chunks, with its length when known (videos).
    async fn get_stream(&self, bucket: &str, key: &str) -> Result<ObjectStream, ObjectError>;
    /// Deleting a missing object is not an error.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError>;
    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, ObjectError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, ObjectError>;
    /// Succeeds when the bucket exists and is reachable (readiness).
    async fn check_bucket(&self, bucket: &str) -> Result<(), ObjectError>;
    /// Creates the bucket when missing (tests, embedded mode, bootstrap).
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), ObjectError>;
}

/// S3 adapter on `aws-sdk-s3`.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
}

impl S3Store {
    /// One PUT of `body` (in memory or streamed from a file).
    async fn put_body(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        content_type: &str,
    ) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        Ok(())
    }

    pub fn new(settings: &InfraSettings) -> Self {
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(Region::new(settings.s3_region.clone()))
            .force_path_style(settings.s3_force_path_style)
            // Fail fast: an upload waits on this; the caller answers 503 + Retry-After.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2));
        if !settings.s3_access_key_id.is_empty() {
            b = b.credentials_provider(Credentials::new(
                settings.s3_access_key_id.clone(),
                settings.s3_secret_access_key.clone(),
                None,
                None,
                "lapseguard-config",
            ));
        }
        if !settings.s3_endpoint.is_empty() {
            b = b.endpoint_url(settings.s3_endpoint.clone());
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(b.build()),
        }
    }
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    err: SdkError<E, HttpResponse>,
    bucket: &str,
    key: &str,
) -> ObjectError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            ObjectError::Unavailable(format!("{err:?}"))
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            if matches!(code, "NoSuchKey" | "NotFound") || status == Some(404) {
                ObjectError::NotFound {
                    bucket: bucket.into(),
                    key: key.into(),
                }
            } else {
                let text = service_error_text(bucket, status, code, se.err().message());
                if status.is_some_and(|s| s >= 500) || code == "SlowDown" {
                    ObjectError::Unavailable(text)
                } else {
                    ObjectError::Other(text)
                }
            }
        }
        _ => ObjectError::Other(format!("{err:?}")),
    }
}

/// "bucket: HTTP 403 AccessDenied: message", leaving out what the answer did not carry:
/// a HEAD answer has no body, so a refused bucket check has only its status.
fn service_error_text(
    bucket: &str,
    status: Option<u16>,
    code: &str,
    message: Option<&str>,
) -> String {
    let mut text = format!("bucket {bucket}:");
    if let Some(s) = status {
        text.push_str(&format!(" HTTP {s}"));
    }
    if !code.is_empty() {
        text.push_str(&format!(" {code}"));
    }
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        text.push_str(&format!(" ({m})"));
    }
    if status.is_none() && code.is_empty() {
        text.push_str(" unknown service error");
    }
    text
}

/// Hands SigV4 the payload hash the caller computed anyway (hashing a 2 MB upload a
/// second time was a fifth of the backend's CPU per upload).
#[derive(Debug)]
struct PrecomputedPayloadHash(String);

impl aws_sdk_s3::config::Intercept for PrecomputedPayloadHash {
    fn name(&self) -> &'static str {
        "PrecomputedPayloadHash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        cfg.interceptor_state()
            .store_put(aws_runtime::auth::PayloadSigningOverride::Precomputed(
                self.0.clone(),
            ));
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_with_sha256(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
        sha256_hex: &str,
    ) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .customize()
            .interceptor(PrecomputedPayloadHash(sha256_hex.to_ascii_lowercase()))
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        Ok(())
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), ObjectError> {
        self.put_body(bucket, key, ByteStream::from(body), content_type)
            .await
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, ObjectError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| ObjectError::Unavailable(format!("reading {bucket}/{key}: {e}")))?;
        Ok(data.into_bytes())
    }

    async fn put_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<(), ObjectError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| ObjectError::Other(format!("reading {}: {e}", path.display())))?;
        self.put_body(bucket, key, body, content_type).await
    }

    async fn get_stream(&self, bucket: &str, key: &str) -> Result<ObjectStream, ObjectError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        let len = out.content_length.and_then(|l| u64::try_from(l).ok());
        let reader = out.body.into_async_read();
        Ok(ObjectStream {
            len,
            body: Box::pin(tokio_util::io::ReaderStream::new(reader)),
        })
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        Ok(())
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match classify(e, bucket, key) {
                ObjectError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| classify(e, bucket, prefix))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn check_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| classify(e, bucket, ""))?;
        Ok(())
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        match self.check_bucket(bucket).await {
            Ok(()) => Ok(()),
            Err(ObjectError::NotFound { .. }) => {
                match self.client.create_bucket().bucket(bucket).send().await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let code = e.code().unwrap_or_default().to_string();
                        if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
                            Ok(())
                        } else {
                            Err(classify(e, bucket, ""))
                        }
                    }
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Local-folder adapter: `root/{bucket}/{key}`. Writes go to a temporary file that is
/// fsynced and renamed, so a crash never leaves a partial object under its key.
#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Writes an object the crash-safe way: `fill` writes (and syncs) a temporary file
    /// next to it, which is then renamed into place and the folder synced. A crash
    /// leaves at most a `.tmp-*` file, never a partial object.
    async fn write_atomically(
        &self,
        bucket: &str,
        key: &str,
        fill: impl FnOnce(&Path) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), ObjectError> {
        let path = self.path(bucket, key)?;
        if !tokio::fs::try_exists(self.root.join(bucket))
            .await
            .map_err(io_err)?
        {
            return Err(ObjectError::NotFound {
                bucket: bucket.into(),
                key: String::new(),
            });
        }
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
            fill(&tmp)?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })
        .await
        .map_err(|e| ObjectError::Other(e.to_string()))?
        .map_err(io_err)
    }

    fn path(&self, bucket: &str, key: &str) -> Result<PathBuf, ObjectError> {
        let mut p = self.root.join(safe_segment(bucket)?);
        for comp in Path::new(key).components() {
            match comp {
                Component::Normal(c) => p.push(c),
                _ => return Err(ObjectError::Other(format!("invalid object key {key:?}"))),
            }
        }
        Ok(p)
    }
}

fn safe_segment(s: &str) -> Result<&str, ObjectError> {
    if s.is_empty() || s.contains(['/', '\\']) || s == "." || s == ".." {
        Err(ObjectError::Other(format!("invalid bucket name {s:?}")))
    } else {
        Ok(s)
    }
}

fn io_err(e: std::io::Error) -> ObjectError {
    ObjectError::Unavailable(e.to_string())
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        _content_type: &str,
    ) -> Result<(), ObjectError> {
        self.write_atomically(bucket, key, move |tmp| {
            use std::io::Write;
            let mut f = std::fs::File::create(tmp)?;
            f.write_all(&body)?;
            f.sync_all()
        })
        .await
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, ObjectError> {
        match tokio::fs::read(self.path(bucket, key)?).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ObjectError::NotFound {
                bucket: bucket.into(),
                key: key.into(),
            }),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn put_file(
        &self,
        bucket: &str,
        key: &str,
        src: &Path,
        _content_type: &str,
    ) -> Result<(), ObjectError> {
        let src = src.to_path_buf();
        self.write_atomically(bucket, key, move |tmp| {
            std::fs::copy(&src, tmp)?;
            std::fs::File::open(tmp)?.sync_all()
        })
        .await
    }

    async fn get_stream(&self, bucket: &str, key: &str) -> Result<ObjectStream, ObjectError> {
        let file = match tokio::fs::File::open(self.path(bucket, key)?).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ObjectError::NotFound {
                    bucket: bucket.into(),
                    key: key.into(),
                });
            }
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().await.map_err(io_err)?.len();
        Ok(ObjectStream {
            len: Some(len),
            body: Box::pin(tokio_util::io::ReaderStream::new(file)),
        })
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        match tokio::fs::remove_file(self.path(bucket, key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        tokio::fs::try_exists(self.path(bucket, key)?)
            .await
            .map_err(io_err)
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let base = self.root.join(safe_segment(bucket)?);
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![base.clone()];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(e)),
                };
                for entry in rd {
                    let entry = entry.map_err(io_err)?;
                    let path = entry.path();
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with(".tmp-") {
                        continue;
                    }
                    if entry.file_type().map_err(io_err)?.is_dir() {
                        stack.push(path);
                    } else if let Ok(rel) = path.strip_prefix(&base) {
                        let key = rel.to_string_lossy().replace('\\', "/");
                        if key.starts_with(&prefix) {
                            out.push(key);
                        }
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
        .map_err(|e| ObjectError::Other(e.to_string()))?
    }

    async fn check_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        let dir = self.root.join(safe_segment(bucket)?);
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ObjectError::Other(format!(
                "{} is not a directory",
                dir.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ObjectError::NotFound {
                bucket: bucket.into(),
                key: String::new(),
            }),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        tokio::fs::create_dir_all(self.root.join(safe_segment(bucket)?))
            .await
            .map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_errors_say_what_the_answer_carried() {
        assert_eq!(
            super::service_error_text("in", Some(403), "", None),
            "bucket in: HTTP 403"
        );
        assert_eq!(
            super::service_error_text("out", Some(403), "AccessDenied", Some("Access Denied.")),
            "bucket out: HTTP 403 AccessDenied (Access Denied.)"
        );
        assert_eq!(
            super::service_error_text("in", None, "", Some("")),
            "bucket in: unknown service error"
        );
    }

    use super::*;

    #[tokio::test]
    async fn fs_store_round_trip_and_rejects_traversal() {
        let root = std::env::temp_dir().join(format!("lg-fs-{}", uuid::Uuid::new_v4()));
        let s = FsStore::new(&root);
        assert!(matches!(
            s.put("b", "k", Bytes::from_static(b"x"), "image/png").await,
            Err(ObjectError::NotFound { .. })
        ));
        s.ensure_bucket("b").await.unwrap();
        s.check_bucket("b").await.unwrap();
        s.put(
            "b",
            "p/2026/a.jpg",
            Bytes::from_static(b"hello"),
            "image/jpeg",
        )
        .await
        .unwrap();
        assert_eq!(
            s.get("b", "p/2026/a.jpg").await.unwrap(),
            Bytes::from_static(b"hello")
        );
        assert!(s.exists("b", "p/2026/a.jpg").await.unwrap());
        assert_eq!(
            s.list("b", "p/").await.unwrap(),
            vec!["p/2026/a.jpg".to_string()]
        );
        assert!(matches!(
            s.get("b", "../escape").await,
            Err(ObjectError::Other(_))
        ));
        assert!(matches!(
            s.get("b", "nope").await,
            Err(ObjectError::NotFound { .. })
        ));
        s.delete("b", "p/2026/a.jpg").await.unwrap();
        s.delete("b", "p/2026/a.jpg").await.unwrap();
        assert!(!s.exists("b", "p/2026/a.jpg").await.unwrap());
        std::fs::remove_dir_all(root).unwrap();
    }
}
