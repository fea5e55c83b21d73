"""One log line per micro-batch, and the same figures in the stream_progress collection."""
from __future__ import annotations

import logging
from datetime import datetime

from pyspark.sql.streaming import StreamingQueryListener

from app.sinks import collections as out
from app.sinks.mongo import client_for

log = logging.getLogger("behavior.progress")


def progress_document(p) -> dict:
    state_rows = sum(op.numRowsTotal for op in p.stateOperators)
    dropped = sum(op.numRowsDroppedByWatermark for op in p.stateOperators)
    observed = p.observedMetrics.get("late_events")
    late = (observed["late_events"] or 0) if observed is not None else 0
    unsessionized = (observed["late_unsessionized"] or 0) if observed is not None else 0
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
        "state_rows": state_rows,
        "state_memory_bytes": sum(op.memoryUsedBytes for op in p.stateOperators),
        "rows_dropped_by_watermark": dropped + unsessionized,
        "late_events": late,
        "watermark": p.eventTime.get("watermark"),
    }


def progress_line(doc: dict) -> str:
    return (f"[{doc['query']}] batch {doc['batch_id']}: {doc['input_rows']} rows, "
            f"{doc['processed_rows_per_second']:.0f} rows/s, batch {doc['batch_duration_ms']} ms, "
            f"state rows {doc['state_rows']}, late {doc['late_events']}, "
            f"dropped by watermark {doc['rows_dropped_by_watermark']}, watermark {doc['watermark'] or '-'}")


class ProgressReporter(StreamingQueryListener):
    def __init__(self, mongodb_uri: str, database: str):
        self.mongodb_uri, self.database = mongodb_uri, database

    def onQueryStarted(self, event) -> None:
        log.info("query %s started (id %s)", event.name, event.id)

    def onQueryProgress(self, event) -> None:
        doc = progress_document(event.progress)
        if doc["input_rows"] == 0 and doc["state_rows"] == 0:
            return
        log.info(progress_line(doc))
        try:
            out.record_progress(client_for(self.mongodb_uri)[self.database], doc)
        except Exception as exc:  # monitoring must never stop the stream
            log.warning("could not record progress: %s", exc)

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        if event.exception:
            log.error("query %s failed: %s", event.id, event.exception.splitlines()[0])
        else:
            log.info("query %s stopped", event.id)
