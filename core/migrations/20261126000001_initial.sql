-- lapseguard initial schema.
-- Expand/contract rule for later migrations: only additive changes that the previous
-- release can live with (see docs/operations.md, "Releasing a schema change").

CREATE TABLE projects (
    id         uuid PRIMARY KEY,
    slug       text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cameras (
    id         uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES projects (id),
    name       text NOT NULL,
    -- SHA-256 of the bearer token; the token itself is shown once and never stored.
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX cameras_project ON cameras (project_id);

CREATE TABLE images (
    id           uuid PRIMARY KEY,
    project_id   uuid NOT NULL REFERENCES projects (id),
    camera_id    uuid NOT NULL REFERENCES cameras (id),
    captured_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    sha256       text NOT NULL,
    bytes        bigint NOT NULL,
    content_type text NOT NULL,
    width        integer NOT NULL,
    height       integer NOT NULL,
    input_key    text NOT NULL,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'processing', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    faces        integer,
    boxes        jsonb,
    model        text,
    duration_ms  integer,
    output_key   text,
    error        text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Idempotent ingest: the same bytes in the same project are one image.
    UNIQUE (project_id, sha256)
);
-- Keyset pagination, newest capture first.
CREATE INDEX images_project_captured ON images (project_id, captured_at DESC, id DESC);
CREATE INDEX images_project_status_captured ON images (project_id, status, captured_at DESC, id DESC);

-- Transactional outbox: a job row is written in the same transaction as its image and
-- deleted by the relay only after RabbitMQ confirmed the message.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL UNIQUE,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
