-- Fleet view: the last heartbeat of every camera (camera-agent -> MQTT -> RabbitMQ's
-- amq.topic -> backend). Additive: the previous release neither reads nor writes it.
CREATE TABLE camera_status (
    camera_id       uuid PRIMARY KEY REFERENCES cameras (id) ON DELETE CASCADE,
    -- running, paused or offline (last will, or a clean stop).
    state           text NOT NULL,
    -- When the backend received the last heartbeat (its clock, not the camera's).
    last_seen_at    timestamptz NOT NULL,
    -- The camera's heartbeat interval: online = a heartbeat within 3 intervals.
    interval_secs   integer NOT NULL CHECK (interval_secs > 0),
    -- The camera's clock at sending; only used to drop heartbeats that arrive out of order.
    sent_at         timestamptz,
    backlog         bigint,
    backlog_bytes   bigint,
    last_upload_at  timestamptz,
    disk_free_bytes bigint,
    version         text,
    -- The whole last heartbeat, for what the columns do not carry (warnings, errors).
    heartbeat       jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
