"""Enrichment of parsed records, and the one row per record the state step takes.

Every parsed record goes on as exactly one row: a valid event (its enriched document, and the
columns the session state reads) or a quarantined record (its quarantine document). Both come
from the same parse, with the micro-batch's one "now", so a record is never both or neither.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, functions as F

from app.events.parse import quarantine_columns

# Carried unchanged into enriched_events (as one JSON column, so the stateful step passes it
# through without touching every field).
EVENT_DOC_FIELDS = (
    "event_id", "event_type", "raw_event_type", "user_id", "user_session", "product_id", "category_id",
    "category_code", "category_main", "category_sub", "brand", "price", "event_date", "event_hour",
    "ip_address", "country", "city", "device_type", "user_agent", "page_url", "referrer_url",
    "properties", "event_ms", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp_ms",
)
# What the session state machine reads, besides the document.
SESSION_INPUT_COLUMNS = ("user_id", "user_session", "event_ms", "event_type", "product_id", "category_id",
                         "price", "event_id", "category_code", "device_type", "country", "ip_address")
ROUTED_COLUMNS = ("quarantined", "state_key", *SESSION_INPUT_COLUMNS, "event_timestamp", "doc")


def with_event_enrichment(parsed: DataFrame) -> DataFrame:
    """Parsed records -> ROUTED_COLUMNS: `quarantined`, the state key (the user, or the Kafka partition
    of a bad record), the session columns, event_timestamp (valid events only: it drives the
    watermark) and `doc`, the enriched event or the quarantine document as JSON."""
    levels = F.split(F.col("category_code"), r"\.")
    quarantined = F.size("quarantine_reasons") > 0
    kafka_timestamp_ms = F.unix_millis("kafka_timestamp")
    event_doc = F.to_json(F.struct(*EVENT_DOC_FIELDS))
    quarantine_doc = F.to_json(F.struct(*quarantine_columns(kafka_timestamp_ms.alias("kafka_timestamp_ms"))))
    return (
        parsed.select(
            "*",
            quarantined.alias("quarantined"),
            F.when(F.col("category_code").isNotNull(), levels.getItem(0)).alias("category_main"),
            F.when(F.size(levels) > 1, levels.getItem(1)).alias("category_sub"),
            F.date_format("event_timestamp", "yyyy-MM-dd").alias("event_date"),
            F.hour("event_timestamp").alias("event_hour"),
            F.unix_millis("event_timestamp").alias("event_ms"),
            kafka_timestamp_ms.alias("kafka_timestamp_ms"),
        )
        .select(
            "quarantined",
            F.when(F.col("quarantined"), F.col("kafka_partition").cast("string"))
            .otherwise(F.col("user_id")).alias("state_key"),
            *SESSION_INPUT_COLUMNS,
            F.when(~F.col("quarantined"), F.col("event_timestamp")).alias("event_timestamp"),
            F.when(F.col("quarantined"), quarantine_doc).otherwise(event_doc).alias("doc"),
        )
    )
