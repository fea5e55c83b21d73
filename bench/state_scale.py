"""State scale: the state step's events/s with 10k .. 1M sessions already open in state.

Phase 1 opens N sessions (N users, one view each, all within a minute of event time) with the
job's own read + parse + per-user state steps and a no-op sink (bench/noop_job.py state). Phase 2
sends TAIL events (sessions of other users, 10 events each, within the next 15 minutes of event
time, so no open session times out) and runs the same steps again on the same checkpoint: its
events/s is the figure; the N open sessions sit in state untouched. Also reported: the state
store's size per open session and the peak RSS of the JVM and of the whole process tree.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench import load
from bench.jobproc import WORK, Job, say
from bench.load import BOOTSTRAP

TAIL = 100_000
EVENTS_PER_TAIL_SESSION = 10


def _opening(n: int, t0: datetime):
    for i in range(n):
        at = t0 + timedelta(milliseconds=60_000 * i // max(n, 1))
        yield {"event_time": at.strftime("%Y-%m-%d %H:%M:%S.%f"), "event_type": "view", "user_id": 10_000_000 + i,
               "user_session": f"open-{i}", "product_id": i % 5000, "category_id": i % 50, "event_id": f"open-{i}"}


def _tail(n: int, t0: datetime):
    start = t0 + timedelta(minutes=1)
    sessions = n // EVENTS_PER_TAIL_SESSION
    for k in range(n):  # session s's j-th event, interleaved in time order
        s, j = k % sessions, k // sessions
        at = start + timedelta(milliseconds=900_000 * k // n)
        yield {"event_time": at.strftime("%Y-%m-%d %H:%M:%S.%f"), "event_type": "cart" if j == 5 else "view",
               "user_id": 90_000_000 + s, "user_session": f"tail-{s}", "product_id": (s + j) % 5000,
               "category_id": s % 50, "event_id": f"tail-{s}-{j}"}


def _noop_state(name: str, topic: str, checkpoint: Path) -> dict:
    job = Job(name, topic, "bench_noop", {"CHECKPOINT_DIR": str(checkpoint)}, ["state"], "bench/noop_job.py").start()
    if job.wait(timeout_s=3600) != 0:
        raise RuntimeError(f"no-op state job failed (log: {job.log_path})")
    line = next(l for l in job.log_path.read_text().splitlines() if l.startswith("NOOP_RESULT "))
    return {**json.loads(line.split(" ", 1)[1]), "peak_rss_mb": job.peak_rss_mb()}


def measure(open_sessions: int) -> dict:
    topic = f"bench-scale-{open_sessions}"
    t0 = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(microsecond=0)
    say(f"state scale: {open_sessions:,} sessions opened, then {TAIL:,} events of other users")
    load.fresh_topic(BOOTSTRAP, topic)
    checkpoint = WORK / "checkpoints" / f"scale-{open_sessions}"
    shutil.rmtree(checkpoint, ignore_errors=True)
    load.preload(BOOTSTRAP, topic, _opening(open_sessions, t0), open_sessions)
    filled = _noop_state(f"scale-{open_sessions}-fill", topic, checkpoint)
    state_bytes = _state_bytes_after_fill(checkpoint)
    load.preload(BOOTSTRAP, topic, _tail(TAIL, t0), TAIL)
    tail = _noop_state(f"scale-{open_sessions}-tail", topic, checkpoint)
    result = {"open_sessions": open_sessions, "events": tail["events"], "events_per_s": tail["events_per_s"],
              "state_users": tail.get("state_users"), "state_bytes": state_bytes,
              "tail_state_bytes_written": tail.get("state_bytes_written") or 0,
              "state_bytes_per_open_session": round(state_bytes / open_sessions),
              "rss_mb": tail["peak_rss_mb"], "fill_events_per_s": filled["events_per_s"]}
    say(f"state scale [{open_sessions:,} open]: {result['events_per_s']:,} events/s over the tail; state "
        f"{state_bytes / 1e6:.1f} MB for {result['state_users']:,} users; peak RSS {result['rss_mb']}")
    return result


def _state_bytes_after_fill(checkpoint: Path) -> int:
    """The state store's files on disk after the fill run (its changelog: every open session once,
    compressed); the checkpoint's state directory holds nothing else."""
    return sum(f.stat().st_size for f in (checkpoint / "noop-state" / "state").rglob("*") if f.is_file())
