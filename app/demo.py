"""`make demo`: the job on the local stack with generated traffic, then the results.

Starts the streaming job, sends generated sessions (with a few malformed records), waits
until the job has taken in every record, prints the report, and stops the job.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient

from app import report
from app.experiments.design import EXAMPLE_EXPERIMENTS
from app.generator.cli import main as generate
from app.sinks import collections as C
from app.sinks.store_lane import caught_up

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sessions = os.environ.get("DEMO_SESSIONS", "500")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    topic = os.environ.get("KAFKA_TOPIC", "ecommerce_events")
    db = MongoClient(os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/"))[
        os.environ.get("MONGODB_DATABASE", "bigdata")]
    checkpoint = os.environ.get("CHECKPOINT_DIR", str(ROOT / ".local/checkpoints/demo"))
    # Each demo is a fresh run: its sessions start hours in the past, so an old checkpoint's
    # watermark would count them all as late. The topic keeps earlier runs' events.
    print(f"demo: fresh start: dropping database {db.name} and checkpoint {checkpoint}", flush=True)
    db.client.drop_database(db.name)
    shutil.rmtree(checkpoint, ignore_errors=True)
    before = _records(db)
    log_path = ROOT / ".local" / "logs" / "demo-job.log"
    print(f"demo: starting the streaming job (log: {log_path}; Spark UI: http://127.0.0.1:4040)", flush=True)
    experiments = os.environ.get("EXPERIMENTS_FILE", str(EXAMPLE_EXPERIMENTS))
    env = {**os.environ, "CHECKPOINT_DIR": checkpoint, "EXPERIMENTS_FILE": experiments}  # the job's defaults
    with open(log_path, "w") as log:
        job = subprocess.Popen([str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        print(f"demo: sending {sessions} generated sessions to {topic} at {bootstrap}", flush=True)
        intent = ROOT / ".local" / "demo-intent.jsonl"
        if generate([bootstrap, topic, "--sessions", sessions, "--bad-ratio", "0.01", "--bots", "0.02",
                     "--fraud", "0.02", "--returning", "0.3", "--intent-file", str(intent),
                     *_simulated_effect(experiments)]) != 0:
            return 1
        sent = _count_sent(intent)
        if not _wait_for(db, before + sent, job, log_path):
            return 1
        _wait_for_closing_batch(db)
        report.main()
        return 0
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=60)
        port = os.environ.get("API_PORT", "8000")
        print("demo: job stopped. Query the results: make mongosh, or ./deploy/scripts/query_behavior_segments.sh;\n"
              "      the actions it fired: python -m app.actions.consume --from-beginning --idle-timeout 5s;\n"
              f"      the dashboard and the query API: make api, then open http://127.0.0.1:{port}/ "
              f"(API docs: http://127.0.0.1:{port}/docs)")


def _simulated_effect(experiments: str) -> list[str]:
    """With the example experiments, 10% off converts 5 points better (so the report shows a lift)."""
    return ["--experiments", experiments, "--effect", "ten_percent_off=+0.05"] \
        if experiments == str(EXAMPLE_EXPERIMENTS) else []


def _wait_for_closing_batch(db, timeout_s: int = 120) -> None:
    """The no-data batch after the last data batch closes the sessions its watermark passed."""
    print("demo: waiting for the batch that closes sessions behind the watermark", flush=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = list(db[C.PROGRESS].find({"query": "sessions"}).sort("batch_id", -1).limit(1))
        if last and last[0]["input_rows"] == 0 and caught_up(db):  # and the store lane has stored it
            return
        time.sleep(2)


def _records(db) -> int:
    return db[C.EVENTS].estimated_document_count() + db[C.QUARANTINE].estimated_document_count()


def _count_sent(intent: Path) -> int:
    """Valid events plus malformed records the generator recorded in its intent file."""
    lines = [json.loads(line) for line in intent.open()]
    return sum(x.get("events", 0) for x in lines) + sum(1 for x in lines if "malformed" in x)


def _wait_for(db, target: int, job: subprocess.Popen, log_path: Path, timeout_s: int = 600) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if job.poll() is not None:
            print(f"demo: the job exited with {job.returncode}; see {log_path}", file=sys.stderr)
            return False
        done = _records(db)
        print(f"demo: {done}/{target} records written ({time.monotonic() - started:.0f} s)", flush=True)
        if done >= target:
            return True
        time.sleep(3)
    print(f"demo: timed out after {timeout_s} s; see {log_path}", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main())
