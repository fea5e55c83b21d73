"""The image end to end (issue 21, "Ship what we deploy"): the generator, the streaming job and the API
run from the built image, with the chart's command lines, against the local stack.

The image is this checkout's (deploy/image/ensure.sh builds it when it is missing or was built from
another checkout). The chart is rendered (helm template) for the test's topic, database and ports,
and each container runs as it is rendered (tests/e2e/imagerun.py, deploy/image/run.sh): its command
and args (tini, spark-submit with the image's --jars glob, the driver's --conf's), its env, the pod's
uid:gid 10001:10001, without capabilities, on a read-only root file system, with host directories for
its volumes (/tmp, the checkpoint, the rules ConfigMap read-only). The job then runs from the checkout
(deploy/local/submit.sh) on the same topic with the same settings into another database: both must
write the same sessions, and the same outputs altogether (faults.harness.snapshot). The API, from the
image, must answer /readyz, and /v1/funnel with the key (the image job's funnel) but not without it.
On the read-only root it found the driver's working directory unwritable (Spark makes ./artifacts):
the chart now starts the driver in its /tmp emptyDir.

What this does not reproduce (buildah --isolation chroot, no Kubernetes):
- the network: the containers share this machine's network namespace (chroot isolation makes none),
  so Kafka and FerretDB are the local stack's on 127.0.0.1, and the two binds the chart makes to
  0.0.0.0 in a pod's own namespace (spark.driver.bindAddress, API_HOST) are made to 127.0.0.1 here;
  the container's hostname resolves to 127.0.0.1 (run.sh's /etc/hosts; the kubelet's names the pod IP);
- the PID namespace: tini is not PID 1 (it warns, and reaps only its own children);
- the Spark cluster: the driver runs with job.master=local[2] and --available-now (job.args), so
  no master, no workers, no executors in other pods, and spark.authenticate has no peer to check;
- the kubelet's read-only root: buildah run has no --read-only; run.sh remounts the container's overlay
  read-only, with /run a root-owned host directory (buildah's .containerenv goes there; uid 10001
  cannot write it). allowPrivilegeEscalation=false (no_new_privs), the seccomp profile, the
  resource limits, the probes and the init containers (topic and MongoDB waits) are not applied;
- the Secrets and MongoDB's users: MONGODB_URI is the stack's, without auth (FerretDB, not MongoDB
  7), and the values the chart takes from Secrets are passed as env.
"""
from __future__ import annotations

import secrets
import time
import uuid
from collections import Counter

import httpx
import pytest

from tests.conftest import eventually
from tests.e2e.imagerun import (chart_container, ensure_image, free_port, render, run_in_image, start_in_image,
                                stop_in_image)
from tests.e2e.jobrun import CLOCK_USER, advance_watermark, job_env, run_job, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.full]

SESSIONS = 40
SESSION_FIELDS = ("user_id", "behavior_segment", "status", "total_events", "view_count", "cart_count",
                  "purchase_count", "total_amount")
# The driver's env that is neither a place in the pod (paths, ports, topics, the database) nor a
# Secret's: the job's settings, given to the run from the checkout as they are.
PLACES = {"HOME", "POD_IP", "SPARK_AUTH_SECRET", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "ALERTS_TOPIC",
          "ACTIONS_TOPIC", "MONGODB_URI", "MONGODB_DATABASE", "CHECKPOINT_DIR", "RULES_FILE", "HEALTH_PORT"}


@pytest.fixture(scope="module")
def image():
    start = time.monotonic()
    name = ensure_image()
    print(f"image: {name} ready in {time.monotonic() - start:.0f} s", flush=True)
    return name


def _loopback(argv: list[str]) -> list[str]:
    """The chart binds the driver to 0.0.0.0 of its pod; here that would be every address of this machine."""
    return [a.replace("spark.driver.bindAddress=0.0.0.0", "spark.driver.bindAddress=127.0.0.1") for a in argv]


def _sessions(docs: list[dict]) -> dict[str, tuple]:
    return {d["_id"]: tuple(d.get(f) for f in SESSION_FIELDS) for d in docs if d.get("user_id") != CLOCK_USER}


