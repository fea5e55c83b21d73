"""The local stack and the smoke pipeline, on real Kafka + FerretDB + spark-submit."""
from __future__ import annotations

import os
import subprocess

import pytest
from pymongo import MongoClient

from app.jobs.smoke_produce import produce, smoke_events
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.full]


def run_smoke(env_overrides: dict, collection: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_overrides}
    return subprocess.run([str(ROOT / "deploy/local/submit.sh"), "app/jobs/smoke.py", "--collection", collection],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_smoke_pipeline_writes_every_event_exactly_once(stack, unique_name):
    events = smoke_events(1000)
    produce(stack["bootstrap"], unique_name, events)
    database = "smoke_" + unique_name

    result = run_smoke({"KAFKA_TOPIC": unique_name, "MONGODB_DATABASE": database}, unique_name)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds 1000 documents" in result.stdout
    client = MongoClient(stack["mongodb_uri"])
    try:
        docs = list(client[database][unique_name].find({}, {"_id": 0}))
        assert len(docs) == 1000
        assert sorted(docs, key=lambda d: d["event_id"]) == sorted(events, key=lambda d: d["event_id"])
    finally:
        client.drop_database(database)


def test_stack_up_is_idempotent(stack):
    for _ in range(2):
        result = subprocess.run([str(ROOT / "deploy/local/stack.sh"), "up"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "already running" in result.stderr
    status = subprocess.run([str(ROOT / "deploy/local/stack.sh"), "status"], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0 and "kafka: up" in status.stdout and "ferretdb: up" in status.stdout


def test_smoke_job_fails_fast_naming_the_stopped_mongodb_server(stack, unique_name):
    subprocess.run([str(ROOT / "deploy/local/stack.sh"), "down", "mongo"], cwd=ROOT, check=True)
    try:
        # The timeout is a hang guard: the check runs before any Spark work, so it returns at once.
        result = run_smoke({"KAFKA_TOPIC": unique_name}, unique_name, timeout=120)
    finally:
        subprocess.run([str(ROOT / "deploy/local/stack.sh"), "up", "mongo"], cwd=ROOT, check=True)
    assert result.returncode == 2
    output = result.stdout + result.stderr  # spark-submit merges the Python driver's stderr into stdout
    assert "MongoDB-compatible server is not reachable at mongodb://127.0.0.1" in output
    assert "make up" in output
