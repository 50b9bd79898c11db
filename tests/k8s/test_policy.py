"""The project's own policy for its Kubernetes manifests, checked on every rendered
overlay (see conftest.py). docs/operations.md explains the reasons; exceptions are
annotations on the workload that carry their justification:

  lapseguard.io/probes: "none: <why>" | "no-liveness: <why>"
  lapseguard.io/security-exceptions: "<exception>[,<exception>...]: <why>"
      exceptions to the "restricted" pod rules, each named (runAsRoot, hostPath,
      serviceAccountToken, privileged) and each used; allowed only outside the
      namespace lapseguard, in a namespace whose Pod Security level permits them
      (the logging namespace of k8s/components/logging)
  checkov.io/skipN: "CKV_K8S_xx=<why>"
"""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml

from conftest import K8S, OVERLAYS, objects

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
NAMESPACE = "lapseguard"
# Namespaces the overlays may create, with the Pod Security level each enforces.
NAMESPACES = {"lapseguard": "restricted", "lapseguard-logging": "privileged"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
SECURITY_EXCEPTIONS = {"runAsRoot", "hostPath", "serviceAccountToken", "privileged"}
RECOMMENDED = ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")
WEAK_EXEC = {"ls", "true", "cat", "echo", "test", "/bin/true"}


def name_of(o):
    return f"{o['kind']}/{o['metadata']['name']}"


def pod_spec(o):
    if o["kind"] == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return o["spec"]["template"]["spec"]


def pod_labels(o):
    if o["kind"] == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return o["spec"]["template"]["metadata"].get("labels", {})


def workloads(objs):
    return [o for o in objs if o["kind"] in POD_KINDS]


def all_containers(spec):
    for c in spec.get("initContainers", []):
        yield "init", c
    for c in spec["containers"]:
        yield "main", c


def probe_exemption(o):
    value = o["metadata"].get("annotations", {}).get("lapseguard.io/probes", "")
    m = re.match(r"^(none|no-liveness): (.{20,})$", value)
    return m.group(1) if m else None


def selects(selector, labels):
    ml = selector.get("matchLabels", {})
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for e in selector.get("matchExpressions", []):
        present = e["key"] in labels
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
        if e["operator"] == "NotIn" and present and labels[e["key"]] in e["values"]:
            return False
        if e["operator"] == "Exists" and not present:
            return False
        if e["operator"] == "DoesNotExist" and present:
            return False
    return bool(ml or selector.get("matchExpressions")) or selector == {}


# --------------------------------------------------------------------------------------
# resources


def test_every_container_has_requests_and_limits(objs):
    missing = []
    for o in workloads(objs):
        for where, c in all_containers(pod_spec(o)):
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(section, {}):
                        missing.append(f"{name_of(o)} {where} container {c['name']}: {section}.{r}")
    assert not missing, "\n".join(missing)


def test_requests_do_not_exceed_limits(objs):
    def qty(v):
        v = str(v)
        units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
        for u, f in sorted(units.items(), key=lambda kv: -len(kv[0])):
            if v.endswith(u):
                return float(v[: -len(u)]) * f
        return float(v)

    bad = []
    for o in workloads(objs):
        for _, c in all_containers(pod_spec(o)):
            res = c.get("resources", {})
            for r, req in res.get("requests", {}).items():
                lim = res.get("limits", {}).get(r)
                if lim is not None and qty(req) > qty(lim):
                    bad.append(f"{name_of(o)}/{c['name']}: {r} request {req} > limit {lim}")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------
# probes


def test_long_running_containers_have_appropriate_probes(objs):
    problems = []
    for o in workloads(objs):
        if o["kind"] not in LONG_RUNNING:
            continue
        exemption = probe_exemption(o)
        for c in pod_spec(o)["containers"]:
            where = f"{name_of(o)}/{c['name']}"
            if exemption == "none":
                continue
            needed = ["startupProbe", "readinessProbe"] + ([] if exemption == "no-liveness" else ["livenessProbe"])
            for p in needed:
                if p not in c:
                    problems.append(f"{where}: no {p}")
            if exemption == "no-liveness" and "livenessProbe" in c:
                problems.append(f"{where}: exempted from liveness but has one")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for p in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(p)
                if not probe:
                    continue
                if "httpGet" in probe:
                    path = probe["httpGet"].get("path", "/")
                    port = probe["httpGet"]["port"]
                    if path == "/":
                        problems.append(f"{where}: {p} probes '/', not a health endpoint")
                    if isinstance(port, str) and port not in ports:
                        problems.append(f"{where}: {p} names port {port!r} the container does not declare")
                    if p in ("livenessProbe", "startupProbe") and "ready" in path and "minio" not in path:
                        problems.append(f"{where}: {p} uses the readiness endpoint {path} (dependency checks must never restart a pod)")
                if "exec" in probe:
                    cmd = probe["exec"]["command"]
                    if pathlib.PurePath(cmd[0]).name in WEAK_EXEC:
                        problems.append(f"{where}: {p} runs {cmd[0]!r}, which tests nothing")
                if "tcpSocket" in probe:
                    port = probe["tcpSocket"]["port"]
                    if isinstance(port, str) and port not in ports:
                        problems.append(f"{where}: {p} names port {port!r} the container does not declare")
            # A liveness probe must give up later than readiness: restarting is the last resort.
            live, ready = c.get("livenessProbe"), c.get("readinessProbe")
            if live and ready:
                live_window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
                ready_window = ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3)
                if live_window < ready_window:
                    problems.append(f"{where}: liveness gives up ({live_window}s) before readiness ({ready_window}s)")
    assert not problems, "\n".join(problems)


