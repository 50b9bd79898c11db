-- Timelapse renders (additive: the previous release neither reads nor writes it).
-- A renderer claims a queued row (or one whose lease ran out) and extends lease_until
-- while it works.
CREATE TABLE timelapses (
    id              uuid PRIMARY KEY,
    project_id      uuid NOT NULL REFERENCES projects (id),
    camera_id       uuid REFERENCES cameras (id),
    captured_from   timestamptz,
    captured_to     timestamptz,
    fps             integer NOT NULL CHECK (fps BETWEEN 1 AND 120),
    width           integer NOT NULL CHECK (width BETWEEN 16 AND 7680 AND width % 2 = 0),
    height          integer NOT NULL CHECK (height BETWEEN 16 AND 4320 AND height % 2 = 0),
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'rendering', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    lease_until     timestamptz,
    frames_total    integer,
    frames_rendered integer NOT NULL DEFAULT 0,
    frames_skipped  integer NOT NULL DEFAULT 0,
    video_key       text,
    bytes           bigint,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX timelapses_claim ON timelapses (status, created_at);
