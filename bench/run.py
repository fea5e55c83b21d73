"""`make bench` / `make bench-quick`: throughput, upper bound, baseline, sink ceiling, latency and
scaling of the job, in one run on this machine, written to bench/results/latest.{json,md,png}.

Every measurement gets a fresh topic or database and checkpoint; the job runs exactly as a user
runs it (deploy/local/submit.sh, the same settings), on the local stack (`make up`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
from pymongo import MongoClient

from bench import load, sink_ceiling, state_scale, workload
from bench.baseline import run_baseline
from bench.jobproc import MONGODB_URI, ROOT, Job, commit, say
from bench.latency import TOPIC_PREFIX, latency
from bench.load import BOOTSTRAP
from bench.report import write_report

RESULTS = ROOT / "bench" / "results"
PROFILES = {
    # events of the main run, scaling sizes, baseline seconds, latency rates and seconds per rate
    # and open sessions of the state-scale runs
    "quick": {"events": 100_000, "sizes": [20_000, 100_000], "baseline_s": 20, "rates": [1_000],
              "latency_s": 30, "open_sessions": [10_000, 100_000]},
    "full": {"events": 500_000, "sizes": [100_000, 500_000], "baseline_s": 60, "rates": [1_000],
             "latency_s": 60, "open_sessions": [10_000, 100_000, 1_000_000]},
}


def preload(n_events: int) -> tuple[str, dict]:
    topic = f"{TOPIC_PREFIX}{n_events}"
    say(f"preload: {n_events:,} events of the generator's session mix into fresh topic {topic}")
    load.fresh_topic(BOOTSTRAP, topic)
    figures = load.preload(BOOTSTRAP, topic, workload.events(n_events), n_events)
    say(f"preload: {figures['events']:,} events in {figures['seconds']} s ({figures['events_per_s']:,}/s)")
    return topic, figures


def throughput(topic: str, n_events: int, label: str, env: dict | None = None) -> dict:
    """The job over a preloaded topic (availableNow): first offset read -> last MongoDB write."""
    say(f"throughput [{label}]: the job over {n_events:,} events, all outputs on")
    segments = f"{topic}-segments-{label}"  # its own act-lane topic: cold start to the first message
    store = f"{topic}-store-{label}"  # and a store lane of its own, empty
    load.fresh_topic(BOOTSTRAP, segments)
    load.fresh_topic(BOOTSTRAP, store)
    job = Job(f"job-{label}", topic, f"bench_{label}", {"SEGMENTS_TOPIC": segments, "STORE_TOPIC": store, **(env or {})},
              ["--available-now"],
              "app/jobs/streaming/advanced_streaming.py").start()
    code = job.wait(timeout_s=max(600, n_events / 200))
    if code != 0:
        raise RuntimeError(f"the job exited {code} (log: {job.log_path})")
    db = MongoClient(MONGODB_URI)[job.database]
    progress = sorted(db["stream_progress"].find({"query": {"$exists": True}}),
                      key=lambda d: (d["query"], d["batch_id"]))
    sessions_batches = [p for p in progress if p["query"] == "sessions"]
    starts = [p["timestamp"].replace(tzinfo=timezone.utc).timestamp() for p in progress]
    ends = [s + p["batch_duration_ms"] / 1000 for s, p in zip(starts, progress)]
    seconds = max(ends) - min(starts)
    first_message = load.first_message_time(BOOTSTRAP, segments)
    written = db["enriched_events"].count_documents({})  # a full scan on FerretDB: after the clock stopped
    result = {
        "label": label, "events": n_events, "events_written": written,
        "sessions": db["user_behavior_segments"].count_documents({}),
        "seconds": round(seconds, 1), "events_per_s": round(n_events / seconds),
        "cold_start_s": round(job.first_write_at - job.started_at, 1) if job.first_write_at else None,
        "cold_start_kafka_s": round(first_message - job.started_at, 1) if first_message else None,
        "wall_s": round(time.time() - job.started_at, 1),
        "peak_rss_mb": job.peak_rss_mb(),
        "rss_mb_over_time": [[round(t), round(j / 2**20), round(a / 2**20)] for t, j, a in job.rss_samples[::10]],
        "batches": [{"query": p["query"], "batch": p["batch_id"], "rows": p["input_rows"],
                     "ms": p["batch_duration_ms"], "state_users": p["state_users"],
                     "state_bytes_written": p["state_bytes_written"], "open_sessions": p.get("open_sessions")} for p in progress],
        "max_state_users": max((p["state_users"] for p in sessions_batches), default=0),
        "max_open_sessions": max((p.get("open_sessions") or 0 for p in sessions_batches), default=0),
        "steps": _step_lines(job.log_path),
    }
    say(f"throughput [{label}]: {n_events:,} events in {result['seconds']} s = {result['events_per_s']:,} events/s; "
        f"cold start {result['cold_start_kafka_s']} s to the first message on Kafka, {result['cold_start_s']} s to the "
        f"first document; peak RSS {result['peak_rss_mb']} MB")
    return result


def _step_lines(log_path: Path) -> list[str]:
    return [line.split("behavior.sink ", 1)[1].strip() for line in log_path.read_text(errors="replace").splitlines()
            if "behavior.sink" in line and " steps: " in line]


def noop(topic: str, mode: str) -> dict:
    say(f"upper bound [{mode}]: the job's {'read + parse' if mode == 'parse' else 'read + parse + state'} "
        "steps with a no-op sink")
    job = Job(f"noop-{mode}", topic, "bench_noop", {}, [mode], "bench/noop_job.py").start()
    if job.wait(timeout_s=3600) != 0:
        raise RuntimeError(f"no-op job failed (log: {job.log_path})")
    line = next(l for l in job.log_path.read_text().splitlines() if l.startswith("NOOP_RESULT "))
    result = json.loads(line.split(" ", 1)[1])
    result["peak_rss_mb"] = job.peak_rss_mb()
    say(f"upper bound [{mode}]: {result['events']:,} events in {result['seconds']} s = {result['events_per_s']:,}/s")
    return result


def baseline(topic: str, seconds: float) -> dict:
    say(f"baseline: naive consumer (kafka-python + per-event pymongo upserts) for {seconds:.0f} s")
    MongoClient(MONGODB_URI).drop_database("bench_baseline")
    result = run_baseline(BOOTSTRAP, topic, MONGODB_URI, "bench_baseline", max_seconds=seconds)
    say(f"baseline: {result['events']:,} events in {result['seconds']} s = {result['events_per_s']:,}/s")
    return result


def machine() -> dict:
    versions = dict(line.split("=", 1) for line in (ROOT / "deploy/local/versions.env").read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    return {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "java": subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0],
            "spark": versions.get("SPARK_VERSION"), "kafka": versions.get("KAFKA_VERSION"),
            "ferretdb": versions.get("FERRETDB_VERSION") + " (sqlite, deploy/local/patches)",
            "commit": commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="full")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        help="scaling sizes, comma-separated (e.g. 100000,1000000,5000000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    profile = {**PROFILES[args.profile], **({"sizes": args.sizes} if args.sizes else {})}
    started = time.time()
    results: dict = {"profile": args.profile, "machine": machine()}
    say(f"profile {args.profile}: {profile}")
    load.delete_topics(BOOTSTRAP, TOPIC_PREFIX)

    topic, results["preload"] = preload(profile["events"])
    results["throughput"] = throughput(topic, profile["events"], "main")
    results["upper_bound"] = {mode: noop(topic, mode) for mode in ("parse", "state")}
    results["baseline"] = baseline(topic, profile["baseline_s"])
    results["sink_ceiling"] = sink_ceiling.measure(MONGODB_URI, "bench_main", results["throughput"]["events_written"],
                                                   results["throughput"]["sessions"], say)
    rates = sorted({100, *profile["rates"], max(100, results["throughput"]["events_per_s"] // 2)})
    results["latency"] = [latency(rate, profile["latency_s"]) for rate in rates]
    results["act_latency"] = [{"rate": x["rate"], "topic": "behavior_segments", "warmup_s": x["warmup_s"],
                               **{k: x[f"act_{k}"] for k in ("p50_s", "p95_s", "p99_s")}} for x in results["latency"]]
    results["store_latency"] = [{"rate": x["rate"], "warmup_s": x["warmup_s"],
                                 **{k: x[k] for k in ("p50_s", "p95_s", "p99_s")}} for x in results["latency"]]
    results["state_scale"] = [state_scale.measure(n) for n in profile["open_sessions"]]
    results["scaling"] = []
    for size in profile["sizes"]:
        if size == profile["events"]:
            results["scaling"].append(results["throughput"])
            continue
        size_topic, _ = preload(size)
        results["scaling"].append(throughput(size_topic, size, f"n{size}"))
    load.delete_topics(BOOTSTRAP, TOPIC_PREFIX)
    results["bench_seconds"] = round(time.time() - started)
    paths = write_report(results, args.out)
    say(f"done in {results['bench_seconds']} s: " + ", ".join(str(p.relative_to(ROOT)) for p in paths))
    print((args.out / "latest.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
