"""One log line per micro-batch, the same figures in the stream_progress collection, and the
health signal (app/monitoring/health.py). The listener never waits for MongoDB: documents go to
a bounded queue that one thread writes, so a store outage cannot hold up Spark's listener bus."""
from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime

from pyspark.sql.streaming import StreamingQueryListener

from app.monitoring.health import Health, kafka_lag
from app.sinks import collections as out
from app.sinks.mongo import Store

log = logging.getLogger("behavior.progress")
BATCH_METRICS = "batch_metrics"  # app/pipeline.py with_batch_metrics
_COUNTS = ("events", "late_events", "late_unsessionized", "duplicates", "quarantined", "sessions_opened",
           "sessions_closed", "events_corrected", "sessions_retracted")
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


def batch_lag(p) -> int | None:
    """Records in the sources beyond what this batch processed (Kafka sources report both)."""
    lags = [kafka_lag(source.latestOffset, source.endOffset) for source in p.sources]
    return None if any(lag is None for lag in lags) else sum(lags)


class ProgressReporter(StreamingQueryListener):
    QUEUE_SIZE = 1000  # ~hours of batches; beyond it, during a long outage, the oldest documents are dropped

    def __init__(self, store: Store, health: Health | None = None):
        self.store, self.health = store, health
        self.dropped = 0
        self._names: dict[str, str] = {}  # query id -> name (idle and terminated events carry only the id)
        self._pending: queue.Queue = queue.Queue(self.QUEUE_SIZE)
        threading.Thread(target=self._write_loop, name="progress-writer", daemon=True).start()

    def onQueryStarted(self, event) -> None:
        log.info("query %s started (id %s)", event.name, event.id)
        self._names[str(event.id)] = event.name
        if self.health:
            self.health.started(event.name, str(event.id))

    def onQueryProgress(self, event) -> None:
        p = event.progress
        doc = progress_document(p)
        doc["kafka_lag"] = batch_lag(p)
        if self.health:
            self.health.progress(p.name, p.batchId, p.numInputRows, p.batchDuration, doc["kafka_lag"])
        if doc["input_rows"] == 0 and doc["sessions_closed"] == 0 and doc["state_users_updated"] == 0:
            return
        try:
            self._pending.put_nowait(doc)
        except queue.Full:
            self._pending.get_nowait()
            self._pending.put_nowait(doc)
            self.dropped += 1
            log.warning("progress queue full (store down?): dropped the oldest document (%d so far)", self.dropped)

    def _write_loop(self) -> None:
        while True:
            doc = self._pending.get()
            try:
                db = self.store.db()
                doc["open_sessions"] = self.store.retrying("stream_progress", lambda: open_sessions(db, doc))
                self.store.retrying("stream_progress", lambda: out.record_progress(db, doc))
            except Exception as exc:  # monitoring must never stop the stream
                log.warning("could not record progress of batch %s: %s", doc["batch_id"], exc)
            log.info(progress_line(doc))
            self._pending.task_done()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Waits (bounded) until the queued documents are written: at a clean stop."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._pending.join(), done.set()), daemon=True).start()
        done.wait(timeout_s)

    def onQueryIdle(self, event) -> None:
        if self.health:
            self.health.idle(self._name(event))

    def onQueryTerminated(self, event) -> None:
        error = event.exception.splitlines()[0] if event.exception else None
        if error:
            log.error("query %s failed: %s", self._name(event), error)
        else:
            log.info("query %s stopped", self._name(event))
        if self.health:
            self.health.terminated(self._name(event), error)

    def _name(self, event) -> str:
        return self._names.get(str(event.id), str(event.id))
