//! Embedded adapters: the metadata store and the job queue in one SQLite file, for the
//! all-in-one mode (no PostgreSQL, no RabbitMQ). They implement the same ports as the
//! cluster adapters, so the backend and the worker run unchanged on top of them.
//!
//! One process owns a data directory at a time (see [`DataDirLock`]); that is what lets
//! the queue hand every unfinished lease back at start-up.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::catalog::{
    Camera, CameraIdentity, Catalog, CatalogError, Claim, Image, ImageStatus, Inserted, JobResult,
    ListQuery, NewImage, Project, RelayError, StatusCounts,
};
use crate::fleet::{FleetCamera, Heartbeat};
use crate::job::JobMessage;
use crate::queue::{JobPublisher, QueueError};
use crate::timelapse::{NewTimelapse, RenderProgress, Timelapse, TimelapseStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-sqlite");

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn now_micros() -> i64 {
    micros(Utc::now())
}

fn time(us: i64) -> Result<DateTime<Utc>, CatalogError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| CatalogError::Other(format!("timestamp out of range: {us}")))
}

fn opt_time(us: Option<i64>) -> Result<Option<DateTime<Utc>>, CatalogError> {
    us.map(time).transpose()
}

fn json_col(s: Option<String>) -> Result<Option<serde_json::Value>, CatalogError> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| CatalogError::Other(format!("bad JSON: {e}"))))
        .transpose()
}

/// Exclusive ownership of a data directory (an advisory lock on `{dir}/lock`), released
/// when dropped or when the process dies.
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another lapseguard process (lock {})",
                    dir.display(),
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Opens (creating if needed) the embedded database and applies its schema.
pub async fn open(path: &Path) -> Result<SqlitePool, CatalogError> {
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(|e| CatalogError::Other(e.to_string()))?
        .filename(path)
        .create_if_missing(true)
        // WAL + NORMAL: a committed transaction survives a process crash; readers never
        // block the writer.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| CatalogError::Unavailable(format!("opening {}: {e}", path.display())))?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| CatalogError::Other(format!("embedded schema: {e}")))?;
    Ok(pool)
}

/// SQLite adapter of the [`Catalog`] port.
#[derive(Clone)]
pub struct SqliteCatalog {
    pool: SqlitePool,
}

const IMAGE_SELECT: &str = "SELECT i.id, i.project_id, p.slug AS project, i.camera_id, i.captured_at, \
     i.received_at, i.sha256, i.bytes, i.content_type, i.width, i.height, i.input_key, i.status, \
     i.attempts, i.faces, i.boxes, i.model, i.duration_ms, i.output_key, i.error, i.updated_at \
     FROM images i JOIN projects p ON p.id = i.project_id";

fn image_from(r: &SqliteRow) -> Result<Image, CatalogError> {
    let status: String = r.try_get("status")?;
    Ok(Image {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        project: r.try_get("project")?,
        camera_id: r.try_get("camera_id")?,
        captured_at: time(r.try_get("captured_at")?)?,
        received_at: time(r.try_get("received_at")?)?,
        sha256: r.try_get("sha256")?,
        bytes: r.try_get("bytes")?,
        content_type: r.try_get("content_type")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        input_key: r.try_get("input_key")?,
        status: ImageStatus::parse(&status)
            .ok_or_else(|| CatalogError::Other(format!("unknown status {status}")))?,
        attempts: r.try_get("attempts")?,
        faces: r.try_get("faces")?,
        boxes: json_col(r.try_get("boxes")?)?,
        model: r.try_get("model")?,
        duration_ms: r.try_get("duration_ms")?,
        output_key: r.try_get("output_key")?,
        error: r.try_get("error")?,
        updated_at: time(r.try_get("updated_at")?)?,
    })
}

fn project_from(r: &SqliteRow) -> Result<Project, CatalogError> {
    Ok(Project {
        id: r.try_get("id")?,
        slug: r.try_get("slug")?,
        name: r.try_get("name")?,
        created_at: time(r.try_get("created_at")?)?,
    })
}

const TIMELAPSE_SELECT: &str = "SELECT t.id, t.project_id, p.slug AS project, t.camera_id, \
     t.captured_from, t.captured_to, t.fps, t.width, t.height, t.status, t.attempts, t.frames_total, \
     t.frames_rendered, t.frames_skipped, t.video_key, t.bytes, t.error, t.created_at, t.updated_at \
     FROM timelapses t JOIN projects p ON p.id = t.project_id";

