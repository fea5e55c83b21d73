"""The soak: live traffic at a steady rate, sessions opening and closing at the same pace, for N
minutes; samples the job's RSS and its state, and fits their slope per hour."""
from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import datetime, timezone

import numpy as np
import psutil
from pymongo import MongoClient

from bench import load, workload
from faults.harness import BOOTSTRAP, MONGODB_URI, SupervisedJob, drop, say

# Short gaps so sessions close minutes after they open: the open count levels off early.
SOAK_SETTINGS = {"SESSION_GAP": "2m", "WATERMARK_DELAY": "10s", "SESSION_MAX": "15m",
                 "SESSION_ID_RETENTION": "15m", "TRIGGER_INTERVAL": "2s"}


def live_events(n_events: int):
    """The benchmark's session mix, each event stamped with its send time."""
    for event in workload.events(n_events):
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        yield {**event, "event_time": stamp}


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def _dir_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if os.path.exists(os.path.join(d, f)))


def soak(minutes: float, rate: int = 100, sample_every_s: float = 30, warm_up_s: float = 300) -> dict:
    topic = database = f"faults_soak_{int(time.time())}"
    load.fresh_topic(BOOTSTRAP, topic)
    job = SupervisedJob("soak", topic, database, **SOAK_SETTINGS)
    shutil.rmtree(job.checkpoint, ignore_errors=True)
    seconds = minutes * 60
    producer = threading.Thread(target=load.paced, args=(BOOTSTRAP, topic, live_events(int(rate * seconds) + 1),
                                                         rate, seconds), daemon=True)
    say(f"soak: {minutes:g} min at {rate} events/s on {topic}")
    job.start()
    producer.start()
    db = MongoClient(MONGODB_URI)[database]
    samples, started = [], time.time()
    try:
        while producer.is_alive():
            time.sleep(sample_every_s)
            last = db.stream_progress.find_one({"query": "sessions"}, sort=[("batch_id", -1)]) or {}
            sample = {"t_s": round(time.time() - started), "rss_mb": round(_tree_rss(job.proc.pid) / 2**20, 1),
                      "open_sessions": last.get("open_sessions"), "state_users": last.get("state_users"),
                      "state_memory_mb": round((last.get("state_memory_bytes") or 0) / 2**20, 2),
                      "state_disk_mb": round(_dir_bytes(job.checkpoint / "sessions" / "state") / 2**20, 2)}
            samples.append(sample)
            say(f"soak: {sample}")
    finally:
        job.stop()
        drop(database)
    return {"minutes": minutes, "rate": rate, "warm_up_s": warm_up_s, "samples": samples, "exits": len(job.exits),
            **{f"{key}_slope_per_hour": slope(samples, key, warm_up_s)
               for key in ("rss_mb", "open_sessions", "state_users", "state_memory_mb", "state_disk_mb")}}


def slope(samples: list[dict], key: str, warm_up_s: float) -> dict | None:
    """Least-squares slope after the warm-up, per hour, and as a share of the mean level."""
    points = [(s["t_s"], s[key]) for s in samples if s["t_s"] >= warm_up_s and s[key] is not None]
    if len(points) < 3:
        return None
    t, y = np.array(points, dtype=float).T
    per_hour = float(np.polyfit(t / 3600.0, y, 1)[0])
    mean = float(y.mean())
    return {"per_hour": round(per_hour, 2), "mean": round(mean, 2),
            "pct_per_hour": round(100 * per_hour / mean, 1) if mean else None}
