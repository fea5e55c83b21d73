"""Failures on the real stack (DESIGN.md §16): the fault scenarios of `make faults` that fit in CI
time, the job's exit when the store stays away, its health endpoint, and a second run's refusal.

The soak and the scenarios of minutes (5 kills, the full disk) run in `make faults` only; kill -9
with duplicates and poison records is also tests/e2e/test_job_e2e.py's kill test."""
from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from pymongo import MongoClient

from faults import scenarios
from faults.harness import SupervisedJob, Workload, drop, free_port, service
from tests.conftest import ROOT, eventually
from tests.e2e.jobrun import generate, job_env, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.full]


@pytest.fixture(scope="module")
def workload(stack):
    """300 generated sessions, 2% malformed and 5% redelivered records, and their uninterrupted run."""
    work = Workload("e2e", 300, seed=21, duplicate_ratio=0.05, bad_ratio=0.02)
    return work, scenarios.reference(work)


def _assert_exact(row: dict, workload: Workload) -> None:
    assert row["equal_to_reference"], row["differences"]
    assert (row["distinct_events"], row["lost"], row["duplicates"]) == (workload.events, 0, 0), row
    assert row["quarantined"] == len(workload.malformed) > 0, row
    assert row["recovered"], row


def test_a_store_outage_of_40_s_is_ridden_out_without_a_restart(workload):
    work, expected = workload
    row = scenarios.store_outage(work, expected, seconds=40)
    _assert_exact(row, work)
    assert row["exits"] == 0, row["causes"]  # retried inside the sink: the job never stopped


def test_a_store_outage_under_live_traffic_keeps_the_act_lane_sending_and_every_output_exact(stack):
    """FerretDB down 30 s while events arrive live at 200/s: the act lane's session messages for
    events of the outage reach Kafka while the store is down, and afterwards every collection and topic equals the
    uninterrupted run (how fast they reach it is `make faults`' figure, not asserted here)."""
    row = scenarios.store_outage_live(rate=200, before_s=30, outage_s=30, after_s=15)
    assert row["equal_to_reference"], row["differences"]
    assert (row["distinct_events"], row["lost"], row["duplicates"]) == (row["sent"], 0, 0), row
    assert row["sent"] >= 200 * 70, row
    assert row["recovered"] and row["exits"] == 0, row
    assert row["act_latency"]["segments"]["messages"] > 0, row["act_latency"]
    # events of the outage's second half reached the act lane while the store was still down
    assert row["act_latency"]["segments"]["second_half_sent_before_end"] > 0, row["act_latency"]


def test_a_broker_restart_mid_stream_loses_nothing(workload):
    work, expected = workload
    row = scenarios.broker_restart(work, expected, seconds=10)
    _assert_exact(row, work)


def test_the_job_exits_with_one_line_naming_the_store_when_it_stays_away(stack, tmp_path, unique_name):
    generate(stack["bootstrap"], unique_name, "--sessions", "20", "--seed", "3")
    env = job_env(stack, unique_name, unique_name, tmp_path / "ckpt", MONGODB_RETRY_TIMEOUT="5s",
                  HEALTH_PORT=str(free_port()))
    job = subprocess.Popen([str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    client = MongoClient(stack["mongodb_uri"])
    try:
        eventually(lambda: client[unique_name].stream_progress.find_one({"query": "sessions"}), timeout_s=300,
                   what="the first batch")
        service("down", "mongo")
        generate(stack["bootstrap"], unique_name, "--sessions", "5", "--seed", "4")  # a batch that must write
        stdout, stderr = job.communicate(timeout=300)
    finally:
        service("up", "mongo")
        if job.poll() is None:
            job.kill()
    # spark-submit merges the Python driver's stderr into its stdout
    errors = [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]
    assert job.returncode == 1
    assert len(errors) == 1, (stdout + stderr)[-3000:]
    # the store query gives up (the sessions query never waits for the store)
    assert errors[0].startswith("error: query store failed: ConnectionFailure: MongoDB at mongodb://"), errors[0]
    assert "(MONGODB_RETRY_TIMEOUT)" in errors[0]
    drop(unique_name)


def test_health_endpoint_reports_a_live_ready_query_with_its_lag(stack, tmp_path, unique_name):
    generate(stack["bootstrap"], unique_name, "--sessions", "30", "--seed", "8")
    job = SupervisedJob("health", unique_name, unique_name, checkpoint_dir=tmp_path / "ckpt").start()
    try:
        status = eventually(lambda: (job.status() or {}).get("ready") and job.status(), timeout_s=300,
                            what="a ready job")
        query = status["queries"][0]
        assert (status["live"], query["name"], query["state"]) == (True, "sessions", "active")
        assert query["batches"] >= 1 and query["kafka_lag"] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{job.health_port}/healthz", timeout=5) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
        written = json.loads((tmp_path / "ckpt" / "health.json").read_text())
        assert written["queries"][0]["name"] == "sessions" and written["pid"] == status["pid"]
    finally:
        job.stop()
    assert job.exits == []
    drop(unique_name)


def test_a_new_checkpoint_is_refused_against_another_runs_aggregates_unless_reset(stack, tmp_path, unique_name):
    generate(stack["bootstrap"], unique_name, "--sessions", "40", "--seed", "9", "--spread-minutes", "120")
    run_job(job_env(stack, unique_name, unique_name, tmp_path / "first"))
    db = MongoClient(stack["mongodb_uri"])[unique_name]
    first_run = db.conversion_funnel.distinct("run_id")
    assert len(first_run) == 1

    refused = subprocess.run([str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py",
                              "--available-now"], cwd=ROOT, env=job_env(stack, unique_name, unique_name,
                                                                         tmp_path / "second"),
                             capture_output=True, text=True, timeout=300)
    errors = [line for line in (refused.stdout + refused.stderr).splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1, (refused.stdout + refused.stderr)[-3000:]
    assert errors[0].startswith(
        f"error: MONGODB_DATABASE={unique_name} holds the aggregates of another run ({first_run[0]})")
    assert "--reset-output" in errors[0]

    run_job(job_env(stack, unique_name, unique_name, tmp_path / "second"), "--reset-output")
    second_run = json.loads((tmp_path / "second" / "sessions" / "metadata").read_text())["id"]
    assert db.conversion_funnel.distinct("run_id") == [second_run]
    drop(unique_name)

