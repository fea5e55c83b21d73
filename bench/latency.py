"""Latency: the job running live while a paced producer sends events at a fixed rate."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from pymongo import MongoClient

from bench import load, workload
from bench.jobproc import MONGODB_URI, Job, say
from bench.load import BOOTSTRAP

TOPIC_PREFIX = "bench-"

# The job runs live at the rate this long before anything is measured: the first minutes compile
# and warm the JVM and the Python workers, which is not what a running job shows.
WARM_UP_S = 120


def latency(rate: int, seconds: float, catch_up_s: float = 180) -> dict:
    """The job running live (trigger 1 s) while events arrive at `rate`: producer timestamp ->
    the provisional session document written (its processing_time). Sessions whose last event
    went out during the first WARM_UP_S seconds are not counted."""
    topic = f"{TOPIC_PREFIX}live-{rate}"
    say(f"latency: {rate:,} events/s for {WARM_UP_S} s of warm-up + {seconds:.0f} s into fresh topic {topic}, "
        "job running live")
    load.fresh_topic(BOOTSTRAP, topic)
    job = Job(f"live-{rate}", topic, f"bench_live_{rate}", {"TRIGGER_INTERVAL": "1s"}, [],
              "app/jobs/streaming/advanced_streaming.py").start()
    try:
        job.wait_running()
        last_sent: dict[str, tuple[float, int]] = {}
        measured_from = time.time() + WARM_UP_S
        sent = load.paced(BOOTSTRAP, topic, _live_events(rate, WARM_UP_S + seconds, last_sent), rate,
                          WARM_UP_S + seconds)
        db = MongoClient(MONGODB_URI)[job.database]
        deadline = time.time() + catch_up_s
        while _taken_in(db) < sent["events"] and time.time() < deadline:
            time.sleep(1)
        caught_up = _taken_in(db) >= sent["events"]
        # stream_progress is written after a batch's writes, so its sessions are there too
        docs = db["user_behavior_segments"].find({}, {"total_events": 1, "processing_time": 1})
        delays = sorted(doc["processing_time"].replace(tzinfo=timezone.utc).timestamp() - last_sent[doc["_id"]][0]
                        for doc in docs if doc["_id"] in last_sent and doc["total_events"] == last_sent[doc["_id"]][1]
                        and last_sent[doc["_id"]][0] >= measured_from)
    finally:
        job.stop()
    result = {"rate": rate, "warmup_s": WARM_UP_S, "sent": sent, "caught_up": caught_up, "samples": len(delays),
              "p50_s": _percentile(delays, 50), "p95_s": _percentile(delays, 95), "p99_s": _percentile(delays, 99),
              "peak_rss_mb": job.peak_rss_mb()}
    say(f"latency at {rate:,}/s: p50 {result['p50_s']} s, p95 {result['p95_s']} s, p99 {result['p99_s']} s "
        f"over {len(delays):,} sessions{'' if caught_up else ' (did NOT catch up: backlog)'}")
    return result


def _taken_in(db) -> int:
    """Events the sessions query has finished (its batches' input rows): counting the documents
    would scan them all on FerretDB."""
    return sum(d["input_rows"] for d in db["stream_progress"].find({"query": "sessions"}, {"input_rows": 1}))


def _live_events(rate: int, seconds: float, last_sent: dict):
    """The workload's interleaved sessions, stamped with the send time; records each session's
    last send time and event count (what its final provisional document must show)."""
    counts: dict[str, int] = {}
    for event in workload.events(int(rate * seconds) + 1):
        now = time.time()
        event = {**event, "event_time": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")}
        session = event["user_session"]
        counts[session] = counts.get(session, 0) + 1
        last_sent[session] = (now, counts[session])
        yield event


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * pct / 100))], 3)
