"""The manifests against the programs' real contract, read from the Rust sources, so
that a renamed setting, subcommand, route or port fails here instead of in a cluster.

  * subcommands: the variants of `enum Command` (clap derive: kebab-case);
  * settings: every field of the `*Settings` structs a binary loads, as
    LAPSEGUARD_<FIELD> (config::Environment with prefix LAPSEGUARD, see core/src/config.rs);
  * HTTP routes: the `.route("...")` calls of the router;
  * the listen port: the containerPort the probes and Services use must be the port
    of LAPSEGUARD_LISTEN / LAPSEGUARD_WORKER_LISTEN.

A binary whose crate is not in the tree yet (worker, camera-agent) is skipped with a
visible reason; its checks turn on by themselves when the crate lands.
"""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, objects, OVERLAYS

# Variables that are not LAPSEGUARD_* settings but are part of the contract.
EXTRA_ENV = {
    "worker": {"ORT_DYLIB_PATH", "CUDA_CACHE_PATH", "RUST_LOG"},
    "backend": {"RUST_LOG"},
    "camera-agent": {"RUST_LOG"},
}


def rust_sources(*crates):
    text = ""
    for crate in crates:
        for path in sorted((ROOT / crate / "src").rglob("*.rs")):
            text += path.read_text() + "\n"
    return text


def struct_fields(source: str, struct: str) -> set[str]:
    m = re.search(r"pub struct " + re.escape(struct) + r"\s*\{(.*?)\n\}", source, re.S)
    assert m, f"struct {struct} not found"
    return set(re.findall(r"^\s*pub (\w+):", m.group(1), re.M))


def settings_structs(source: str) -> set[str]:
    return set(re.findall(r"pub struct (\w*Settings)\s*\{", source))


def subcommands(source: str) -> set[str]:
    m = re.search(r"enum Command\s*\{(.*?)\n\}", source, re.S)
    assert m, "enum Command not found"
    names = re.findall(r"^\s{4}(\w+)\s*[,({]", m.group(1), re.M)
    return {re.sub(r"(?<!^)(?=[A-Z])", "-", n).lower() for n in names}


def routes(source: str) -> set[str]:
    return set(re.findall(r'\.route\(\s*"([^"]+)"', source))


def env_keys(fields: set[str]) -> set[str]:
    return {f"LAPSEGUARD_{f.upper()}" for f in fields}


def containers_of(objs, image_name: str):
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = o["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            if f"/{image_name}:" in c["image"] or c["image"].startswith(f"{image_name}:"):
                yield o, c


def env_names(objs, container) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for ref in container.get("envFrom", []):
        cm = ref.get("configMapRef", {}).get("name")
        if cm:
            data = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm)
            names |= set(data.get("data", {}))
    return names


def crate_or_skip(crate: str):
    if not (ROOT / crate / "src").is_dir():
        pytest.skip(f"{crate}/ is not in the tree yet; its contract check turns on when it lands")


@pytest.fixture(params=OVERLAYS)
def objs(request):
    return objects(request.param)


def test_backend_contract(objs):
    main = rust_sources("backend")
    core = rust_sources("core")
    commands = subcommands((ROOT / "backend/src/main.rs").read_text())
    known = env_keys(struct_fields(core, "InfraSettings") | struct_fields(main, "BackendSettings"))
    known_routes = routes(main)
    found = list(containers_of(objs, "backend"))
    assert found, "no backend container"
    for o, c in found:
        where = f"{o['kind']}/{o['metadata']['name']}/{c['name']}"
        args = c.get("args", [])
        assert args and args[0] in commands, f"{where}: args {args} — backend has subcommands {sorted(commands)}"
        names = env_names(objs, c)
        unknown = {n for n in names if n not in known and n not in EXTRA_ENV["backend"]}
        assert not unknown, f"{where}: variables the backend does not read: {sorted(unknown)}"
        required = {"LAPSEGUARD_DATABASE_URL"}
        if args[0] == "serve":
            required |= {"LAPSEGUARD_AMQP_URL", "LAPSEGUARD_ADMIN_TOKEN"}
        assert required <= names, f"{where}: missing {sorted(required - names)}"
        if args[0] == "migrate":
            assert o["kind"] == "Job"
            continue
        listen = next(e["value"] for e in c["env"] if e["name"] == "LAPSEGUARD_LISTEN")
        port = int(listen.rsplit(":", 1)[1])
        ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
        assert port in ports.values(), f"{where}: listens on {port}, declares {ports}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] in known_routes, f"{where}: {probe} path {get['path']} is no backend route"
            assert ports.get(get["port"], get["port"]) == port
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Services and the Ingress reach the port that the backend listens on.
    for o in objs:
        if o["kind"] == "Ingress":
            for rule in o["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    prefix = p["path"].rstrip("/")
                    assert any(r == prefix or r.startswith(prefix + "/") for r in known_routes), p["path"]


def test_config_map_only_carries_known_settings(objs):
    core = rust_sources("core")
    known = env_keys(struct_fields(core, "InfraSettings"))
    for o in objs:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("lapseguard-config"):
            unknown = set(o["data"]) - known
            assert not unknown, f"lapseguard-config sets unknown keys {sorted(unknown)}"
            assert o["data"]["LAPSEGUARD_LOG_FORMAT"] in ("json", "pretty", "auto")


def test_worker_contract(objs):
    crate_or_skip("worker")
    src = rust_sources("worker")
    core = rust_sources("core")
    fields = struct_fields(core, "InfraSettings")
    for s in settings_structs(src):
        fields |= struct_fields(src, s)
    known = env_keys(fields)
    main = (ROOT / "worker/src/main.rs").read_text()
    commands = subcommands(main)
    known_routes = routes(src)
    found = [(o, c) for image in ("worker", "worker-gpu") for o, c in containers_of(objs, image)]
    assert found
    for o, c in found:
        where = f"{o['kind']}/{o['metadata']['name']}/{c['name']}"
        assert c["args"][0] in commands, f"{where}: {c['args']} — worker has {sorted(commands)}"
        names = env_names(objs, c)
        unknown = {n for n in names if n not in known and n not in EXTRA_ENV["worker"]}
        assert not unknown, f"{where}: variables the worker does not read: {sorted(unknown)}"
        listen = next(e["value"] for e in c["env"] if e["name"] == "LAPSEGUARD_WORKER_LISTEN")
        port = int(listen.rsplit(":", 1)[1])
        assert port in {p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = c[probe]["httpGet"]["path"]
            if known_routes:
                assert path in known_routes, f"{where}: {probe} path {path} is no worker route"


def test_camera_agent_contract():
    crate_or_skip("camera-agent")
    if "dev" not in OVERLAYS:
        pytest.skip("no dev overlay")
    src = rust_sources("camera-agent")
    main = (ROOT / "camera-agent/src/main.rs").read_text()
    commands = subcommands(main)
    flags = {re.sub("_", "-", f) for f in re.findall(r"^\s*(?:pub )?(\w+): [^,]+,", src, re.M)}
    for o, c in containers_of(objects("dev"), "camera-agent"):
        args = c.get("args", [])
        sub = args[0]
        assert sub in commands, f"{c['name']}: {sub} not in {sorted(commands)}"
        for a in args[1:]:
            if a.startswith("--"):
                flag = a[2:].split("=", 1)[0]
                assert flag in flags, f"{c['name']}: flag --{flag} unknown to camera-agent"
