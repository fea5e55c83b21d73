"""`make faults`: every fault scenario on the real local stack, one row each, then the soak;
a Markdown report, JSON and a PNG in bench/results/ (faults.md, faults.json, faults.png).

    python -m faults.run [--only store-outage,kill-9] [--soak-minutes 30] [--sessions 400]
"""
from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from faults import scenarios
from faults.harness import ROOT, Workload, say
from faults.soak import soak

RESULTS = ROOT / "bench" / "results"
SCENARIOS = ("store-outage", "store-outage-live", "broker-restart", "kill-9", "hung-batch", "duplicates", "poison",
             "checkpoint-disk-full")
COLUMNS = ("scenario", "sent", "distinct_events", "duplicates", "lost", "recovered", "recover_s")


def run(only: list[str], sessions: int, outage_s: float) -> list[dict]:
    rows = []
    exact = [name for name in only if name not in ("duplicates", "poison", "store-outage-live")]
    if exact:
        work = Workload("main", sessions, seed=31)
        expected = scenarios.reference(work)
        runs = {"store-outage": lambda: scenarios.store_outage(work, expected, seconds=outage_s),
                "broker-restart": lambda: scenarios.broker_restart(work, expected),
                "kill-9": lambda: scenarios.kill_9(work, expected, kills=5),
                "hung-batch": lambda: scenarios.hung_batch(work, expected),
                "checkpoint-disk-full": lambda: scenarios.checkpoint_disk_full(work, expected)}
        rows += [_guarded(name, runs[name]) for name in exact]
    if "store-outage-live" in only:
        rows.append(_guarded("store-outage-live", lambda: scenarios.store_outage_live(outage_s=outage_s)))
    if "duplicates" in only:
        rows.append(_guarded("duplicates", lambda: scenarios.data_faults(
            "duplicates", Workload("dup", sessions, seed=32, duplicate_ratio=0.10))))
    if "poison" in only:
        rows.append(_guarded("poison", lambda: scenarios.data_faults(
            "poison", Workload("poison", sessions, seed=33, bad_ratio=0.01))))
    return rows


def _guarded(name: str, scenario) -> dict:
    """A scenario whose harness broke is reported as such; the others still run."""
    try:
        return scenario()
    except Exception as exc:  # noqa: BLE001 (reported in the table, with its message)
        say(f"{name}: the scenario itself failed: {exc!r}")
        return {"scenario": name, "skipped": f"harness error: {exc}"}


def table(rows: list[dict]) -> str:
    head = ("| scenario | events sent | distinct events in store | counted twice | lost | recovered without "
            "a human | seconds to recover | job exits (causes) | fault |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['scenario']} | not run: {r['skipped']} | | | | | | | |")
            continue
        causes = "; ".join(c[:160] for c in r["causes"]) or "-"
        lines.append(f"| {r['scenario']} | {r['sent']:,} | {r['distinct_events']:,} | {r['duplicates']} | {r['lost']} "
                     f"| {'yes' if r['recovered'] and r['equal_to_reference'] else 'NO'} | {_recovery(r)} "
                     f"| {r['exits']} ({causes}) | {r['note']} |")
    return head + "\n".join(lines) + "\n"


def _recovery(row: dict) -> str:
    if row["fault_s"] == 0:  # bad data: nothing stops, the figure is the time to take the topic in
        return f"- (topic processed in {row['recover_s']:.0f} s)"
    return f"{row['recover_s']:.0f}"


def markdown(result: dict) -> str:
    text = [f"# Fault suite ({result['finished']}, {result['machine']})", "",
            "Every scenario runs the job as a user does (deploy/local/submit.sh) under a supervisor loop "
            "that restarts it when it exits, on the local stack, and compares every output collection "
            "with an uninterrupted run of the same topic: 'recovered' is yes only when every collection "
            "equals that run's, with nothing lost or counted twice, and no human stepped in. Recovery seconds "
            "count from the end of the fault until every collection equals the reference.", "", table(result["rows"])]
    soak_result = result.get("soak")
    if soak_result:
        text += ["", f"## Soak: {soak_result['minutes']:g} min at {soak_result['rate']} events/s", "",
                 f"Slopes fitted after a {soak_result['warm_up_s']:.0f} s warm-up; job exits: {soak_result['exits']}.",
                 "", "| figure | mean | slope per hour | % of mean per hour |", "|---|---|---|---|"]
        for key in ("rss_mb", "open_sessions", "state_users", "state_memory_mb", "state_disk_mb"):
            s = soak_result.get(f"{key}_slope_per_hour")
            if s:
                text.append(f"| {key} | {s['mean']:,} | {s['per_hour']:+,} | {s['pct_per_hour']:+}% |")
    text += ["", "Differences from the reference, if any:", ""]
    text += [f"- {r['scenario']}: {d}" for r in result["rows"] for d in r.get("differences", [])] or ["- none"]
    return "\n".join(text) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    rows = [r for r in result["rows"] if "skipped" not in r]
    left.barh([r["scenario"] for r in rows], [r["recover_s"] for r in rows],
              color=["tab:green" if r["recovered"] and r["equal_to_reference"] else "tab:red" for r in rows])
    left.set_xlabel("seconds from the end of the fault to outputs equal to the reference")
    left.set_title("recovery (green: no loss, no duplicate, no human)")
    soak_result = result.get("soak")
    if soak_result and soak_result["samples"]:
        t = [s["t_s"] / 60 for s in soak_result["samples"]]
        right.plot(t, [s["rss_mb"] for s in soak_result["samples"]], label="job RSS (MB)")
        right.plot(t, [s["state_disk_mb"] * 10 for s in soak_result["samples"]], label="state on disk (MB x10)")
        twin = right.twinx()
        twin.plot(t, [s["open_sessions"] or 0 for s in soak_result["samples"]], color="tab:gray", ls="--",
                  label="open sessions")
        twin.set_ylabel("open sessions")
        right.set_xlabel("minutes")
        right.legend(loc="upper left")
        right.set_title(f"soak at {soak_result['rate']} events/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds the scenarios' finally: their jobs are stopped


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--sessions", type=int, default=400, help="sessions per workload (~10 events each)")
    parser.add_argument("--outage-seconds", type=float, default=60)
    parser.add_argument("--soak-minutes", type=float, default=30, help="0 = no soak")
    parser.add_argument("--soak-rate", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        print(f"error: unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    started = time.time()
    result = {"machine": f"{platform.node()}, {platform.machine()}, {__import__('os').cpu_count()} cores",
              "rows": run(only, args.sessions, args.outage_seconds)}
    if args.soak_minutes > 0:
        result["soak"] = soak(args.soak_minutes, args.soak_rate)
    result["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["seconds"] = round(time.time() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "faults.md").write_text(markdown(result))
    plot(result, args.out / "faults.png")
    print(table(result["rows"]))
    say(f"wrote {args.out}/faults.md, faults.json, faults.png in {result['seconds']} s")
    failed = [r["scenario"] for r in result["rows"] if r.get("skipped", "").startswith("harness error") or (
        "skipped" not in r and not (r["recovered"] and r["equal_to_reference"] and r["lost"] == 0
                                    and r["duplicates"] == 0))]
    if failed:
        print(f"error: not recovered exactly: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
