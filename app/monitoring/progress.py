"""One log line per micro-batch, and the same figures in the stream_progress collection."""
from __future__ import annotations

import logging
from datetime import datetime

from pyspark.sql.streaming import StreamingQueryListener

from app.sinks import collections as out
from app.sinks.mongo import client_for

log = logging.getLogger("behavior.progress")
BATCH_METRICS = "batch_metrics"  # app/pipeline.py with_batch_metrics
_COUNTS = ("events", "late_events", "late_unsessionized", "duplicates", "quarantined", "sessions_opened",
           "sessions_closed")
# Bytes the batch wrote to the state store: RocksDB counts them; the in-memory provider (tests)
# reports only its map's size. (rocksdbSstFileSize stays 0 between snapshots with changelog
# checkpointing, so it says nothing about the state's size from batch to batch.)
_WRITTEN_METRIC = "rocksdbTotalBytesWritten"


def progress_document(p) -> dict:
    """A StreamingQueryProgress -> the batch's figures (open_sessions is added by the reporter)."""
    observed = p.observedMetrics.get(BATCH_METRICS)
    counts = {name: (observed[name] or 0) if observed is not None else 0 for name in _COUNTS}
    return {
        "_id": f"{p.name}:{p.id}:{p.batchId}",
        "query": p.name,
        "query_id": str(p.id),
        "batch_id": p.batchId,
        "timestamp": datetime.fromisoformat(p.timestamp.replace("Z", "+00:00")),
        "input_rows": p.numInputRows,
        "input_rows_per_second": round(p.inputRowsPerSecond or 0.0, 1),
        "processed_rows_per_second": round(p.processedRowsPerSecond or 0.0, 1),
        "batch_duration_ms": p.batchDuration,
        "duration_ms": dict(p.durationMs),
        **counts,
        # One state row per user with open sessions or remembered session ids.
        "state_users": sum(op.numRowsTotal for op in p.stateOperators),
        "state_users_updated": sum(op.numRowsUpdated for op in p.stateOperators),
        "state_bytes_written": sum(int((op.customMetrics or {}).get(_WRITTEN_METRIC, 0)) for op in p.stateOperators),
        "state_memory_bytes": sum(op.memoryUsedBytes for op in p.stateOperators),
        "rows_dropped_by_watermark": sum(op.numRowsDroppedByWatermark for op in p.stateOperators)
        + counts["late_unsessionized"],
        "watermark": p.eventTime.get("watermark"),
    }


def progress_line(doc: dict) -> str:
    return (f"[{doc['query']}] batch {doc['batch_id']}: {doc['input_rows']} rows, "
            f"{doc['processed_rows_per_second']:.0f} rows/s, batch {doc['batch_duration_ms']} ms, "
            f"open sessions {doc.get('open_sessions', '-')}, state users {doc['state_users']} "
            f"({doc['state_users_updated']} written, {doc['state_bytes_written'] / 1e6:.1f} MB), "
            f"duplicates {doc['duplicates']}, late {doc['late_events']}, quarantined {doc['quarantined']}, "
            f"watermark {doc['watermark'] or '-'}")


def open_sessions(db, doc: dict) -> int:
    """The query's running count of open sessions, advanced once per batch id (a replayed batch
    reports the same opened/closed counts and is not applied twice)."""
    key = {"_id": f"open_sessions:{doc['query_id']}"}
    total = db[out.PROGRESS].find_one(key) or {"open_sessions": 0, "batch_id": -1}
    if doc["batch_id"] > total["batch_id"]:
        total = {**key, "batch_id": doc["batch_id"],
                 "open_sessions": total["open_sessions"] + doc["sessions_opened"] - doc["sessions_closed"]}
        db[out.PROGRESS].replace_one(key, total, upsert=True)
    return total["open_sessions"]


class ProgressReporter(StreamingQueryListener):
    def __init__(self, mongodb_uri: str, database: str):
        self.mongodb_uri, self.database = mongodb_uri, database

    def onQueryStarted(self, event) -> None:
        log.info("query %s started (id %s)", event.name, event.id)

    def onQueryProgress(self, event) -> None:
        doc = progress_document(event.progress)
        if doc["input_rows"] == 0 and doc["sessions_closed"] == 0 and doc["state_users_updated"] == 0:
            return
        try:
            db = client_for(self.mongodb_uri)[self.database]
            doc["open_sessions"] = open_sessions(db, doc)
            out.record_progress(db, doc)
        except Exception as exc:  # monitoring must never stop the stream
            log.warning("could not record progress: %s", exc)
        log.info(progress_line(doc))

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        if event.exception:
            log.error("query %s failed: %s", event.id, event.exception.splitlines()[0])
        else:
            log.info("query %s stopped", event.id)
