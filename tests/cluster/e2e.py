#!/usr/bin/env python3
"""End-to-end drills against lapseguard deployed on a Kubernetes cluster.

Run by scripts/e2e-cluster.sh (which builds and imports the images, deploys
k8s/overlays/e2e and starts this inside the cluster's network namespace, where Service
ClusterIPs and pod IPs are reachable). Standard library only.

Every drill uses a project of its own, so "images in" (frames handed to the simulated
cameras or uploads answered 2xx) and "images out" (done in the API, blurred object in the
output bucket) are counted per drill. Simulated cameras are real camera-agent processes
(`camera-agent watch`, durable spool, retries, MQTT heartbeats); the load of the scaling
and rolling-update drills is direct HTTP uploads so that every failed request is seen.

Prints a summary table and writes it as JSON (--summary). Exit status 1 when a drill fails.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

NS = "lapseguard"
ADMIN_TOKEN = "dev-admin-token"  # k8s/components/single-node (throw-away)
RABBIT_USER, RABBIT_PASS = "lapseguard", "dev-rabbitmq-password"
MINIO_ROOT = ("minio-root", "dev-minio-root-password")
OUTPUT_BUCKET = "lapseguard-output"


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class DrillFailed(Exception):
    pass


# --------------------------------------------------------------------------- kubectl


def kubectl(*args: str, check: bool = True, timeout: int = 900, ns: str = NS, stdin: str | None = None) -> str:
    cmd = [os.environ.get("KUBECTL", "kubectl"), "-n", ns, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and p.returncode != 0:
        raise DrillFailed(f"{' '.join(cmd[1:])}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def kjson(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def kjson_ns(ns: str, *args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json", ns=ns))


def cluster_ip(service: str) -> str:
    return kjson("get", "service", service)["spec"]["clusterIP"]


def pods(selector: str) -> list[dict]:
    return kjson("get", "pods", "-l", selector)["items"]


def pod_ready(p: dict) -> bool:
    if p["metadata"].get("deletionTimestamp"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))


def wait_ready(selector: str, count: int, timeout: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if sum(pod_ready(p) for p in pods(selector)) >= count:
            return time.monotonic() - t0
        time.sleep(1)
    raise DrillFailed(f"pods {selector}: fewer than {count} Ready after {timeout:.0f} s")


def eviction(pod: str) -> tuple[int, str]:
    """POST an Eviction (what `kubectl drain` does); returns (HTTP status, message)."""
    body = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                       "metadata": {"name": pod, "namespace": NS}})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        p = subprocess.run([os.environ.get("KUBECTL", "kubectl"), "create", "--raw",
                            f"/api/v1/namespaces/{NS}/pods/{pod}/eviction", "-f", f.name],
                           capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
    if p.returncode == 0:
        return 201, "evicted"
    err = p.stderr.strip()
    # kubectl prints e.g. "Error from server (TooManyRequests): Cannot evict pod ..."
    status = 429 if "TooManyRequests" in err or "disruption budget" in err else 0
    return status, err


# --------------------------------------------------------------------------- HTTP API


class Api:
    def __init__(self, host: str, port: int = 8080):
        self.host, self.port = host, port

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = ADMIN_TOKEN,
                headers: dict | None = None, host: str | None = None, timeout: float = 30):
        # one connection per request: what is measured is the service, not a reused
        # keep-alive connection to a pod that is shutting down
        conn = http.client.HTTPConnection(host or self.host, self.port, timeout=timeout)
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()  # names lower-case
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None, **kw):
        body = json.dumps(payload).encode() if payload is not None else None
        hdr = {"Content-Type": "application/json"} if body else {}
        status, headers, data = self.request(method, path, body=body, headers=hdr, **kw)
        if status >= 300:
            raise DrillFailed(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None

    def project(self, slug: str) -> str:
        self.json("POST", "/v1/projects", {"slug": slug, "name": f"e2e {slug}"})
        return slug

    def camera(self, slug: str, name: str) -> str:
        return self.json("POST", f"/v1/projects/{slug}/cameras", {"name": name})["token"]

    def images(self, slug: str) -> list[dict]:
        out, cursor = [], None
        while True:
            q = f"/v1/projects/{slug}/images?limit=100" + (f"&cursor={cursor}" if cursor else "")
            page = self.json("GET", q)
            out += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def upload(self, token: str, data: bytes, captured_at: dt.datetime, host: str | None = None):
        return self.request("POST", "/v1/images", body=data, token=token, host=host, timeout=60,
                            headers={"Content-Type": "image/jpeg",
                                     "X-Captured-At": captured_at.isoformat().replace("+00:00", "Z")})


def unique_jpeg(jpeg: bytes) -> bytes:
    """The same picture with a unique JPEG comment (COM segment after SOI): every frame is a
    different image for the backend, which stores identical bytes of a project only once."""
    comment = f"lapseguard-e2e {uuid.uuid4()}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def gray_thumb(jpeg: bytes, w: int = 192, h: int = 108) -> bytes:
    p = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", "pipe:0", "-vf", f"scale={w}:{h}",
                        "-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"], input=jpeg, capture_output=True, check=True)
    return p.stdout


def blur_signature(original: bytes, anonymized: bytes, w: int = 192, h: int = 108, b: int = 8) -> tuple[float, float]:
    """(largest mean |difference| of any 8x8 block, mean |difference| overall) of two
    pictures at 192x108 gray: a blurred face is a block that changed a lot, the rest of
    the picture only changes by re-encoding."""
    a, z = gray_thumb(original, w, h), gray_thumb(anonymized, w, h)
    if len(a) != w * h or len(z) != w * h:
        raise DrillFailed("could not decode the pictures")
    diff = [abs(x - y) for x, y in zip(a, z)]
    peak = 0.0
    for by in range(0, h - b + 1, b):
        for bx in range(0, w - b + 1, b):
            s = sum(diff[(by + j) * w + bx + i] for j in range(b) for i in range(b))
            peak = max(peak, s / (b * b))
    return peak, sum(diff) / len(diff)


def status_counts(images: list[dict]) -> dict[str, int]:
    c: dict[str, int] = {}
    for i in images:
        c[i["status"]] = c.get(i["status"], 0) + 1
    return c


# --------------------------------------------------------------------------- cameras


class Camera:
    """A simulated camera: a capture folder fed by the drill and `camera-agent watch`."""

    def __init__(self, root: str, name: str, token: str, backend: str, mqtt: str | None, agent: str):
        self.name = name
        self.dir = os.path.join(root, name)
        self.capture = os.path.join(self.dir, "capture")
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(self.capture, exist_ok=True)
        env = dict(os.environ, LAPSEGUARD_BACKEND=backend, LAPSEGUARD_TOKEN=token,
                   LAPSEGUARD_CAPTURE_DIR=self.capture, LAPSEGUARD_SPOOL_DIR=self.spool,
                   LAPSEGUARD_LOG_FORMAT="json", RUST_LOG="warn")
        if mqtt:
            env.update(LAPSEGUARD_MQTT=mqtt, LAPSEGUARD_CAMERA_ID=name)
        self.logfile = open(os.path.join(self.dir, "agent.log"), "ab")
        self.proc = subprocess.Popen([agent, "watch"], env=env, stdout=self.logfile, stderr=subprocess.STDOUT)
        self.seq = 0

    def put(self, jpeg: bytes, captured: float) -> None:
        """A finished frame: written under a temporary name, mtime = capture time, renamed."""
        self.seq += 1
        tmp = os.path.join(self.capture, f".frame-{self.seq:05d}.jpg.part")
        with open(tmp, "wb") as f:
            f.write(unique_jpeg(jpeg))
        os.utime(tmp, (captured, captured))
        os.rename(tmp, os.path.join(self.capture, f"frame-{self.seq:05d}.jpg"))

    def backlog(self) -> int:
        n = len([f for f in os.listdir(self.capture) if not f.startswith(".")])
        pending = os.path.join(self.spool, "pending")
        if os.path.isdir(pending):
            n += len([f for f in os.listdir(pending) if not f.endswith(".json")])
        return n

    def retries(self) -> int:
        """Uploads the agent had to retry (its log: "upload failed; retrying")."""
        if not self.logfile.closed:
            self.logfile.flush()
        with open(os.path.join(self.dir, "agent.log"), "rb") as f:
            return f.read().count(b"upload failed; retrying")

    def rejected(self) -> int:
        d = os.path.join(self.spool, "rejected")
        return len([f for f in os.listdir(d) if not f.endswith(".json")]) if os.path.isdir(d) else 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.logfile.close()


# --------------------------------------------------------------------------- the run


class E2E:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="lapseguard-e2e-")
        self.api = Api(cluster_ip("backend"))
        self.backend_url = f"http://{self.api.host}:8080"
        rabbit = cluster_ip("rabbitmq")
        self.rabbit = rabbit
        self.mqtt = f"mqtt://{RABBIT_USER}:{RABBIT_PASS}@{rabbit}:1883"
        self.amqp = f"amqp://{RABBIT_USER}:{RABBIT_PASS}@{rabbit}:5672/%2f"
        self.minio = f"http://{cluster_ip('minio')}:9000"
        self.run_id = time.strftime("%H%M%S")
        self.rows: list[dict] = []
        self.frames = args.frames
        self.frame_bytes = [open(f, "rb").read() for f in self.frames]
        self.clock = time.time() - 86400  # capture times: distinct, one per frame
        os.environ["MC_CONFIG_DIR"] = os.path.join(self.work, "mc")
        self.mc("alias", "set", "e2e", self.minio, *MINIO_ROOT)

    # helpers
    def mc(self, *args: str) -> str:
        p = subprocess.run([self.args.mc, *args], capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise DrillFailed(f"mc {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def outputs(self, slug: str) -> int:
        out = self.mc("ls", "--recursive", "--json", f"e2e/{OUTPUT_BUCKET}/{slug}/")
        keys = [json.loads(line)["key"] for line in out.splitlines() if line.strip()]
        return len([k for k in keys if not k.endswith(".thumb.jpg")])

    def next_time(self) -> float:
        self.clock += 1.0
        return self.clock

    def project(self, name: str) -> str:
        return self.api.project(f"e2e-{self.run_id}-{name}")

    def cameras(self, slug: str, n: int) -> list[Camera]:
        cams = []
        for i in range(n):
            token = self.api.camera(slug, f"cam-{i}")
            cams.append(Camera(self.work, f"{slug}-cam-{i}", token, self.backend_url, self.mqtt, self.args.agent))
        return cams

    def feed(self, cams: list[Camera], n: int, rate: float, on_progress=None) -> None:
        for i in range(n):
            cams[i % len(cams)].put(self.frame_bytes[i % len(self.frame_bytes)], self.next_time())
            if on_progress:
                on_progress(i + 1)
            time.sleep(1.0 / rate)

    def wait_done(self, slug: str, expected: int, timeout: float, cams: list[Camera] = ()) -> list[dict]:
        t0, last = time.monotonic(), None
        while True:
            imgs = self.api.images(slug)
            c = status_counts(imgs)
            backlog = sum(cam.backlog() for cam in cams)
            if c != last:
                log(f"  {slug}: {c} of {expected}, camera backlog {backlog}")
                last = c
            if c.get("failed"):
                raise DrillFailed(f"{slug}: {c['failed']} images failed")
            if c.get("done", 0) >= expected and backlog == 0:
                return imgs
            if time.monotonic() - t0 > timeout:
                raise DrillFailed(f"{slug}: {c} of {expected} after {timeout:.0f} s (camera backlog {backlog})")
            time.sleep(2)

    def check_out(self, slug: str, sent: int, imgs: list[dict], cams: list[Camera] = ()) -> dict:
        done = [i for i in imgs if i["status"] == "done"]
        outputs = self.outputs(slug)
        rejected = sum(c.rejected() for c in cams)
        no_face = [i["id"] for i in done if not i.get("faces")]
        res = {"in": sent, "out": len(done), "lost": sent - len(done), "outputs": outputs,
               "duplicates": outputs - len(done), "rejected": rejected,
               "redelivered": len([i for i in done if i.get("attempts", 1) > 1])}
        problems = []
        if res["lost"]:
            problems.append(f"{res['lost']} lost")
        if len(imgs) != len(done):
            problems.append(f"{len(imgs) - len(done)} not done")
        if outputs != len(done):
            problems.append(f"{outputs} output objects for {len(done)} images")
        if rejected:
            problems.append(f"{rejected} frames rejected")
        if no_face:
            problems.append(f"{len(no_face)} images without a detected face")
        if problems:
            raise DrillFailed(f"{slug}: " + ", ".join(problems))
        return res

    def record(self, drill: str, ok: bool, detail: str, **fig) -> None:
        row = {"drill": drill, "result": "PASS" if ok else "FAIL", "detail": detail, **fig}
        self.rows.append(row)
        log(f"{row['result']} {drill}: {detail}")

    def drill(self, name: str, fn) -> None:
        log(f"--- {name}")
        t0 = time.monotonic()
        try:
            fig = fn() or {}
            detail = fig.pop("detail", "")
            self.record(name, True, detail, seconds=round(time.monotonic() - t0, 1), **fig)
        except Exception as e:  # a failed drill is reported, the next one still runs
            self.record(name, False, str(e)[:400], seconds=round(time.monotonic() - t0, 1))
            try:  # leave the system as the next drill expects it
                wait_ready("app.kubernetes.io/name=rabbitmq", 3, 600)
                wait_ready("app.kubernetes.io/name=postgres", 1, 300)
            except Exception as e2:
                log(f"  not recovered: {e2}")

    # ------------------------------------------------------------------ drills

    def smoke(self):
        slug = self.project("smoke")
        cams = self.cameras(slug, 3)
        try:
            n = self.args.smoke_images
            self.feed(cams, n, rate=10)
            imgs = self.wait_done(slug, n, 600, cams)
            res = self.check_out(slug, n, imgs, cams)
        finally:
            for c in cams:
                c.stop()
        # blurred: compared with the picture that was sent (the closest of the samples: mean
        # difference <= 20 of 255; other samples are >= 40 away), the anonymized image has
        # a block that changed strongly (a blurred face: block difference >= 20, where
        # re-encoding alone stays under 10)
        checked = []
        for img in imgs[:12]:
            st, _, body = self.api.request("GET", f"/v1/images/{img['id']}/anonymized")
            if st != 200:
                raise DrillFailed(f"image {img['id']}: anonymized answered {st}")
            peak, mean = None, None
            for frame in self.frame_bytes:
                p, m = blur_signature(frame, body)
                if mean is None or m < mean:
                    peak, mean = p, m
            if not (peak >= 20 and mean <= 20):
                raise DrillFailed(f"image {img['id']}: not a blurred copy of a sent frame (peak block diff {peak:.1f}, mean {mean:.1f})")
            checked.append(round(peak, 1))
        res["blur_peak_block_diff"] = checked
        res["detail"] = f"{res['in']} frames from {len(cams)} camera-agents -> {res['out']} done, {res['outputs']} blurred objects, 12 checked blurred"
        return res

    def rabbitmq_node_loss(self):
        slug = self.project("rabbitmq")
        cams = self.cameras(slug, 4)
        n = self.args.load_images
        deleted = {}

        # every node must hold a replica of the job queue before one is taken away
        t0 = time.monotonic()
        while self.queue_stats()["job_queue_members"] < 3:
            if time.monotonic() - t0 > 180:
                raise DrillFailed(f"the job queue has {self.queue_stats()['job_queue_members']} members, not 3")
            time.sleep(5)
        members_wait = time.monotonic() - t0

        def progress(i):
            if i == n // 4 and not deleted:
                deleted["leader"] = self.queue_stats()["job_queue_leader"]
                log(f"  deleting pod rabbitmq-1 (job queue leader: {deleted['leader']})")
                kubectl("delete", "pod", "rabbitmq-1", "--wait=false")
                deleted["at"], deleted["t"] = i, time.monotonic()

                def watch_back():
                    time.sleep(2)
                    wait_ready("app.kubernetes.io/name=rabbitmq", 3, 900)
                    deleted["back_s"] = time.monotonic() - deleted["t"]
                threading.Thread(target=watch_back, daemon=True).start()
        try:
            self.feed(cams, n, rate=10, on_progress=progress)
            imgs = self.wait_done(slug, n, 900, cams)
            wait_ready("app.kubernetes.io/name=rabbitmq", 3, 900)
            time.sleep(2)
            res = self.check_out(slug, n, imgs, cams)
        finally:
            for c in cams:
                c.stop()
        q = self.queue_stats()
        if q["dead_lettered"]:
            raise DrillFailed(f"{q['dead_lettered']} jobs in the dead-letter queue")
        res["detail"] = (f"rabbitmq-1 deleted after {deleted.get('at')} of {n} frames (job queue leader then: "
                         f"{deleted.get('leader')}); {res['out']} done, lost {res['lost']}, dead-lettered "
                         f"{q['dead_lettered']}; rabbitmq-1 Ready again after {deleted.get('back_s', -1):.0f} s; "
                         f"job queue on {q['job_queue_members']} nodes (waited {members_wait:.0f} s for 3 before)")
        return res

    def queue_stats(self) -> dict:
        """Job and dead-letter queue counts from the RabbitMQ management API."""
        conn = http.client.HTTPConnection(self.rabbit, 15672, timeout=30)
        auth = base64.b64encode(f"{RABBIT_USER}:{RABBIT_PASS}".encode()).decode()
        conn.request("GET", "/api/queues/%2f", headers={"Authorization": f"Basic {auth}"})
        r = conn.getresponse()
        data = json.loads(r.read())
        conn.close()
        by = {q["name"]: q for q in data}
        jobs = by.get("lapseguard.anonymize", {})
        dead = by.get("lapseguard.anonymize.dead", {})
        return {"jobs_ready": jobs.get("messages_ready", 0), "jobs_unacked": jobs.get("messages_unacknowledged", 0),
                "dead_lettered": dead.get("messages", 0),
                "job_queue_members": len(jobs.get("members", []) or []),
                "job_queue_leader": str(jobs.get("leader", "?")).split("@")[-1].split(".")[0]}

    def worker_loss(self):
        """A worker pod deleted mid-job (graceful: the job in flight is finished and acked,
        or handed back), then a worker crashing mid-job (SIGKILL of its container through
        containerd: the unacknowledged job is redelivered to the restarted worker)."""
        slug = self.project("worker")
        cams = self.cameras(slug, 2)
        n = self.args.worker_images
        events = []

        def busy_worker(timeout=300):
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                c = status_counts(self.api.images(slug))
                ready = [p for p in pods("app.kubernetes.io/name=worker") if pod_ready(p)]
                if c.get("processing", 0) >= 1 and ready:
                    return ready[0], c
                time.sleep(0.2)
            raise DrillFailed("never saw a job in processing")
        try:
            self.feed(cams, n // 2, rate=20)
            pod, c = busy_worker()
            name = pod["metadata"]["name"]
            log(f"  deleting {name} with a job in flight ({c})")
            kubectl("delete", "pod", name, "--wait=false")
            events.append(f"{name} deleted")
            wait_ready("app.kubernetes.io/name=worker", 1, 600)
            self.feed(cams, n - n // 2, rate=20)
            pod, c = busy_worker()
            name = pod["metadata"]["name"]
            cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[-1]
            log(f"  SIGKILL of {name}'s container with a job in flight ({c})")
            p = subprocess.run(["ctr", "--address", self.args.containerd, "-n", "k8s.io", "tasks", "kill",
                                "--signal", "SIGKILL", cid], capture_output=True, text=True)
            if p.returncode != 0:
                raise DrillFailed(f"ctr tasks kill: {p.stderr.strip()}")
            events.append(f"{name} killed")
            imgs = self.wait_done(slug, n, 900, cams)
            res = self.check_out(slug, n, imgs, cams)
        finally:
            for c in cams:
                c.stop()
        if res["redelivered"] < 1:
            raise DrillFailed("no image was processed twice: the crashed worker's job was not redelivered?")
        res["detail"] = (f"{'; '.join(events)}; {res['out']}/{n} done, {res['redelivered']} redelivered "
                         f"(attempts > 1), {res['outputs']} output objects = 0 duplicates")
        return res

    def postgres_loss(self):
        slug = self.project("postgres")
        probe_slug = self.project("postgres-probe")
        probe_token = self.api.camera(probe_slug, "probe")
        cams = self.cameras(slug, 3)
        n = self.args.postgres_images
        seen = {"readyz_503": 0, "upload_503": 0, "retry_after": set(), "probe_ok": 0, "other": {}}
        stop = threading.Event()
        backend_ips = [p["status"]["podIP"] for p in pods("app.kubernetes.io/name=backend,app.kubernetes.io/component=api")
                       if pod_ready(p)] or [p["status"]["podIP"] for p in pods("app.kubernetes.io/name=backend") if p["status"].get("podIP")]

        def probe():
            data = self.frame_bytes[0]
            while not stop.is_set():
                for ip in backend_ips:
                    try:
                        st, _, _ = self.api.request("GET", "/readyz", token=None, host=ip, timeout=5)
                        if st == 503:
                            seen["readyz_503"] += 1
                        st, hdr, _ = self.api.upload(probe_token, unique_jpeg(data), dt.datetime.now(dt.timezone.utc), host=ip)
                        if st == 503:
                            seen["upload_503"] += 1
                            if hdr.get("retry-after"):
                                seen["retry_after"].add(hdr["retry-after"])
                        elif st in (200, 201):
                            seen["probe_ok"] += 1
                        else:
                            seen["other"][st] = seen["other"].get(st, 0) + 1
                    except OSError as e:
                        seen["other"][type(e).__name__] = seen["other"].get(type(e).__name__, 0) + 1
                time.sleep(0.2)

        deleted = {}

        def progress(i):
            if i == n // 4 and not deleted:
                log("  deleting pod postgres-0")
                kubectl("delete", "pod", "postgres-0", "--wait=false")
                deleted["at"] = i
        t = threading.Thread(target=probe, daemon=True)
        t.start()
        try:
            self.feed(cams, n, rate=5, on_progress=progress)
            back = wait_ready("app.kubernetes.io/name=postgres", 1, 600)
            imgs = self.wait_done(slug, n, 900, cams)
            res = self.check_out(slug, n, imgs, cams)
        finally:
            stop.set()
            t.join(30)
            for c in cams:
                c.stop()
        retries = sum(c.retries() for c in cams)
        if not seen["readyz_503"]:
            raise DrillFailed("backend readiness never dropped while PostgreSQL was gone")
        if not seen["upload_503"] or not seen["retry_after"]:
            raise DrillFailed(f"no 503 with Retry-After while PostgreSQL was gone: {seen}")
        res["detail"] = (f"postgres-0 deleted after {deleted.get('at')} of {n} frames; backend /readyz 503 x{seen['readyz_503']}, "
                         f"uploads 503 x{seen['upload_503']} with Retry-After {sorted(seen['retry_after'])}; "
                         f"camera-agents retried {retries} uploads; {res['out']}/{n} done, lost {res['lost']}")
        return res

    def worker_scaling(self):
        rates = {}
        for replicas in (1, 3):
            kubectl("scale", "deployment/worker-cpu", "--replicas=0")
            t0 = time.monotonic()
            while pods("app.kubernetes.io/name=worker") and time.monotonic() - t0 < 300:
                time.sleep(1)
            slug = self.project(f"workers-{replicas}")
            cams = self.cameras(slug, 4)
            n = self.args.scale_images
            try:
                self.feed(cams, n, rate=40)
                # every frame uploaded and queued before any worker runs
                while sum(c.backlog() for c in cams) and time.monotonic() - t0 < 600:
                    time.sleep(1)
                kubectl("scale", "deployment/worker-cpu", f"--replicas={replicas}")
                wait_ready("app.kubernetes.io/name=worker", replicas, 600)
                # throughput: done images per second from the first to the last result
                first = last = None
                done = 0
                t1 = time.monotonic()
                while done < n and time.monotonic() - t1 < 900:
                    done = status_counts(self.api.images(slug)).get("done", 0)
                    now = time.monotonic()
                    if done and first is None:
                        first = (now, done)
                    last = (now, done)
                    time.sleep(0.5)
                imgs = self.wait_done(slug, n, 60, cams)
                self.check_out(slug, n, imgs, cams)
            finally:
                for c in cams:
                    c.stop()
            rates[replicas] = (last[1] - first[1]) / max(last[0] - first[0], 0.001)
            log(f"  {replicas} worker(s): {rates[replicas]:.2f} images/s")
        kubectl("scale", "deployment/worker-cpu", "--replicas=1")
        wait_ready("app.kubernetes.io/name=worker", 1, 600)
        return {"detail": f"1 worker {rates[1]:.2f} images/s, 3 workers {rates[3]:.2f} images/s "
                          f"({rates[3] / rates[1]:.2f}x) on {os.cpu_count()} CPUs; {2 * self.args.scale_images} images, 0 lost",
                "images_per_s_1": round(rates[1], 2), "images_per_s_3": round(rates[3], 2)}

    def upload_load(self, slug: str, action, rate: float = 8, settle: float = 10) -> dict:
        """Direct uploads at `rate`/s from 4 cameras while `action()` runs, then `settle` s more."""
        tokens = [self.api.camera(slug, f"load-{i}") for i in range(4)]
        stats = {"sent": 0, "ok": 0, "failed": 0, "errors": {}}
        stop = threading.Event()
        lock = threading.Lock()

        def uploader(k):
            i = 0
            while not stop.is_set():
                i += 1
                when = dt.datetime.fromtimestamp(self.clock, dt.timezone.utc) + dt.timedelta(microseconds=k * 1000 + i * 10)
                try:
                    st, _, body = self.api.upload(tokens[k], unique_jpeg(self.frame_bytes[i % len(self.frame_bytes)]),
                                                  when + dt.timedelta(seconds=i))
                    key = None if st in (200, 201) else str(st)
                except OSError as e:
                    key = type(e).__name__
                with lock:
                    stats["sent"] += 1
                    if key is None:
                        stats["ok"] += 1
                    else:
                        stats["failed"] += 1
                        stats["errors"][key] = stats["errors"].get(key, 0) + 1
                time.sleep(4 / rate)
        threads = [threading.Thread(target=uploader, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(5)
            action()
            time.sleep(settle)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        self.clock += 3600
        return stats

    def backend_scaling(self):
        slug = self.project("backend-scale")
        phases = {}

        def up():
            kubectl("scale", "deployment/backend", "--replicas=4")
            kubectl("rollout", "status", "deployment/backend", "--timeout=300s")

        def down():
            kubectl("scale", "deployment/backend", "--replicas=2")
            kubectl("rollout", "status", "deployment/backend", "--timeout=300s")
            time.sleep(10)  # the removed pods' preStop + drain
        phases["2->4"] = self.upload_load(slug, up)
        phases["4->2"] = self.upload_load(slug, down)
        sent = sum(p["sent"] for p in phases.values())
        failed = sum(p["failed"] for p in phases.values())
        ok = sum(p["ok"] for p in phases.values())
        imgs = self.wait_done(slug, ok, 900)
        res = self.check_out(slug, ok, imgs)
        if failed:
            raise DrillFailed(f"{failed} of {sent} uploads failed while scaling: {phases}")
        res["detail"] = (f"{sent} uploads at ~8/s while scaling 2->4 ({phases['2->4']['sent']}) and 4->2 "
                         f"({phases['4->2']['sent']}): 0 failed; {res['out']} done")
        return res

    def rolling_update(self):
        slug = self.project("release")
        overlay = self.args.overlay
        new_image = self.args.next_backend_image
        before = kjson("get", "deployment/backend")["spec"]["template"]["spec"]["containers"][0]["image"]

        def release():
            # docs/operations.md, "Releases": migrate first, then roll out everything else
            subprocess.run([self.args.kustomize, "edit", "set", "image", f"{before.rsplit(':', 1)[0]}={new_image}"],
                           cwd=overlay, check=True, capture_output=True)
            kubectl("delete", "job", "backend-migrate", "--ignore-not-found")
            rendered = subprocess.run([self.args.kustomize, "build", overlay], check=True,
                                      capture_output=True, text=True).stdout
            apply(rendered, "-l", "app.kubernetes.io/component=migration")
            kubectl("wait", "--for=condition=complete", "job/backend-migrate", "--timeout=600s")
            apply(rendered)
            kubectl("rollout", "status", "deployment/backend", "--timeout=600s")
            time.sleep(10)  # old pods' preStop + drain

        def apply(rendered, *extra):
            p = subprocess.run([os.environ.get("KUBECTL", "kubectl"), "apply", "-f", "-", *extra],
                               input=rendered, capture_output=True, text=True)
            if p.returncode != 0:
                raise DrillFailed(f"kubectl apply: {p.stderr.strip()}")
        stats = self.upload_load(slug, release)
        after = kjson("get", "deployment/backend")["spec"]["template"]["spec"]["containers"][0]["image"]
        imgs = self.wait_done(slug, stats["ok"], 900)
        res = self.check_out(slug, stats["ok"], imgs)
        if after != new_image:
            raise DrillFailed(f"backend runs {after}, expected {new_image}")
        if stats["failed"]:
            raise DrillFailed(f"{stats['failed']} of {stats['sent']} uploads failed during the release: {stats['errors']}")
        res["detail"] = (f"{before} -> {after}: migration Job complete, then rolling update; "
                         f"{stats['sent']} uploads at ~8/s, 0 failed, {res['out']} done")
        return res

    def pdb_eviction(self):
        wait_ready("app.kubernetes.io/name=rabbitmq", 3, 600)
        first = eviction("rabbitmq-0")
        second = eviction("rabbitmq-1")
        log(f"  evict rabbitmq-0: {first[0]}; evict rabbitmq-1: {second[0]} {second[1][:160]}")
        back = wait_ready("app.kubernetes.io/name=rabbitmq", 3, 900)
        if first[0] != 201:
            raise DrillFailed(f"first eviction refused: {first[1]}")
        if second[0] != 429:
            raise DrillFailed(f"second eviction not refused: {second}")
        return {"detail": f"evict rabbitmq-0: allowed; evict rabbitmq-1 right after: 429 (disruption budget); "
                          f"3 nodes Ready again after {back:.0f} s"}

    def amqp_bench(self, url: str, replicas: str) -> dict[int, float]:
        p = subprocess.run([self.args.amqp_bench, "--url", url, "--messages", str(self.args.amqp_messages),
                            "--replicas", replicas], capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise DrillFailed(f"amqp_throughput: {p.stderr.strip()[-1500:]}")
        lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        return {x["replicas"]: x["msgs_per_s"] for x in lines if "replicas" in x}

    def rabbitmq_throughput(self):
        """Does a 3-node RabbitMQ process more messages per second than 1 node? A 1-node
        RabbitMQ from the same manifests (same image, configuration, resources) runs next to
        the 3-node one in a namespace of its own; the same load generator measures the
        1-node broker, then the 3-node broker with the job queue's 3 replicas and with a
        single replica (which separates replication cost from node count)."""
        ns1 = "lapseguard-rabbitmq-1node"
        rendered = subprocess.run([self.args.kustomize, "build", self.args.overlay], check=True,
                                  capture_output=True, text=True).stdout
        items = json.loads(kubectl("apply", "--dry-run=client", "-o", "json", "-f", "-", stdin=rendered))["items"]
        keep = []
        for o in items:
            kind, name = o["kind"], o["metadata"]["name"]
            if (kind == "StatefulSet" and name == "rabbitmq") or (kind == "Service" and name in ("rabbitmq", "rabbitmq-nodes")) \
                    or (kind == "ConfigMap" and name.startswith("rabbitmq-config")) \
                    or (kind == "Secret" and name.startswith("lapseguard-rabbitmq")):
                # as rendered, not as live (client dry-run merges the live objects in)
                o["metadata"] = {"name": name, "namespace": ns1, "labels": o["metadata"].get("labels", {})}
                o.pop("status", None)
                if kind == "Service" and o["spec"].get("clusterIP") != "None":
                    o["spec"].pop("clusterIP", None)
                    o["spec"].pop("clusterIPs", None)
                if kind == "StatefulSet":
                    o["spec"]["replicas"] = 1
                keep.append(o)
        if len(keep) != 5:
            raise DrillFailed(f"expected 5 RabbitMQ objects in the rendered overlay, found {len(keep)}")
        kubectl("delete", "namespace", ns1, "--ignore-not-found", "--timeout=300s", check=False)  # an earlier run's
        kubectl("create", "namespace", ns1)
        kubectl("apply", "-f", "-", ns=ns1, stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": keep}))
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 600:
                st = kjson_ns(ns1, "get", "pod", "rabbitmq-0") if kubectl("get", "pod", "rabbitmq-0", ns=ns1, check=False) else None
                if st and pod_ready(st):
                    break
                time.sleep(2)
            else:
                raise DrillFailed("the 1-node RabbitMQ did not become Ready")
            ip1 = json.loads(kubectl("get", "service", "rabbitmq", "-o", "json", ns=ns1))["spec"]["clusterIP"]
            one = self.amqp_bench(f"amqp://{RABBIT_USER}:{RABBIT_PASS}@{ip1}:5672/%2f", "1")
        finally:
            kubectl("delete", "namespace", ns1, "--wait=false", check=False)
        three = self.amqp_bench(self.amqp, "3,1")
        r1, r3, r31 = one[1], three[3], three[1]
        return {"detail": f"1 node: {r1:.0f} msg/s; 3 nodes, job queue on 3 replicas: {r3:.0f} msg/s ({r3 / r1:.2f}x); "
                          f"3 nodes, 1 replica: {r31:.0f} msg/s ({r31 / r1:.2f}x). Publish with confirms + consume "
                          f"with ack, persistent job messages, {self.args.amqp_messages} per round",
                "msgs_per_s_1node": r1, "msgs_per_s_3nodes_3replicas": r3, "msgs_per_s_3nodes_1replica": r31}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", required=True, help="camera-agent binary")
    ap.add_argument("--mc", required=True, help="MinIO client binary")
    ap.add_argument("--amqp-bench", required=True, help="amqp_throughput example binary")
    ap.add_argument("--kustomize", required=True)
    ap.add_argument("--containerd", default="/run/lapseguard-cluster/containerd.sock",
                    help="the node's containerd socket (the worker crash drill kills a container)")
    ap.add_argument("--overlay", required=True, help="writable copy of k8s/overlays/e2e (the release edits it)")
    ap.add_argument("--next-backend-image", required=True, help="image of the release the rolling update rolls out")
    ap.add_argument("--frames", nargs="+", required=True, help="sample JPEG frames with faces")
    ap.add_argument("--summary", default="e2e-summary.json")
    ap.add_argument("--only", default="", help="comma-separated drill names")
    ap.add_argument("--smoke-images", type=int, default=30)
    ap.add_argument("--load-images", type=int, default=200)
    ap.add_argument("--worker-images", type=int, default=40)
    ap.add_argument("--postgres-images", type=int, default=60)
    ap.add_argument("--scale-images", type=int, default=90)
    ap.add_argument("--amqp-messages", type=int, default=20000)
    ap.add_argument("--extra-row", action="append", default=[], help="JSON row to put into the summary (set-up timings)")
    args = ap.parse_args()

    e = E2E(args)
    for row in args.extra_row:
        e.rows.append(json.loads(row))
    drills = [
        ("cameras -> blurred", e.smoke),
        ("delete rabbitmq-1 under 200-image load", e.rabbitmq_node_loss),
        ("kill a worker mid-job", e.worker_loss),
        ("delete postgres-0", e.postgres_loss),
        ("scale workers 1 -> 3", e.worker_scaling),
        ("scale backend 2 -> 4 -> 2 under load", e.backend_scaling),
        ("rolling update + migration Job under load", e.rolling_update),
        ("PDB: evict 2 RabbitMQ pods", e.pdb_eviction),
        ("RabbitMQ 1 vs 3 replicas", e.rabbitmq_throughput),
    ]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    for name, fn in drills:
        if only and fn.__name__ not in only:
            continue
        e.drill(name, fn)

    width = max(len(r["drill"]) for r in e.rows)
    print()
    print(f"{'drill':<{width}}  result  seconds  detail")
    print(f"{'-' * width}  ------  -------  ------")
    for r in e.rows:
        print(f"{r['drill']:<{width}}  {r['result']:<6}  {r.get('seconds', ''):>7}  {r['detail']}")
    with open(args.summary, "w") as f:
        json.dump(e.rows, f, indent=2)
    shutil.rmtree(e.work, ignore_errors=True)
    failed = [r for r in e.rows if r["result"] == "FAIL"]
    passed = [r for r in e.rows if r["result"] == "PASS"]
    print(f"\n{len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
