//! Metadata store port ("catalog": projects, cameras, images, the job outbox) and its
//! PostgreSQL adapter.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, FromRow, Row};
use uuid::Uuid;

use crate::config::InfraSettings;
use crate::fleet::{FleetCamera, Heartbeat};
use crate::job::JobMessage;
use crate::queue::{JobPublisher, QueueError};
use crate::timelapse::{NewTimelapse, RenderProgress, Timelapse, TimelapseStatus};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("already exists: {0}")]
    Conflict(String),
    /// The database could not be reached or timed out: retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store error: {0}")]
    Other(String),
}

impl CatalogError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CatalogError::Unavailable(_))
    }
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                CatalogError::Conflict(db.message().to_string())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => CatalogError::Unavailable(e.to_string()),
            // Admin shutdown, cannot connect now, too many connections...
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("57P") || c.starts_with("08") || c == "53300"
                }) =>
            {
                CatalogError::Unavailable(e.to_string())
            }
            _ => CatalogError::Other(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Camera {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Who a camera token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraIdentity {
    pub camera_id: Uuid,
    pub camera_name: String,
    pub project_id: Uuid,
    pub project_slug: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    Queued,
    Processing,
    Done,
    Failed,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Queued => "queued",
            ImageStatus::Processing => "processing",
            ImageStatus::Done => "done",
            ImageStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => ImageStatus::Queued,
            "processing" => ImageStatus::Processing,
            "done" => ImageStatus::Done,
            "failed" => ImageStatus::Failed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub id: Uuid,
    pub project_id: Uuid,
    pub project: String,
    pub camera_id: Uuid,
    pub captured_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub sha256: String,
    pub bytes: i64,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub input_key: String,
    pub status: ImageStatus,
    pub attempts: i32,
    pub faces: Option<i32>,
    pub boxes: Option<serde_json::Value>,
    pub model: Option<String>,
    pub duration_ms: Option<i32>,
    pub output_key: Option<String>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewImage {
    pub id: Uuid,
    pub project_id: Uuid,
    /// Project slug (echoed in the returned [`Image`]).
    pub project: String,
    pub camera_id: Uuid,
    pub captured_at: DateTime<Utc>,
    pub sha256: String,
    pub bytes: i64,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub input_key: String,
}

#[derive(Debug, Clone)]
pub enum Inserted {
    New(Image),
    /// The same bytes were already uploaded to this project.
    Existing(Image),
}

/// Position in a newest-first listing: the last item's capture time and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub captured_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.captured_at.timestamp_micros(),
            self.id.simple()
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (micros, id) = s.split_once('_')?;
        Some(Self {
            captured_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub project_id: Uuid,
    pub status: Option<ImageStatus>,
    pub limit: i64,
    pub after: Option<Cursor>,
    /// Only this camera's images.
    pub camera_id: Option<Uuid>,
    /// Only images captured at or after this time.
    pub captured_from: Option<DateTime<Utc>>,
    /// Only images captured before this time.
    pub captured_to: Option<DateTime<Utc>>,
    /// Capture order (oldest first, as a timelapse runs) instead of newest first; the
    /// cursor then means "after this one" in that order.
    pub oldest_first: bool,
}

/// How many images of a project are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    pub queued: i64,
    pub processing: i64,
    pub done: i64,
    pub failed: i64,
}

impl StatusCounts {
    pub fn total(&self) -> i64 {
        self.queued + self.processing + self.done + self.failed
    }

    pub fn add(&mut self, status: &str, n: i64) {
        match ImageStatus::parse(status) {
            Some(ImageStatus::Queued) => self.queued += n,
            Some(ImageStatus::Processing) => self.processing += n,
            Some(ImageStatus::Done) => self.done += n,
            Some(ImageStatus::Failed) => self.failed += n,
            None => {}
        }
    }
}

/// What the worker records once an image is anonymized.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub faces: i32,
    pub boxes: serde_json::Value,
    pub model: String,
    pub duration_ms: i32,
    pub output_key: String,
}

/// Outcome of a worker claiming a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The image is now `processing`; `attempts` counts this one.
    Started {
        attempts: i32,
    },
    AlreadyDone,
    AlreadyFailed,
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The metadata store port. Cluster mode: PostgreSQL. Embedded mode: an embedded database.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), CatalogError>;
    async fn create_project(&self, slug: &str, name: &str) -> Result<Project, CatalogError>;
    async fn project_by_slug(&self, slug: &str) -> Result<Option<Project>, CatalogError>;
    async fn create_camera(
        &self,
        project_id: Uuid,
        name: &str,
        token_hash: &[u8],
    ) -> Result<Camera, CatalogError>;
    /// Revokes a camera's token. False when no such camera in that project.
    async fn revoke_camera(&self, project_id: Uuid, camera_id: Uuid) -> Result<bool, CatalogError>;
    /// The camera a (hashed) token belongs to, unless unknown or revoked.
    async fn camera_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<CameraIdentity>, CatalogError>;
    async fn image_by_sha(
        &self,
        project_id: Uuid,
        sha256: &str,
    ) -> Result<Option<Image>, CatalogError>;
    /// Inserts the image and its job into the outbox in one transaction. When the same
    /// bytes already exist in the project, returns the existing image and queues nothing.
    async fn insert_image(
        &self,
        image: NewImage,
        job: &JobMessage,
    ) -> Result<Inserted, CatalogError>;
    async fn image(&self, id: Uuid) -> Result<Option<Image>, CatalogError>;
    async fn list_images(&self, q: &ListQuery) -> Result<Vec<Image>, CatalogError>;
    async fn status_counts(&self, project_id: Uuid) -> Result<StatusCounts, CatalogError>;
    /// Publishes up to `batch` outbox rows through `publisher` and deletes them after the
    /// broker confirmed them. Returns how many were relayed. Safe with many relays at once.
    async fn relay_outbox(
        &self,
        batch: i64,
        publisher: &dyn JobPublisher,
    ) -> Result<usize, RelayError>;
    async fn outbox_len(&self) -> Result<i64, CatalogError>;
    async fn claim_job(&self, image_id: Uuid) -> Result<Claim, CatalogError>;
    async fn complete_job(&self, image_id: Uuid, result: &JobResult) -> Result<(), CatalogError>;
    async fn fail_job(&self, image_id: Uuid, reason: &str) -> Result<(), CatalogError>;
    /// A transient failure: back to `queued` with the reason, to be retried.
    async fn retry_job(&self, image_id: Uuid, reason: &str) -> Result<(), CatalogError>;
    /// Records a camera's heartbeat or last will. False when it was ignored: unknown
    /// camera, or older than the heartbeat already recorded.
    async fn record_heartbeat(&self, hb: &Heartbeat) -> Result<bool, CatalogError>;
    /// Every camera of a project (revoked ones too) with its last heartbeat and its last
    /// received image, by name.
    async fn fleet(&self, project_id: Uuid) -> Result<Vec<FleetCamera>, CatalogError>;
    /// Queues a timelapse render.
    async fn create_timelapse(&self, t: &NewTimelapse) -> Result<Timelapse, CatalogError>;
    async fn timelapse(&self, id: Uuid) -> Result<Option<Timelapse>, CatalogError>;
    /// Claims the oldest queued render, or one whose renderer's lease ran out, for
    /// `lease`. Safe with many renderers at once.
    async fn claim_timelapse(&self, lease: Duration) -> Result<Option<Timelapse>, CatalogError>;
    /// Records progress and extends the lease.
    async fn timelapse_progress(
        &self,
        id: Uuid,
        p: RenderProgress,
        lease: Duration,
    ) -> Result<(), CatalogError>;
    async fn finish_timelapse(
        &self,
        id: Uuid,
        p: RenderProgress,
        video_key: &str,
        bytes: i64,
    ) -> Result<(), CatalogError>;
    async fn fail_timelapse(&self, id: Uuid, reason: &str) -> Result<(), CatalogError>;
}

