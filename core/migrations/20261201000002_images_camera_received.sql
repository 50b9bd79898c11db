-- For the fleet view's "last image received" per camera.
--
-- Not CONCURRENTLY, against the usual rule (docs/operations.md): sqlx's migrator holds a
-- session advisory lock, and a second `backend migrate` waiting on that lock holds a
-- snapshot that CREATE INDEX CONCURRENTLY waits for: the two deadlock (reproduced by
-- backend/tests/migrate.rs). A plain build blocks image inserts while it runs (seconds
-- per million rows; cameras retry their uploads). On a large images table, build it by
-- hand first, without blocking, and this migration is then a no-op:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS images_camera_received ON images (camera_id, received_at DESC);
CREATE INDEX IF NOT EXISTS images_camera_received ON images (camera_id, received_at DESC);
