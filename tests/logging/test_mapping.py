"""The collector's field mapping (fluentd/plugins/lapseguard_fields.rb, run by Ruby) on
lines our captures don't happen to contain: a `spans` list, partial CRI lines, another
program's JSON (CloudNativePG's PostgreSQL records), RabbitMQ's and MinIO's plain text,
fields of the wrong type."""

from __future__ import annotations

import json

import pytest

from conftest import run_pipeline

POD = "backend-abc12-xyz9q"
CID = "0" * 64


def mapped(tmp_path, lines, labels=None, container="backend"):
    d = tmp_path / "ds"
    d.mkdir(exist_ok=True)
    (d / "pods.json").write_text(json.dumps({POD: {
        "namespace": "lapseguard", "host": "node-1", "container_image": "img:1",
        "labels": labels if labels is not None else {"app.kubernetes.io/name": "backend",
                                                     "app.kubernetes.io/component": "api"}}}))
    with open(d / f"{POD}_lapseguard_{container}-{CID}.log", "w") as f:
        for i, (tag, text) in enumerate(lines):
            f.write(f"2026-11-26T08:00:{i:02d}.000000001Z stdout {tag} {text}\n")
    return [x["doc"] for x in run_pipeline([d])]


def line(**fields):
    base = {"service": "backend", "timestamp": "2026-11-26T07:59:59.123456Z", "level": "INFO",
            "message": "hello", "target": "backend::api"}
    return json.dumps({**base, **fields})


def test_event_fields_win_over_the_span_and_the_innermost_span_over_outer_ones(tmp_path):
    [doc] = mapped(tmp_path, [("F", line(project="event", spans=[
        {"name": "request", "request_id": "outer", "camera": "c-outer", "project": "outer"},
        {"name": "job", "job_id": "inner", "camera": "c-inner"}]))])
    assert doc["project"] == "event"
    assert doc["request_id"] == "outer"
    assert doc["job_id"] == "inner"
    assert doc["camera"] == "c-inner"
    assert doc["@timestamp"] == "2026-11-26T07:59:59.123456Z"


def test_span_object_is_kept_and_other_fields_go_to_fields(tmp_path):
    [doc] = mapped(tmp_path, [("F", line(bytes=5, span={"name": "request", "request_id": "r1", "path": "/v1"}))])
    assert doc["request_id"] == "r1"
    assert doc["span"] == {"name": "request", "request_id": "r1", "path": "/v1"}
    assert doc["fields"] == {"bytes": 5}
    assert doc["service"] == "backend" and doc["target"] == "backend::api" and doc["level"] == "INFO"


def test_error_fields(tmp_path):
    [doc] = mapped(tmp_path, [("F", line(level="ERROR", error="boom", kind="internal"))])
    assert (doc["level"], doc["error"], doc["error_kind"]) == ("ERROR", "boom", "internal")


def test_partial_cri_lines_are_joined(tmp_path):
    text = line(message="x" * 40)
    docs = mapped(tmp_path, [("P", text[:20]), ("P", text[20:50]), ("F", text[50:])])
    assert len(docs) == 1 and docs[0]["message"] == "x" * 40


def test_plain_text_lines_keep_the_whole_line_and_the_pods_labels(tmp_path):
    labels = {"app.kubernetes.io/name": "minio", "app.kubernetes.io/component": "object-store"}
    [doc] = mapped(tmp_path, [("F", "API: SYSTEM() Status: 1 Online, 0 Offline.")], labels, "minio")
    assert doc["message"] == "API: SYSTEM() Status: 1 Online, 0 Offline."
    assert (doc["service"], doc["app"], doc["component"], doc["container"]) == ("minio", "minio", "object-store",
                                                                              "minio")
    assert "level" not in doc
    assert doc["@timestamp"] == "2026-11-26T08:00:00.000000Z"


@pytest.mark.parametrize("text,level,raw", [
    ("2026-11-26 08:06:37.413 UTC [18715] LOG:  checkpoint starting: time", "INFO", "LOG"),
    ('2026-11-26 08:27:45.590 UTC [5229] FATAL:  password authentication failed for user "x"', "ERROR", "FATAL"),
    ("2026-11-26 08:27:45.662 UTC [5231] ERROR:  relation \"t\" does not exist", "ERROR", "ERROR"),
    ("2026-11-26 08:27:45.662 UTC [5231] WARNING:  there is no transaction in progress", "WARN", "WARNING"),
    ("2026-11-26 08:01:30.123456+00:00 [warning] <0.230.0> closing AMQP connection", "WARN", "warning"),
    ("2026-11-26 08:01:30.123456+00:00 [error] <0.230.0> crasher", "ERROR", "error"),
])
def test_severity_of_postgres_and_rabbitmq_lines(tmp_path, text, level, raw):
    [doc] = mapped(tmp_path, [("F", text)], {"app.kubernetes.io/name": "postgres"}, "postgres")
    assert (doc["level"], doc["raw_severity"], doc["message"]) == (level, raw, text)


def test_cloudnativepg_json_records(tmp_path):
    rec = {"level": "info", "ts": "2026-11-26T08:00:00.5Z", "logger": "postgres", "msg": "record",
           "logging_pod": "lapseguard-db-1",
           "record": {"log_time": "2026-11-26 08:00:00.400 UTC", "error_severity": "FATAL",
                      "message": "password authentication failed for user \"x\""}}
    [doc] = mapped(tmp_path, [("F", json.dumps(rec))], {"app.kubernetes.io/name": "postgres"}, "postgres")
    assert doc["message"] == 'password authentication failed for user "x"'
    assert (doc["level"], doc["raw_severity"]) == ("ERROR", "FATAL")
    assert doc["service"] == "postgres"
    assert doc["fields"]["record"]["error_severity"] == "FATAL"


def test_foreign_json_cannot_break_the_mapping(tmp_path):
    # ids that are objects, numbers and booleans; a level that is a number (pino style)
    [doc] = mapped(tmp_path, [("F", json.dumps({"msg": "hi", "level": 30, "project": {"a": 1}, "camera": 7,
                                                "request_id": True, "time": 1}))])
    assert doc["message"] == "hi"
    assert "project" not in doc
    assert (doc["camera"], doc["request_id"]) == ("7", "true")
    assert doc["raw_severity"] == "30" and "level" not in doc


def test_json_that_is_not_an_object_is_a_plain_line(tmp_path):
    [doc] = mapped(tmp_path, [("F", "[1, 2]")])
    assert doc["message"] == "[1, 2]"
