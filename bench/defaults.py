"""`make bench-defaults`: what a user gets with no settings, against the earlier defaults (issue 19).

The job over one preloaded topic (all outputs on, --available-now), one run each, back to back on
this machine: with the defaults of this commit (nothing set) and with the earlier defaults
(TRIGGER_INTERVAL=5s, MAX_OFFSETS_PER_TRIGGER=200000). Each row gives the cold start to the first
message on the act lane (behavior_segments), to the first MongoDB document, and the throughput
(first offset read -> last MongoDB write) -> bench/results/defaults.md and defaults.json.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from app.config import AppConfig
from bench.jobproc import ROOT, commit, say
from bench.run import preload, throughput

EARLIER = {"TRIGGER_INTERVAL": "5s", "MAX_OFFSETS_PER_TRIGGER": "200000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    args = parser.parse_args()
    defaults = AppConfig()
    now = {"TRIGGER_INTERVAL": f"{defaults.trigger_interval_s:g}s",
           "MAX_OFFSETS_PER_TRIGGER": str(defaults.max_offsets_per_trigger)}
    topic, _ = preload(args.events)
    runs = [("defaults (nothing set)", now, throughput(topic, args.events, "defaults", {})),
            ("earlier defaults", EARLIER, throughput(topic, args.events, "earlier", EARLIER))]
    code = commit()
    lines = ["# Defaults: cold start and throughput (`make bench-defaults`)", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {code}, {args.events:,} preloaded events "
             "(3 partitions), all outputs on (profiles, triggers), --available-now, one run each, back to back on "
             "this machine (2 cores). Cold start: the job's process start -> the first message on its "
             "behavior_segments topic (Kafka timestamp) / the first enriched_events document (polled every 0.5 s).",
             "", "| run | settings | cold start to Kafka s | cold start to MongoDB s | events/s | seconds | batches |",
             "|---|---|---|---|---|---|---|"]
    for label, settings, r in runs:
        batches = sum(1 for b in r["batches"] if b["query"] == "sessions")
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        lines.append(f"| {label} | {shown} | {r['cold_start_kafka_s']} | {r['cold_start_s']} | "
                     f"{r['events_per_s']:,} | {r['seconds']} | {batches} |")
    lines += ["", "Where the sessions batches spent their time (the job's own log):", ""]
    for label, _, r in runs:
        lines += [f"- {label}:"] + [f"  - {step}" for step in r["steps"][:6]]
        if len(r["steps"]) > 6:
            lines.append(f"  - ... {len(r['steps']) - 6} more batches")
    results = ROOT / "bench" / "results"
    (results / "defaults.md").write_text("\n".join(lines) + "\n")
    (results / "defaults.json").write_text(json.dumps(
        {"commit": code, "events": args.events,
         "runs": [{"label": label, "settings": settings, **r} for label, settings, r in runs]}, indent=1) + "\n")
    say("\n".join(lines))


if __name__ == "__main__":
    main()
