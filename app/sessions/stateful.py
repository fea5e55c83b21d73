"""Spark adapter for the session state machine: applyInPandasWithState on the RocksDB state store.

Late events must reach the state function (they are counted and still written), but Spark drops
rows behind the watermark before a stateful operator whenever its input carries the watermarked
column. So the watermark is defined on event_timestamp upstream (it still drives the event-time
timeouts), and the operator's input carries `watermark_guard` instead: a constant far-future
timestamp with the watermark metadata, which satisfies the analyzer and is never "late".
"""
from __future__ import annotations

import json
from typing import Iterator

import pandas as pd
from pyspark.sql import DataFrame, functions as F
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout

from app.events.enrich import SESSION_INPUT_COLUMNS
from app.segments.rules import parse_rules
from app.sessions.tracker import (Event, SessionSettings, decode_state, encode_state, process_events,
                                  process_timeout)

OUTPUT_SCHEMA = (
    "kind string, session_id string, event_id string, event_doc string, seconds_since_prev double, "
    "is_late boolean, session_doc string, status string, first_write boolean, behavior_segment string, user_id string, "
    "session_end_ms long, session_duration_minutes double, total_events long, view_count long, "
    "cart_count long, purchase_count long, total_amount double"
)
STATE_SCHEMA = "state string"
OUTPUT_COLUMNS = [c.strip().split(" ")[0] for c in OUTPUT_SCHEMA.split(",")]
WATERMARK_DELAY_KEY = "spark.watermarkDelayMs"  # Spark's EventTimeWatermark.delayKey
_GUARD_TS = "2200-01-01 00:00:00"  # far future, yet inside pandas' nanosecond range


def sessionize(rules_document: dict, gap_s: float, max_s: float, watermark_delay_s: float):
    """Enriched valid events -> one row per event (kind=event) and per changed session (kind=session)."""
    state_function = _state_function(rules_document, int(gap_s * 1000), int(max_s * 1000))
    delay_ms = int(watermark_delay_s * 1000)

    def transform(events: DataFrame) -> DataFrame:
        guard = F.lit(_GUARD_TS).cast("timestamp").alias("watermark_guard", metadata={WATERMARK_DELAY_KEY: delay_ms})
        return (
            events.withWatermark("event_timestamp", f"{delay_ms} milliseconds")
            .select(*SESSION_INPUT_COLUMNS, "event_doc", guard)
            .groupBy("session_key")
            .applyInPandasWithState(state_function, OUTPUT_SCHEMA, STATE_SCHEMA, "update",
                                    GroupStateTimeout.EventTimeTimeout)
        )

    return transform


def _state_function(rules_document: dict, gap_ms: int, max_ms: int):
    settings_cache: list[SessionSettings] = []

    def settings() -> SessionSettings:
        if not settings_cache:  # parsed once per Python worker, not per group
            settings_cache.append(SessionSettings(gap_ms, max_ms, parse_rules(rules_document)))
        return settings_cache[0]

    def run(key: tuple, batches: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        watermark_ms = state.getCurrentWatermarkMs()
        previous = decode_state(state.get[0]) if state.exists else None
        if state.hasTimedOut:
            new_state, out, timeout = process_timeout(key[0], previous, watermark_ms, settings())
            docs = {}
        else:
            frame = pd.concat(list(batches), ignore_index=True)
            docs = dict(zip(frame["event_id"], frame["event_doc"]))
            new_state, out, timeout = process_events(key[0], previous, _events(frame), watermark_ms, settings())
        if new_state is None:
            state.remove()
        else:
            state.update((encode_state(new_state),))
            state.setTimeoutTimestamp(timeout)
        yield _output_frame(out, docs)

    return run


def _events(frame: pd.DataFrame) -> list[Event]:
    price = frame["price"].astype(object).where(frame["price"].notna(), None)
    columns = [frame["event_ms"].astype("int64"), frame["event_id"], frame["event_type"], frame["user_id"],
               frame["user_session"], frame["product_id"], frame["category_id"], price]
    none_if_na = [c.astype(object).where(c.notna(), None) for c in columns[1:]]
    return [Event(int(ms), *rest) for ms, *rest in zip(columns[0], *none_if_na)]


def _output_frame(out, docs: dict) -> pd.DataFrame:
    rows = [
        {"kind": "event", "event_id": event_id, "session_id": session_id, "event_doc": docs.get(event_id),
         "seconds_since_prev": since_prev, "is_late": is_late}
        for event_id, session_id, since_prev, is_late in out.events
    ]
    for doc in out.sessions:
        rows.append({
            "kind": "session", "session_id": doc["_id"], "session_doc": json.dumps(doc, separators=(",", ":")),
            "status": doc["status"], "first_write": doc["_id"] in out.first_writes,
            "behavior_segment": doc["behavior_segment"], "user_id": doc["user_id"],
            "session_end_ms": doc["session_end"], "session_duration_minutes": doc["session_duration_minutes"],
            "total_events": doc["total_events"], "view_count": doc["view_count"], "cart_count": doc["cart_count"],
            "purchase_count": doc["purchase_count"], "total_amount": doc["total_amount"],
        })
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
