#!/bin/sh
# Idempotent object-store bootstrap, run by the minio-bootstrap Job after every apply.
# Safe to run any number of times, also concurrently:
#   * buckets are created only when missing (mc mb --ignore-existing);
#   * the lifecycle configuration of the originals bucket is *replaced* as a whole
#     (mc ilm import), never appended to;
#   * the application's policy and user are created or updated in place.
set -eu

: "${MINIO_URL:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${APP_ACCESS_KEY_ID:?}" "${APP_SECRET_ACCESS_KEY:?}"
# Bucket names: the same LAPSEGUARD_* settings the application reads (lapseguard-config).
INPUT_BUCKET=${LAPSEGUARD_INPUT_BUCKET:-lapseguard-input}
OUTPUT_BUCKET=${LAPSEGUARD_OUTPUT_BUCKET:-lapseguard-output}
TIMELAPSE_BUCKET=${TIMELAPSE_BUCKET:-lapseguard-timelapses}
ORIGINALS_RETENTION_DAYS=${ORIGINALS_RETENTION_DAYS:-30}
export MC_CONFIG_DIR=/tmp/.mc

log() { echo "[minio-bootstrap] $*"; }

# MinIO may still be starting (or electing write quorum in distributed mode).
i=0
until mc alias set lg "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1 \
      && mc admin info lg >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -le 60 ] || { log "MinIO at $MINIO_URL not reachable"; exit 1; }
  sleep 5
done
log "connected to $MINIO_URL"

for bucket in "$INPUT_BUCKET" "$OUTPUT_BUCKET" "$TIMELAPSE_BUCKET"; do
  mc mb --ignore-existing "lg/$bucket"
done

# Originals (camera uploads, faces not yet blurred) are kept only as long as needed to
# (re)process them: expire them after ORIGINALS_RETENTION_DAYS days.
cat > /tmp/originals-lifecycle.json <<JSON
{"Rules": [{"ID": "expire-originals", "Status": "Enabled", "Filter": {"Prefix": ""},
            "Expiration": {"Days": ${ORIGINALS_RETENTION_DAYS}}}]}
JSON
mc ilm import "lg/$INPUT_BUCKET" < /tmp/originals-lifecycle.json
log "lifecycle of $INPUT_BUCKET: expire originals after ${ORIGINALS_RETENTION_DAYS} days"

# Least-privilege credentials of backend and workers: object access to the three
# buckets, nothing administrative.
mc admin policy create lg lapseguard-app /etc/minio-bootstrap/app-policy.json
mc admin user add lg "$APP_ACCESS_KEY_ID" "$APP_SECRET_ACCESS_KEY" >/dev/null
# (match the PolicyName line only: the access key itself may contain the policy's name)
if ! mc admin user info lg "$APP_ACCESS_KEY_ID" | grep -q '^PolicyName:.*lapseguard-app'; then
  mc admin policy attach lg lapseguard-app --user "$APP_ACCESS_KEY_ID"
fi
log "done"