def test_the_image_runs_the_charts_generator_job_and_api_like_the_checkout(image, stack, mongo, tmp_path):
    name = "e2e_img_" + uuid.uuid4().hex[:10]
    topic, db_image, db_checkout = name, name + "_image", name + "_checkout"
    key = secrets.token_hex(24)
    health_port, api_port = free_port(), free_port()
    docs = render({
        "kafka.enabled": False, "kafka.externalBootstrapServers": stack["bootstrap"], "kafka.topic": topic,
        "kafka.alertsTopic": f"{db_image}_alerts", "kafka.actionsTopic": f"{db_image}_actions",
        "mongodb.enabled": False, "mongodb.externalUri": stack["mongodb_uri"], "mongodb.database": db_image,
        "job.master": "local[2]", "job.args": ["--available-now"], "job.health.port": health_port,
        "job.uiPort": free_port(), "job.driverPort": free_port(), "job.blockManagerPort": free_port(),
        "api.port": api_port, "api.jobStatusUrl": f"http://127.0.0.1:{health_port}/status",
        "generator.enabled": True, "generator.sessions": SESSIONS, "generator.rate": 0,
        "generator.extraArgs": ["--seed", "21", "--bad-ratio", "0.05"],
    })
    pod = {"POD_IP": "127.0.0.1"}
    timings = {}
    try:
        # The generator's Job, from the image.
        generator = chart_container(docs, "Job", "generator", pod, tmp_path)
        assert generator.read_only and generator.user == "10001:10001"
        start = time.monotonic()
        run_in_image(image, generator, tmp_path / "generator.log", timeout=300)
        timings["generator (image)"] = time.monotonic() - start
        advance_watermark(stack["bootstrap"], topic)

        # The streaming job's driver, from the image: spark-submit with the image's jars, --available-now.
        job = chart_container(docs, "Deployment", "streaming",
                              {**pod, "SPARK_AUTH_SECRET": secrets.token_hex(16), "MONGODB_URI": stack["mongodb_uri"]},
                              tmp_path)
        assert job.read_only and job.user == "10001:10001"
        assert job.argv[:3] == ["/usr/bin/tini", "--", "/opt/venv/bin/spark-submit"] and "--available-now" in job.argv
        assert job.argv[job.argv.index("--jars") + 1] == "/opt/stack/spark-jars/*.jar"
        job.argv = _loopback(job.argv)
        start = time.monotonic()
        run_in_image(image, job, tmp_path / "job.log")
        timings["job (image)"] = time.monotonic() - start

        # The same job from the checkout, same topic and settings, into another database.
        settings = {k: v for k, v in job.env.items() if k not in PLACES}
        start = time.monotonic()
        run_job(job_env(stack, topic, db_checkout, tmp_path / "checkout-ckpt", **settings,
                        HEALTH_PORT=str(free_port()), ALERTS_TOPIC=f"{db_checkout}_alerts",
                        ACTIONS_TOPIC=f"{db_checkout}_actions"))
        timings["job (checkout)"] = time.monotonic() - start

        from_image = snapshot(stack["mongodb_uri"], db_image)
        from_checkout = snapshot(stack["mongodb_uri"], db_checkout)
        sessions = _sessions(from_image["user_behavior_segments"])
        assert len({s[0] for s in sessions.values()}) >= SESSIONS * 0.9, "the image's job wrote too few sessions"
        assert any(s[2] == "closed" for s in sessions.values()), "no session closed: the watermark did not advance"
        assert sessions == _sessions(from_checkout["user_behavior_segments"])
        assert from_image == from_checkout

        # The API, from the image, on the image job's database.
        closed = Counter(s[1] for s in sessions.values() if s[2] == "closed")
        timings["API ready (image)"] = _api_answers(image, docs, stack, key, closed, tmp_path)
        print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), flush=True)
    finally:
        mongo.drop_database(db_image)
        mongo.drop_database(db_checkout)


def _api_answers(image: str, docs: list[dict], stack: dict, key: str, closed: Counter, tmp_path) -> float:
    """The chart's API container from the image: /readyz, /v1/funnel with the key equal to the closed
    sessions per segment, 401 without it. Returns the seconds it took to be ready."""
    api = chart_container(docs, "Deployment", "api", {"POD_IP": "127.0.0.1", "MONGODB_URI": stack["mongodb_uri"],
                                                     "API_KEY": key}, tmp_path)
    assert api.read_only and api.user == "10001:10001" and api.env["API_HOST"] == "0.0.0.0"
    api.env["API_HOST"] = "127.0.0.1"  # the pod's 0.0.0.0 would be every address of this machine
    base = f"http://127.0.0.1:{api.env['API_PORT']}"
    start = time.monotonic()
    server = start_in_image(image, api, tmp_path / "api.log")
    try:
        def ready():
            assert server.poll() is None, (tmp_path / "api.log").read_text()[-4000:]
            try:
                return httpx.get(base + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        eventually(ready, timeout_s=120, what="the image's API to answer /readyz")
        seconds = time.monotonic() - start
        funnel = httpx.get(base + "/v1/funnel", headers={"X-API-Key": key}, timeout=10)
        assert funnel.status_code == 200, funnel.text
        assert {s["behavior_segment"]: s["total_sessions"] for s in funnel.json()["segments"]} == dict(closed)
        assert httpx.get(base + "/v1/funnel", timeout=10).status_code == 401
        return seconds
    finally:
        stop_in_image(server)