/// PostgreSQL adapter.
#[derive(Clone)]
pub struct PgCatalog {
    pool: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(FromRow)]
struct ImageRow {
    id: Uuid,
    project_id: Uuid,
    project: String,
    camera_id: Uuid,
    captured_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    sha256: String,
    bytes: i64,
    content_type: String,
    width: i32,
    height: i32,
    input_key: String,
    status: String,
    attempts: i32,
    faces: Option<i32>,
    boxes: Option<serde_json::Value>,
    model: Option<String>,
    duration_ms: Option<i32>,
    output_key: Option<String>,
    error: Option<String>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ImageRow> for Image {
    type Error = CatalogError;
    fn try_from(r: ImageRow) -> Result<Self, CatalogError> {
        Ok(Image {
            id: r.id,
            project_id: r.project_id,
            project: r.project,
            camera_id: r.camera_id,
            captured_at: r.captured_at,
            received_at: r.received_at,
            sha256: r.sha256,
            bytes: r.bytes,
            content_type: r.content_type,
            width: r.width,
            height: r.height,
            input_key: r.input_key,
            status: ImageStatus::parse(&r.status)
                .ok_or_else(|| CatalogError::Other(format!("unknown status {}", r.status)))?,
            attempts: r.attempts,
            faces: r.faces,
            boxes: r.boxes,
            model: r.model,
            duration_ms: r.duration_ms,
            output_key: r.output_key,
            error: r.error,
            updated_at: r.updated_at,
        })
    }
}

const IMAGE_SELECT: &str = "SELECT i.id, i.project_id, p.slug AS project, i.camera_id, i.captured_at, \
     i.received_at, i.sha256, i.bytes, i.content_type, i.width, i.height, i.input_key, i.status, \
     i.attempts, i.faces, i.boxes, i.model, i.duration_ms, i.output_key, i.error, i.updated_at \
     FROM images i JOIN projects p ON p.id = i.project_id";

const TIMELAPSE_SELECT: &str = "SELECT t.id, t.project_id, p.slug AS project, t.camera_id, \
     t.captured_from, t.captured_to, t.fps, t.width, t.height, t.status, t.attempts, t.frames_total, \
     t.frames_rendered, t.frames_skipped, t.video_key, t.bytes, t.error, t.created_at, t.updated_at \
     FROM timelapses t JOIN projects p ON p.id = t.project_id";

fn pg_timelapse(r: &sqlx::postgres::PgRow) -> Result<Timelapse, CatalogError> {
    let status: String = r.try_get("status")?;
    Ok(Timelapse {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        project: r.try_get("project")?,
        camera_id: r.try_get("camera_id")?,
        captured_from: r.try_get("captured_from")?,
        captured_to: r.try_get("captured_to")?,
        fps: r.try_get("fps")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        status: TimelapseStatus::parse(&status)
            .ok_or_else(|| CatalogError::Other(format!("unknown timelapse status {status}")))?,
        attempts: r.try_get("attempts")?,
        frames_total: r.try_get("frames_total")?,
        frames_rendered: r.try_get("frames_rendered")?,
        frames_skipped: r.try_get("frames_skipped")?,
        video_key: r.try_get("video_key")?,
        bytes: r.try_get("bytes")?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl PgCatalog {
    /// A lazily connecting pool: the service starts (and reports not-ready) while the
    /// database is down, and recovers by itself when it is back.
    pub fn connect_lazy(settings: &InfraSettings) -> Result<Self, CatalogError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.database_max_connections)
            .acquire_timeout(Duration::from_secs(settings.database_acquire_timeout_secs))
            .connect_lazy(&settings.database_url)
            .map_err(|e| CatalogError::Other(format!("invalid database URL: {e}")))?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations. Concurrent runs serialize on an advisory lock.
    pub async fn migrate(&self) -> Result<(), CatalogError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => CatalogError::from(inner),
            other => CatalogError::Other(other.to_string()),
        })
    }

