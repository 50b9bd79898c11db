"""Against a real OpenSearch node: the index template installs (through the bootstrap
script, twice), real log lines of our programs and of PostgreSQL -- passed through the
collector's own field mapping -- index without a single mapping error, and every saved
search and visualization of opensearch/saved-objects.ndjson returns exactly the
documents it promises. Expected results are computed from the raw log lines, not from
the mapped documents."""

from __future__ import annotations

import json
import re

import pytest

from conftest import (OPENSEARCH_DIR, as_json, dashboards_query, raw_lines, run_bootstrap, saved,
                      search_source)

TEMPLATE = json.loads((OPENSEARCH_DIR / "index-template.json").read_text())
LIFTED = ("request_id", "image_id", "job_id", "project", "camera")


def ids(hits):
    return {h["_id"] for h in hits}


def search(node, query, size=1000, **extra):
    body = {"query": query, "size": size, "track_total_hits": True, **extra}
    return node.ok("POST", "/lapseguard-logs-*/_search", body)


def run_saved_search(node, ident, **subst):
    source = search_source(saved("search", ident))
    for k, v in subst.items():
        source["query"]["query"] = source["query"]["query"].replace(k, v)
    obj = saved("search", ident)
    sort = [{f: {"order": d}} for f, d in obj["attributes"]["sort"]]
    answer = search(node, dashboards_query(source), sort=sort)
    return answer["hits"]["hits"]


def raw_id(file, line):
    return f"{file}:{line}"


# ------------------------------------------------------------------------------ template


def test_bootstrap_installs_the_template_and_is_idempotent(node, indexed):
    for _ in range(2):
        boot = run_bootstrap(node)
        assert boot.returncode == 0, boot.stderr
        assert "index template lapseguard-logs installed" in boot.stderr
    got = node.ok("GET", "/_index_template/lapseguard-logs")["index_templates"][0]["index_template"]
    assert got["index_patterns"] == TEMPLATE["index_patterns"]
    assert got["template"]["mappings"]["properties"] == TEMPLATE["template"]["mappings"]["properties"]


def test_bootstrap_says_plainly_that_the_test_node_has_no_ism(node):
    boot = run_bootstrap(node)
    assert "no Index State Management plugin on this cluster: retention policy NOT installed" in boot.stderr
    status, _ = node.request("GET", "/_plugins/_ism/policies")
    assert status == 400, "the test node now has ISM: test the policy on it (test_ism_policy_on_the_node)"


def test_ism_policy_on_the_node(node):
    status, _ = node.request("GET", "/_plugins/_ism/policies")
    if status == 400:
        pytest.skip("the test node is OpenSearch core + netty4/painless/analysis-common from Maven Central; the "
                    "Index State Management plugin is not among them, so ism-policy.json is only checked "
                    "statically (test_assets.py::test_ism_policy_is_valid)")
    ism = json.loads((OPENSEARCH_DIR / "ism-policy.json").read_text())
    node.request("DELETE", "/_plugins/_ism/policies/lapseguard-logs-test")
    node.ok("PUT", "/_plugins/_ism/policies/lapseguard-logs-test", ism)


# ------------------------------------------------------------------------------ indexing


def test_every_line_indexes_without_mapping_errors(indexed, pipeline):
    errors = [item["create"] for item in indexed["items"] if item["create"].get("error")]
    assert not indexed["errors"] and not errors, json.dumps(errors[:5], indent=2)
    assert len(indexed["items"]) == len(pipeline) > 0


def test_no_field_was_dropped_as_malformed(node, indexed):
    # index.mapping.ignore_malformed would hide a type clash: there must be none.
    hits = search(node, {"exists": {"field": "_ignored"}})["hits"]
    assert hits["total"]["value"] == 0, [h["_source"] for h in hits["hits"][:3]]


def test_one_daily_index_per_utc_day(node, indexed, pipeline):
    indices = {d["index"] for d in pipeline}
    for name in indices:
        assert re.fullmatch(r"lapseguard-logs-\d{4}\.\d\d\.\d\d", name), name
    got = {i["index"] for i in node.ok("GET", "/_cat/indices/lapseguard-logs-*?format=json")}
    assert got == indices


