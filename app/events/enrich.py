"""Stateless enrichment of valid events and the columns the session state needs."""
from __future__ import annotations

from pyspark.sql import DataFrame, functions as F

# Carried unchanged into enriched_events (as one JSON column, so the stateful step passes it
# through without touching every field).
EVENT_DOC_FIELDS = (
    "event_id", "event_type", "raw_event_type", "user_id", "user_session", "product_id", "category_id",
    "category_code", "category_main", "category_sub", "brand", "price", "event_date", "event_hour",
    "ip_address", "country", "city", "device_type", "user_agent", "page_url", "referrer_url",
    "properties", "event_ms", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp_ms",
)
# What the session state machine reads, besides event_doc.
SESSION_INPUT_COLUMNS = ("session_key", "user_id", "user_session", "event_ms", "event_type",
                         "product_id", "category_id", "price", "event_id")


def with_event_enrichment(events: DataFrame) -> DataFrame:
    levels = F.split(F.col("category_code"), r"\.")
    has_session = F.col("user_session").isNotNull()
    return events.select(
        "*",
        F.when(F.col("category_code").isNotNull(), levels.getItem(0)).alias("category_main"),
        F.when(F.size(levels) > 1, levels.getItem(1)).alias("category_sub"),
        F.date_format("event_timestamp", "yyyy-MM-dd").alias("event_date"),
        F.hour("event_timestamp").alias("event_hour"),
        F.unix_millis("event_timestamp").alias("event_ms"),
        F.unix_millis("kafka_timestamp").alias("kafka_timestamp_ms"),
        # Without a user_session, the user's events are split into sessions by the inactivity gap.
        F.when(has_session, F.concat(F.lit("s:"), "user_session"))
        .otherwise(F.concat(F.lit("u:"), "user_id")).alias("session_key"),
    ).select(
        *SESSION_INPUT_COLUMNS,
        "event_timestamp",
        F.to_json(F.struct(*EVENT_DOC_FIELDS)).alias("event_doc"),
    )
