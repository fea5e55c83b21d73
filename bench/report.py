"""Benchmark results -> latest.json, a Markdown table (latest.md) and a plot (latest.png)."""
from __future__ import annotations

import json
from pathlib import Path

GOALS = {"events_per_s": 30_000, "baseline_ratio": 10, "upper_bound_share": 0.5, "p50_s": 1.5, "p99_s": 4.0,
         "cold_start_s": 30}


def write_report(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "latest.json", out / "latest.md", out / "latest.png"]
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    return paths


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(r: dict) -> str:
    m, t = r["machine"], r["throughput"]
    parse, state = r["upper_bound"]["parse"], r["upper_bound"]["state"]
    base, sink = r["baseline"], r["sink_ceiling"]
    ratio = t["events_per_s"] / max(base["events_per_s"], 1)
    share = t["events_per_s"] / max(state["events_per_s"], 1)
    lines = [
        f"# Benchmark ({r['profile']} profile, {m['date']}, commit {m['commit']})",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; Python {m['python']}, {m['java']}, "
        f"Spark {m['spark']} (local[*]), Kafka {m['kafka']}, FerretDB {m['ferretdb']}.",
        "Produced by `make bench` (bench/run.py); the figures are one run, not averages.",
        "",
        "## Throughput (events preloaded, the job run with --available-now)",
        "",
        "| what | events | seconds | events/s | vs goal |",
        "|---|---:|---:|---:|---|",
        f"| the job, all outputs (first offset read -> last MongoDB write) | {_n(t['events'])} | {_n(t['seconds'], 1)} "
        f"| **{_n(t['events_per_s'])}** | goal {_n(GOALS['events_per_s'])} |",
        f"| upper bound: read + parse, no-op sink | {_n(parse['events'])} | {_n(parse['seconds'], 1)} "
        f"| {_n(parse['events_per_s'])} | |",
        f"| upper bound: read + parse + session state, no-op sink | {_n(state['events'])} | "
        f"{_n(state['seconds'], 1)} | {_n(state['events_per_s'])} | job = {share:.0%} of it (goal >= 50%) |",
        f"| naive baseline: kafka-python + per-event pymongo upserts | {_n(base['events'])} | "
        f"{_n(base['seconds'], 1)} | {_n(base['events_per_s'])} | job = {ratio:.1f}x (goal >= 10x) |",
        f"| sink ceiling: the server alone, the job's write pattern ({sink['writers']} writers) | | | "
        f"{_n(sink['job_pattern_events_per_s'])} | |",
        "",
        f"Sink ceiling detail: event inserts {_n(sink['event_inserts_per_s'])}/s, session first inserts "
        f"{_n(sink['session_inserts_per_s'])}/s, session replaces {_n(sink['session_replaces_per_s'])}/s, "
        f"{sink['sessions_per_event']} sessions per event.",
        "",
        f"Main run: cold start to first MongoDB write {_n(t['cold_start_s'], 1)} s (goal <= 30 s); "
        f"peak RSS: JVM {_n(t['peak_rss_mb']['jvm'])} MB, job process tree {_n(t['peak_rss_mb']['total'])} MB; "
        f"max state rows {_n(t['max_state_rows'])} (hash buckets of sessions); "
        f"{_n(t['sessions'])} sessions, {_n(t['events_written'])} events written.",
        "",
        "Batches of the main run (query, batch, input rows, ms, state rows):",
        "",
        "| query | batch | rows | ms | state rows |",
        "|---|---:|---:|---:|---:|",
        *[f"| {b['query']} | {b['batch']} | {_n(b['rows'])} | {_n(b['ms'])} | {_n(b['state_rows'])} |"
          for b in t["batches"]],
        "",
        "Where a sessions batch spends its time (the job's own log):",
        "",
        *[f"- {line}" for line in t["steps"]],
        "",
        "## Latency (the job live, trigger 1 s; producer timestamp -> provisional session document written)",
        "",
        "| rate (events/s) | sent | achieved rate | sessions measured | p50 s | p95 s | p99 s | kept up |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {_n(x['rate'])} | {_n(x['sent']['events'])} | {_n(x['sent']['events_per_s'])} | {_n(x['samples'])} "
          f"| {_n(x['p50_s'], 2)} | {_n(x['p95_s'], 2)} | {_n(x['p99_s'], 2)} | {'yes' if x['caught_up'] else 'NO'} |"
          for x in r["latency"]],
        "",
        f"Goals: p50 <= {GOALS['p50_s']} s, p99 <= {GOALS['p99_s']} s at 10,000 events/s.",
        "",
        "## Scaling (the same job, preloaded topics of N events)",
        "",
        "| events | seconds | events/s | peak RSS JVM MB | peak RSS tree MB | max state rows |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {_n(s['events'])} | {_n(s['seconds'], 1)} | {_n(s['events_per_s'])} | {_n(s['peak_rss_mb']['jvm'])} "
          f"| {_n(s['peak_rss_mb']['total'])} | {_n(s['max_state_rows'])} |" for s in r["scaling"]],
        "",
        f"Whole benchmark: {_n(r['bench_seconds'])} s. Raw figures: latest.json; plot: latest.png.",
        "",
    ]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    bars = [("naive\nbaseline", r["baseline"]["events_per_s"]), ("job, all\noutputs", r["throughput"]["events_per_s"]),
            ("sink\nceiling", r["sink_ceiling"]["job_pattern_events_per_s"]),
            ("no-op:\nparse+state", r["upper_bound"]["state"]["events_per_s"]),
            ("no-op:\nparse", r["upper_bound"]["parse"]["events_per_s"])]
    left.bar([b[0] for b in bars], [b[1] for b in bars], color=["#999", "#1f77b4", "#d62728", "#2ca02c", "#98df8a"])
    for i, (_, value) in enumerate(bars):
        left.text(i, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=8)
    left.set_title(f"Throughput, {r['throughput']['events']:,} events (events/s)")
    left.tick_params(axis="x", labelsize=8)

    rates = [str(x["rate"]) for x in r["latency"]]
    for pct, color in (("p50_s", "#1f77b4"), ("p95_s", "#ff7f0e"), ("p99_s", "#d62728")):
        middle.plot(rates, [x[pct] for x in r["latency"]], marker="o", label=pct[:-2], color=color)
    middle.axhline(4.0, color="#d62728", linestyle=":", linewidth=1)
    middle.axhline(1.5, color="#1f77b4", linestyle=":", linewidth=1)
    middle.set_yscale("log")
    middle.set_title("Latency to provisional session doc (s)")
    middle.set_xlabel("events/s offered")
    middle.legend()

    sizes = [s["events"] for s in r["scaling"]]
    right.plot(sizes, [s["seconds"] for s in r["scaling"]], marker="o", color="#1f77b4", label="seconds")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("events")
    right.set_ylabel("seconds")
    twin = right.twinx()
    twin.plot(sizes, [s["peak_rss_mb"]["total"] for s in r["scaling"]], marker="s", color="#ff7f0e",
              label="peak RSS MB")
    twin.set_ylabel("peak RSS (MB)")
    right.set_title("Scaling")
    fig.suptitle(f"{r['machine']['cores']} cores, {r['machine']['memory_gib']} GiB; Spark {r['machine']['spark']}, "
                 f"Kafka {r['machine']['kafka']}, FerretDB {r['machine']['ferretdb']}; {r['machine']['date']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
