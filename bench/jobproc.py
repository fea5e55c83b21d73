"""The job under measurement as a child process: started like a user starts it, RSS sampled."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
from pymongo import MongoClient

from app.sinks.collections import latest_progress_id

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".local" / "bench"
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/")


def commit() -> str:
    """The short id of the checked-out commit: which code a results file describes."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def say(text: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {text}", flush=True)


class Job:
    """The streaming job as a child process (its own process group), with its RSS sampled."""

    def __init__(self, name: str, topic: str, database: str, env: dict, args: list[str], script: str,
                 fresh: bool = True, log_name: str | None = None):
        """fresh: a new checkpoint and database; else the job goes on from the checkpoint `name`
        left (log: WORK/<log_name>.log)."""
        self.name, self.database = name, database
        self.checkpoint = WORK / "checkpoints" / name
        if fresh:
            shutil.rmtree(self.checkpoint, ignore_errors=True)
            MongoClient(MONGODB_URI).drop_database(database)
        self.log_path = WORK / f"{log_name or name}.log"
        self.env = {**os.environ, "KAFKA_TOPIC": topic, "MONGODB_DATABASE": database,
                    "CHECKPOINT_DIR": str(self.checkpoint), "STARTING_OFFSETS": "earliest", **env}
        self.args, self.script = args, script
        self.rss_samples: list[tuple[float, int, int]] = []  # (t, JVM bytes, whole tree bytes)
        self.first_write_at: float | None = None

    def start(self) -> "Job":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.started_at = time.time()
            self.proc = subprocess.Popen([str(ROOT / "deploy/local/submit.sh"), self.script, *self.args],
                                         cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._sampling = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        return self

    def _sample(self) -> None:
        events = MongoClient(MONGODB_URI)[self.database]["enriched_events"]
        while self._sampling:
            try:
                tree = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
                rss = [(p.name(), p.memory_info().rss) for p in tree]
                self.rss_samples.append((time.time() - self.started_at, sum(r for n, r in rss if n == "java"),
                                         sum(r for _, r in rss)))
            except psutil.Error:
                pass
            # FerretDB counts by scanning every document (88 s for 200,000 under load): probe one
            if self.first_write_at is None and events.find_one({}, {"_id": 1}) is not None:
                self.first_write_at = time.time()
            time.sleep(0.5)

    def wait(self, timeout_s: float, progress_every_s: float = 60) -> int:
        """The job's exit code; a progress line every `progress_every_s` meanwhile (progress())."""
        deadline = time.time() + timeout_s
        while True:
            try:
                code = self.proc.wait(timeout=max(0.1, min(progress_every_s, deadline - time.time())))
                break
            except subprocess.TimeoutExpired:
                if time.time() >= deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name}: no end within {timeout_s:.0f} s (log: {self.log_path})") from None
                say(self.progress())
        self._sampling = False
        return code

    def progress(self) -> str:
        """`<name>: <s> s; sessions batch N (rows, s), store batch M, ...`: each query's latest
        recorded batch (stream_progress' `latest:<query>` documents, read by _id)."""
        db = MongoClient(MONGODB_URI, serverSelectionTimeoutMS=2000)[self.database]
        parts = []
        try:
            for query in ("sessions", "store", "activity"):
                batch = (db["stream_progress"].find_one({"_id": latest_progress_id(query)}) or {}).get("batch")
                if batch:
                    parts.append(f"{query} batch {batch['batch_id']} ({batch['input_rows']:,} rows, "
                                 f"{batch['batch_duration_ms'] / 1000:.1f} s)")
        except Exception as e:  # noqa: BLE001 - a progress line never stops the measurement
            parts.append(f"progress unreadable: {type(e).__name__}")
        finally:
            db.client.close()
        return f"{self.name}: {time.time() - self.started_at:.0f} s; " + (", ".join(parts) or "no batch recorded yet")

    def stop(self) -> None:
        self._sampling = False
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def wait_running(self, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while "running; Spark UI" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{self.name}: the job did not start (log: {self.log_path})")
            time.sleep(0.5)

    def peak_rss_mb(self) -> dict:
        if not self.rss_samples:
            return {"jvm": None, "total": None}
        return {"jvm": round(max(s[1] for s in self.rss_samples) / 2**20),
                "total": round(max(s[2] for s in self.rss_samples) / 2**20)}