def test_probe_exemptions_are_justified(objs):
    bad = []
    for o in workloads(objs):
        value = o["metadata"].get("annotations", {}).get("lapseguard.io/probes")
        if value is not None and probe_exemption(o) is None:
            bad.append(f"{name_of(o)}: lapseguard.io/probes must be 'none: <why>' or 'no-liveness: <why>'")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------
# security


def security_exceptions(o):
    """The exceptions a workload declares (lapseguard.io/security-exceptions), or None
    when the annotation is malformed."""
    value = o["metadata"].get("annotations", {}).get("lapseguard.io/security-exceptions")
    if value is None:
        return set()
    m = re.match(r"^([A-Za-z,]+): (.{40,})$", value)
    if not m:
        return None
    names = set(m.group(1).split(","))
    return names if names <= SECURITY_EXCEPTIONS else None


def pod_security_findings(o):
    """(exception that would allow it, finding) for every departure from the rules."""
    spec = pod_spec(o)
    psc = spec.get("securityContext", {})
    where = name_of(o)
    found = []
    if psc.get("runAsNonRoot") is not True:
        found.append(("runAsRoot", f"{where}: pod securityContext.runAsNonRoot is not true"))
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        found.append((None, f"{where}: pod seccompProfile is not RuntimeDefault"))
    if psc.get("runAsUser") == 0:
        found.append(("runAsRoot", f"{where}: runs as uid 0"))
    if spec.get("automountServiceAccountToken") is not False:
        found.append(("serviceAccountToken", f"{where}: automountServiceAccountToken is not false"))
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append((None, f"{where}: {flag}"))
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            found.append(("hostPath", f"{where}: hostPath volume {v['name']}"))
    for _, c in all_containers(spec):
        sc = c.get("securityContext", {})
        cw = f"{where}/{c['name']}"
        # A privileged container is root with every capability: one exception covers it.
        privileged = "privileged" if sc.get("privileged") else None
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append((privileged, f"{cw}: allowPrivilegeEscalation is not false"))
        if sc.get("privileged"):
            found.append(("privileged", f"{cw}: privileged"))
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            found.append((None, f"{cw}: capabilities.drop is not [ALL]"))
        if sc.get("capabilities", {}).get("add"):
            found.append((None, f"{cw}: adds capabilities"))
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append((None, f"{cw}: readOnlyRootFilesystem is not true"))
        if sc.get("runAsUser") == 0:
            found.append((privileged or "runAsRoot", f"{cw}: runs as uid 0"))
        if sc.get("runAsNonRoot") is False:
            found.append((privileged or "runAsRoot", f"{cw}: runAsNonRoot is false"))
    return found


def test_pod_security(objs):
    problems = []
    for o in workloads(objs):
        declared = security_exceptions(o)
        if declared is None:
            problems.append(f"{name_of(o)}: lapseguard.io/security-exceptions must be "
                            f"'<{'|'.join(sorted(SECURITY_EXCEPTIONS))},...>: <why, a sentence at least>'")
            continue
        if declared and NAMESPACES.get(o["metadata"].get("namespace")) == "restricted":
            problems.append(f"{name_of(o)}: exceptions {sorted(declared)} in a namespace that enforces restricted")
        used = set()
        for exception, finding in pod_security_findings(o):
            if exception in declared:
                used.add(exception)
            else:
                problems.append(finding)
        if declared - used:
            problems.append(f"{name_of(o)}: declares unused security exceptions {sorted(declared - used)}")
    assert not problems, "\n".join(problems)


