-- lapseguard embedded schema (SQLite): the same tables as the PostgreSQL schema plus
-- the durable in-process job queue. Times are microseconds since the Unix epoch (UTC)
-- so that ordering and arithmetic are plain integer operations; ids are 16-byte UUIDs.

CREATE TABLE projects (
    id         BLOB PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE cameras (
    id         BLOB PRIMARY KEY,
    project_id BLOB NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX cameras_project ON cameras (project_id);

CREATE TABLE images (
    id           BLOB PRIMARY KEY,
    project_id   BLOB NOT NULL REFERENCES projects (id),
    camera_id    BLOB NOT NULL REFERENCES cameras (id),
    captured_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    input_key    TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'processing', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    faces        INTEGER,
    boxes        TEXT,
    model        TEXT,
    duration_ms  INTEGER,
    output_key   TEXT,
    error        TEXT,
    updated_at   INTEGER NOT NULL,
    UNIQUE (project_id, sha256)
);
CREATE INDEX images_project_captured ON images (project_id, captured_at DESC, id DESC);
CREATE INDEX images_project_status_captured ON images (project_id, status, captured_at DESC, id DESC);
CREATE INDEX images_camera_received ON images (camera_id, received_at DESC);

-- Transactional outbox, as in cluster mode: written with the image, drained by the relay.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     BLOB NOT NULL UNIQUE,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE camera_status (
    camera_id       BLOB PRIMARY KEY REFERENCES cameras (id) ON DELETE CASCADE,
    state           TEXT NOT NULL,
    last_seen_at    INTEGER NOT NULL,
    interval_secs   INTEGER NOT NULL CHECK (interval_secs > 0),
    sent_at         INTEGER,
    backlog         INTEGER,
    backlog_bytes   INTEGER,
    last_upload_at  INTEGER,
    disk_free_bytes INTEGER,
    version         TEXT,
    heartbeat       TEXT NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- The embedded job queue (RabbitMQ's role in cluster mode). A job is leased by setting
-- visible_at into the future; a crash lets the lease run out and the job is delivered
-- again. Finished jobs are deleted; dead ones keep their reason.
CREATE TABLE jobs (
    job_id     BLOB PRIMARY KEY,
    payload    TEXT NOT NULL,
    enqueued_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    dead       INTEGER NOT NULL DEFAULT 0,
    reason     TEXT
);
CREATE INDEX jobs_ready ON jobs (dead, visible_at);
