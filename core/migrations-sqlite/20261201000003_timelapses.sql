-- Timelapse renders (see the PostgreSQL migration of the same name).
CREATE TABLE timelapses (
    id              BLOB PRIMARY KEY,
    project_id      BLOB NOT NULL REFERENCES projects (id),
    camera_id       BLOB REFERENCES cameras (id),
    captured_from   INTEGER,
    captured_to     INTEGER,
    fps             INTEGER NOT NULL CHECK (fps BETWEEN 1 AND 120),
    width           INTEGER NOT NULL CHECK (width BETWEEN 16 AND 7680 AND width % 2 = 0),
    height          INTEGER NOT NULL CHECK (height BETWEEN 16 AND 4320 AND height % 2 = 0),
    status          TEXT NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'rendering', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_until     INTEGER,
    frames_total    INTEGER,
    frames_rendered INTEGER NOT NULL DEFAULT 0,
    frames_skipped  INTEGER NOT NULL DEFAULT 0,
    video_key       TEXT,
    bytes           INTEGER,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX timelapses_claim ON timelapses (status, created_at);