def test_namespace_enforces_restricted_pod_security(objs):
    ns = {n["metadata"]["name"]: n for n in objs if n["kind"] == "Namespace"}
    assert NAMESPACE in ns and set(ns) <= set(NAMESPACES), sorted(ns)
    for name, n in ns.items():
        labels = n["metadata"]["labels"]
        assert labels.get("pod-security.kubernetes.io/enforce") == NAMESPACES[name], name
        if NAMESPACES[name] != "restricted":
            # A looser level only where a workload there declares why it needs it, and
            # every departure from restricted is still recorded.
            assert labels.get("pod-security.kubernetes.io/audit") == "restricted", name
            assert any(security_exceptions(o) for o in workloads(objs) if o["metadata"].get("namespace") == name), \
                f"{name} enforces {NAMESPACES[name]} but no workload there declares an exception"


def test_default_deny_and_every_pod_has_an_allow_policy(objs):
    namespaces = {o["metadata"]["namespace"] for o in workloads(objs)}
    for ns in sorted(namespaces):
        policies = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"].get("namespace") == ns]
        deny = [p for p in policies if p["spec"]["podSelector"] == {}
                and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        assert deny, f"{ns}: no default-deny NetworkPolicy (podSelector {{}}, Ingress+Egress, no rules)"
        specific = [p for p in policies if p["spec"]["podSelector"] != {}]
        unselected = [name_of(o) for o in workloads(objs) if o["metadata"]["namespace"] == ns
                      and not any(selects(p["spec"]["podSelector"], pod_labels(o)) for p in specific)]
        assert not unselected, f"{ns}: pods with no NetworkPolicy of their own (only default deny): {unselected}"


def test_linter_exceptions_are_justified(objs):
    bad = []
    for o in objs:
        for k, v in o["metadata"].get("annotations", {}).items():
            if k.startswith("checkov.io/skip") and not re.match(r"^CKV2?_K8S_\d+=.{40,}$", v):
                bad.append(f"{name_of(o)}: {k}: {v!r} (want 'CKV_K8S_nn=<at least a sentence of why>')")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------
# availability


def test_no_pdb_selects_the_pods_of_a_job(objs):
    # A budget whose selector also matches a Job's pods breaks evictions of those pods
    # ("jobs.batch does not implement the scale subresource"), seen on a live cluster
    # with the backend budget and the migration Job.
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    problems = [
        f"{name_of(p)} selects the pods of {name_of(o)}"
        for o in objs if o["kind"] in ("Job", "CronJob")
        for p in pdbs
        if p["metadata"].get("namespace") == o["metadata"].get("namespace")
        and selects(p["spec"]["selector"], pod_labels(o))
    ]
    assert not problems, "\n".join(problems)


def test_every_replicated_workload_has_a_pdb(objs):
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in objs
              if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")}
    problems = []
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        replicas = o["spec"].get("replicas", 1)
        covering = [p for p in pdbs if selects(p["spec"]["selector"], pod_labels(o))]
        if replicas != 1 or o["metadata"]["name"] in scaled:
            if len(covering) != 1:
                problems.append(f"{name_of(o)} (replicas {replicas}): {len(covering)} PodDisruptionBudgets select it, want 1")
        else:
            # A budget on a single pod (minAvailable 1 / maxUnavailable 0) blocks every drain.
            for p in covering:
                if p["spec"].get("maxUnavailable") == 0 or p["spec"].get("minAvailable") in (1, "100%"):
                    problems.append(f"{name_of(o)}: single replica with a PDB that blocks node drains")
    for o in objs:
        if o["kind"] == "Cluster" and o["spec"].get("instances", 1) > 1 and o["spec"].get("enablePDB") is False:
            problems.append(f"{name_of(o)}: CloudNativePG PDBs disabled")
    assert not problems, "\n".join(problems)


def test_backend_rollout_and_replicas(objs):
    backend = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "backend")
    assert backend["spec"]["replicas"] >= 2
    assert backend["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["scaleTargetRef"]["name"] == "backend"]
    assert hpa and hpa[0]["spec"]["minReplicas"] >= 2


def test_workers_outlive_their_longest_job(objs):
    # ~30 s per 4K image on CPU; SIGTERM lets the in-flight jobs finish.
    for o in objs:
        if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("worker-"):
            period = pod_spec(o).get("terminationGracePeriodSeconds", 30)
            assert period >= 60, name_of(o)
            env = {e["name"]: e.get("value") for e in pod_spec(o)["containers"][0].get("env", [])}
            grace = int(env.get("LAPSEGUARD_WORKER_SHUTDOWN_GRACE_SECS", 60))
            assert grace < period, f"{name_of(o)}: the worker's own shutdown grace ({grace}s) must end before the kubelet's SIGKILL ({period}s)"
    gpu = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "worker-gpu")
    assert gpu["spec"]["replicas"] == 0
    c = pod_spec(gpu)["containers"][0]
    assert str(c["resources"]["limits"].get("nvidia.com/gpu")) == "1"
    assert pod_spec(gpu).get("tolerations") and pod_spec(gpu).get("nodeSelector")


