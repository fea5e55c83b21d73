"""A micro-batch's own values (its id) never enter the code Spark generates: a long or
timestamp literal is written into the generated Java, so a plan holding one was compiled anew
every batch (a JVM profile at 100 events/s showed code generation and compilation in 18% of the
job's samples). String literals are passed by reference and leave the code the same. Checked by
Spark's own count of compiled classes (CodegenMetrics): running the next batch's plan compiles none."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from pyspark.sql import functions as F

from app.events.parse import parse_events
from app.sessions.stateful import OUTPUT_SCHEMA, OutputRow
from app.sinks.store_lane import of_source_batch, store_messages

RAW_SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
PRODUCED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def compilations(spark) -> int:
    """Classes Spark's code generator has compiled in this JVM (a cache hit compiles none)."""
    return spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount()


def compiled_by(spark, run) -> int:
    before = compilations(spark)
    run()
    return compilations(spark) - before


def test_the_count_sees_a_plan_compiled_for_the_first_time(spark):
    """So a 0 below means a cache hit, not a count that never moves: a long literal never used
    before is new code."""
    fresh = int.from_bytes(os.urandom(6), "big")
    assert compiled_by(spark, lambda: spark.range(3).filter(F.col("id") != fresh).collect()) > 0


def _rows(spark):
    return spark.createDataFrame(
        [OutputRow("session", "s1", '{"_id":"s1","n":1}', None, None, None, "active", True),
         OutputRow("event", "e1", '{"_id":"e1","x":"a\\"b"}', "s1", 1.5, False),
         OutputRow("duplicate", "e2", None)], OUTPUT_SCHEMA)


def test_the_store_lane_messages_of_a_new_batch_compile_no_code(spark):
    rows = _rows(spark)
    store_messages(rows, "store", "run-1", 1).collect()  # the first batch compiles its code
    assert compiled_by(spark, lambda: store_messages(rows, "store", "run-1", 2).collect()) == 0
    assert compiled_by(spark, lambda: store_messages(rows, "store", "run-1", 123456789).collect()) == 0


def test_a_store_lane_message_is_the_rows_json_with_its_batch_first(spark):
    """The value is byte for byte what to_json of (src_run, src_batch, chunk, the row) gives."""
    rows = _rows(spark)
    fields = [F.lit("run-1").alias("src_run"), F.lit(7).cast("long").alias("src_batch"),
              F.lit(None).cast("int").alias("chunk"), *[F.col(name) for name in OutputRow._fields]]
    expected = sorted(r.value for r in rows.filter(F.col("kind") != "duplicate").select(
        F.to_json(F.struct(*fields), {"ignoreNullFields": "false"}).alias("value")).collect())
    got = store_messages(rows, "store", "run-1", 7).collect()
    assert sorted(r.value for r in got) == expected
    assert {r.key for r in got} == {"s1", "e1"} and {r.topic for r in got} == {"store"}
    assert [json.loads(v)["src_batch"] for v in expected] == [7, 7]


def _raw(spark, values_and_times):
    return spark.createDataFrame(
        [(None, json.dumps(v).encode(), "t", 0, i, ts) for i, (v, ts) in enumerate(values_and_times)], RAW_SCHEMA)


def test_the_store_querys_group_of_the_next_source_batch_compiles_no_code(spark):
    messages = spark.createDataFrame([("run-1", b, f"m{b}") for b in (1, 2, 3)], "src_run string, src_batch long, id string")
    assert [r.id for r in of_source_batch(messages, 1).collect()] == ["m1"]
    assert compiled_by(spark, lambda: of_source_batch(messages, 2).collect()) == 0
    assert [r.id for r in of_source_batch(messages, 3).collect()] == ["m3"]


def test_in_the_future_means_after_the_records_own_kafka_timestamp(spark):
    """An event more than 5 minutes after its record was produced is quarantined, whenever the
    record is read; a record without a timestamp (-1: Kafka's old format) gets no future check."""
    def event(minutes: float) -> dict:
        at = PRODUCED + timedelta(minutes=minutes)
        return {"event_time": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "event_type": "view", "user_id": 1}
    no_timestamp = datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)
    raw = _raw(spark, [(event(4), PRODUCED), (event(5.5), PRODUCED), (event(-600), PRODUCED),
                       (event(60), PRODUCED + timedelta(minutes=58)), (event(5.5), no_timestamp)])
    reasons = [r.quarantine_reasons for r in raw.transform(parse_events()).orderBy("kafka_offset").collect()]
    assert reasons == [[], ["event_time_in_future"], [], [], []]
