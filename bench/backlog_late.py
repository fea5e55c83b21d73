"""Late events when a backlog is caught up, against a live run (issue 18, item 13).

One hour of generated traffic (in event-time order, as shops send it; 3 partitions) is read
three ways on the local stack, each into a database of its own:
- a backlog read with MAX_OFFSETS_PER_TRIGGER=200 (many small capped batches),
- the same backlog with MAX_OFFSETS_PER_TRIGGER=100000 (one or two big batches),
- a live run: the job running while the generator sends the same traffic at --rate.
For each: events, late events (stream_progress), closed and open sessions, alerts; and whether
the sessions equal the 100000 run's. Writes bench/results/backlog_late.{json,md}.

    make up && .venv/bin/python -m bench.backlog_late [--sessions 1500] [--rate 400]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
import uuid

from pymongo import MongoClient

from app.generator.cli import main as generator_main
from faults.harness import (BOOTSTRAP, MONGODB_URI, ROOT, WORK, SupervisedJob, job_topics, say, topic_records,
                            wait_until)

RESULTS = ROOT / "bench" / "results"


def _generate(topic: str, sessions: int, rate: float = 0.0) -> None:
    args = [BOOTSTRAP, topic, "--sessions", str(sessions), "--seed", "18", "--spread-minutes", "60",
            "--start-minutes-ago", "75", "--bots", "0.02", "--fraud", "0.02", "--returning", "0.3"]
    if rate:
        args += ["--rate", str(rate)]
    if generator_main(args) != 0:
        raise RuntimeError("the generator failed")


def _figures(database: str) -> dict:
    client = MongoClient(MONGODB_URI)
    try:
        db = client[database]
        progress = list(db.stream_progress.find({"query": "sessions"}))
        sessions = {d["_id"]: (d["status"], d["total_events"], d["behavior_segment"])
                    for d in db.user_behavior_segments.find({}, {"status": 1, "total_events": 1,
                                                                 "behavior_segment": 1})}
        return {"batches": len(progress), "events": sum(p.get("events", 0) for p in progress),
                "late_events": sum(p.get("late_events", 0) for p in progress),
                "closed_sessions": sum(1 for s in sessions.values() if s[0] == "closed"),
                "open_sessions": sum(1 for s in sessions.values() if s[0] == "active"),
                "alerts": db.behavior_alerts.count_documents({}), "_sessions": sessions}
    finally:
        client.close()


def _backlog(topic: str, name: str, cap: str) -> dict:
    database = f"{topic}_{name}"
    job = SupervisedJob(name, topic, database, MAX_OFFSETS_PER_TRIGGER=cap, TRIGGER_INTERVAL="0",
                        **job_topics(database))
    shutil.rmtree(job.checkpoint, ignore_errors=True)
    started = time.monotonic()
    result = job.run_once("--available-now", "--reset-output", timeout_s=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    figures = _figures(database)
    figures["seconds"] = round(time.monotonic() - started, 1)
    say(f"{name}: {({k: v for k, v in figures.items() if not k.startswith('_')})}")
    return figures


def _live(sessions: int, rate: float) -> dict:
    topic = "bench_live_" + uuid.uuid4().hex[:8]
    database = f"{topic}_live"
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])  # before the job subscribes
    admin.close()
    job = SupervisedJob("live", topic, database, TRIGGER_INTERVAL="1s", STARTING_OFFSETS="earliest",
                        **job_topics(database))
    shutil.rmtree(job.checkpoint, ignore_errors=True)
    job.start()
    try:
        wait_until(lambda: (job.status() or {}).get("ready"), 300, "the live job ready")
        started = time.monotonic()
        _generate(topic, sessions, rate)
        records = topic_records(topic)

        def caught_up() -> bool:
            queries = (job.status() or {}).get("queries") or [{}]
            return queries[0].get("kafka_lag") == 0 and _figures(database)["events"] >= records

        wait_until(caught_up, 1800, "the live job caught up", interval_s=5)
        figures = _figures(database)
        figures["seconds"] = round(time.monotonic() - started, 1)
    finally:
        job.stop()
    say(f"live: {({k: v for k, v in figures.items() if not k.startswith('_')})}")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=400.0, help="events/s of the live run")
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    topic = "bench_backlog_" + uuid.uuid4().hex[:8]
    _generate(topic, args.sessions)
    runs = {"backlog_cap_200": _backlog(topic, "cap200", "200"),
            "backlog_cap_100000": _backlog(topic, "cap100000", "100000")}
    if not args.skip_live:
        runs["live"] = _live(args.sessions, args.rate)
    reference = runs["backlog_cap_100000"]["_sessions"]
    for figures in runs.values():
        figures["sessions_equal_to_cap_100000"] = figures.pop("_sessions") == reference
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backlog_late.json").write_text(json.dumps(runs, indent=2) + "\n")
    lines = ["# Late events: a one-hour backlog caught up vs a live run", "",
             f"{args.sessions} generated sessions over 60 minutes of event time (bots, fraud, returning users), "
             "3 partitions, WATERMARK_DELAY 10 min. One run each on this machine (`python -m bench.backlog_late`).", "",
             "| run | batches | events | late events | closed sessions | open sessions | alerts | sessions equal to the 100000 run | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, f in runs.items():
        lines.append(f"| {name} | {f['batches']} | {f['events']} | {f['late_events']} | {f['closed_sessions']} | "
                     f"{f['open_sessions']} | {f['alerts']} | {f['sessions_equal_to_cap_100000']} | {f['seconds']} |")
    (RESULTS / "backlog_late.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