def test_the_mapping_is_the_templates_and_nothing_else(node, indexed):
    want = TEMPLATE["template"]["mappings"]["properties"]
    for index, m in node.ok("GET", "/lapseguard-logs-*/_mapping").items():
        assert m["mappings"]["properties"] == want, index
        assert m["mappings"]["dynamic"] == "false"


def test_our_fields_are_searchable(node, indexed, datasets):
    """Every lifted id of every JSON line -- the event's own, or its span's -- is found by
    an exact term query on the top-level field."""
    misses = []
    for file, line, _labels, text in raw_lines(datasets):
        j = as_json(text)
        if not j or "service" not in j:
            continue
        for key in LIFTED:
            value = j.get(key) or (j.get("span") or {}).get(key)
            if value is None:
                continue
            hits = search(node, {"bool": {"filter": [{"term": {key: str(value)}},
                                                     {"ids": {"values": [raw_id(file, line)]}}]}})
            if hits["hits"]["total"]["value"] != 1:
                misses.append(f"{file}:{line} {key}={value}")
    assert not misses, misses[:10]


def test_full_text_search_on_messages_and_errors(node, indexed, datasets):
    expected = {raw_id(f, n) for f, n, _l, t in raw_lines(datasets)
                if (as_json(t) or {}).get("error", "").startswith("image cannot be decoded")}
    assert expected, "the captures should contain an undecodable image"
    hits = search(node, {"match_phrase": {"error": "cannot be decoded"}})["hits"]["hits"]
    assert ids(hits) == expected


# ------------------------------------------------------------------------------ saved searches


def test_saved_search_backend_and_database(node, indexed, datasets):
    hits = run_saved_search(node, "lapseguard-backend-and-database")
    expected = {raw_id(f, n) for f, n, labels, _t in raw_lines(datasets)
                if labels.get("app.kubernetes.io/name") in ("backend", "postgres")}
    assert ids(hits) == expected
    apps = {h["_source"]["app"] for h in hits}
    assert apps == {"backend", "postgres"}, apps
    assert not [h for h in hits if h["_source"].get("service") == "worker" or h["_source"]["app"] == "worker"]
    # PostgreSQL's own lines are in it, its errors with level ERROR.
    pg = [h["_source"] for h in hits if h["_source"]["app"] == "postgres"]
    assert any(d.get("raw_severity") == "FATAL" and d["level"] == "ERROR" for d in pg), pg
    # newest first, as saved
    stamps = [h["_source"]["@timestamp"] for h in hits]
    assert stamps == sorted(stamps, reverse=True)


def test_saved_search_worker_failures(node, indexed, datasets):
    hits = run_saved_search(node, "lapseguard-worker-failures")
    expected = {raw_id(f, n) for f, n, labels, t in raw_lines(datasets)
                if labels.get("app.kubernetes.io/name") == "worker"
                and (as_json(t) or {}).get("level") in ("ERROR", "WARN")}
    assert expected, "the captures should contain a worker failure"
    assert ids(hits) == expected
    assert all(h["_source"]["image_id"] and h["_source"]["job_id"] for h in hits)


def test_saved_search_one_images_journey(node, indexed, datasets):
    # As saved (image_id:*): every line that names an image.
    lines = list(raw_lines(datasets))

    def image_of(text):
        j = as_json(text) or {}
        return j.get("image_id") or (j.get("span") or {}).get("image_id")

    hits = run_saved_search(node, "lapseguard-image-journey")
    assert ids(hits) == {raw_id(f, n) for f, n, _l, t in lines if image_of(t)}
    # With one id in place of *: exactly that image's lines, oldest first.
    images = {image_of(t) for _f, _n, _l, t in lines if image_of(t)}
    assert len(images) >= 4
    for image in images:
        hits = run_saved_search(node, "lapseguard-image-journey", **{"image_id:*": f'image_id:"{image}"'})
        assert ids(hits) == {raw_id(f, n) for f, n, _l, t in lines if image_of(t) == image}, image
        stamps = [h["_source"]["@timestamp"] for h in hits]
        assert stamps == sorted(stamps)
        messages = [h["_source"]["message"] for h in hits]
        assert messages[0] == "image accepted", messages
        assert "original fetched" in messages
        assert messages[-1] in ("image anonymized", "job failed for good; dead-lettering it"), messages


