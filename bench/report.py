"""Benchmark results -> latest.json, a Markdown table (latest.md) and a plot (latest.png)."""
from __future__ import annotations

import json
from pathlib import Path

# The engine issue's goals: no-op state >= 10,000/s and >= 80% of parse alone; the job >= 80% of the
# sink ceiling and >= 10x the baseline; p50 <= 2 s, p99 <= 5 s at 1,000 events/s; cold start <= 30 s;
# events/s at the most open sessions >= 80% of events/s at the fewest.
GOALS = {"state_events_per_s": 10_000, "state_share_of_parse": 0.8, "sink_share": 0.8, "baseline_ratio": 10,
         "p50_s": 2.0, "p99_s": 5.0, "latency_rate": 1_000, "cold_start_s": 30, "scale_share": 0.8}


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
    state_share = state["events_per_s"] / max(parse["events_per_s"], 1)
    sink_share = t["events_per_s"] / max(sink["job_pattern_events_per_s"], 1)
    scale = r.get("state_scale") or []
    scale_share = scale[-1]["events_per_s"] / max(scale[0]["events_per_s"], 1) if len(scale) > 1 else None
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
        f"| **{_n(t['events_per_s'])}** | {sink_share:.0%} of the sink ceiling (goal >= 80%) |",
        f"| upper bound: read + parse, no-op sink | {_n(parse['events'])} | {_n(parse['seconds'], 1)} "
        f"| {_n(parse['events_per_s'])} | |",
        f"| upper bound: read + parse + session state, no-op sink | {_n(state['events'])} | "
        f"{_n(state['seconds'], 1)} | {_n(state['events_per_s'])} | {state_share:.0%} of parse alone (goal >= 80%; "
        f">= {_n(GOALS['state_events_per_s'])}/s) |",
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
        f"at most {_n(t['max_open_sessions'])} open sessions held by {_n(t['max_state_users'])} users' state rows; "
        f"{_n(t['sessions'])} sessions, {_n(t['events_written'])} events written.",
        "",
        "Batches of the main run:",
        "",
        "| query | batch | rows | ms | open sessions | state users | state MB written |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {b['query']} | {b['batch']} | {_n(b['rows'])} | {_n(b['ms'])} | {_n(b.get('open_sessions'))} "
          f"| {_n(b['state_users'])} | {_n(b['state_bytes_written'] / 1e6, 1)} |" for b in t["batches"]],
        "",
        "Where a sessions batch spends its time (the job's own log):",
        "",
        *[f"- {line}" for line in t["steps"]],
        "",
        "## Latency (the job live with its default settings; a session's last event's producer timestamp -> "
        "the first act-lane message showing it, and -> the provisional session document written)",
        "",
        "| rate (events/s) | warm-up s | sent | achieved rate | to behavior_segments: sessions | p50 s | p95 s "
        "| p99 s | to MongoDB: sessions | p50 s | p95 s | p99 s | kept up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {_n(x['rate'])} | {_n(x.get('warmup_s'))} | {_n(x['sent']['events'])} | {_n(x['sent']['events_per_s'])} "
          f"| {_n(x.get('act_samples'))} | {_n(x.get('act_p50_s'), 2)} | {_n(x.get('act_p95_s'), 2)} "
          f"| {_n(x.get('act_p99_s'), 2)} "
          f"| {_n(x['samples'])} | {_n(x['p50_s'], 2)} | {_n(x['p95_s'], 2)} | {_n(x['p99_s'], 2)} "
          f"| {'yes' if x['caught_up'] else 'NO'} |" for x in r["latency"]],
        "",
        "Goals (issue 19): to the act lane p50 <= 1.5 s, p99 <= 3 s at 1,000 events/s, p50 <= 1 s at 100 events/s; "
        "to MongoDB p99 <= 15 s at 1,000 events/s; each measured after the warm-up at that rate.",
        "",
        "## State scale (read + parse + per-user state, no-op sink, N sessions open in state, "
        f"{_n(scale[0]['events'] if scale else None)} events of other users measured)",
        "",
        "| open sessions | events/s | state users | state MB on disk | state bytes per open session | state MB written by the measured batches | peak RSS JVM MB | peak RSS tree MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {_n(x['open_sessions'])} | {_n(x['events_per_s'])} | {_n(x['state_users'])} "
          f"| {_n(x['state_bytes'] / 1e6, 1)} | {_n(x['state_bytes_per_open_session'])} "
          f"| {_n(x['tail_state_bytes_written'] / 1e6, 1)} | {_n(x['rss_mb']['jvm'])} "
          f"| {_n(x['rss_mb']['total'])} |" for x in scale],
        "",
        (f"Events/s at {_n(scale[-1]['open_sessions'])} open sessions = {scale_share:.0%} of events/s at "
         f"{_n(scale[0]['open_sessions'])} (goal >= 80%)." if scale_share is not None else ""),
        "",
        "## Scaling (the same job, preloaded topics of N events)",
        "",
        "| events | seconds | events/s | peak RSS JVM MB | peak RSS tree MB | max open sessions |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {_n(s['events'])} | {_n(s['seconds'], 1)} | {_n(s['events_per_s'])} | {_n(s['peak_rss_mb']['jvm'])} "
          f"| {_n(s['peak_rss_mb']['total'])} | {_n(s['max_open_sessions'])} |" for s in r["scaling"]],
        "",
        f"Whole benchmark: {_n(r['bench_seconds'])} s. Raw figures: latest.json; plot: latest.png.",
        "",
    ]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right, scale_ax) = plt.subplots(1, 4, figsize=(21, 4.8))
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
    middle.axhline(GOALS["p99_s"], color="#d62728", linestyle=":", linewidth=1)
    middle.axhline(GOALS["p50_s"], color="#1f77b4", linestyle=":", linewidth=1)
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

    scale = r.get("state_scale") or []
    opened = [x["open_sessions"] for x in scale]
    scale_ax.plot(opened, [x["events_per_s"] for x in scale], marker="o", color="#2ca02c", label="events/s")
    scale_ax.set_xscale("log")
    scale_ax.set_xlabel("sessions open in state")
    scale_ax.set_ylabel("events/s (no-op sink)")
    scale_ax.set_ylim(bottom=0)
    rss = scale_ax.twinx()
    rss.plot(opened, [x["rss_mb"]["total"] for x in scale], marker="s", color="#ff7f0e", label="peak RSS MB")
    rss.plot(opened, [x["rss_mb"]["jvm"] for x in scale], marker="^", color="#9467bd", label="JVM RSS MB")
    rss.set_ylabel("RSS (MB)")
    rss.legend(loc="lower left", fontsize=8)
    scale_ax.set_title("State scale: cost vs open sessions")
    fig.suptitle(f"{r['machine']['cores']} cores, {r['machine']['memory_gib']} GiB; Spark {r['machine']['spark']}, "
                 f"Kafka {r['machine']['kafka']}, FerretDB {r['machine']['ferretdb']}; {r['machine']['date']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