    async fn image_where(&self, clause: &str, id: Uuid) -> Result<Option<Image>, CatalogError> {
        let row: Option<ImageRow> =
            sqlx::query_as(AssertSqlSafe(format!("{IMAGE_SELECT} WHERE {clause}")))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(Image::try_from).transpose()
    }
}

#[async_trait]
impl Catalog for PgCatalog {
    /// Reachable, and migrated at least to the schema this build expects (a backend
    /// rolled out before its migration Job stays not-ready instead of failing requests).
    async fn ping(&self) -> Result<(), CatalogError> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| match CatalogError::from(e) {
                    CatalogError::Other(d) => {
                        CatalogError::Other(format!("schema not migrated: {d}"))
                    }
                    other => other,
                })?;
        let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        match applied {
            Some(v) if v >= expected => Ok(()),
            other => Err(CatalogError::Other(format!(
                "schema at version {other:?}, this build needs {expected}: run `backend migrate`"
            ))),
        }
    }

    async fn create_project(&self, slug: &str, name: &str) -> Result<Project, CatalogError> {
        let row = sqlx::query(
            "INSERT INTO projects (id, slug, name) VALUES ($1, $2, $3) RETURNING id, slug, name, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(slug)
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(Project {
            id: row.try_get("id")?,
            slug: row.try_get("slug")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }

    async fn project_by_slug(&self, slug: &str) -> Result<Option<Project>, CatalogError> {
        let row = sqlx::query("SELECT id, slug, name, created_at FROM projects WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Project {
                id: r.try_get("id")?,
                slug: r.try_get("slug")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn create_camera(
        &self,
        project_id: Uuid,
        name: &str,
        token_hash: &[u8],
    ) -> Result<Camera, CatalogError> {
        let row = sqlx::query(
            "INSERT INTO cameras (id, project_id, name, token_hash) VALUES ($1, $2, $3, $4) \
             RETURNING id, project_id, name, created_at, revoked_at",
        )
        .bind(Uuid::now_v7())
        .bind(project_id)
        .bind(name)
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await?;
        Ok(Camera {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }

    async fn revoke_camera(&self, project_id: Uuid, camera_id: Uuid) -> Result<bool, CatalogError> {
        let done = sqlx::query(
            "UPDATE cameras SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND project_id = $2",
        )
        .bind(camera_id)
        .bind(project_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn camera_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<CameraIdentity>, CatalogError> {
        let row = sqlx::query(
            "SELECT c.id, c.name, c.project_id, p.slug FROM cameras c JOIN projects p ON p.id = c.project_id \
             WHERE c.token_hash = $1 AND c.revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(CameraIdentity {
                camera_id: r.try_get("id")?,
                camera_name: r.try_get("name")?,
                project_id: r.try_get("project_id")?,
                project_slug: r.try_get("slug")?,
            })
        })
        .transpose()
    }

    async fn image_by_sha(
        &self,
        project_id: Uuid,
        sha256: &str,
    ) -> Result<Option<Image>, CatalogError> {
        let row: Option<ImageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "{IMAGE_SELECT} WHERE i.project_id = $1 AND i.sha256 = $2"
        )))
        .bind(project_id)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Image::try_from).transpose()
    }

    async fn insert_image(
        &self,
        img: NewImage,
        job: &JobMessage,
    ) -> Result<Inserted, CatalogError> {
        // One statement, so one round trip and atomic without an explicit transaction:
        // the outbox row is written only when the image row was (data-modifying CTEs
        // run exactly once).
        let row = sqlx::query(
            "WITH ins AS ( \
               INSERT INTO images (id, project_id, camera_id, captured_at, sha256, bytes, \
                 content_type, width, height, input_key) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
               ON CONFLICT (project_id, sha256) DO NOTHING \
               RETURNING id, received_at, updated_at), \
             ob AS (INSERT INTO outbox (job_id, payload) SELECT $11, $12 FROM ins) \
             SELECT received_at, updated_at FROM ins",
        )
        .bind(img.id)
        .bind(img.project_id)
        .bind(img.camera_id)
        .bind(img.captured_at)
        .bind(&img.sha256)
        .bind(img.bytes)
        .bind(&img.content_type)
        .bind(img.width)
        .bind(img.height)
        .bind(&img.input_key)
        .bind(job.job_id)
        .bind(sqlx::types::Json(job))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return match self.image_by_sha(img.project_id, &img.sha256).await? {
                Some(existing) => Ok(Inserted::Existing(existing)),
                None => Err(CatalogError::Other(
                    "image vanished after a duplicate insert".into(),
                )),
            };
        };
        Ok(Inserted::New(Image {
            id: img.id,
            project_id: img.project_id,
            project: img.project,
            camera_id: img.camera_id,
            captured_at: img.captured_at,
            received_at: row.try_get("received_at")?,
            sha256: img.sha256,
            bytes: img.bytes,
            content_type: img.content_type,
            width: img.width,
            height: img.height,
            input_key: img.input_key,
            status: ImageStatus::Queued,
            attempts: 0,
            faces: None,
            boxes: None,
            model: None,
            duration_ms: None,
            output_key: None,
            error: None,
            updated_at: row.try_get("updated_at")?,
        }))
    }

    async fn image(&self, id: Uuid) -> Result<Option<Image>, CatalogError> {
        self.image_where("i.id = $1", id).await
    }

    async fn list_images(&self, q: &ListQuery) -> Result<Vec<Image>, CatalogError> {
        let mut sql = format!("{IMAGE_SELECT} WHERE i.project_id = $1");
        if q.status.is_some() {
            sql.push_str(" AND i.status = $2");
        } else {
            sql.push_str(" AND $2::text IS NULL");
        }
        let (cmp, dir) = if q.oldest_first {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if q.after.is_some() {
            sql.push_str(&format!(" AND (i.captured_at, i.id) {cmp} ($3, $4)"));
        } else {
            sql.push_str(" AND $3::timestamptz IS NULL AND $4::uuid IS NULL");
        }
        sql.push_str(
            " AND ($6::uuid IS NULL OR i.camera_id = $6) \
             AND ($7::timestamptz IS NULL OR i.captured_at >= $7) \
             AND ($8::timestamptz IS NULL OR i.captured_at < $8)",
        );
        sql.push_str(&format!(
            " ORDER BY i.captured_at {dir}, i.id {dir} LIMIT $5"
        ));
        // Only constant fragments are concatenated; every value is a bind parameter.
        let rows: Vec<ImageRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(q.project_id)
            .bind(q.status.map(ImageStatus::as_str))
            .bind(q.after.map(|c| c.captured_at))
            .bind(q.after.map(|c| c.id))
            .bind(q.limit)
            .bind(q.camera_id)
            .bind(q.captured_from)
            .bind(q.captured_to)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Image::try_from).collect()
    }

    async fn status_counts(&self, project_id: Uuid) -> Result<StatusCounts, CatalogError> {
        let rows = sqlx::query(
            "SELECT status, count(*) AS n FROM images WHERE project_id = $1 GROUP BY status",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = StatusCounts::default();
        for r in rows {
            counts.add(r.try_get("status")?, r.try_get("n")?);
        }
        Ok(counts)
    }

    async fn relay_outbox(
        &self,
        batch: i64,
        publisher: &dyn JobPublisher,
    ) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await.map_err(CatalogError::from)?;
        let rows = sqlx::query(
            "SELECT id, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(CatalogError::from)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut jobs = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("id").map_err(CatalogError::from)?;
            let payload: sqlx::types::Json<JobMessage> =
                r.try_get("payload").map_err(CatalogError::from)?;
            ids.push(id);
            jobs.push(payload.0);
        }
        // Rows stay locked while publishing; if we crash here the lock is released and
        // another relay (or we, after restart) publishes them again: at-least-once.
        publisher.publish(&jobs).await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(CatalogError::from)?;
        tx.commit().await.map_err(CatalogError::from)?;
        Ok(ids.len())
    }

    async fn outbox_len(&self) -> Result<i64, CatalogError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn claim_job(&self, image_id: Uuid) -> Result<Claim, CatalogError> {
        let row = sqlx::query(
            "UPDATE images SET status = 'processing', attempts = attempts + 1, updated_at = now() \
             WHERE id = $1 AND status IN ('queued', 'processing') RETURNING attempts",
        )
        .bind(image_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return Ok(Claim::Started {
                attempts: r.try_get("attempts")?,
            });
        }
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM images WHERE id = $1")
            .bind(image_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match status.as_deref() {
            Some("done") => Claim::AlreadyDone,
            Some("failed") => Claim::AlreadyFailed,
            _ => Claim::NotFound,
        })
    }

    async fn complete_job(&self, image_id: Uuid, r: &JobResult) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE images SET status = 'done', faces = $2, boxes = $3, model = $4, duration_ms = $5, \
             output_key = $6, error = NULL, updated_at = now() WHERE id = $1",
        )
        .bind(image_id)
        .bind(r.faces)
        .bind(&r.boxes)
        .bind(&r.model)
        .bind(r.duration_ms)
        .bind(&r.output_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn fail_job(&self, image_id: Uuid, reason: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE images SET status = 'failed', error = $2, updated_at = now() \
             WHERE id = $1 AND status <> 'done'",
        )
        .bind(image_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn retry_job(&self, image_id: Uuid, reason: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE images SET status = 'queued', error = $2, updated_at = now() \
             WHERE id = $1 AND status = 'processing'",
        )
        .bind(image_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_heartbeat(&self, hb: &Heartbeat) -> Result<bool, CatalogError> {
        let done = if hb.is_will() {
            // The broker speaks for a camera whose connection died: only the state
            // changes; the figures of its last heartbeat stay.
            sqlx::query(
                "INSERT INTO camera_status (camera_id, state, last_seen_at, interval_secs, heartbeat) \
                 SELECT id, 'offline', now(), $2, $3 FROM cameras WHERE id = $1 \
                 ON CONFLICT (camera_id) DO UPDATE SET state = 'offline', updated_at = now()",
            )
            .bind(hb.camera_id)
            .bind(hb.interval_secs)
            .bind(&hb.payload)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query(
                "INSERT INTO camera_status (camera_id, state, last_seen_at, interval_secs, sent_at, \
                     backlog, backlog_bytes, last_upload_at, disk_free_bytes, version, heartbeat) \
                 SELECT id, $2, now(), $3, $4, $5, $6, $7, $8, $9, $10 FROM cameras WHERE id = $1 \
                 ON CONFLICT (camera_id) DO UPDATE SET state = EXCLUDED.state, \
                     last_seen_at = EXCLUDED.last_seen_at, interval_secs = EXCLUDED.interval_secs, \
                     sent_at = EXCLUDED.sent_at, backlog = EXCLUDED.backlog, \
                     backlog_bytes = EXCLUDED.backlog_bytes, \
                     last_upload_at = COALESCE(EXCLUDED.last_upload_at, camera_status.last_upload_at), \
                     disk_free_bytes = EXCLUDED.disk_free_bytes, version = EXCLUDED.version, \
                     heartbeat = EXCLUDED.heartbeat, updated_at = now() \
                 WHERE camera_status.sent_at IS NULL OR camera_status.sent_at <= EXCLUDED.sent_at",
            )
            .bind(hb.camera_id)
            .bind(&hb.state)
            .bind(hb.interval_secs)
            .bind(hb.sent_at)
            .bind(hb.backlog)
            .bind(hb.backlog_bytes)
            .bind(hb.last_upload_at)
            .bind(hb.disk_free_bytes)
            .bind(&hb.version)
            .bind(&hb.payload)
            .execute(&self.pool)
            .await?
        };
        Ok(done.rows_affected() > 0)
    }

    async fn fleet(&self, project_id: Uuid) -> Result<Vec<FleetCamera>, CatalogError> {
        let rows = sqlx::query(
            "SELECT c.id, c.name, c.created_at, c.revoked_at, \
                 COALESCE(s.state <> 'offline' \
                     AND s.last_seen_at > now() - make_interval(secs => 3 * s.interval_secs), false) AS online, \
                 s.state, s.last_seen_at, s.interval_secs, s.backlog, s.backlog_bytes, \
                 s.last_upload_at, s.disk_free_bytes, s.version, s.heartbeat, \
                 (SELECT i.received_at FROM images i WHERE i.camera_id = c.id \
                  ORDER BY i.received_at DESC LIMIT 1) AS last_received_at \
             FROM cameras c LEFT JOIN camera_status s ON s.camera_id = c.id \
             WHERE c.project_id = $1 ORDER BY c.name, c.id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(FleetCamera {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                    online: r.try_get("online")?,
                    state: r.try_get("state")?,
                    last_seen_at: r.try_get("last_seen_at")?,
                    interval_secs: r.try_get("interval_secs")?,
                    backlog: r.try_get("backlog")?,
                    backlog_bytes: r.try_get("backlog_bytes")?,
                    last_upload_at: r.try_get("last_upload_at")?,
                    last_received_at: r.try_get("last_received_at")?,
                    disk_free_bytes: r.try_get("disk_free_bytes")?,
                    version: r.try_get("version")?,
                    heartbeat: r.try_get("heartbeat")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(CatalogError::from)
    }

    async fn create_timelapse(&self, t: &NewTimelapse) -> Result<Timelapse, CatalogError> {
        sqlx::query(
            "INSERT INTO timelapses (id, project_id, camera_id, captured_from, captured_to, fps, width, height) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(t.id)
        .bind(t.project_id)
        .bind(t.camera_id)
        .bind(t.captured_from)
        .bind(t.captured_to)
        .bind(t.fps)
        .bind(t.width)
        .bind(t.height)
        .execute(&self.pool)
        .await?;
        self.timelapse(t.id)
            .await?
            .ok_or_else(|| CatalogError::Other("timelapse vanished after insert".into()))
    }

    async fn timelapse(&self, id: Uuid) -> Result<Option<Timelapse>, CatalogError> {
        let row = sqlx::query(AssertSqlSafe(format!("{TIMELAPSE_SELECT} WHERE t.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pg_timelapse).transpose()
    }

    async fn claim_timelapse(&self, lease: Duration) -> Result<Option<Timelapse>, CatalogError> {
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE timelapses SET status = 'rendering', attempts = attempts + 1, \
                 lease_until = now() + make_interval(secs => $1), updated_at = now() \
             WHERE id = (SELECT id FROM timelapses \
                         WHERE status = 'queued' OR (status = 'rendering' AND lease_until < now()) \
                         ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => self.timelapse(id).await,
            None => Ok(None),
        }
    }

    async fn timelapse_progress(
        &self,
        id: Uuid,
        p: RenderProgress,
        lease: Duration,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE timelapses SET frames_total = $2, frames_rendered = $3, frames_skipped = $4, \
                 lease_until = now() + make_interval(secs => $5), updated_at = now() \
             WHERE id = $1 AND status = 'rendering'",
        )
        .bind(id)
        .bind(p.frames_total)
        .bind(p.frames_rendered)
        .bind(p.frames_skipped)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finish_timelapse(
        &self,
        id: Uuid,
        p: RenderProgress,
        video_key: &str,
        bytes: i64,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE timelapses SET status = 'done', frames_total = $2, frames_rendered = $3, \
                 frames_skipped = $4, video_key = $5, bytes = $6, error = NULL, lease_until = NULL, \
                 updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(p.frames_total)
        .bind(p.frames_rendered)
        .bind(p.frames_skipped)
        .bind(video_key)
        .bind(bytes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn fail_timelapse(&self, id: Uuid, reason: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE timelapses SET status = 'failed', error = $2, lease_until = NULL, updated_at = now() \
             WHERE id = $1 AND status <> 'done'",
        )
        .bind(id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = Cursor {
            captured_at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("nope"), None);
        assert_eq!(Cursor::decode("12_notauuid"), None);
        assert_eq!(
            Cursor::decode("x_0190b3c2-0000-7000-8000-000000000000"),
            None
        );
    }

    #[test]
    fn status_strings() {
        for s in [
            ImageStatus::Queued,
            ImageStatus::Processing,
            ImageStatus::Done,
            ImageStatus::Failed,
        ] {
            assert_eq!(ImageStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ImageStatus::parse("DONE"), None);
    }
}
