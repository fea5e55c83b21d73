"""Shared fixtures: one local Spark session, the repo root, and the local stack for e2e tests."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# tests/mongodb asks a real MongoDB's planner (make test-mongodb): collected only when one is given
collect_ignore = [] if os.environ.get("MONGODB_EXPLAIN_URI") else ["mongodb"]

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def eventually(check, timeout_s: float = 60.0, interval_s: float = 0.5, what: str = "condition"):
    """Bounded wait for an asynchronous outcome; returns check()'s truthy value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def stack():
    """The real local stack (Kafka + FerretDB), started by the project's script; never skipped."""
    subprocess.run([str(ROOT / "deploy/local/stack.sh"), "up"], check=True, cwd=ROOT)
    return {
        "bootstrap": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:" + os.environ.get("KAFKA_PORT", "9092")),
        "mongodb_uri": os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:" + os.environ.get("MONGO_PORT", "27017") + "/"),
    }


@pytest.fixture
def unique_name():
    return "t" + uuid.uuid4().hex[:10]
