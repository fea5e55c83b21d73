"""The streaming job (DESIGN.md §9):

    ./deploy/local/submit.sh app/jobs/streaming/advanced_streaming.py [--available-now] [--session-gap 30m ...]

Settings come from env vars (KAFKA_BOOTSTRAP_SERVERS, MONGODB_URI, ...) and flags; see README.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make `app` importable
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

from app.config import APPLY_IN_PANDAS, InvalidConfigError, describe, load_config  # noqa: E402
from app.services import ServiceUnavailableError, check_kafka, check_mongodb  # noqa: E402
from app.profiles.rules import load_profile_rules  # noqa: E402
from app.segments.rules import load_rules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("behavior")
    try:
        config = load_config(argv if argv is not None else sys.argv[1:])
        load_rules(config.rules_file)
        if config.profiles:
            load_profile_rules(config.profile_rules_file)
        from app.pipeline import check_checkpoint, check_outputs, store_for
        from app.sessions.lean_arrow import arrow_path
        path = arrow_path(config.lean_arrow)  # the pyspark installed here: the image's, the workers'
        check_checkpoint(config)
        check_kafka(config)
        check_mongodb(config)
        store = store_for(config)
        check_outputs(config, store)
    except (InvalidConfigError, ServiceUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from app.monitoring.health import Health, HealthServer
    from app.monitoring.progress import ProgressReporter
    from app.pipeline import build_spark, start_queries

    log.info("starting: %s", describe(config))
    if config.state_operator == APPLY_IN_PANDAS:
        log.info("the per-user state: applyInPandasWithState, on the %s", path.reason)
    else:
        log.info("the per-user state: %s (STATE_OPERATOR)", config.state_operator)
    health = Health(config.health_stall_after_s)
    server = HealthServer(health, config.health_port, Path(config.checkpoint_dir, "health.json")).start()
    spark = build_spark(config)
    spark.sparkContext.setLogLevel("WARN")
    reporter = ProgressReporter(store, health)
    spark.streams.addListener(reporter)
    try:
        queries = start_queries(spark, config)
    except InvalidConfigError as exc:  # found only once Spark runs: the input topic, the store lane's topic
        print(f"error: {exc}", file=sys.stderr, flush=True)
        server.stop()
        spark.stop()
        return 2
    for q in queries:  # known at once (the listener's started event may come a moment later)
        health.started(q.name, str(q.id))
    log.info("query %s running; Spark UI: %s", [q.name for q in queries], spark.sparkContext.uiWebUrl)

    stopping = threading.Event()

    def stop(signum, _frame):  # only a flag: a Py4J call may be in progress on this very thread
        log.info("signal %s: stopping queries", signum)
        stopping.set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stalled = watch(spark, health, stopping, log)
    if stalled:  # a hung batch may never return: leave now, the restart replays it exactly
        server.write()
        print(f"error: {stalled}", file=sys.stderr, flush=True)
        os._exit(3)
    failed = [(q.name, q.exception()) for q in queries if q.exception() is not None]
    if config.available_now and not failed and not stopping.is_set():
        failed = drain(queries, stopping, log)
        # a query that failed while another drained (it is no longer active: drain skipped it)
        failed += [(q.name, q.exception()) for q in queries
                   if q.exception() is not None and q.name not in {name for name, _ in failed}]
    for q in queries:  # one query down means the job is down: never run half-alive
        if q.isActive:
            q.stop()
    reporter.flush()
    server.stop()
    spark.stop()
    for name, exc in failed:
        print(f"error: query {name} failed: {failure_cause(str(exc))}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def drain(queries, stopping: threading.Event, log) -> list:
    """--available-now: the sessions query has read what the topic held; the store query, then
    the activity query, write everything it sent them before the job ends (a signal stops the
    wait: they go on from their checkpoints next time). Returns a failure, if any."""
    from app.pipeline import QUERY_NAME
    for q in queries:  # in start order: sessions, store, activity
        if q.name == QUERY_NAME or not q.isActive:
            continue
        log.info("the sessions query is done: query %s takes in what it sent (the store lane)", q.name)
        failure: list = []

        def wait(query=q) -> None:
            try:
                query.processAllAvailable()
            except Exception as exc:  # noqa: BLE001 (StreamingQueryException)
                failure.append((query.name, exc))
        waiter = threading.Thread(target=wait, name=f"{q.name}-drain", daemon=True)
        waiter.start()
        while waiter.is_alive() and not stopping.is_set():
            waiter.join(1)
        if failure or stopping.is_set():
            return failure
    return []


def watch(spark, health, stopping: threading.Event, log) -> str | None:
    """Waits until any query terminates or a signal asks to stop (returns None), or the health
    verdict says the job is stalled (returns why)."""
    while not stopping.is_set():
        try:
            if spark.streams.awaitAnyTermination(5):
                return None
        except Exception:  # noqa: BLE001 (StreamingQueryException: the failure is read back from the query)
            return None
        health.tasks(task_progress(spark))
        snapshot = health.snapshot()
        if not snapshot["live"]:
            log.error("not live: %s", snapshot["reason"])
            return snapshot["reason"]
    return None


def task_progress(spark) -> tuple:
    """The active stages and their finished tasks: it changes while any batch makes headway."""
    tracker = spark.sparkContext.statusTracker()
    stages = [tracker.getStageInfo(stage) for stage in tracker.getActiveStageIds()]
    return tuple(sorted((s.stageId, s.numCompletedTasks) for s in stages if s is not None))


_ERROR_LINE = re.compile(r"^\s*(?:Caused by: )?([A-Za-z_][\w.$]*(?:Error|Exception|Failure|Timeout)\w*): (.+)$")
_WRAPPERS = {"Py4JJavaError", "Py4JException", "StreamingQueryException", "ForeachBatchUserFuncException"}
# Spark's error class as it follows an exception's name: "SparkException: [CANNOT_WRITE_STATE_STORE.CANNOT_COMMIT]"
# (not any bracketed word: plans print e.g. "[EVENTS]").
_ERROR_CLASS = re.compile(r"(?:Exception|Error): \[([A-Z]+(?:_[A-Z]+)+(?:\.[A-Z_]+)?)\]")
_WRAPPER_CLASSES = {"STREAM_FAILED", "FOREACH_BATCH_USER_FUNCTION_ERROR"}


def failure_cause(message: str) -> str:
    """A query's failure (Spark's wrapper, a Python traceback, a JVM stack) -> one line: Spark's
    error class, if any, and the root cause (the last error that is not a wrapper of another)."""
    lines = message.splitlines()
    causes = [f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}" for m in map(_ERROR_LINE.match, lines)
              if m and m.group(1).rsplit(".", 1)[-1] not in _WRAPPERS]
    cause = causes[-1] if causes else (lines[0] if lines else "unknown error")
    error_class = next((c for c in _ERROR_CLASS.findall(message) if c not in _WRAPPER_CLASSES), None)
    if error_class and error_class not in cause:
        cause = f"{error_class}: {cause}"
    return cause if len(cause) <= 300 else cause[:297] + "..."


if __name__ == "__main__":
    sys.exit(main())
