"""`make bench-state`: the job over one preloaded topic (all outputs on, the job's defaults) with the
per-user state on applyInPandasWithState (STATE_OPERATOR's default), on transformWithState, and on
applyInPandasWithState again, one run each on this machine -> bench/results/state_operator.md
(issue 19: measure transformWithState against applyInPandasWithState on Spark 4.2, keep the faster).

Besides the throughput it sums each run's `read+parse+state` step (the job's per-batch step log),
where the operator's cost is, and compares every MongoDB output of the transformWithState run
with the first applyInPandasWithState run's (the same events must give the same documents)."""
from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone

from bench.jobproc import ROOT, commit, say
from bench.run import preload, throughput
from faults.harness import differences, snapshot

RUNS = (("applyInPandasWithState", "applyInPandasWithState"), ("transformWithState", "transformWithState"),
        ("applyInPandasWithState again", "applyInPandasWithState"))
_STATE_STEP = re.compile(r"read\+parse\+state(?:\+lanes)? ([\d.]+) s")


def state_seconds(steps: list[str]) -> float:
    """The sessions query's `read+parse+state` seconds over all its batches."""
    return round(sum(float(m.group(1)) for line in steps if line.startswith("[sessions]")
                     for m in [_STATE_STEP.search(line)] if m), 1)


def collections_only(snap: dict) -> dict:
    return {name: docs for name, docs in snap.items() if not name.startswith("topic:")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    topic, _ = preload(args.events)
    runs = []
    for i, (label, operator) in enumerate(RUNS):
        result = throughput(topic, args.events, f"state_{i}", {"STATE_OPERATOR": operator})
        runs.append((label, result, collections_only(snapshot(f"bench_state_{i}"))))
    reference = runs[0][2]
    import pyspark
    lines = ["# The per-user state on applyInPandasWithState vs transformWithState (`make bench-state`)", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit()}, pyspark {pyspark.__version__}, "
             f"{args.events:,} preloaded events, all outputs on, the job's defaults otherwise, one run each on this "
             "machine (2 cores).", "",
             "| STATE_OPERATOR | events/s | seconds (first read -> last write) | read+parse+state s (all batches) "
             "| batches | cold start s (first document) | MongoDB outputs vs the first run |",
             "|---|---|---|---|---|---|---|"]
    for label, r, snap in runs:
        batches = len([b for b in r["batches"] if b["query"] == "sessions"])
        diff = differences(reference, snap)
        same = "the reference" if snap is reference else ("equal" if not diff else "DIFFER: " + "; ".join(diff))
        lines.append(f"| {label} | {r['events_per_s']:,} | {r['seconds']} | {state_seconds(r['steps'])} | {batches} "
                     f"| {r['cold_start_s']} | {same} |")
    (ROOT / "bench" / "results" / "state_operator.md").write_text("\n".join(lines) + "\n")
    say("\n".join(lines))


if __name__ == "__main__":
    main()
