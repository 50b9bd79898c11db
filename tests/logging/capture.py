#!/usr/bin/env python3
"""Run lapseguard's real programs and record their stdout as a node's container logs.

    python3 tests/logging/capture.py cluster  OUT_DIR   # backend serve + worker run + PostgreSQL
    python3 tests/logging/capture.py allinone OUT_DIR   # lapseguard up --demo

Each container's output becomes a CRI log file, as containerd writes it under
/var/log/containers/<pod>_<namespace>_<container>-<id>.log:

    2026-11-26T08:22:11.887875123Z stdout F {"service":"backend",...}

and OUT_DIR/pods.json holds each pod's namespace and labels -- what the
kubernetes_metadata filter would fetch from the API server (the labels are the pod
template labels of k8s/base). tests/logging feeds these files through the Fluentd field
mapping (fluentd/plugins/lapseguard_fields.rb) into a real OpenSearch node.

cluster needs the loopback services (scripts/services.sh start; target/services.env),
target/debug/{backend,worker} (or LAPSEGUARD_BIN_DIR) and the model
(eval "$(scripts/fetch-models.sh)"). It uses its own queue prefix, buckets and project,
so it never touches what other tests use. The scenario: a project and a camera, two
good uploads (anonymized), one truncated PNG that the backend accepts (valid header) and
the worker cannot decode (a worker failure, dead-lettered), one upload with a wrong
token and one of an unsupported type (backend errors), and two PostgreSQL errors of its
own (a failed login, a failing statement) so the database's log has something to say.
PostgreSQL's lines are the ones its log file gained during the run.

Secrets (the admin token, camera tokens, passwords of the service URLs, gallery keys)
are replaced by <redacted> before anything is written; tests/logging checks that.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("LAPSEGUARD_BIN_DIR", ROOT / "target" / "debug"))
NAMESPACE = "lapseguard"

# Pod labels as in k8s/base (tests/logging/test_fixtures.py compares them).
PODS = {
    "backend": {"pod": "backend-7d9f8b6c5d-x2kqp", "container": "backend",
                "labels": {"app.kubernetes.io/name": "backend", "app.kubernetes.io/instance": "lapseguard-backend",
                           "app.kubernetes.io/component": "api", "app.kubernetes.io/part-of": "lapseguard"}},
    "migrate": {"pod": "backend-migrate-8kq2w", "container": "migrate",
                "labels": {"app.kubernetes.io/name": "backend", "app.kubernetes.io/instance": "lapseguard-backend",
                           "app.kubernetes.io/component": "migration", "app.kubernetes.io/part-of": "lapseguard"}},
    "worker": {"pod": "worker-cpu-6c8d9f7b54-m4tzn", "container": "worker",
               "labels": {"app.kubernetes.io/name": "worker", "app.kubernetes.io/instance": "lapseguard-worker-cpu",
                          "app.kubernetes.io/component": "anonymizer", "app.kubernetes.io/part-of": "lapseguard"}},
    "postgres": {"pod": "postgres-0", "container": "postgres",
                 "labels": {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/instance": "lapseguard-postgres",
                            "app.kubernetes.io/component": "database", "app.kubernetes.io/part-of": "lapseguard"}},
    "lapseguard": {"pod": "lapseguard-0", "container": "lapseguard",
                   "labels": {"app.kubernetes.io/name": "lapseguard", "app.kubernetes.io/instance": "lapseguard-demo",
                              "app.kubernetes.io/component": "all-in-one"}},
}


def log(msg: str) -> None:
    print(f"[capture] {msg}", file=sys.stderr, flush=True)


def cri_time(t: float) -> str:
    dt = datetime.fromtimestamp(t, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int((t % 1) * 1e9):09d}Z"


class Container:
    """Collects one process's stdout/stderr lines with the time each arrived."""

    def __init__(self, key: str):
        self.key = key
        self.lines: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def pump(self, stream, name: str) -> threading.Thread:
        def run():
            for raw in iter(stream.readline, b""):
                with self._lock:
                    self.lines.append((time.time(), name, raw.decode("utf-8", "replace").rstrip("\n")))
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def add(self, t: float, stream: str, line: str) -> None:
        with self._lock:
            self.lines.append((t, stream, line))