def test_rabbitmq_cluster_shape(objs):
    sts = next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "rabbitmq")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    hl = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == sts["spec"]["serviceName"])
    assert hl["spec"]["clusterIP"] == "None" and hl["spec"]["publishNotReadyAddresses"] is True
    c = pod_spec(sts)["containers"][0]
    assert "preStop" in c.get("lifecycle", {}), "RabbitMQ needs a draining preStop hook"
    conf = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("rabbitmq-config"))
    text = conf["data"]["rabbitmq.conf"]
    for line in ("cluster_formation.peer_discovery_backend = k8s", "cluster_partition_handling = pause_minority",
                 "mqtt.listeners.tcp.default = 1883",
                 # queues declared before every node joined must still end up on 3 nodes
                 "quorum_queue.continuous_membership_reconciliation.enabled = true",
                 "quorum_queue.continuous_membership_reconciliation.target_group_size = 3"):
        assert line in text, line
    # a quorum default breaks the MQTT plugin's exclusive clean-session queues (every
    # camera's SUBSCRIBE is refused); the application declares its queues as quorum itself
    active = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert not any(ln.startswith("default_queue_type") for ln in active)
    assert "rabbitmq_mqtt" in conf["data"]["enabled_plugins"]


def test_stateful_components_are_statefulsets(objs):
    kinds = {o["metadata"]["name"]: o["kind"] for o in objs if o["kind"] in POD_KINDS | {"Cluster"}}
    assert kinds["rabbitmq"] == "StatefulSet"
    assert kinds["minio"] == "StatefulSet"
    assert kinds.get("postgres") == "StatefulSet" or kinds.get("lapseguard-db") == "Cluster"
    assert kinds["backend"] == "Deployment" and kinds["worker-cpu"] == "Deployment"
    assert kinds["backend-migrate"] == "Job" and kinds["minio-bootstrap"] == "Job"


# --------------------------------------------------------------------------------------
# labels, namespace, images


def test_recommended_labels_and_namespace(objs):
    problems = []
    for o in objs:
        labels = o["metadata"].get("labels", {})
        for label in RECOMMENDED:
            if label not in labels:
                problems.append(f"{name_of(o)}: no label {label}")
        if o["kind"] in CLUSTER_SCOPED:
            if o["metadata"].get("namespace"):
                problems.append(f"{name_of(o)}: cluster-scoped object with a namespace")
        elif o["metadata"].get("namespace") not in NAMESPACES:
            problems.append(f"{name_of(o)}: namespace {o['metadata'].get('namespace')!r}")
        if o["kind"] in POD_KINDS and "app.kubernetes.io/name" not in pod_labels(o):
            problems.append(f"{name_of(o)}: pod template without app.kubernetes.io/name")
    assert not problems, "\n".join(problems)


def _source_manifests():
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in ("kustomization.yaml", "kustomizeconfig.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                yield path, doc


def _images_in(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("image", "imageName") and isinstance(v, str):
                yield v
            else:
                yield from _images_in(v)
    elif isinstance(node, list):
        for v in node:
            yield from _images_in(v)


def test_manifests_name_images_only_through_kustomize():
    """Manifests use bare image names; registry, tag and digest come from `images:`."""
    declared = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        for entry in (yaml.safe_load(kfile.read_text()) or {}).get("images", []):
            declared.add(entry["name"])
    problems = []
    for path, doc in _source_manifests():
        for image in _images_in(doc):
            if any(ch in image for ch in ":@/"):
                problems.append(f"{path.relative_to(K8S)}: image {image!r} is not a bare name (set it in kustomization images:)")
            elif image not in declared:
                problems.append(f"{path.relative_to(K8S)}: image {image!r} has no kustomization images: entry")
    assert not problems, "\n".join(problems)


def test_rendered_images_are_pinned(objs):
    problems = []
    for o in objs:
        for image in _images_in(o.get("spec", {})):
            last = image.rsplit("/", 1)[-1]
            if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
                problems.append(f"{name_of(o)}: image {image!r} has no pinned tag or digest")
            if "/" not in image:
                problems.append(f"{name_of(o)}: image {image!r} has no registry (bare name left unset)")
    assert not problems, "\n".join(problems)


def test_dev_secrets_are_generated_and_ha_brings_its_own():
    dev_secrets = {o["metadata"]["name"] for o in objects("dev") if o["kind"] == "Secret"} if "dev" in OVERLAYS else set()
    assert all(re.search(r"-[a-z0-9]{10}$", n) for n in dev_secrets), "dev Secrets must come from secretGenerator"
    if "ha" in OVERLAYS:
        assert not [o for o in objects("ha") if o["kind"] == "Secret"], "ha must not ship secrets"
