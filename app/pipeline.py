"""Wires the job: Kafka source -> parse/validate -> {quarantine, sessionize -> sinks}. I/O lives here."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml
from pyspark.sql import DataFrame, SparkSession, functions as F
from pyspark.sql.streaming import StreamingQuery

from app.config import AppConfig
from app.events.enrich import with_event_enrichment
from app.events.parse import parse_events, quarantined_records, valid_events
from app.segments.rules import load_rules
from app.sessions.stateful import sessionize
from app.sinks import collections as out
from app.sinks.mongo import client_for

log = logging.getLogger("behavior.sink")
SESSION_ROW_FIELDS = ("session_id", "behavior_segment", "user_id", "session_end_ms", "session_duration_minutes",
                      "view_count", "cart_count", "purchase_count", "total_amount")


def build_spark(config: AppConfig, app_name: str = "behavior-segmentation") -> SparkSession:
    return (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        .getOrCreate()
    )


def kafka_source(spark: SparkSession, config: AppConfig) -> DataFrame:
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", config.kafka_bootstrap_servers)
        .option("subscribe", config.kafka_topic)
        .option("startingOffsets", config.starting_offsets)
        .option("maxOffsetsPerTrigger", config.max_offsets_per_trigger)
        .load()
    )


def with_late_event_metrics(sessions: DataFrame) -> DataFrame:
    """Counts events behind the watermark into the query's progress (observedMetrics)."""
    return sessions.observe(
        "late_events",
        F.coalesce(F.sum(F.col("is_late").cast("int")), F.lit(0)).alias("late_events"),
        F.coalesce(F.sum(((F.col("kind") == "event") & F.col("session_id").isNull()).cast("int")), F.lit(0))
        .alias("late_unsessionized"),
    )


class SessionBatchWriter:
    """foreachBatch sink of the sessions query: events, sessions, then the closed-session aggregates."""

    def __init__(self, config: AppConfig, checkpoint: str):
        self.config = config
        self.checkpoint = checkpoint
        self._run_id: str | None = None

    def run_id(self) -> str:
        # The query id lives in the checkpoint: stable across restarts, new for a new checkpoint.
        if self._run_id is None:
            self._run_id = json.loads(Path(self.checkpoint, "metadata").read_text())["id"]
        return self._run_id

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        uri, database = self.config.mongodb_uri, self.config.mongodb_database
        timer = _StepTimer()
        batch.persist()
        try:
            rows = batch.count()  # runs the read, parse and state steps once; the writes reuse it
            timer.step("read+parse+state")
            if rows == 0:
                return
            batch.filter(F.col("kind") == "event").foreachPartition(out.write_events(uri, database))
            timer.step("events")
            batch.filter(F.col("kind") == "session").foreachPartition(out.write_sessions(uri, database))
            timer.step("sessions")
            closed = (batch.filter((F.col("kind") == "session") & (F.col("status") == "closed"))
                      .select(*SESSION_ROW_FIELDS).collect())
            db = client_for(uri)[database]
            # Sorted, so the float sums come out bit-identical however the rows were partitioned.
            closed = sorted((r.asDict() for r in closed), key=lambda r: r["session_id"])
            out.apply_closed_sessions(db, self.run_id(), batch_id, closed)
            timer.step("aggregates")
            log.info("[sessions] batch %d steps: %s (%d output rows)", batch_id, timer, rows)
        finally:
            batch.unpersist()


class _StepTimer:
    """Wall time per step of a batch, for the log: where a slow batch spends its time."""

    def __init__(self):
        self.last, self.steps = time.perf_counter(), []

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.steps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.steps)


def start_queries(spark: SparkSession, config: AppConfig) -> list[StreamingQuery]:
    load_rules(config.rules_file)  # fail at start-up, naming the field, before anything runs
    rules_document = yaml.safe_load(Path(config.rules_file).read_text(encoding="utf-8"))
    out.ensure_indexes(client_for(config.mongodb_uri)[config.mongodb_database])

    parsed = kafka_source(spark, config).transform(parse_events())
    sessions = (
        valid_events(parsed)
        .transform(with_event_enrichment)
        .transform(sessionize(rules_document, config.session_gap_s, config.session_max_s,
                              config.watermark_delay_s))
        .transform(with_late_event_metrics)
    )
    uri, database = config.mongodb_uri, config.mongodb_database
    quarantine_ckpt = str(Path(config.checkpoint_dir, "quarantine"))
    sessions_ckpt = str(Path(config.checkpoint_dir, "sessions"))
    queries = [
        _start(quarantined_records(parsed).writeStream.queryName("quarantine")
               .foreachBatch(lambda df, _id: df.foreachPartition(out.write_quarantine(uri, database))),
               quarantine_ckpt, config),
        _start(sessions.writeStream.queryName("sessions").outputMode("update")
               .foreachBatch(SessionBatchWriter(config, sessions_ckpt)),
               sessions_ckpt, config),
    ]
    return queries


def _start(writer, checkpoint: str, config: AppConfig) -> StreamingQuery:
    writer = writer.option("checkpointLocation", checkpoint)
    if config.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{int(config.trigger_interval_s * 1000)} milliseconds")
    return writer.start()
