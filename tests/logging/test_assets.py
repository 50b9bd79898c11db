"""Static checks of the logging assets: saved objects (references, fields, query
language), the retention policy (ISM: the test node lacks the plugin, so the policy is
validated here, against a JSON schema of the API's documented shape plus its
semantics), the Fluentd configuration and image, and the captured fixtures."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from conftest import FIXTURES, FLUENTD_DIR, OPENSEARCH_DIR, ROOT, saved_objects, search_source

TEMPLATE = json.loads((OPENSEARCH_DIR / "index-template.json").read_text())
FIELDS = TEMPLATE["template"]["mappings"]["properties"]
CONF = (FLUENTD_DIR / "conf" / "fluent.conf").read_text()


def mapped(field: str) -> bool:
    if field in FIELDS:
        return True
    base, _, sub = field.partition(".")
    if base in FIELDS and FIELDS[base]["type"] == "flat_object":
        return True
    return base in FIELDS and sub in FIELDS[base].get("fields", {})


# ------------------------------------------------------------------------------ saved objects


def test_saved_objects_are_well_formed_and_references_resolve():
    objs = saved_objects()
    keys = [(o["type"], o["id"]) for o in objs]
    assert len(keys) == len(set(keys))
    assert {t for t, _ in keys} >= {"index-pattern", "search", "visualization", "dashboard"}
    for o in objs:
        for ref in o.get("references", []):
            assert (ref["type"], ref["id"]) in keys, f"{o['id']}: dangling reference {ref}"
        if "kibanaSavedObjectMeta" in o["attributes"]:
            src = search_source(o)
            if "indexRefName" in src:
                assert src["indexRefName"] in {r["name"] for r in o["references"]}
        if o["type"] == "dashboard":
            names = {r["name"] for r in o["references"]}
            for panel in json.loads(o["attributes"]["panelsJSON"]):
                assert panel["panelRefName"] in names


def test_index_pattern_matches_the_template():
    [pattern] = [o for o in saved_objects() if o["type"] == "index-pattern"]
    assert [pattern["attributes"]["title"]] == TEMPLATE["index_patterns"]
    assert FIELDS[pattern["attributes"]["timeFieldName"]]["type"] in ("date", "date_nanos")


def test_saved_queries_only_use_mapped_fields():
    problems = []
    for o in saved_objects():
        a = o["attributes"]
        used = set(a.get("columns", [])) | {f for f, _ in a.get("sort", [])}
        if "visState" in a:
            for agg in json.loads(a["visState"])["aggs"]:
                if "field" in agg.get("params", {}):
                    used.add(agg["params"]["field"])
        if "kibanaSavedObjectMeta" in a:
            q = search_source(o)["query"]
            assert q["language"] == "lucene", f"{o['id']}: Lucene, so that OpenSearch runs the saved query as is"
            unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', q["query"])
            used |= set(re.findall(r"([A-Za-z_@][\w.@]*):", unquoted))
        problems += [f"{o['id']}: {f}" for f in sorted(used) if not mapped(f)]
    assert not problems, problems


def test_keyword_and_text_fields_are_chosen_on_purpose():
    # ids and names: exact values (filters, terms aggregations); prose: full text, with
    # a keyword copy for aggregations.
    for f in ("level", "service", "request_id", "image_id", "job_id", "project", "camera", "app", "component",
              "namespace", "pod", "container", "node", "target", "error_kind"):
        assert FIELDS[f]["type"] == "keyword", f
    for f in ("message", "error"):
        assert FIELDS[f]["type"] == "text" and FIELDS[f]["fields"]["keyword"]["type"] == "keyword", f
    assert TEMPLATE["template"]["mappings"]["dynamic"] is False, "unknown fields must not grow the mapping"


# ------------------------------------------------------------------------------ ISM

ISM_SCHEMA = {
    "type": "object", "required": ["policy"], "additionalProperties": False,
    "properties": {"policy": {
        "type": "object", "required": ["description", "default_state", "states"], "additionalProperties": False,
        "properties": {
            "description": {"type": "string", "minLength": 10},
            "default_state": {"type": "string"},
            "error_notification": {"type": ["object", "null"]},
            "states": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "actions", "transitions"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z][a-z0-9_-]*$"},
                    "actions": {"type": "array", "items": {
                        "type": "object", "minProperties": 1, "additionalProperties": False,
                        "properties": {
                            "timeout": {"type": "string", "pattern": r"^\d+[smhd]$"},
                            "retry": {"type": "object", "additionalProperties": False,
                                      "properties": {"count": {"type": "integer", "minimum": 0},
                                                     "backoff": {"enum": ["exponential", "constant", "linear"]},
                                                     "delay": {"type": "string", "pattern": r"^\d+[smhd]$"}}},
                            "read_only": {"type": "object", "maxProperties": 0},
                            "read_write": {"type": "object", "maxProperties": 0},
                            "delete": {"type": "object", "maxProperties": 0},
                            "force_merge": {"type": "object", "required": ["max_num_segments"],
                                            "properties": {"max_num_segments": {"type": "integer", "minimum": 1}}},
                            "replica_count": {"type": "object", "required": ["number_of_replicas"]},
                            "rollover": {"type": "object"},
                        }}},
                    "transitions": {"type": "array", "items": {
                        "type": "object", "required": ["state_name"], "additionalProperties": False,
                        "properties": {
                            "state_name": {"type": "string"},
                            "conditions": {"type": "object", "additionalProperties": False, "maxProperties": 1,
                                           "properties": {"min_index_age": {"type": "string",
                                                                            "pattern": r"^\d+[smhd]$"},
                                                          "min_doc_count": {"type": "integer"},
                                                          "min_size": {"type": "string"},
                                                          "cron": {"type": "object"}}}}}},
                }}},
            "ism_template": {"type": "array", "items": {
                "type": "object", "required": ["index_patterns"], "additionalProperties": False,
                "properties": {"index_patterns": {"type": "array", "items": {"type": "string"}},
                               "priority": {"type": "integer"}}}},
        }}},
}


def test_ism_policy_is_valid():
    ism = json.loads((OPENSEARCH_DIR / "ism-policy.json").read_text())
    jsonschema.validate(ism, ISM_SCHEMA)
    p = ism["policy"]
    states = {s["name"]: s for s in p["states"]}
    assert p["default_state"] in states
    for s in p["states"]:
        actions = [k for a in s["actions"] for k in a if k not in ("retry", "timeout")]
        assert all(len([k for k in a if k not in ("retry", "timeout")]) == 1 for a in s["actions"]), s["name"]
        for t in s["transitions"]:
            assert t["state_name"] in states, t
        if not s["transitions"]:
            assert actions[-1:] == ["delete"], f"state {s['name']}: a final state must delete the index"
    # Ages grow along the way: hot -> warm -> delete.
    def days(age):
        n, unit = int(age[:-1]), age[-1]
        return n * {"s": 1 / 86400, "m": 1 / 1440, "h": 1 / 24, "d": 1}[unit]
    state, seen, ages = p["default_state"], set(), []
    while states[state]["transitions"]:
        assert state not in seen, "cycle"
        seen.add(state)
        t = states[state]["transitions"][0]
        ages.append(days(t["conditions"]["min_index_age"]))
        state = t["state_name"]
    assert ages == sorted(ages) and ages[-1] >= 7, ages
    assert [t["index_patterns"] for t in p["ism_template"]] == [TEMPLATE["index_patterns"]]


# ------------------------------------------------------------------------------ Fluentd


def directives(text):
    return re.findall(r"^\s*<(source|filter|match|label|buffer|parse)\b([^>]*)>", text, re.M)


def test_fluentd_configuration_shape():
    types = re.findall(r"^\s*@type\s+(\S+)", CONF, re.M)
    assert types.count("tail") == 1 and "cri" in types and "kubernetes_metadata" in types
    assert "lapseguard_fields" in types and "opensearch" in types and "monitor_agent" in types
    assert re.search(r"^\s*path /var/log/containers/\*\.log$", CONF, re.M)
    # File buffer with retries, daily indices matching the template.
    buffer = CONF[CONF.index("<buffer"):CONF.index("</buffer>")]
    assert re.search(r"@type file", buffer) and "retry_timeout" in buffer and "retry_max_interval" in buffer
    prefix = re.search(r"^\s*logstash_prefix (\S+)", CONF, re.M).group(1)
    assert re.search(r"^\s*logstash_format true", CONF, re.M)
    assert re.search(r"^\s*logstash_dateformat %Y\.%m\.%d", CONF, re.M)
    assert TEMPLATE["index_patterns"] == [f"{prefix}-*"]
    # Our filter runs after the metadata filter, before the output.
    order = [t for t in types if t in ("kubernetes_metadata", "lapseguard_fields", "opensearch")]
    assert order == ["kubernetes_metadata", "lapseguard_fields", "opensearch"]
    assert re.search(r'register_filter\("lapseguard_fields"',
                     (FLUENTD_DIR / "plugins" / "filter_lapseguard_fields.rb").read_text())


PLUGIN_OF_TYPE = {"cri": "fluent-plugin-parser-cri", "kubernetes_metadata": "fluent-plugin-kubernetes_metadata_filter",
                  "opensearch": "fluent-plugin-opensearch", "concat": "fluent-plugin-concat"}
CORE_TYPES = {"tail", "monitor_agent", "relabel", "stdout", "file", "single_value", "lapseguard_fields"}


def test_every_plugin_of_the_configuration_is_pinned_in_the_image():
    containerfile = (FLUENTD_DIR / "Containerfile").read_text()
    pinned = dict(re.findall(r"fluent-gem install --no-document (\S+) -v (\d+\.\d+\.\d+)", containerfile))
    for t in set(re.findall(r"^\s*@type\s+(\S+)", CONF, re.M)):
        if t in CORE_TYPES:
            continue
        assert PLUGIN_OF_TYPE.get(t) in pinned, f"@type {t}: its gem is not installed (pinned) in fluentd/Containerfile"
    assert re.search(r"ARG FLUENTD_IMAGE=\S+:v\d+\.\d+\.\d+-debian-\d", containerfile)


# ------------------------------------------------------------------------------ fixtures


def fixture_dirs():
    return sorted(p for p in FIXTURES.iterdir() if (p / "pods.json").is_file())


def test_fixtures_carry_no_secrets():
    bad = []
    patterns = [r"(?i)bearer\s+(?!<redacted>)\S", r"[?&]key=(?!<redacted>)", r"capture-admin-",
                r"://[^/\s:@]+:(?!<redacted>)[^@\s/]+@", r"(?i)password=\S", r"(?i)secret_access_key",
                r"lapseguard-secret", r"-----BEGIN"]
    for d in fixture_dirs():
        for f in d.iterdir():
            text = f.read_text()
            bad += [f"{f.name}: {p}" for p in patterns if re.search(p, text)]
    assert not bad, bad


def test_fixture_pods_carry_the_manifests_labels():
    """The captured pods' labels are the pod template labels of k8s/base, which the
    saved searches rely on (app.kubernetes.io/name, /component)."""
    templates = {}
    for path in (ROOT / "k8s" / "base").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
                labels = doc["spec"]["template"]["metadata"]["labels"]
                templates[(labels["app.kubernetes.io/name"], labels.get("app.kubernetes.io/component"))] = labels
    for d in fixture_dirs():
        for pod, meta in json.loads((d / "pods.json").read_text()).items():
            labels = meta["labels"]
            key = (labels["app.kubernetes.io/name"], labels.get("app.kubernetes.io/component"))
            if key[0] == "lapseguard":
                continue  # the all-in-one binary has no manifest (it is not deployed to Kubernetes)
            assert key in templates, f"{d.name}/{pod}: {key} is no pod template of k8s/base"
            for k in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/instance"):
                assert labels.get(k) == templates[key].get(k), f"{d.name}/{pod}: {k}"


def test_fixtures_are_real_captures():
    for d in fixture_dirs():
        files = list(d.glob("*.log"))
        assert files, d
        for f in files:
            lines = f.read_text().splitlines()
            assert lines and all(re.match(r"^\d{4}-\d\d-\d\dT\S+Z (stdout|stderr) [PF] ", x) for x in lines), f
