"""The health signal (DESIGN.md §16): verdict edges, Kafka lag, the HTTP endpoint, root causes, store retries."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from pymongo.errors import AutoReconnect, OperationFailure, ServerSelectionTimeoutError

from app.jobs.streaming.advanced_streaming import failure_cause
from app.monitoring.health import Health, HealthServer, kafka_lag, verdict
from app.sinks import mongo
from app.sinks.mongo import Store


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


def test_kafka_lag_sums_latest_minus_processed_over_partitions():
    latest = json.dumps({"events": {"0": 100, "1": 50, "2": 7}})
    end = json.dumps({"events": {"0": 90, "1": 50, "2": 0}})
    assert kafka_lag(latest, end) == 17
    assert kafka_lag(latest, json.dumps({"events": {"0": 100}})) == 57  # a partition not read yet
    assert kafka_lag(None, end) is None


def test_starting_is_live_until_the_stall_limit_then_not():
    assert verdict([], uptime_s=10, stall_after_s=300) == {"live": True, "ready": False, "reason": "starting"}
    assert verdict([], uptime_s=301, stall_after_s=300)["live"] is False


def test_ready_after_the_first_batch_and_stalled_just_past_the_limit():
    clock = Clock()
    health = Health(stall_after_s=300, clock=clock)
    health.started("sessions", "q1")
    assert (health.snapshot()["live"], health.snapshot()["ready"]) == (True, False)
    clock.now += 60
    health.progress("sessions", batch_id=0, input_rows=500, duration_ms=59_000, lag=1200)
    snapshot = health.snapshot()
    assert (snapshot["live"], snapshot["ready"], snapshot["reason"]) == (True, True, "ok")
    assert snapshot["queries"][0]["kafka_lag"] == 1200 and snapshot["queries"][0]["batches"] == 1
    clock.now += 300
    assert health.snapshot()["live"] is True  # at the limit: still live
    clock.now += 1
    snapshot = health.snapshot()
    assert snapshot["live"] is False and "stalled" in snapshot["reason"] and "301 s" in snapshot["reason"]
    health.idle("sessions")  # an idle tick is a sign of life, and means nothing is waiting
    snapshot = health.snapshot()
    assert snapshot["live"] is True and snapshot["queries"][0]["kafka_lag"] == 0


def test_a_failed_query_is_not_live_and_names_the_cause():
    health = Health(stall_after_s=300, clock=Clock())
    health.started("sessions", "q1")
    health.terminated("sessions", "ServerSelectionTimeoutError: 127.0.0.1:27017: connection refused")
    snapshot = health.snapshot()
    assert snapshot["live"] is False
    assert snapshot["reason"] == "query sessions failed: ServerSelectionTimeoutError: 127.0.0.1:27017: connection refused"


def test_the_sessions_query_done_while_the_store_query_stores_is_live_and_a_failed_store_query_is_not():
    """--available-now: the sessions query ends, the store query writes what it sent (the store lane)."""
    health = Health(stall_after_s=300, clock=Clock())
    for name, query_id in (("sessions", "q1"), ("store", "q2")):
        health.started(name, query_id)
        health.progress(name, batch_id=0, input_rows=10, duration_ms=1000, lag=0)
    health.terminated("sessions", None)
    assert (health.snapshot()["live"], health.snapshot()["ready"]) == (True, True)
    health.terminated("store", "ConnectionFailure: MongoDB unreachable")
    snapshot = health.snapshot()
    assert snapshot["live"] is False and snapshot["reason"].startswith("query store failed")
    alone = Health(stall_after_s=300, clock=Clock())
    alone.started("sessions", "q1")
    alone.terminated("sessions", None)  # stopped, and nothing else runs: not live
    assert alone.snapshot()["live"] is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_endpoint_and_file(tmp_path):
    clock, port = Clock(), _free_port()
    health = Health(stall_after_s=300, clock=clock)
    server = HealthServer(health, port, tmp_path / "health.json", host="127.0.0.1").start()
    try:
        base = f"http://127.0.0.1:{port}"
        assert _get(base + "/healthz") == (200, "starting\n")
        assert _get(base + "/readyz") == (503, "starting\n")
        health.started("sessions", "q1")
        health.progress("sessions", batch_id=3, input_rows=10, duration_ms=900, lag=0)
        assert _get(base + "/readyz") == (200, "ok\n")
        status, body = _get(base + "/status")
        assert status == 200 and json.loads(body)["queries"][0]["last_batch_id"] == 3
        clock.now += 400
        status, body = _get(base + "/healthz")
        assert status == 503 and body.startswith("query sessions stalled")
        server.write()
        assert json.loads((tmp_path / "health.json").read_text())["live"] is False
    finally:
        server.stop()


def test_failure_cause_picks_the_root_python_error_from_spark_wrapping():
    message = "\n".join([
        "[STREAM_FAILED] Query [id = 1, runId = 2] terminated with exception: An exception was raised by the "
        "Python Proxy. Return Message: Traceback (most recent call last):",
        '  File "/x/pipeline.py", line 93, in __call__',
        "pymongo.errors.ConnectionFailure: MongoDB at mongodb://127.0.0.1:27017/ unreachable for 120 s "
        "(MONGODB_RETRY_TIMEOUT) during enriched_events: refused",
        "\tat org.apache.spark.sql.execution.streaming.StreamExecution.run(StreamExecution.scala:1)",
    ])
    assert failure_cause(message) == ("ConnectionFailure: MongoDB at mongodb://127.0.0.1:27017/ unreachable for "
                                      "120 s (MONGODB_RETRY_TIMEOUT) during enriched_events: refused")
    assert failure_cause("something odd happened\nmore") == "something odd happened"


def test_store_retries_connection_failures_then_succeeds(monkeypatch):
    sleeps = []
    monkeypatch.setattr(mongo.time, "sleep", sleeps.append)
    calls = iter([AutoReconnect("reset"), ServerSelectionTimeoutError("refused"), "written"])

    def step():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value
    assert Store("mongodb://x/", "db", retry_timeout_s=60).retrying("events", step) == "written"
    assert sleeps == [1.0, 2.0]  # backoff doubles


def test_store_gives_up_after_the_retry_timeout_naming_the_setting():
    def refused():
        raise ServerSelectionTimeoutError("refused")
    with pytest.raises(Exception, match="MONGODB_RETRY_TIMEOUT.*during events"):
        Store("mongodb://u:secret@x/", "db", retry_timeout_s=0).retrying("events", refused)


def test_store_does_not_retry_other_errors():
    calls = []

    def denied():
        calls.append(1)
        raise OperationFailure("not authorized")
    with pytest.raises(OperationFailure):
        Store("mongodb://x/", "db", retry_timeout_s=60).retrying("events", denied)
    assert calls == [1]


def test_status_lines_for_make_status():
    from app.monitoring.status import describe
    clock = Clock()
    health = Health(stall_after_s=300, clock=clock)
    health.started("sessions", "q1")
    health.progress("sessions", batch_id=41, input_rows=200, duration_ms=1200, lag=1500)
    clock.now += 3
    lines = describe(health.snapshot(), "http://127.0.0.1:8090", now=clock.now + 10)
    assert lines[0].endswith("http://127.0.0.1:8090): live, ready: ok")
    assert lines[1] == ("  query sessions: active, 1 batches, last batch 13 s ago (batch 41, 200 rows, 1.2 s), "
                        "Kafka lag 1,500")


def test_failure_cause_of_a_full_checkpoint_disk_names_the_state_store_and_the_io_error():
    message = "\n".join([
        "[STREAM_FAILED] Query [id = 1, runId = 2] terminated with exception: [FOREACH_BATCH_USER_FUNCTION_ERROR] "
        "An error occurred in the user provided function in foreach batch sink.",
        "py4j.protocol.Py4JJavaError: An error occurred while calling o1063.count.",
        ": org.apache.spark.SparkException: [CANNOT_WRITE_STATE_STORE.CANNOT_COMMIT] Error writing state store files",
        "\tat org.apache.spark.sql.execution.streaming.state.RocksDB.commit(RocksDB.scala:1)",
        "Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device",
        "Caused by: java.io.IOException: No space left on device",
        "\t... 34 more",
    ])
    assert failure_cause(message) == "CANNOT_WRITE_STATE_STORE.CANNOT_COMMIT: IOException: No space left on device"


def test_failure_cause_takes_no_bracketed_word_of_a_plan_for_an_error_class():
    message = ("[STREAM_FAILED] Query terminated: Project [EVENTS] +- Filter [KIND_X]\n"
               "pymongo.errors.ConnectionFailure: MongoDB at mongodb://h/ unreachable for 5 s")
    assert failure_cause(message) == "ConnectionFailure: MongoDB at mongodb://h/ unreachable for 5 s"


def test_finished_tasks_inside_a_long_batch_are_signs_of_life_but_a_frozen_batch_is_not():
    clock = Clock()
    health = Health(stall_after_s=300, clock=clock)
    health.started("sessions", "q1")
    health.tasks(((7, 0),))
    for completed in range(1, 4):  # a 12-minute first batch whose tasks keep finishing
        clock.now += 240
        health.tasks(((7, completed),))
        assert health.snapshot()["live"] is True
    for _ in range(2):  # then nothing moves
        clock.now += 200
        health.tasks(((7, 3),))
    snapshot = health.snapshot()
    assert snapshot["live"] is False
    assert "stalled: no batch, idle tick or finished task for 400 s" in snapshot["reason"]