# ------------------------------------------------------------------------------ visualizations


def run_visualization(node, ident):
    obj = saved("visualization", ident)
    state = json.loads(obj["attributes"]["visState"])
    metric = [a for a in state["aggs"] if a["schema"] == "metric"]
    assert [a["type"] for a in metric] == ["count"]
    bucket = next(a for a in state["aggs"] if a["schema"] in ("segment", "bucket"))
    assert bucket["type"] == "terms"
    p = bucket["params"]
    aggs = {"b": {"terms": {"field": p["field"], "size": p["size"], "order": {"_count": p["order"]}}}}
    answer = search(node, dashboards_query(search_source(obj)), size=0, aggs=aggs)
    return {b["key"]: b["doc_count"] for b in answer["aggregations"]["b"]["buckets"]}


def test_visualization_errors_per_service(node, indexed, datasets):
    expected = {}
    for _f, _n, labels, text in raw_lines(datasets):
        j = as_json(text)
        if j is not None:
            error = j.get("level") == "ERROR"
            service = j.get("service")
        else:
            m = re.match(r"^\S+ \S+ \S+ \[\d+\] ([A-Z]+):", text)
            error = bool(m and m.group(1) in ("ERROR", "FATAL", "PANIC"))
            service = labels.get("app.kubernetes.io/name")
        if error:
            expected[service] = expected.get(service, 0) + 1
    assert expected.get("worker") and expected.get("postgres"), expected
    assert run_visualization(node, "lapseguard-errors-per-service") == expected


def test_visualization_uploads_per_project(node, indexed, datasets):
    expected = {}
    for _f, _n, _labels, text in raw_lines(datasets):
        j = as_json(text) or {}
        if j.get("target") == "backend::api" and j.get("message") == "image accepted":
            expected[j["project"]] = expected.get(j["project"], 0) + 1
    assert len(expected) >= 2, expected
    assert run_visualization(node, "lapseguard-uploads-per-project") == expected


# ------------------------------------------------------------------------------ docs

DOC_QUERIES = [
    # docs/logging.md, "What did the backend and its database do?", each with hits in the captures
    'namespace:lapseguard AND app:(backend OR postgres)',
    'namespace:lapseguard AND app:(backend OR postgres) AND level:(ERROR OR WARN)',
    'raw_severity:FATAL',
    'namespace:lapseguard AND app:postgres',
    'namespace:lapseguard AND app:backend',
    'app:backend AND component:migration',
    'request_id:"4c58b533-4269-4654-bb20-287a2be2901c"',
    'app:postgres AND message:"password authentication failed"',
    'app:backend AND error:"Content-Type"',
    'error_kind:unauthorized',
    'namespace:lapseguard AND app:worker AND level:(ERROR OR WARN)',
    'image_id:"01a216f8-3917-765f-bb10-b9bcd722feb9"',
    'target:"backend::api" AND message:"image accepted"',
    'fields.attempts:1',
    'span.path:"/v1/images"',
    '_exists_:error',
]


@pytest.mark.parametrize("query", DOC_QUERIES)
def test_the_queries_of_docs_logging_md(node, indexed, query):
    docs = (OPENSEARCH_DIR.parent / "docs" / "logging.md").read_text()
    assert query in docs, "the query is no longer in docs/logging.md: update DOC_QUERIES"
    source = {"query": {"query": query, "language": "lucene"}, "filter": []}
    hits = search(node, dashboards_query(source))["hits"]
    assert hits["total"]["value"] > 0, query