class Redactor:
    def __init__(self):
        self.secrets: set[str] = set()

    # scripts/services.sh's throw-away password of every loopback service is its user
    # name, "lapseguard": replacing it would mangle every module path and queue name.
    NOT_SECRET = {"lapseguard"}

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4 and value not in self.NOT_SECRET:
            self.secrets.add(value)

    def add_url(self, url: str | None) -> None:
        # The loopback services' throw-away passwords equal their user names
        # (scripts/services.sh): replacing those would mangle every "lapseguard" word.
        m = re.match(r"^[a-z]+://([^:@/]+)(?::([^@/]*))?@", url or "")
        if m and m.group(2) and m.group(2) != m.group(1):
            self.add(m.group(2))

    def __call__(self, line: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            line = line.replace(s, "<redacted>")
        line = re.sub(r"([?&]key=)[A-Za-z0-9._-]+", r"\1<redacted>", line)
        return re.sub(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+", r"\1<redacted>", line)


def write_fixtures(out: pathlib.Path, containers: list[Container], redact: Redactor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pods = {}
    for c in containers:
        meta = PODS[c.key]
        cid = "".join(random.Random(c.key).choices("0123456789abcdef", k=64))
        name = f"{meta['pod']}_{NAMESPACE}_{meta['container']}-{cid}.log"
        with open(out / name, "w") as f:
            for t, stream, line in sorted(c.lines, key=lambda x: x[0]):
                f.write(f"{cri_time(t)} {stream} F {redact(line)}\n")
        pods[meta["pod"]] = {"namespace": NAMESPACE, "labels": meta["labels"], "host": "node-1",
                             "container_image": f"localhost/lapseguard/{meta['container'].replace('migrate', 'backend')}:0.1.0"
                             if meta["container"] in ("backend", "migrate", "worker", "lapseguard")
                             else "docker.io/library/postgres:18.6-trixie"}
        log(f"{name}: {len(c.lines)} lines")
    (out / "pods.json").write_text(json.dumps(pods, indent=2, sort_keys=True) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode} during startup")
        try:
            if http("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout}s")


def load_env_file(path: pathlib.Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip().strip("'\"")
    return env


def model_env() -> dict:
    out = subprocess.run([str(ROOT / "scripts" / "fetch-models.sh")], check=True, capture_output=True, text=True).stdout
    env = {}
    for m in re.finditer(r"(?:export )?([A-Z_]+)=(\S+)", out):
        env[m.group(1)] = m.group(2).strip("'\"")
    return env


def start(cmd: list[str], env: dict, container: Container) -> subprocess.Popen:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    container.pump(p.stdout, "stdout")
    container.pump(p.stderr, "stderr")
    return p


def stop(p: subprocess.Popen, timeout: float = 30) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def drop_broker_objects(management_url: str | None, prefix: str) -> None:
    """Removes the run's own queues and exchanges from the shared test broker (best effort)."""
    m = re.match(r"^(https?://)([^:@/]+):([^@/]*)@(.+?)/?$", management_url or "")
    if not m:
        return
    base = f"{m.group(1)}{m.group(4)}"
    auth = "Basic " + __import__("base64").b64encode(f"{m.group(2)}:{m.group(3)}".encode()).decode()
    for kind in ("queues", "exchanges"):
        try:
            st, body = http("GET", f"{base}/api/{kind}/%2f", headers={"authorization": auth})
            for item in json.loads(body) if st == 200 else []:
                if item["name"].startswith(prefix + "."):
                    name = urllib.request.quote(item["name"], safe="")
                    http("DELETE", f"{base}/api/{kind}/%2f/{name}", headers={"authorization": auth})
        except (OSError, ValueError) as e:
            log(f"could not clean up the broker's {kind}: {e}")


def cluster(out: pathlib.Path) -> None:
    envfile = ROOT / "target" / "services.env"
    if not envfile.is_file():
        raise SystemExit("target/services.env missing: scripts/services.sh start")
    services = load_env_file(envfile)
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
    admin = "capture-admin-" + "".join(random.choices(string.ascii_letters + string.digits, k=24))
    api_port, worker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEGUARD_")}
    env.update(services)
    env.update(model_env())
    env.update({
        "LAPSEGUARD_LOG_FORMAT": "json",
        "LAPSEGUARD_ADMIN_TOKEN": admin,
        "LAPSEGUARD_LISTEN": f"127.0.0.1:{api_port}",
        "LAPSEGUARD_WORKER_LISTEN": f"127.0.0.1:{worker_port}",
        "LAPSEGUARD_AMQP_PREFIX": f"lglog{suffix}",
        "LAPSEGUARD_INPUT_BUCKET": f"lglog-{suffix}-in",
        "LAPSEGUARD_OUTPUT_BUCKET": f"lglog-{suffix}-out",
        "LAPSEGUARD_WORKER_MAX_ATTEMPTS": "2",
    })
    redact = Redactor()
    redact.add(admin)
    for key in ("LAPSEGUARD_DATABASE_URL", "LAPSEGUARD_AMQP_URL", "LAPSEGUARD_RABBITMQ_MANAGEMENT_URL"):
        redact.add_url(services.get(key))
    for key in ("LAPSEGUARD_S3_SECRET_ACCESS_KEY", "LAPSEGUARD_MQTT_PASSWORD", "LAPSEGUARD_ADMIN_TOKEN"):
        redact.add(services.get(key))

    backend, worker, postgres = Container("backend"), Container("worker"), Container("postgres")
    pglog = ROOT / "target" / "services" / "postgres.log"
    pg_offset = pglog.stat().st_size if pglog.is_file() else 0

    # The migration runs as its own Job pod in Kubernetes; the buckets come from the
    # MinIO bootstrap Job there, so init-buckets' output is not recorded.
    log("backend migrate, init-buckets")
    migrate = Container("migrate")
    for sub, into in (("migrate", migrate), ("init-buckets", Container("migrate"))):
        p = start([str(BIN / "backend"), sub], env, into)
        if p.wait(120) != 0:
            time.sleep(0.2)
            raise SystemExit(f"backend {sub} failed: {into.lines[-5:]}")
    procs = []
    try:
        b = start([str(BIN / "backend"), "serve"], env, backend)
        procs.append(b)
        wait_http(f"http://127.0.0.1:{api_port}/readyz", b, 60)
        w = start([str(BIN / "worker"), "run"], env, worker)
        procs.append(w)
        wait_http(f"http://127.0.0.1:{worker_port}/readyz", w, 180)
        base = f"http://127.0.0.1:{api_port}"
        A = {"authorization": f"Bearer {admin}", "content-type": "application/json"}
        slug = f"site-{suffix}"
        st, _ = http("POST", f"{base}/v1/projects", json.dumps({"slug": slug, "name": f"Site {suffix}"}).encode(), A)
        assert st in (200, 201), st
        st, body = http("POST", f"{base}/v1/projects/{slug}/cameras", json.dumps({"name": "north"}).encode(), A)
        assert st in (200, 201), (st, body)
        token = json.loads(body)["token"]
        redact.add(token)
        cam = {"authorization": f"Bearer {token}"}
        png = (ROOT / "testdata" / "astronaut.png").read_bytes()
        ids = []
        for i, data in enumerate([png, png[: len(png) // 3]]):
            # The second is a truncated PNG: a valid header, an undecodable body.
            if i == 1:
                data = data[:-1] + b"\x00"
            st, body = http("POST", f"{base}/v1/images", data,
                            {**cam, "content-type": "image/png", "x-captured-at": f"2026-11-26T06:{10 * i:02d}:00Z"})
            assert st in (200, 201, 202), (st, body)
            ids.append(json.loads(body)["id"])
        jpg = sorted((ROOT / "testdata").glob("*.jp*g"))
        if jpg:
            st, body = http("POST", f"{base}/v1/images", jpg[0].read_bytes(),
                            {**cam, "content-type": "image/jpeg", "x-captured-at": "2026-11-26T06:20:00Z"})
            if st in (200, 201, 202):
                ids.append(json.loads(body)["id"])
        http("POST", f"{base}/v1/images", b"GIF89a....", {**cam, "content-type": "image/gif"})
        http("POST", f"{base}/v1/images", png, {"authorization": "Bearer not-a-token", "content-type": "image/png"})
        # PostgreSQL errors of our own: a failed login and a failing statement.
        db = services["LAPSEGUARD_DATABASE_URL"]
        bad = re.sub(r"^(postgres(?:ql)?://[^:]+:)[^@]*@", r"\1wrong-password@", db)
        subprocess.run(["psql", bad, "-c", "select 1"], capture_output=True, timeout=30)
        subprocess.run(["psql", db, "-c", "select count(*) from no_such_table"], capture_output=True, timeout=30)
        # Wait until every image is finished (done or failed).
        deadline = time.time() + 240
        pending = set(ids)
        while pending and time.time() < deadline:
            for i in list(pending):
                st, body = http("GET", f"{base}/v1/images/{i}", headers=cam)
                if st == 200 and json.loads(body).get("status") in ("done", "failed"):
                    pending.discard(i)
            time.sleep(1)
        if pending:
            raise SystemExit(f"images not finished after 240 s: {pending}")
        time.sleep(1.5)
    finally:
        for p in reversed(procs):
            stop(p)
        drop_broker_objects(services.get("LAPSEGUARD_RABBITMQ_MANAGEMENT_URL"), env["LAPSEGUARD_AMQP_PREFIX"])
    if pglog.is_file():
        with open(pglog, "rb") as f:
            f.seek(pg_offset)
            now = time.time()
            for raw in f.read().decode("utf-8", "replace").splitlines():
                m = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC ", raw)
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp() if m else now
                postgres.add(t, "stderr", raw)
    write_fixtures(out, [migrate, backend, worker, postgres], redact)


def allinone(out: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEGUARD_")}
    env.update(model_env())
    env["LAPSEGUARD_LOG_FORMAT"] = "json"
    data = pathlib.Path(tempfile.mkdtemp(prefix="lapseguard-capture-"))
    c = Container("lapseguard")
    redact = Redactor()
    try:
        p = start([str(BIN / "lapseguard"), "up", "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}",
                   "--demo", "--demo-frames", "3", "--exit-when-done"], env, c)
        if p.wait(300) != 0:
            raise SystemExit(f"lapseguard up failed: {c.lines[-5:]}")
        time.sleep(0.2)
        token = data / "admin-token"
        if token.is_file():
            redact.add(token.read_text().strip())
    finally:
        shutil.rmtree(data, ignore_errors=True)
    write_fixtures(out, [c], redact)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("cluster", "allinone"):
        raise SystemExit(__doc__)
    out = pathlib.Path(sys.argv[2])
    (cluster if sys.argv[1] == "cluster" else allinone)(out)
