"""The logging component (k8s/components/logging) as rendered into each overlay:
collector DaemonSet, OpenSearch, Dashboards, bootstrap Job. docs/logging.md explains
the choices; tests/logging tests what runs inside (field mapping, index template,
saved searches) against a real OpenSearch node."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, objects
from test_policy import name_of, pod_spec, selects

LOGGING_NS = "lapseguard-logging"

# Overlays deployed without the logging component: e2e (scripts/e2e-cluster.sh; its
# kustomization says why). Every other overlay must include it.
WITHOUT_LOGGING = {"e2e"}


@pytest.fixture
def objs(overlay):
    if overlay in WITHOUT_LOGGING:
        pytest.skip(f"overlay {overlay} is deployed without the logging component")
    return objects(overlay)


def test_every_other_overlay_includes_logging(overlay):
    text = (ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
    assert ("../../components/logging" in text) == (overlay not in WITHOUT_LOGGING)


def one(objs, kind, name):
    found = [o for o in objs if o["kind"] == kind and re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?", o["metadata"]["name"])]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(o, name):
    spec = pod_spec(o)
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


def env(c):
    return {e["name"]: e for e in c.get("env", [])}


def mounted_configmap(o, mount_path):
    spec = pod_spec(o)
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m["mountPath"] == mount_path:
                vol = next(v for v in spec["volumes"] if v["name"] == m["name"])
                return vol["configMap"]["name"]
    raise AssertionError(f"{name_of(o)}: nothing mounted at {mount_path}")


def test_everything_of_logging_is_in_its_namespace(objs):
    names = {"fluentd", "opensearch", "opensearch-hl", "opensearch-dashboards", "logging-bootstrap"}
    for o in objs:
        if o["metadata"]["name"] in names and o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == LOGGING_NS, name_of(o)


def test_collector_daemonset(objs):
    ds = one(objs, "DaemonSet", "fluentd")
    spec = pod_spec(ds)
    tolerated = {t["key"] for t in spec.get("tolerations", [])}
    assert "node-role.kubernetes.io/control-plane" in tolerated, "must run on control-plane nodes too"
    c = container(ds, "fluentd")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for path in ("/var/log/containers", "/var/log/pods"):
        m = mounts[path]
        assert m.get("readOnly") is True, f"{path} must be mounted read-only"
        assert host[m["name"]] == path
    # The state directory (read positions, file buffer) survives a pod replacement.
    state = mounts["/var/lib/lapseguard-fluentd"]
    assert host[state["name"]] == "/var/lib/lapseguard-fluentd"
    assert env(c)["FLUENTD_STATE_DIR"]["value"] == "/var/lib/lapseguard-fluentd"
    # Liveness, readiness and startup on the monitor agent.
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "monitor")
    assert port == 24220
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/api/plugins.json", probe
    assert env(c)["OPENSEARCH_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"].startswith("opensearch-admin")


def test_collector_rbac_reads_pod_metadata_only(objs):
    ds = one(objs, "DaemonSet", "fluentd")
    sa = pod_spec(ds)["serviceAccountName"]
    binding = one(objs, "ClusterRoleBinding", "lapseguard-fluentd")
    assert {"kind": "ServiceAccount", "name": sa, "namespace": LOGGING_NS} in binding["subjects"]
    role = one(objs, "ClusterRole", binding["roleRef"]["name"])
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        assert set(rule["resources"]) <= {"pods", "namespaces"}, rule


def test_collector_runs_the_tested_configuration(objs):
    """The ConfigMaps are made from fluentd/conf and fluentd/plugins: the files that
    tests/logging runs (the mapping) and checks (the configuration)."""
    ds = one(objs, "DaemonSet", "fluentd")
    conf = one(objs, "ConfigMap", mounted_configmap(ds, "/fluentd/etc").rsplit("-", 1)[0])
    assert conf["data"]["fluent.conf"] == (ROOT / "fluentd/conf/fluent.conf").read_text()
    plugins = one(objs, "ConfigMap", mounted_configmap(ds, "/fluentd/plugins").rsplit("-", 1)[0])
    for f in ("lapseguard_fields.rb", "filter_lapseguard_fields.rb"):
        assert plugins["data"][f] == (ROOT / "fluentd/plugins" / f).read_text(), f
    args = container(ds, "fluentd")["args"]
    assert args[:1] == ["fluentd"] and "/fluentd/plugins" in args


def test_opensearch_shape(overlay, objs):
    sts = one(objs, "StatefulSet", "opensearch")
    c = container(sts, "opensearch")
    e = env(c)
    replicas = sts["spec"]["replicas"]
    if overlay == "dev":
        assert replicas == 1 and e["discovery.type"]["value"] == "single-node"
    else:
        assert replicas == 3 and "discovery.type" not in e
        assert e["discovery.seed_hosts"]["value"] == sts["spec"]["serviceName"]
        managers = e["cluster.initial_cluster_manager_nodes"]["value"].split(",")
        assert managers == [f"opensearch-{i}" for i in range(replicas)]
        anti = pod_spec(sts)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert anti and selects(anti[0]["labelSelector"], sts["spec"]["template"]["metadata"]["labels"])
    hl = one(objs, "Service", sts["spec"]["serviceName"])
    assert hl["spec"]["clusterIP"] == "None" and hl["spec"]["publishNotReadyAddresses"] is True
    # Heap at most half the memory limit (the rest is Lucene's file-system cache).
    heap = re.search(r"-Xmx(\d+)([mg])", e["OPENSEARCH_JAVA_OPTS"]["value"])
    heap_mib = int(heap.group(1)) * (1024 if heap.group(2) == "g" else 1)
    limit = c["resources"]["limits"]["memory"]
    limit_mib = int(limit[:-2]) * (1024 if limit.endswith("Gi") else 1)
    assert heap_mib * 2 <= limit_mib, (heap_mib, limit_mib)
    assert e["OPENSEARCH_INITIAL_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"].startswith("opensearch-admin")
    pdb = [p for p in objs if p["kind"] == "PodDisruptionBudget"
           and selects(p["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])]
    assert len(pdb) == 1 and pdb[0]["spec"]["maxUnavailable"] == 1


def test_vm_max_map_count_is_raised_before_opensearch_starts(objs):
    sts = one(objs, "StatefulSet", "opensearch")
    init = container(sts, "sysctl")
    script = " ".join(init["command"])
    assert "/proc/sys/vm/max_map_count" in script and "262144" in script
    assert init["securityContext"]["privileged"] is True
    assert container(sts, "opensearch")["securityContext"].get("privileged") is not True


def test_bootstrap_job_loads_the_tested_assets(objs):
    job = one(objs, "Job", "logging-bootstrap")
    cm = one(objs, "ConfigMap", mounted_configmap(job, "/bootstrap").rsplit("-", 1)[0])
    for f in ("bootstrap.sh", "index-template.json", "ism-policy.json", "saved-objects.ndjson"):
        assert cm["data"][f] == (ROOT / "opensearch" / f).read_text(), f
    c = container(job, "bootstrap")
    assert env(c)["REQUIRE_ISM"]["value"] == "true", "in a cluster a missing retention policy is an error"
    assert job["spec"].get("ttlSecondsAfterFinished"), "a finished Job must go so that the next apply re-creates it"


def test_admin_secret(overlay, objs):
    secrets = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].startswith("opensearch-admin")]
    if overlay == "dev":
        assert len(secrets) == 1 and secrets[0]["metadata"]["namespace"] == LOGGING_NS
    else:
        assert not secrets, "ha brings its own opensearch-admin Secret"


@pytest.mark.parametrize("overlay_name", ["dev", "ha"])
def test_overlays_include_logging(overlay_name):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects(overlay_name)}
    assert ("DaemonSet", "fluentd") in kinds and ("StatefulSet", "opensearch") in kinds
