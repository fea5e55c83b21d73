"""Latency: the job running live while a paced producer sends events at a fixed rate."""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

from pymongo import MongoClient

from bench import load, workload
from bench.jobproc import MONGODB_URI, ROOT, Job, commit, say
from bench.load import BOOTSTRAP
from app.sinks.store_lane import caught_up as caught_up_store
from faults.harness import read_records

TOPIC_PREFIX = "bench-"

# The job runs live at the rate this long before anything is measured: the first minutes compile
# and warm the JVM and the Python workers, which is not what a running job shows.
WARM_UP_S = 120


def latency(rate: int, seconds: float, catch_up_s: float = 180) -> dict:
    """The job running live (its default settings) while events arrive at `rate`: producer
    timestamp of a session's last event -> the session's message carrying that event on the act
    lane (its Kafka timestamp: act_*), and -> the provisional session document written (its
    processing_time). Sessions whose last event went out during the first WARM_UP_S seconds are
    not counted."""
    topic = f"{TOPIC_PREFIX}live-{rate}"
    segments, store = f"{topic}-segments", f"{topic}-store"
    say(f"latency: {rate:,} events/s for {WARM_UP_S} s of warm-up + {seconds:.0f} s into fresh topic {topic}, "
        "job running live")
    load.fresh_topic(BOOTSTRAP, topic)
    load.fresh_topic(BOOTSTRAP, segments)
    load.fresh_topic(BOOTSTRAP, store)
    job = Job(f"live-{rate}", topic, f"bench_live_{rate}", {"SEGMENTS_TOPIC": segments, "STORE_TOPIC": store}, [],
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
        while not caught_up_store(db) and time.time() < deadline:  # the store lane behind the sessions query
            time.sleep(1)
        caught_up = _taken_in(db) >= sent["events"] and caught_up_store(db)
        docs = db["user_behavior_segments"].find({}, {"total_events": 1, "processing_time": 1})
        delays = sorted(doc["processing_time"].replace(tzinfo=timezone.utc).timestamp() - last_sent[doc["_id"]][0]
                        for doc in docs if doc["_id"] in last_sent and doc["total_events"] == last_sent[doc["_id"]][1]
                        and last_sent[doc["_id"]][0] >= measured_from)
    finally:
        job.stop()
    first_message: dict[str, float] = {}  # session -> the first message showing all its events
    for record in read_records(segments, BOOTSTRAP):  # a user's messages: one partition, in write order
        value = json.loads(record.value)
        sent_at, count = last_sent.get(value.get("_id"), (0.0, -1))
        if value.get("total_events") == count and sent_at >= measured_from:
            first_message.setdefault(value["_id"], record.timestamp / 1000 - sent_at)
    acts = sorted(first_message.values())
    result = {"rate": rate, "warmup_s": WARM_UP_S, "sent": sent, "caught_up": caught_up, "samples": len(delays),
              "p50_s": percentile(delays, 50), "p95_s": percentile(delays, 95), "p99_s": percentile(delays, 99),
              "act_samples": len(acts), "act_p50_s": percentile(acts, 50), "act_p95_s": percentile(acts, 95),
              "act_p99_s": percentile(acts, 99), "peak_rss_mb": job.peak_rss_mb()}
    say(f"latency at {rate:,}/s: to {segments}: p50 {result['act_p50_s']} s, p99 {result['act_p99_s']} s over "
        f"{len(acts):,} sessions; to MongoDB: p50 {result['p50_s']} s, p95 {result['p95_s']} s, p99 {result['p99_s']} s "
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


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * pct / 100))], 3)


def main() -> None:
    """`make bench-latency`: the latency runs alone (the job live at each rate, its defaults) ->
    bench/results/latency.{md,json}; `make bench` runs the same as part of latest.*."""
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000", help="events/s, comma-separated (default 100,1000)")
    parser.add_argument("--seconds", type=float, default=60, help="measured seconds per rate, after the warm-up")
    args = parser.parse_args()
    load.delete_topics(BOOTSTRAP, TOPIC_PREFIX)
    runs = [latency(int(rate), args.seconds) for rate in args.rates.split(",")]
    load.delete_topics(BOOTSTRAP, TOPIC_PREFIX)
    code = commit()
    lines = ["# Latency: event -> act lane, event -> MongoDB (`make bench-latency`)", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {code}, 2 cores, the local stack; the job "
             f"live with its default settings and all outputs on (profiles, triggers); {WARM_UP_S} s of warm-up at "
             f"each rate, then {args.seconds:g} s measured; one run per rate. A session's last event's producer "
             "timestamp -> the first message on behavior_segments showing all its events (Kafka timestamp), and -> "
             "its provisional document in user_behavior_segments (processing_time).", "",
             "| rate (events/s) | achieved | to Kafka: sessions | p50 s | p95 s | p99 s | to MongoDB: sessions "
             "| p50 s | p95 s | p99 s | kept up |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {x['rate']:,} | {x['sent']['events_per_s']:,} | {x['act_samples']:,} | {x['act_p50_s']} | "
              f"{x['act_p95_s']} | {x['act_p99_s']} | {x['samples']:,} | {x['p50_s']} | {x['p95_s']} | {x['p99_s']} | "
              f"{'yes' if x['caught_up'] else 'NO'} |" for x in runs]
    lines += ["", "Goals (issue 19): to Kafka p50 <= 1.5 s and p99 <= 3 s at 1,000 events/s, p50 <= 1 s at 100 "
              "events/s; to MongoDB p99 <= 15 s at 1,000 events/s."]
    out = ROOT / "bench" / "results"
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    (out / "latency.json").write_text(json.dumps({"commit": code, "runs": runs}, indent=1) + "\n")
    say("\n".join(lines))


if __name__ == "__main__":
    main()