fn timelapse_from(r: &SqliteRow) -> Result<Timelapse, CatalogError> {
    let status: String = r.try_get("status")?;
    Ok(Timelapse {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        project: r.try_get("project")?,
        camera_id: r.try_get("camera_id")?,
        captured_from: opt_time(r.try_get("captured_from")?)?,
        captured_to: opt_time(r.try_get("captured_to")?)?,
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
        created_at: time(r.try_get("created_at")?)?,
        updated_at: time(r.try_get("updated_at")?)?,
    })
}

impl SqliteCatalog {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Maps SQLite's unique-constraint error to [`CatalogError::Conflict`].
fn conflict_or(e: sqlx::Error) -> CatalogError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return CatalogError::Conflict(db.message().to_string());
    }
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            CatalogError::Unavailable(e.to_string())
        }
        // SQLITE_BUSY after the busy timeout: another writer held the lock too long.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("5") => {
            CatalogError::Unavailable(db.message().to_string())
        }
        other => CatalogError::Other(other.to_string()),
    }
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn ping(&self) -> Result<(), CatalogError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(conflict_or)?;
        Ok(())
    }

    async fn create_project(&self, slug: &str, name: &str) -> Result<Project, CatalogError> {
        let row = sqlx::query(
            "INSERT INTO projects (id, slug, name, created_at) VALUES (?1, ?2, ?3, ?4) \
             RETURNING id, slug, name, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(slug)
        .bind(name)
        .bind(now_micros())
        .fetch_one(&self.pool)
        .await
        .map_err(conflict_or)?;
        project_from(&row)
    }

    async fn project_by_slug(&self, slug: &str) -> Result<Option<Project>, CatalogError> {
        sqlx::query("SELECT id, slug, name, created_at FROM projects WHERE slug = ?1")
            .bind(slug)
            .fetch_optional(&self.pool)
            .await
            .map_err(conflict_or)?
            .as_ref()
            .map(project_from)
            .transpose()
    }

    async fn create_camera(
        &self,
        project_id: Uuid,
        name: &str,
        token_hash: &[u8],
    ) -> Result<Camera, CatalogError> {
        let row = sqlx::query(
            "INSERT INTO cameras (id, project_id, name, token_hash, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id, project_id, name, created_at, revoked_at",
        )
        .bind(Uuid::now_v7())
        .bind(project_id)
        .bind(name)
        .bind(token_hash)
        .bind(now_micros())
        .fetch_one(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(Camera {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            name: row.try_get("name")?,
            created_at: time(row.try_get("created_at")?)?,
            revoked_at: opt_time(row.try_get("revoked_at")?)?,
        })
    }

    async fn revoke_camera(&self, project_id: Uuid, camera_id: Uuid) -> Result<bool, CatalogError> {
        let done = sqlx::query(
            "UPDATE cameras SET revoked_at = COALESCE(revoked_at, ?3) WHERE id = ?1 AND project_id = ?2",
        )
        .bind(camera_id)
        .bind(project_id)
        .bind(now_micros())
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(done.rows_affected() == 1)
    }

    async fn camera_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<CameraIdentity>, CatalogError> {
        let row = sqlx::query(
            "SELECT c.id, c.name, c.project_id, p.slug FROM cameras c JOIN projects p ON p.id = c.project_id \
             WHERE c.token_hash = ?1 AND c.revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(conflict_or)?;
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
        sqlx::query(AssertSqlSafe(format!(
            "{IMAGE_SELECT} WHERE i.project_id = ?1 AND i.sha256 = ?2"
        )))
        .bind(project_id)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(conflict_or)?
        .as_ref()
        .map(image_from)
        .transpose()
    }

    async fn insert_image(
        &self,
        img: NewImage,
        job: &JobMessage,
    ) -> Result<Inserted, CatalogError> {
        let now = now_micros();
        let payload =
            String::from_utf8(job.to_json()).map_err(|e| CatalogError::Other(e.to_string()))?;
        // IMMEDIATE: take the write lock up front instead of upgrading a read lock (which
        // fails at once with SQLITE_BUSY when another writer got there first).
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(conflict_or)?;
        let inserted = sqlx::query(
            "INSERT INTO images (id, project_id, camera_id, captured_at, received_at, sha256, bytes, \
               content_type, width, height, input_key, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?5) \
             ON CONFLICT (project_id, sha256) DO NOTHING",
        )
        .bind(img.id)
        .bind(img.project_id)
        .bind(img.camera_id)
        .bind(micros(img.captured_at))
        .bind(now)
        .bind(&img.sha256)
        .bind(img.bytes)
        .bind(&img.content_type)
        .bind(img.width)
        .bind(img.height)
        .bind(&img.input_key)
        .execute(&mut *tx)
        .await
        .map_err(conflict_or)?
        .rows_affected()
            == 1;
        if !inserted {
            tx.rollback().await.map_err(conflict_or)?;
            return match self.image_by_sha(img.project_id, &img.sha256).await? {
                Some(existing) => Ok(Inserted::Existing(existing)),
                None => Err(CatalogError::Other(
                    "image vanished after a duplicate insert".into(),
                )),
            };
        }
        sqlx::query("INSERT INTO outbox (job_id, payload, created_at) VALUES (?1, ?2, ?3)")
            .bind(job.job_id)
            .bind(payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or)?;
        tx.commit().await.map_err(conflict_or)?;
        let at = time(now)?;
        Ok(Inserted::New(Image {
            id: img.id,
            project_id: img.project_id,
            project: img.project,
            camera_id: img.camera_id,
            captured_at: img.captured_at,
            received_at: at,
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
            updated_at: at,
        }))
    }

    async fn image(&self, id: Uuid) -> Result<Option<Image>, CatalogError> {
        sqlx::query(AssertSqlSafe(format!("{IMAGE_SELECT} WHERE i.id = ?1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(conflict_or)?
            .as_ref()
            .map(image_from)
            .transpose()
    }

    async fn list_images(&self, q: &ListQuery) -> Result<Vec<Image>, CatalogError> {
        // Only constant fragments are concatenated; every value is a bind parameter.
        let mut sql = format!("{IMAGE_SELECT} WHERE i.project_id = ?1");
        if q.status.is_some() {
            sql.push_str(" AND i.status = ?2");
        } else {
            sql.push_str(" AND ?2 IS NULL");
        }
        let (cmp, dir) = if q.oldest_first {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if q.after.is_some() {
            sql.push_str(&format!(" AND (i.captured_at, i.id) {cmp} (?3, ?4)"));
        } else {
            sql.push_str(" AND ?3 IS NULL AND ?4 IS NULL");
        }
        sql.push_str(
            " AND (?6 IS NULL OR i.camera_id = ?6) \
             AND (?7 IS NULL OR i.captured_at >= ?7) \
             AND (?8 IS NULL OR i.captured_at < ?8)",
        );
        sql.push_str(&format!(
            " ORDER BY i.captured_at {dir}, i.id {dir} LIMIT ?5"
        ));
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(q.project_id)
            .bind(q.status.map(ImageStatus::as_str))
            .bind(q.after.map(|c| micros(c.captured_at)))
            .bind(q.after.map(|c| c.id))
            .bind(q.limit)
            .bind(q.camera_id)
            .bind(q.captured_from.map(micros))
            .bind(q.captured_to.map(micros))
            .fetch_all(&self.pool)
            .await
            .map_err(conflict_or)?;
        rows.iter().map(image_from).collect()
    }

    async fn status_counts(&self, project_id: Uuid) -> Result<StatusCounts, CatalogError> {
        let rows = sqlx::query(
            "SELECT status, count(*) AS n FROM images WHERE project_id = ?1 GROUP BY status",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await
        .map_err(conflict_or)?;
        let mut counts = StatusCounts::default();
        for r in &rows {
            counts.add(r.try_get("status")?, r.try_get("n")?);
        }
        Ok(counts)
    }

    async fn relay_outbox(
        &self,
        batch: i64,
        publisher: &dyn JobPublisher,
    ) -> Result<usize, RelayError> {
        // No transaction across the publish: the embedded queue writes to this same
        // database. One relay runs per data directory; a crash between publish and
        // delete publishes again, and the queue ignores a job id it already holds.
        let rows = sqlx::query("SELECT id, payload FROM outbox ORDER BY id LIMIT ?1")
            .bind(batch)
            .fetch_all(&self.pool)
            .await
            .map_err(conflict_or)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut jobs = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.try_get("id").map_err(CatalogError::from)?;
            let payload: String = r.try_get("payload").map_err(CatalogError::from)?;
            let job = JobMessage::from_json(payload.as_bytes())
                .map_err(|e| CatalogError::Other(format!("outbox row {id}: {e}")))?;
            ids.push(id);
            jobs.push(job);
        }
        publisher.publish(&jobs).await?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(conflict_or)?;
        for id in &ids {
            sqlx::query("DELETE FROM outbox WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(conflict_or)?;
        }
        tx.commit().await.map_err(conflict_or)?;
        Ok(ids.len())
    }

    async fn outbox_len(&self) -> Result<i64, CatalogError> {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(conflict_or)
    }

    async fn claim_job(&self, image_id: Uuid) -> Result<Claim, CatalogError> {
        let row = sqlx::query(
            "UPDATE images SET status = 'processing', attempts = attempts + 1, updated_at = ?2 \
             WHERE id = ?1 AND status IN ('queued', 'processing') RETURNING attempts",
        )
        .bind(image_id)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await
        .map_err(conflict_or)?;
        if let Some(r) = row {
            return Ok(Claim::Started {
                attempts: r.try_get("attempts")?,
            });
        }
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM images WHERE id = ?1")
            .bind(image_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(conflict_or)?;
        Ok(match status.as_deref() {
            Some("done") => Claim::AlreadyDone,
            Some("failed") => Claim::AlreadyFailed,
            _ => Claim::NotFound,
        })
    }

    async fn complete_job(&self, image_id: Uuid, r: &JobResult) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE images SET status = 'done', faces = ?2, boxes = ?3, model = ?4, duration_ms = ?5, \
             output_key = ?6, error = NULL, updated_at = ?7 WHERE id = ?1",
        )
        .bind(image_id)
        .bind(r.faces)
        .bind(r.boxes.to_string())
        .bind(&r.model)
        .bind(r.duration_ms)
        .bind(&r.output_key)
        .bind(now_micros())
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn fail_job(&self, image_id: Uuid, reason: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE images SET status = 'failed', error = ?2, updated_at = ?3 \
             WHERE id = ?1 AND status <> 'done'",
        )
        .bind(image_id)
        .bind(reason)
        .bind(now_micros())
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn retry_job(&self, image_id: Uuid, reason: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE images SET status = 'queued', error = ?2, updated_at = ?3 \
             WHERE id = ?1 AND status = 'processing'",
        )
        .bind(image_id)
        .bind(reason)
        .bind(now_micros())
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn record_heartbeat(&self, hb: &Heartbeat) -> Result<bool, CatalogError> {
        let now = now_micros();
        let payload = hb.payload.to_string();
        let done = if hb.is_will() {
            sqlx::query(
                "INSERT INTO camera_status (camera_id, state, last_seen_at, interval_secs, heartbeat, updated_at) \
                 SELECT id, 'offline', ?2, ?3, ?4, ?2 FROM cameras WHERE id = ?1 \
                 ON CONFLICT (camera_id) DO UPDATE SET state = 'offline', updated_at = ?2",
            )
            .bind(hb.camera_id)
            .bind(now)
            .bind(hb.interval_secs)
            .bind(payload)
            .execute(&self.pool)
            .await
        } else {
            sqlx::query(
                "INSERT INTO camera_status (camera_id, state, last_seen_at, interval_secs, sent_at, \
                     backlog, backlog_bytes, last_upload_at, disk_free_bytes, version, heartbeat, updated_at) \
                 SELECT id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?3 FROM cameras WHERE id = ?1 \
                 ON CONFLICT (camera_id) DO UPDATE SET state = excluded.state, \
                     last_seen_at = excluded.last_seen_at, interval_secs = excluded.interval_secs, \
                     sent_at = excluded.sent_at, backlog = excluded.backlog, \
                     backlog_bytes = excluded.backlog_bytes, \
                     last_upload_at = COALESCE(excluded.last_upload_at, camera_status.last_upload_at), \
                     disk_free_bytes = excluded.disk_free_bytes, version = excluded.version, \
                     heartbeat = excluded.heartbeat, updated_at = excluded.updated_at \
                 WHERE camera_status.sent_at IS NULL OR camera_status.sent_at <= excluded.sent_at",
            )
            .bind(hb.camera_id)
            .bind(&hb.state)
            .bind(now)
            .bind(hb.interval_secs)
            .bind(hb.sent_at.map(micros))
            .bind(hb.backlog)
            .bind(hb.backlog_bytes)
            .bind(hb.last_upload_at.map(micros))
            .bind(hb.disk_free_bytes)
            .bind(&hb.version)
            .bind(payload)
            .execute(&self.pool)
            .await
        }
        .map_err(conflict_or)?;
        Ok(done.rows_affected() > 0)
    }

    async fn fleet(&self, project_id: Uuid) -> Result<Vec<FleetCamera>, CatalogError> {
        let rows = sqlx::query(
            "SELECT c.id, c.name, c.created_at, c.revoked_at, \
                 COALESCE(s.state <> 'offline' \
                     AND s.last_seen_at > ?2 - 3 * s.interval_secs * 1000000, 0) AS online, \
                 s.state, s.last_seen_at, s.interval_secs, s.backlog, s.backlog_bytes, \
                 s.last_upload_at, s.disk_free_bytes, s.version, s.heartbeat, \
                 (SELECT i.received_at FROM images i WHERE i.camera_id = c.id \
                  ORDER BY i.received_at DESC LIMIT 1) AS last_received_at \
             FROM cameras c LEFT JOIN camera_status s ON s.camera_id = c.id \
             WHERE c.project_id = ?1 ORDER BY c.name, c.id",
        )
        .bind(project_id)
        .bind(now_micros())
        .fetch_all(&self.pool)
        .await
        .map_err(conflict_or)?;
        rows.iter()
            .map(|r| {
                Ok(FleetCamera {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: time(r.try_get("created_at")?)?,
                    revoked_at: opt_time(r.try_get("revoked_at")?)?,
                    online: r.try_get::<i64, _>("online")? != 0,
                    state: r.try_get("state")?,
                    last_seen_at: opt_time(r.try_get("last_seen_at")?)?,
                    interval_secs: r.try_get("interval_secs")?,
                    backlog: r.try_get("backlog")?,
                    backlog_bytes: r.try_get("backlog_bytes")?,
                    last_upload_at: opt_time(r.try_get("last_upload_at")?)?,
                    last_received_at: opt_time(r.try_get("last_received_at")?)?,
                    disk_free_bytes: r.try_get("disk_free_bytes")?,
                    version: r.try_get("version")?,
                    heartbeat: json_col(r.try_get("heartbeat")?)?,
                })
            })
            .collect()
    }

    async fn create_timelapse(&self, t: &NewTimelapse) -> Result<Timelapse, CatalogError> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO timelapses (id, project_id, camera_id, captured_from, captured_to, fps, width, \
                 height, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        )
        .bind(t.id)
        .bind(t.project_id)
        .bind(t.camera_id)
        .bind(t.captured_from.map(micros))
        .bind(t.captured_to.map(micros))
        .bind(t.fps)
        .bind(t.width)
        .bind(t.height)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        self.timelapse(t.id)
            .await?
            .ok_or_else(|| CatalogError::Other("timelapse vanished after insert".into()))
    }

    async fn timelapse(&self, id: Uuid) -> Result<Option<Timelapse>, CatalogError> {
        sqlx::query(AssertSqlSafe(format!("{TIMELAPSE_SELECT} WHERE t.id = ?1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(conflict_or)?
            .as_ref()
            .map(timelapse_from)
            .transpose()
    }

    async fn claim_timelapse(&self, lease: Duration) -> Result<Option<Timelapse>, CatalogError> {
        let now = now_micros();
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE timelapses SET status = 'rendering', attempts = attempts + 1, lease_until = ?2, \
                 updated_at = ?1 \
             WHERE id = (SELECT id FROM timelapses \
                         WHERE status = 'queued' OR (status = 'rendering' AND lease_until < ?1) \
                         ORDER BY created_at LIMIT 1) \
             RETURNING id",
        )
        .bind(now)
        .bind(now.saturating_add(dur_micros(lease)))
        .fetch_optional(&self.pool)
        .await
        .map_err(conflict_or)?;
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
        let now = now_micros();
        sqlx::query(
            "UPDATE timelapses SET frames_total = ?2, frames_rendered = ?3, frames_skipped = ?4, \
                 lease_until = ?5, updated_at = ?6 WHERE id = ?1 AND status = 'rendering'",
        )
        .bind(id)
        .bind(p.frames_total)
        .bind(p.frames_rendered)
        .bind(p.frames_skipped)
        .bind(now.saturating_add(dur_micros(lease)))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
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
            "UPDATE timelapses SET status = 'done', frames_total = ?2, frames_rendered = ?3, \
                 frames_skipped = ?4, video_key = ?5, bytes = ?6, error = NULL, lease_until = NULL, \
                 updated_at = ?7 WHERE id = ?1",
        )
        .bind(id)
        .bind(p.frames_total)
        .bind(p.frames_rendered)
        .bind(p.frames_skipped)
        .bind(video_key)
        .bind(bytes)
        .bind(now_micros())
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn fail_timelapse(&self, id: Uuid, reason: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE timelapses SET status = 'failed', error = ?2, lease_until = NULL, updated_at = ?3 \
             WHERE id = ?1 AND status <> 'done'",
        )
        .bind(id)
        .bind(reason)
        .bind(now_micros())
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }
}

/// One job handed to a consumer; it stays invisible to others until settled or until
/// its lease runs out.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: Uuid,
    pub payload: Vec<u8>,
    /// Deliveries so far, this one included.
    pub deliveries: i64,
}

/// The embedded, durable job queue (RabbitMQ's role in cluster mode): a table in the
/// same SQLite file. At-least-once: a job leaves the queue only when its consumer
/// settles it.
#[derive(Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    lease: Duration,
}

fn queue_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn dur_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl SqliteQueue {
    /// `lease`: how long a delivered job stays invisible before it is delivered again
    /// (longer than the slowest job).
    pub fn new(pool: SqlitePool, lease: Duration) -> Self {
        Self { pool, lease }
    }

    /// Hands every unsettled lease back. Only sound while no consumer holds one: call
    /// it at start-up, under the data directory lock. Returns how many jobs were
    /// in flight when the previous process stopped.
    pub async fn recover(&self) -> Result<u64, QueueError> {
        let done =
            sqlx::query("UPDATE jobs SET visible_at = ?1 WHERE dead = 0 AND visible_at > ?1")
                .bind(now_micros())
                .execute(&self.pool)
                .await
                .map_err(queue_err)?;
        Ok(done.rows_affected())
    }

    /// Leases up to `max` ready jobs, oldest first.
    pub async fn lease(&self, max: i64) -> Result<Vec<Lease>, QueueError> {
        let now = now_micros();
        let rows = sqlx::query(
            "UPDATE jobs SET visible_at = ?2, deliveries = deliveries + 1 \
             WHERE job_id IN (SELECT job_id FROM jobs WHERE dead = 0 AND visible_at <= ?1 \
                              ORDER BY visible_at, enqueued_at LIMIT ?3) \
             RETURNING job_id, payload, deliveries",
        )
        .bind(now)
        .bind(now.saturating_add(dur_micros(self.lease)))
        .bind(max)
        .fetch_all(&self.pool)
        .await
        .map_err(queue_err)?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    job_id: r.try_get("job_id")?,
                    payload: r.try_get::<String, _>("payload")?.into_bytes(),
                    deliveries: r.try_get("deliveries")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(queue_err)
    }

    /// Done (or nothing left to do): the job leaves the queue.
    pub async fn ack(&self, job_id: Uuid) -> Result<(), QueueError> {
        sqlx::query("DELETE FROM jobs WHERE job_id = ?1")
            .bind(job_id)
            .execute(&self.pool)
            .await
            .map_err(queue_err)?;
        Ok(())
    }

    /// Deliver again after `delay`.
    pub async fn retry(&self, job_id: Uuid, delay: Duration) -> Result<(), QueueError> {
        sqlx::query("UPDATE jobs SET visible_at = ?2 WHERE job_id = ?1")
            .bind(job_id)
            .bind(now_micros().saturating_add(dur_micros(delay)))
            .execute(&self.pool)
            .await
            .map_err(queue_err)?;
        Ok(())
    }

    /// Given up: kept with its reason (the dead-letter queue of cluster mode).
    pub async fn dead_letter(&self, job_id: Uuid, reason: &str) -> Result<(), QueueError> {
        sqlx::query("UPDATE jobs SET dead = 1, reason = ?2 WHERE job_id = ?1")
            .bind(job_id)
            .bind(reason)
            .execute(&self.pool)
            .await
            .map_err(queue_err)?;
        Ok(())
    }

    /// Jobs waiting or in flight, and dead ones.
    pub async fn depth(&self) -> Result<(i64, i64), QueueError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(dead = 0), 0) AS live, COALESCE(SUM(dead = 1), 0) AS dead FROM jobs",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(queue_err)?;
        Ok((
            row.try_get("live").map_err(queue_err)?,
            row.try_get("dead").map_err(queue_err)?,
        ))
    }
}

#[async_trait]
impl JobPublisher for SqliteQueue {
    async fn publish(&self, jobs: &[JobMessage]) -> Result<(), QueueError> {
        let now = now_micros();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(queue_err)?;
        for job in jobs {
            let payload = String::from_utf8(job.to_json()).map_err(queue_err)?;
            // A job id already queued (a relay that crashed after publishing) is one job.
            sqlx::query(
                "INSERT INTO jobs (job_id, payload, enqueued_at, visible_at) VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT (job_id) DO NOTHING",
            )
            .bind(job.job_id)
            .bind(payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(queue_err)?;
        }
        tx.commit().await.map_err(queue_err)?;
        Ok(())
    }

    fn is_connected(&self) -> bool {
        !self.pool.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Db {
        dir: PathBuf,
        pool: SqlitePool,
    }

    impl Drop for Db {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn db() -> Db {
        let dir = std::env::temp_dir().join(format!("lg-embedded-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = open(&dir.join("lapseguard.db")).await.unwrap();
        Db { dir, pool }
    }

    fn new_image(project: &Project, camera: &Camera, sha: &str, at: i64) -> NewImage {
        NewImage {
            id: Uuid::now_v7(),
            project_id: project.id,
            project: project.slug.clone(),
            camera_id: camera.id,
            captured_at: DateTime::from_timestamp(at, 0).unwrap(),
            sha256: sha.into(),
            bytes: 10,
            content_type: "image/jpeg".into(),
            width: 4,
            height: 3,
            input_key: format!("{}/{sha}.jpg", project.slug),
        }
    }

    fn job_for(img: &NewImage) -> JobMessage {
        JobMessage {
            version: crate::job::JOB_MESSAGE_VERSION,
            job_id: Uuid::now_v7(),
            image_id: img.id,
            project: img.project.clone(),
            camera: img.camera_id,
            input_bucket: "in".into(),
            input_key: img.input_key.clone(),
            sha256: img.sha256.clone(),
            content_type: img.content_type.clone(),
        }
    }

    #[tokio::test]
    async fn catalog_round_trip_duplicates_and_listing() {
        let db = db().await;
        let c = SqliteCatalog::new(db.pool.clone());
        c.ping().await.unwrap();
        let p = c.create_project("site-a", "Site A").await.unwrap();
        assert!(matches!(
            c.create_project("site-a", "again").await,
            Err(CatalogError::Conflict(_))
        ));
        assert_eq!(c.project_by_slug("site-a").await.unwrap(), Some(p.clone()));
        let cam = c.create_camera(p.id, "north", b"hash-1").await.unwrap();
        let who = c.camera_by_token(b"hash-1").await.unwrap().unwrap();
        assert_eq!(who.camera_id, cam.id);
        assert_eq!(who.project_slug, "site-a");

        let mut ids = Vec::new();
        for i in 0..5 {
            let img = new_image(&p, &cam, &format!("sha{i}"), 1_700_000_000 + i);
            let job = job_for(&img);
            match c.insert_image(img.clone(), &job).await.unwrap() {
                Inserted::New(got) => {
                    assert_eq!(got.status, ImageStatus::Queued);
                    ids.push(got.id);
                }
                Inserted::Existing(_) => panic!("first insert must be new"),
            }
        }
        // Same bytes again: the existing image, and no second job.
        let again = new_image(&p, &cam, "sha2", 1_800_000_000);
        let job = job_for(&again);
        match c.insert_image(again, &job).await.unwrap() {
            Inserted::Existing(img) => assert_eq!(img.id, ids[2]),
            Inserted::New(_) => panic!("duplicate bytes must not make a new image"),
        }
        assert_eq!(c.outbox_len().await.unwrap(), 5);
        assert_eq!(c.status_counts(p.id).await.unwrap().queued, 5);
        // Capture order, from a cursor.
        let first = ListQuery {
            project_id: p.id,
            status: None,
            limit: 2,
            after: None,
            oldest_first: true,
            ..Default::default()
        };
        let asc = c.list_images(&first).await.unwrap();
        assert_eq!(
            asc.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![ids[0], ids[1]]
        );
        let next = c
            .list_images(&ListQuery {
                after: Some(crate::catalog::Cursor {
                    captured_at: asc[1].captured_at,
                    id: asc[1].id,
                }),
                ..first
            })
            .await
            .unwrap();
        assert_eq!(
            next.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![ids[2], ids[3]]
        );

        // Newest capture first, in pages joined by the cursor.
        let page1 = c
            .list_images(&ListQuery {
                project_id: p.id,
                status: None,
                limit: 3,
                after: None,
                oldest_first: false,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page1.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![ids[4], ids[3], ids[2]]
        );
        let last = page1.last().unwrap();
        let page2 = c
            .list_images(&ListQuery {
                project_id: p.id,
                status: Some(ImageStatus::Queued),
                limit: 3,
                after: Some(crate::catalog::Cursor {
                    captured_at: last.captured_at,
                    id: last.id,
                }),
                oldest_first: false,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page2.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![ids[1], ids[0]]
        );

        // Claim, complete; a second claim sees it done.
        assert_eq!(
            c.claim_job(ids[0]).await.unwrap(),
            Claim::Started { attempts: 1 }
        );
        c.complete_job(
            ids[0],
            &JobResult {
                faces: 2,
                boxes: serde_json::json!([[1, 2, 3, 4]]),
                model: "m".into(),
                duration_ms: 5,
                output_key: "out.jpg".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(c.claim_job(ids[0]).await.unwrap(), Claim::AlreadyDone);
        let done = c.image(ids[0]).await.unwrap().unwrap();
        assert_eq!(done.faces, Some(2));
        assert_eq!(done.boxes, Some(serde_json::json!([[1, 2, 3, 4]])));
        c.fail_job(ids[0], "late failure").await.unwrap();
        assert_eq!(
            c.image(ids[0]).await.unwrap().unwrap().status,
            ImageStatus::Done,
            "a done image never turns failed"
        );
        assert_eq!(c.claim_job(Uuid::now_v7()).await.unwrap(), Claim::NotFound);

        assert!(c.revoke_camera(p.id, cam.id).await.unwrap());
        assert!(c.camera_by_token(b"hash-1").await.unwrap().is_none());
        let fleet = c.fleet(p.id).await.unwrap();
        assert_eq!(fleet.len(), 1);
        assert!(!fleet[0].online);
        assert!(fleet[0].last_received_at.is_some());
    }

    #[tokio::test]
    async fn queue_relays_leases_retries_and_recovers_after_a_crash() {
        let db = db().await;
        let c = SqliteCatalog::new(db.pool.clone());
        let q = SqliteQueue::new(db.pool.clone(), Duration::from_secs(300));
        let p = c.create_project("site-b", "Site B").await.unwrap();
        let cam = c.create_camera(p.id, "south", b"hash-2").await.unwrap();
        let mut jobs = Vec::new();
        for i in 0..3 {
            let img = new_image(&p, &cam, &format!("q{i}"), 1_700_000_000 + i);
            let job = job_for(&img);
            c.insert_image(img, &job).await.unwrap();
            jobs.push(job);
        }
        assert_eq!(c.relay_outbox(10, &q).await.unwrap(), 3);
        assert_eq!(c.outbox_len().await.unwrap(), 0);
        // Publishing the same job again (a relay that crashed before deleting) is one job.
        q.publish(&jobs[..1]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), (3, 0));

        let leased = q.lease(2).await.unwrap();
        assert_eq!(leased.len(), 2);
        assert_eq!(leased[0].job_id, jobs[0].job_id, "oldest first");
        assert_eq!(
            JobMessage::from_json(&leased[0].payload).unwrap(),
            jobs[0],
            "the payload is the job"
        );
        // Leased jobs are invisible; the third is still there.
        let rest = q.lease(10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].job_id, jobs[2].job_id);
        assert!(q.lease(10).await.unwrap().is_empty());

        q.ack(leased[0].job_id).await.unwrap();
        q.dead_letter(leased[1].job_id, "corrupt").await.unwrap();
        q.retry(rest[0].job_id, Duration::ZERO).await.unwrap();
        let again = q.lease(10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].deliveries, 2);
        assert_eq!(q.depth().await.unwrap(), (1, 1));

        // The process dies holding that lease: at the next start it is delivered again.
        assert!(q.lease(10).await.unwrap().is_empty());
        assert_eq!(q.recover().await.unwrap(), 1);
        let redelivered = q.lease(10).await.unwrap();
        assert_eq!(redelivered.len(), 1);
        assert_eq!(redelivered[0].job_id, jobs[2].job_id);
        assert_eq!(redelivered[0].deliveries, 3);
    }

    #[tokio::test]
    async fn data_dir_lock_is_exclusive() {
        let dir = std::env::temp_dir().join(format!("lg-lock-{}", Uuid::new_v4()));
        let first = DataDirLock::acquire(&dir).unwrap();
        let second = DataDirLock::acquire(&dir);
        assert!(second.is_err(), "a second owner must be refused");
        drop(first);
        DataDirLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
