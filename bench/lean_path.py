"""`make bench-lean`: the job over one preloaded topic (all outputs on) with the stock
applyInPandasWithState path (LEAN_ARROW=false, the default), the lean Arrow path (true) and the stock
path again, one run each, on this machine -> bench/results/lean_path.md (issue 19: the private-API
fast path stays opt-in unless this shows it is needed)."""
from __future__ import annotations

import argparse
from datetime import datetime, timezone

from bench.jobproc import ROOT, commit, say
from bench.run import preload, throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    topic, _ = preload(args.events)
    runs = [(label, throughput(topic, args.events, f"lean_{label}", {"LEAN_ARROW": lean, "STATE_OPERATOR": "applyInPandasWithState"}))
            for label, lean in (("stock", "false"), ("lean", "true"), ("stock-again", "false"))]
    import pyspark
    lines = ["# The lean Arrow path vs the stock path (`make bench-lean`)", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit()}, pyspark {pyspark.__version__}, "
             f"{args.events:,} preloaded events, all outputs on, one run each on this machine (2 cores).", "",
             "| path | events/s | seconds (first read -> last write) | cold start s | sessions |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {r['events_per_s']:,} | {r['seconds']} | {r['cold_start_s']} | {r['sessions']:,} |"
              for label, r in runs]
    (ROOT / "bench" / "results" / "lean_path.md").write_text("\n".join(lines) + "\n")
    say("\n".join(lines))


if __name__ == "__main__":
    main()
