"""Shared fixtures of the logging tests (scripts/check-logging.sh).

* `node`: the real OpenSearch node of scripts/opensearch.sh (URL from
  LAPSEGUARD_OPENSEARCH_URL or target/opensearch.env). Without one the node tests are
  skipped, unless LAPSEGUARD_LOGGING_REQUIRE_NODE=1 (check-logging.sh sets it): then
  they fail.
* `datasets`: directories of container log files (CRI format) with their pods.json:
  the committed captures under fixtures/, plus fresh ones made by running the real
  programs now (capture.py) when LAPSEGUARD_LOGGING_LIVE=1 (check-logging.sh sets it
  when the loopback services and the binaries are there).
* `pipeline`: those files through the collector's field mapping
  (fluentd/plugins/lapseguard_fields.rb, run by Ruby through pipeline.rb).
* `indexed`: the documents indexed into the node the way the opensearch output does it
  (daily lapseguard-logs-* indices, _bulk), after the bootstrap script installed the
  index template.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "logging"
FIXTURES = HERE / "fixtures"
OPENSEARCH_DIR = ROOT / "opensearch"
FLUENTD_DIR = ROOT / "fluentd"


def node_url() -> str | None:
    url = os.environ.get("LAPSEGUARD_OPENSEARCH_URL")
    env = ROOT / "target" / "opensearch.env"
    if not url and env.is_file():
        m = re.search(r"^LAPSEGUARD_OPENSEARCH_URL=(\S+)", env.read_text(), re.M)
        url = m.group(1) if m else None
    return url


class Node:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def request(self, method: str, path: str, body=None, ndjson: bool = False):
        data = None
        headers = {}
        if body is not None:
            if ndjson:
                data = body.encode()
                headers["content-type"] = "application/x-ndjson"
            else:
                data = json.dumps(body).encode()
                headers["content-type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode("utf-8", "replace")

    def ok(self, method: str, path: str, body=None, ndjson: bool = False):
        status, answer = self.request(method, path, body, ndjson)
        assert 200 <= status < 300, f"{method} {path}: HTTP {status}: {answer}"
        return answer


@pytest.fixture(scope="session")
def node() -> Node:
    url = node_url()
    if not url:
        if os.environ.get("LAPSEGUARD_LOGGING_REQUIRE_NODE") == "1":
            pytest.fail("no OpenSearch node: scripts/opensearch.sh start did not leave target/opensearch.env")
        pytest.skip("no OpenSearch node (run scripts/check-logging.sh, or scripts/opensearch.sh start)")
    n = Node(url)
    try:
        n.ok("GET", "/_cluster/health?wait_for_status=yellow&timeout=30s")
    except OSError as e:
        pytest.fail(f"OpenSearch at {url} does not answer: {e}")
    return n


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> list[pathlib.Path]:
    dirs = sorted(p for p in FIXTURES.iterdir() if (p / "pods.json").is_file())
    assert dirs, "no fixtures under tests/logging/fixtures"
    if os.environ.get("LAPSEGUARD_LOGGING_LIVE") == "1":
        live = tmp_path_factory.mktemp("live")
        for mode in ("cluster", "allinone"):
            subprocess.run([sys.executable, str(HERE / "capture.py"), mode, str(live / mode)], check=True,
                           timeout=600)
            dirs.append(live / mode)
    return dirs


def run_pipeline(dirs) -> list[dict]:
    ruby = shutil.which("ruby")
    if not ruby:
        pytest.fail("ruby not found: the collector's field mapping is Ruby (apt-get install ruby)")
    out = subprocess.run([ruby, str(HERE / "pipeline.rb"), *map(str, dirs)], check=True, capture_output=True,
                         text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="session")
def pipeline(datasets) -> list[dict]:
    return run_pipeline(datasets)


def raw_lines(dirs):
    """(file, line number, pod labels, CRI text) of every line, straight from the files."""
    for d in dirs:
        pods = json.loads((d / "pods.json").read_text())
        for f in sorted(d.glob("*.log")):
            pod = f.name.split("_", 1)[0]
            for i, line in enumerate(f.read_text().splitlines(), 1):
                text = line.split(" ", 3)[3]
                yield str(f), i, pods[pod]["labels"], text


def as_json(text: str):
    try:
        v = json.loads(text)
        return v if isinstance(v, dict) else None
    except ValueError:
        return None


def run_bootstrap(node: Node) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENSEARCH_URL": node.url, "REQUIRE_ISM": "false", "DASHBOARDS_URL": "",
           "ASSETS_DIR": str(OPENSEARCH_DIR), "WAIT_SECONDS": "30"}
    return subprocess.run(["sh", str(OPENSEARCH_DIR / "bootstrap.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="session")
def indexed(node, pipeline):
    # A clean slate: the node is the tests' own, throw-away one.
    node.request("DELETE", "/lapseguard-logs-*?expand_wildcards=all")
    node.request("DELETE", "/_index_template/lapseguard-logs")
    boot = run_bootstrap(node)
    assert boot.returncode == 0, boot.stderr
    body = "".join(json.dumps({"create": {"_index": d["index"], "_id": f"{d['file']}:{d['line']}"}}) + "\n"
                   + json.dumps(d["doc"]) + "\n" for d in pipeline)
    result = node.ok("POST", "/_bulk?refresh=true", body, ndjson=True)
    return result


SAVED_OBJECTS = OPENSEARCH_DIR / "saved-objects.ndjson"


def saved_objects() -> list[dict]:
    return [json.loads(line) for line in SAVED_OBJECTS.read_text().splitlines() if line.strip()]


def saved(kind: str, ident: str) -> dict:
    return next(o for o in saved_objects() if o["type"] == kind and o["id"] == ident)


def search_source(obj: dict) -> dict:
    return json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


def dashboards_query(source: dict, time_range=("1970-01-01T00:00:00Z", "2100-01-01T00:00:00Z")) -> dict:
    """The query OpenSearch Dashboards sends for a saved search or visualization: the
    Lucene query string (language lucene, analyze_wildcard as in its default
    query:queryString:options), each enabled filter's own query (negated ones in
    must_not), and the time picker's range on the index pattern's time field."""
    q = source["query"]
    assert q["language"] == "lucene", "saved objects use Lucene syntax, which OpenSearch runs as is"
    must = [{"query_string": {"query": q["query"], "analyze_wildcard": True}}] if q["query"].strip() else []
    flt = [{"range": {"@timestamp": {"gte": time_range[0], "lte": time_range[1],
                                      "format": "strict_date_optional_time"}}}]
    must_not = []
    for f in source.get("filter", []):
        if f.get("meta", {}).get("disabled"):
            continue
        clause = {k: v for k, v in f.items() if k not in ("meta", "$state")}
        clause = clause.get("query", clause)
        (must_not if f.get("meta", {}).get("negate") else flt).append(clause)
    return {"bool": {"must": must, "filter": flt, "must_not": must_not}}
