"""The job's own stages with a no-op sink: the upper bound the MongoDB writes are measured against.

    ./deploy/local/submit.sh bench/noop_job.py parse|state   (settings from the same env vars)

parse: Kafka read + parse/validate + enrichment (every record routed once), counted and dropped.
state: the same, plus the per-user state step (on STATE_OPERATOR, the job's), counted and dropped.
Runs once over what the topic holds (availableNow) and prints one JSON line of figures.
"""
from __future__ import annotations

import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from app.config import load_config  # noqa: E402
from app.events.enrich import with_event_enrichment  # noqa: E402
from app.events.parse import parse_events  # noqa: E402
from app.pipeline import build_spark, kafka_source  # noqa: E402
from app.sessions.stateful import sessionize  # noqa: E402


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "parse"
    if mode not in ("parse", "state"):
        print("usage: noop_job.py parse|state", file=sys.stderr)
        return 2
    config = load_config(["--available-now"], os.environ)
    spark = build_spark(config, app_name=f"bench-noop-{mode}")
    spark.sparkContext.setLogLevel("WARN")
    stream = kafka_source(spark, config).transform(parse_events()).transform(with_event_enrichment)
    if mode == "state":
        rules = yaml.safe_load(Path(config.rules_file).read_text(encoding="utf-8"))
        stream = stream.transform(sessionize(rules, config.session_gap_s, config.session_max_s,
                                             config.watermark_delay_s, config.session_id_retention_s,
                                             lean=config.lean_arrow, operator=config.state_operator))
        writer = stream.writeStream.outputMode("update")
    else:
        writer = stream.writeStream
    started = time.time()
    query = (writer.format("noop").queryName(f"noop-{mode}").trigger(availableNow=True)
             .option("checkpointLocation", str(Path(config.checkpoint_dir, f"noop-{mode}"))).start())
    query.awaitTermination()
    ended = time.time()
    batches = [p for p in query.recentProgress if p.numInputRows > 0 or p.batchId == 0]
    operators = query.lastProgress.stateOperators if query.lastProgress else []
    events = sum(p.numInputRows for p in query.recentProgress)
    first_batch_start = min(_epoch(p.timestamp) for p in batches) if batches else started
    print("NOOP_RESULT " + json.dumps({
        "mode": mode, "events": events, "seconds": round(ended - first_batch_start, 2),
        "events_per_s": round(events / max(ended - first_batch_start, 1e-9)),
        "batches": [{"batch": p.batchId, "rows": p.numInputRows, "ms": p.batchDuration} for p in query.recentProgress],
        "state_users": sum(op.numRowsTotal for op in operators),
        "state_bytes_written": sum(int((op.customMetrics or {}).get("rocksdbTotalBytesWritten", 0))
                                   for p in query.recentProgress for op in p.stateOperators),
    }), flush=True)
    spark.stop()
    return 0


def _epoch(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
