"""The pieces every fault scenario uses: the local stack's services, the job under a supervisor
loop (it restarts the job when it exits, as Kubernetes would), workloads with recorded intent,
and the comparison of every output collection with an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from pymongo import MongoClient

from app.experiments.design import EXAMPLE_EXPERIMENTS
from app.generator.cli import main as generator_main
from app.sinks import live_feed, user_activity
from app.sinks.packing import unpacked

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".local" / "faults"
STACK = ROOT / "deploy" / "local" / "stack.sh"
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:" + os.environ.get("KAFKA_PORT", "9092"))
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:" + os.environ.get("MONGO_PORT", "27017") + "/")
OUTPUTS = ("user_behavior_segments", "segment_distribution", "conversion_funnel", "enriched_events",
           "quarantined_events", "user_profiles", "behavior_alerts", "trigger_executions",
           "event_counts_hourly", "daily_metrics", "session_paths", "retention_cohorts",  # these four: what the API reads
           "experiment_results", "user_activity", "live_feed")
# What reached Kafka: each run's alerts and actions go to topics named after its database (see
# job_topics); a replay may send a message twice (at-least-once), so the distinct ids are compared.
TOPIC_IDS = {"alerts": "alert_id", "actions": "execution_id"}
VOLATILE = {"processing_time", "ingest_time", "quarantined_at", "run_id", "batch_id", "updated_at", "detected_at",
            "executed_at"}


def say(text: str) -> None:
    print(f"[faults {datetime.now():%H:%M:%S}] {text}", flush=True)


def service(action: str, name: str) -> None:
    """stack.sh up|down kafka|mongo: the project's own script, as a user would run it. In a session
    of its own, so a service restarted here outlives a harness stopped with its process group."""
    subprocess.run([str(STACK), action, name], cwd=ROOT, check=True, capture_output=True, text=True,
                   start_new_session=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workload:
    """Generated sessions (with recorded intent), duplicates and malformed records in one topic."""

    def __init__(self, name: str, sessions: int, seed: int, duplicate_ratio: float = 0.0, bad_ratio: float = 0.0):
        self.topic = f"faults_{name}_{os.getpid()}_{int(time.time())}"
        self.intent_file = WORK / f"{self.topic}.intent.jsonl"
        WORK.mkdir(parents=True, exist_ok=True)
        args = [BOOTSTRAP, self.topic, "--sessions", str(sessions), "--seed", str(seed),
                "--spread-minutes", "240", "--start-minutes-ago", "300", "--intent-file", str(self.intent_file)]
        if duplicate_ratio:
            args += ["--duplicate-ratio", str(duplicate_ratio)]
        if bad_ratio:
            args += ["--bad-ratio", str(bad_ratio)]
        if generator_main(args) != 0:
            raise RuntimeError(f"the generator failed for {self.topic}")
        lines = [json.loads(line) for line in self.intent_file.read_text().splitlines() if line.strip()]
        self.sessions = [x for x in lines if "segment" in x]
        self.malformed = [x for x in lines if "malformed" in x]
        self.events = sum(s["events"] for s in self.sessions)  # distinct good events
        self.records = topic_records(self.topic)  # everything sent: events, copies, malformed

    @property
    def copies(self) -> int:
        return self.records - self.events - len(self.malformed)


def topic_records(topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


class SupervisedJob:
    """The job as a user runs it (deploy/local/submit.sh), restarted by a loop whenever it exits,
    after a back-off, as a Deployment would; exits are recorded with their last error line."""

    def __init__(self, name: str, topic: str, database: str, checkpoint_dir: Path | None = None, **env: str):
        self.name, self.database = name, database
        self.checkpoint = checkpoint_dir or WORK / "checkpoints" / name
        self.health_port = free_port()
        self.env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "MONGODB_URI": MONGODB_URI,
                    "KAFKA_TOPIC": topic, "MONGODB_DATABASE": database, "CHECKPOINT_DIR": str(self.checkpoint),
                    "TRIGGER_INTERVAL": "0.5s", "HEALTH_PORT": str(self.health_port), **job_topics(database), **env}
        self.exits: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self._supervising = False
        self._lock = threading.Lock()

    def run_once(self, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
        """One unsupervised run (e.g. --available-now for the reference)."""
        return subprocess.run([str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py",
                               *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def start(self) -> "SupervisedJob":
        self._supervising = True
        self._spawn()
        threading.Thread(target=self._supervise, name=f"supervise-{self.name}", daemon=True).start()
        return self

    def _spawn(self) -> None:
        log_path = WORK / f"{self.name}.{len(self.exits)}.log"
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py"], cwd=ROOT,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.log_path = log_path

    def _supervise(self) -> None:
        backoff = 2.0
        while self._supervising:
            started = time.time()
            code = self.proc.wait()
            if not self._supervising:
                return
            errors = [line for line in self.log_path.read_text(errors="replace").splitlines()
                      if line.startswith("error:")]
            self.exits.append({"at": time.time(), "code": code, "error": errors[-1] if errors else None,
                               "log": str(self.log_path)})
            if time.time() - started > 120:  # it had been running well: a fresh failure
                backoff = 2.0
            say(f"{self.name}: job exited {code}: {errors[-1] if errors else '(no error line)'}; restarting "
                f"in {backoff:.0f} s")
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if self._supervising:
                with self._lock:
                    self._spawn()

    def kill_hard(self) -> None:
        """kill -9 of the driver's whole process group (the supervisor restarts it)."""
        with self._lock:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def python_workers(self) -> list:
        """The executors' Python processes (pyspark.daemon and its forks) under this job's JVM."""
        import psutil
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        workers = []
        for process in tree:
            try:  # a finished fork can be a zombie for a moment: it has no command line
                if "pyspark.daemon" in " ".join(process.cmdline()):
                    workers.append(process)
            except psutil.Error:
                pass
        return workers

    def stop(self) -> None:
        self._supervising = False
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def status(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/status", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None


def job_topics(database: str) -> dict:
    """The settings that send a run's alerts, actions and session messages to topics of its own,
    with an experiment on."""
    return {"ALERTS_TOPIC": f"{database}_alerts", "ACTIONS_TOPIC": f"{database}_actions",
            "SEGMENTS_TOPIC": f"{database}_segments",
            "EXPERIMENTS_FILE": str(EXAMPLE_EXPERIMENTS)}


def snapshot(database: str, uri: str = MONGODB_URI, bootstrap: str = BOOTSTRAP) -> dict[str, list]:
    """Every output collection, sorted by _id, without the fields that record wall-clock time; the
    distinct ids that reached the run's alerts and actions topics (see job_topics); and each
    session's latest message on its segments topic (its state; a retracted one left out)."""
    client = MongoClient(uri)
    try:
        db = client[database]
        out = {name: [_stable(unpacked(doc, PACKED.get(name, ()))) for doc in db[name].find().sort("_id", 1)]
               for name in OUTPUTS}
    finally:
        client.close()
    for kind, id_field in TOPIC_IDS.items():
        out[f"topic:{kind}"] = sorted({json.loads(value)[id_field] for value in topic_values(f"{database}_{kind}",
                                                                                             bootstrap)})
    out["topic:segments"] = latest_session_messages(topic_values(f"{database}_segments", bootstrap))
    return out


# the lists whose items are stored one JSON string each (app/sinks/packing.py): compared decoded,
# without their items' wall-clock fields
PACKED = {"user_activity": user_activity.PACKED, "live_feed": live_feed.ITEMS}


def _stable(doc: dict) -> dict:
    """A document without its wall-clock fields, also in the documents of its lists (live_feed's items)."""
    return {k: [_stable(i) if isinstance(i, dict) else i for i in v] if isinstance(v, list) else v
            for k, v in doc.items() if k not in VOLATILE}


def latest_session_messages(values: list[bytes]) -> list[dict]:
    """The act lane's session messages (values in (partition, offset) order: a user's are in one
    partition, in write order) -> each session's latest, sorted by _id; retracted sessions left out."""
    latest = {}
    for value in values:
        message = json.loads(value)
        latest[message["_id"]] = message
    return [latest[k] for k in sorted(latest) if latest[k]["status"] != "retracted"]


def topic_values(topic: str, bootstrap: str = BOOTSTRAP) -> list[bytes]:
    """Every record's value ([] when the topic does not exist)."""
    return [r.value for r in read_records(topic, bootstrap)]


def read_records(topic: str, bootstrap: str = BOOTSTRAP, timeout_s: float = 60) -> list:
    """Every record of the topic in (partition, offset) order, read up to its end offsets (never
    "until some seconds of silence"); [] when the topic does not exist."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end, records, deadline = consumer.end_offsets(partitions), {}, time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out reading {topic} to its end offsets {end}")
            for batch in consumer.poll(timeout_ms=1000).values():
                records.update({(r.partition, r.offset): r for r in batch})
        return [records[k] for k in sorted(records)]
    finally:
        consumer.close()


def differences(expected: dict, actual: dict) -> list[str]:
    """Collections that differ, with counts: empty when the run equals the reference."""
    return [f"{name}: {len(actual[name])} documents vs {len(expected[name])}, "
            f"{sum(1 for a, b in zip(actual[name], expected[name]) if a != b)} differ"
            for name in expected if actual[name] != expected[name]]


def store_counts(database: str, workload: Workload) -> dict:
    """What the store holds against what was sent: distinct events, events counted twice, lost."""
    client = MongoClient(MONGODB_URI)
    try:
        db = client[database]
        distinct = db.enriched_events.count_documents({})
        counted = sum(d["total_events"] for d in db.user_behavior_segments.find({}, {"total_events": 1}))
        quarantined = db.quarantined_events.count_documents({})
        skipped = sum(p.get("duplicates", 0) for p in db.stream_progress.find({"query": "sessions"}, {"duplicates": 1}))
        return {"sent": workload.records, "distinct_events": distinct, "quarantined": quarantined,
                "copies_sent": workload.copies, "copies_skipped": skipped,
                "duplicates": max(0, counted - distinct),
                "lost": max(0, workload.events - distinct) + max(0, len(workload.malformed) - quarantined)}
    finally:
        client.close()


def wait_until(check, timeout_s: float, what: str, interval_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def drop(database: str) -> None:
    client = MongoClient(MONGODB_URI)
    client.drop_database(database)
    client.close()
