"""The benchmark's pure pieces: its workload, percentiles and report."""
from __future__ import annotations

from bench import workload
from bench.latency import percentile
from bench.report import markdown, write_report


def test_workload_yields_exactly_n_events_in_event_time_order():
    events = list(workload.events(5_000, seed=3))
    assert len(events) == 5_000
    assert [e["event_time"] for e in events] == sorted(e["event_time"] for e in events)
    assert len({e["event_id"] for e in events}) == 5_000


def test_workload_keeps_the_number_of_open_sessions_flat_as_it_grows():
    def most_open_at_once(n):
        spans: dict = {}
        for e in workload.events(n, seed=1):
            first, _ = spans.get(e["user_session"], (e["event_time"], None))
            spans[e["user_session"]] = (first, e["event_time"])
        edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
        level = peak = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        return peak
    small, large = most_open_at_once(20_000), most_open_at_once(60_000)
    assert 0.7 < small / large < 1.3  # a bigger run is a longer run, not a denser one


def test_percentile_picks_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0 and percentile(values, 99) == 100.0
    assert percentile([], 50) is None


def test_report_states_the_ratios_against_the_goals(tmp_path):
    run = {"events": 1000, "seconds": 2.0, "events_per_s": 560, "cold_start_s": 12.0, "sessions": 100,
           "events_written": 1000, "peak_rss_mb": {"jvm": 900, "total": 1200}, "max_state_users": 80,
           "max_open_sessions": 90,
           "batches": [{"query": "sessions", "batch": 0, "rows": 1000, "ms": 2000, "state_users": 80,
                        "state_bytes_written": 2_500_000, "open_sessions": 90}],
           "steps": ["[sessions] batch 0 steps: writes 1.0 s"]}
    results = {
        "profile": "quick", "bench_seconds": 60,
        "machine": {"date": "d", "commit": "c", "cores": 2, "memory_gib": 24, "platform": "p", "python": "3",
                    "java": "j", "spark": "4", "kafka": "4", "ferretdb": "f"},
        "throughput": run, "scaling": [run],
        "upper_bound": {"parse": {"events": 1000, "seconds": 1, "events_per_s": 1000},
                        "state": {"events": 1000, "seconds": 1, "events_per_s": 800}},
        "baseline": {"events": 100, "seconds": 2, "events_per_s": 56},
        "sink_ceiling": {"writers": 2, "job_pattern_events_per_s": 700, "event_inserts_per_s": 1,
                         "session_inserts_per_s": 1, "session_replaces_per_s": 1, "sessions_per_event": 0.1},
        "latency": [{"rate": 100, "warmup_s": 120, "sent": {"events": 100, "events_per_s": 100}, "samples": 10,
                     "p50_s": 0.5, "p95_s": 0.9, "p99_s": 1.0, "caught_up": True, "act_samples": 9,
                     "act_p50_s": 0.3, "act_p95_s": 0.4, "act_p99_s": 0.6}],
        "state_scale": [
            {"open_sessions": 10_000, "events": 100_000, "events_per_s": 4000, "state_users": 20_000,
             "state_bytes": 10_000_000, "state_bytes_per_open_session": 500, "tail_state_bytes_written": 1_000_000, "rss_mb": {"jvm": 1, "total": 2}},
            {"open_sessions": 1_000_000, "events": 100_000, "events_per_s": 3000, "state_users": 1_010_000,
             "state_bytes": 500_000_000, "state_bytes_per_open_session": 495, "tail_state_bytes_written": 1_100_000, "rss_mb": {"jvm": 1, "total": 2}}],
    }
    text = markdown(results)
    assert "job = 10.0x (goal >= 10x)" in text
    assert "80% of the sink ceiling" in text
    assert "80% of parse alone" in text
    assert "| 100 | 120 | 100 | 100 | 9 | 0.30 | 0.40 | 0.60 | 10 | 0.50 | 0.90 | 1.00 | yes |" in text
    assert "| 1,000,000 | 3,000 | 1,010,000 | 500.0 | 495 | 1.1 | 1 | 2 |" in text
    assert "= 75% of events/s at 10,000 (goal >= 80%)" in text
    paths = write_report(results, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def test_bench_api_job_nice_list_takes_each_niceness_once_from_0_to_19():
    import argparse

    import pytest

    from bench.api import _nice_list

    assert _nice_list("0,10") == [0, 10] and _nice_list("19") == [19]
    for bad in ("", "0,0", "-1", "20", "0,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _nice_list(bad)


def test_bench_api_only_keeps_the_other_part_stamped_with_its_own_run(tmp_path):
    import json

    from bench.api import _kept_part, _measured

    old_machine = {"commit": "old1234", "date": "2026-12-01"}
    (tmp_path / "api.json").write_text(json.dumps({"machine": old_machine, "analytics": {"endpoints": []},
                                                   "personalization": {"p": 1}}))
    kept = _kept_part(tmp_path, "personalization")
    assert kept == {"analytics": {"machine": old_machine, "endpoints": []}}
    assert _kept_part(tmp_path, None) == {} and _kept_part(tmp_path / "none", "analytics") == {}
    new_machine = {"commit": "new5678", "date": "2026-12-07"}
    assert _measured(kept["analytics"], new_machine) == [
        "(This part: 2026-12-01, commit old1234, kept from that run by `--only`.)", ""]
    assert _measured({"machine": new_machine}, new_machine) == [] and _measured({}, new_machine) == []


def test_bench_api_probe_report_has_a_row_per_probe_with_its_slow_calls():
    from bench.api_probe import PROBES, markdown

    probe = {"calls": 1000, "p50_ms": 2.0, "p95_ms": 9.0, "p99_ms": 30.0, "max_ms": 250.0, "over_200_ms": 1}
    text = markdown({"machine": {"date": "d", "commit": "c0ffee", "cores": 2}, "seconds": 60, "job_nice": 10,
                     "preload": 200_000, "job": {"batches_overlapping": 3, "events_in_them": 90_000},
                     "probes": {k: probe for k in PROBES}})
    assert "JOB_NICE=10" in text and "3 (90,000 events)" in text
    assert [line.split(" | ")[0] for line in text.splitlines() if line.endswith(" | 1 |")] == [f"| {k}" for k in PROBES]


def test_a_job_waited_on_says_its_progress_meanwhile_and_its_exit_code_after(capsys):
    import subprocess

    from bench.jobproc import Job

    answers = iter([None, None, 3])

    class Proc:
        def wait(self, timeout):
            answer = next(answers)
            if answer is None:
                raise subprocess.TimeoutExpired("job", timeout)
            return answer

    job = Job.__new__(Job)
    job.name, job.proc, job._sampling = "job-x", Proc(), True
    job.progress = lambda: "job-x: sessions batch 4"
    assert job.wait(timeout_s=60, progress_every_s=0.01) == 3
    assert capsys.readouterr().out.count("job-x: sessions batch 4") == 2 and job._sampling is False
