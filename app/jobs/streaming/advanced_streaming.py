"""The streaming job (DESIGN.md §9):

    ./deploy/local/submit.sh app/jobs/streaming/advanced_streaming.py [--available-now] [--session-gap 30m ...]

Settings come from env vars (KAFKA_BOOTSTRAP_SERVERS, MONGODB_URI, ...) and flags; see README.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

if __package__ in (None, ""):  # run as a file by spark-submit: make `app` importable
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

from app.config import InvalidConfigError, describe, load_config  # noqa: E402
from app.services import ServiceUnavailableError, check_kafka, check_mongodb  # noqa: E402
from app.segments.rules import load_rules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("behavior")
    try:
        config = load_config(argv if argv is not None else sys.argv[1:])
        load_rules(config.rules_file)
        from app.pipeline import check_checkpoint
        check_checkpoint(config)
        check_kafka(config)
        check_mongodb(config)
    except (InvalidConfigError, ServiceUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from app.monitoring.progress import ProgressReporter
    from app.pipeline import build_spark, start_queries

    log.info("starting: %s", describe(config))
    spark = build_spark(config)
    spark.sparkContext.setLogLevel("WARN")
    spark.streams.addListener(ProgressReporter(config.mongodb_uri, config.mongodb_database))
    queries = start_queries(spark, config)
    log.info("query %s running; Spark UI: %s", [q.name for q in queries], spark.sparkContext.uiWebUrl)

    def stop(signum, _frame):
        log.info("signal %s: stopping queries", signum)
        for q in queries:
            q.stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for q in queries:
        q.awaitTermination()
    failed = [q for q in queries if q.exception() is not None]
    spark.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
