"""The benchmark's naive baseline: what a hand-written consumer would do, one event at a time.

kafka-python reads the topic from the earliest offset; every event is decoded, folded into a
per-session dict with the job's own state machine (app/sessions/tracker.py), and written with
one pymongo call for the event and one per changed session. No batching, no parallelism: the
figure to beat. The documents match the job's (same _ids, fields and segments), without the
aggregate collections or quarantine. Give it a fresh database: FerretDB's upserts slow down as
the collections grow.

    python -m bench.baseline TOPIC --seconds 30 [--database bench_baseline]
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import time
from datetime import datetime, timedelta, timezone

from kafka import KafkaConsumer
from pymongo import MongoClient

from app.aggregates import to_datetime
from app.config import DEFAULT_RULES_FILE
from app.events import contract as C
from app.segments.rules import load_rules
from app.sessions.tracker import Event, SessionSettings, UserState, process_events, process_timeout
from app.sinks.collections import EVENTS, RAPID_ACTION_SECONDS, SEGMENTS, session_for_mongo

GAP_MS, MAX_MS, WATERMARK_DELAY_MS = 30 * 60_000, 24 * 3_600_000, 10 * 60_000
IDLE_STOP_S, PROGRESS_EVERY_S = 3.0, 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TEXT_FIELDS = ("event_id", "user_id", "user_session", "product_id", "category_id", "category_code", "brand",
                "ip_address", "country", "city", "device_type", "user_agent", "page_url", "referrer_url")


def _text(value) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None


def event_time_ms(value) -> int | None:
    """Epoch millis, 'yyyy-MM-dd HH:mm:ss UTC' or ISO-8601 (naive = UTC) -> epoch millis."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if math.isfinite(value) else None
    text = (_text(value) or "").removesuffix(" UTC")
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        pass
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - _EPOCH) // timedelta(milliseconds=1)


def parse_value(value: bytes) -> dict | None:
    """A Kafka value -> the event's fields, or None when it is not a usable event (counted as bad)."""
    try:
        raw = json.loads(value)
    except (ValueError, TypeError):
        return None
    if not isinstance(raw, dict):
        return None
    fields = {name: _text(raw.get(name)) for name in _TEXT_FIELDS}
    raw_type = _text(raw.get("event_type"))
    event_ms = event_time_ms(raw.get("event_time"))
    if None in (fields["event_id"], fields["user_id"], raw_type, event_ms):
        return None
    name = raw_type.lower()
    canonical = name if name in C.CANONICAL_TYPES else C.EVENT_TYPE_ALIASES.get(name, C.OTHER_TYPE)
    try:
        price = float(raw["price"]) if raw.get("price") is not None else None
    except (TypeError, ValueError):
        price = None
    properties = raw.get("properties")
    if isinstance(properties, str):
        try:
            properties = json.loads(properties)
        except ValueError:
            pass
    return {**fields, "event_type": canonical, "raw_event_type": raw_type, "event_ms": event_ms,
            "price": price if price is not None and math.isfinite(price) else None, "properties": properties}


class NaiveSessionizer:
    """Session state in a plain dict, advanced one event at a time by the job's state machine.

    The watermark is the max event time seen before the event, minus the delay, taken per Kafka
    partition and then the minimum over all partitions. A single max is not enough here: a
    consumer drains one partition's fetch before the next, so the first partition would push the
    watermark hours ahead and make most of the others' events late. Spark avoids this by reading
    every partition in each micro-batch. Sessions whose timeout the watermark passed are closed
    first, in timeout order, from a heap.
    """

    def __init__(self, settings: SessionSettings, partitions: int = 1,
                 watermark_delay_ms: int = WATERMARK_DELAY_MS):
        self.settings, self.partitions, self.delay_ms = settings, partitions, watermark_delay_ms
        self.states: dict[str, UserState] = {}  # user_id -> state, as the job keys it
        self.timeouts: dict[str, int] = {}
        self._due: list[tuple[int, str]] = []  # (timeout_ms, key); stale entries are skipped
        self._max_event_ms: dict[int, int] = {}  # partition -> max event time seen

    def watermark_ms(self) -> int:
        if len(self._max_event_ms) < self.partitions:
            return 0  # a partition not read yet may hold the oldest events
        return max(min(self._max_event_ms.values()) - self.delay_ms, 0)

    def add(self, ev: Event, partition: int = 0) -> tuple[tuple, list[dict]]:
        """-> (event_id, session_id, seconds_since_prev, is_late), or None for a duplicate, and the
        session documents to write."""
        watermark = self.watermark_ms()
        sessions = self._expire(watermark)
        key = ev.user_id
        step = process_events(self.states.get(key), [ev], watermark, self.settings)
        self._keep(key, step.state, step.timeout_ms)
        self._max_event_ms[partition] = max(self._max_event_ms.get(partition, ev.event_ms), ev.event_ms)
        return (step.out.events[0] if step.out.events else None), sessions + step.out.sessions

    def _expire(self, watermark: int) -> list[dict]:
        sessions = []
        while self._due and self._due[0][0] < watermark:
            timeout, key = heapq.heappop(self._due)
            if self.timeouts.get(key) == timeout:
                step = process_timeout(self.states[key], watermark, self.settings)
                self._keep(key, step.state, step.timeout_ms)
                sessions += step.out.sessions
        return sessions

    def _keep(self, key: str, state: UserState | None, timeout: int | None) -> None:
        if state is None:
            self.states.pop(key, None)
            self.timeouts.pop(key, None)
        else:
            self.states[key], self.timeouts[key] = state, timeout
            heapq.heappush(self._due, (timeout, key))


def enriched_document(fields: dict, record, tracked: tuple, ingest_time: datetime) -> dict:
    _, session_id, since_prev, is_late = tracked
    ts = to_datetime(fields["event_ms"])
    levels = fields["category_code"].split(".") if fields["category_code"] else []
    doc = {k: v for k, v in fields.items() if k != "event_ms"}
    return {**doc, "_id": fields["event_id"], "event_timestamp": ts,
            "category_main": levels[0] if levels else None, "category_sub": levels[1] if len(levels) > 1 else None,
            "event_date": ts.strftime("%Y-%m-%d"), "event_hour": ts.hour,
            "kafka_topic": record.topic, "kafka_partition": record.partition, "kafka_offset": record.offset,
            "kafka_timestamp": to_datetime(record.timestamp), "session_id": session_id,
            "seconds_since_prev_in_session": since_prev,
            "is_rapid_action": since_prev is not None and since_prev < RAPID_ACTION_SECONDS,
            "is_late": is_late, "ingest_time": ingest_time}


def run_baseline(bootstrap: str, topic: str, mongodb_uri: str, database: str, max_seconds: float,
                 max_events: int | None = None, rules_file: str | None = None) -> dict:
    settings = SessionSettings(GAP_MS, MAX_MS, load_rules(rules_file or DEFAULT_RULES_FILE))
    db = MongoClient(mongodb_uri)[database]
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    partitions = consumer.partitions_for_topic(topic) or {0}
    sessionizer = NaiveSessionizer(settings, partitions=len(partitions))
    n = bad = session_writes = 0
    started = last_data = last_report = finished = time.monotonic()

    def spent() -> bool:
        return time.monotonic() - started >= max_seconds or (max_events is not None and n + bad >= max_events)

    try:
        while not spent():
            polled = consumer.poll(timeout_ms=500)
            now = time.monotonic()
            if not polled:
                if now - last_data >= IDLE_STOP_S:
                    break  # drained; the idle wait is not counted in `seconds`
                continue
            last_data = now
            for record in (r for records in polled.values() for r in records):
                if spent():
                    break
                fields = parse_value(record.value)
                if fields is None:
                    bad += 1
                    continue
                ev = Event(fields["event_ms"], fields["event_id"], fields["event_type"], fields["user_id"],
                           fields["user_session"], fields["product_id"], fields["category_id"], fields["price"])
                tracked, sessions = sessionizer.add(ev, record.partition)
                wall = datetime.now(timezone.utc)
                if tracked is not None:  # None: a redelivered event, already written
                    doc = enriched_document(fields, record, tracked, wall)
                    db[EVENTS].update_one({"_id": doc.pop("_id")}, {"$setOnInsert": doc}, upsert=True)
                for session in sessions:
                    db[SEGMENTS].replace_one({"_id": session["_id"]}, session_for_mongo(dict(session), wall), upsert=True)
                session_writes += len(sessions)
                n += 1
                if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    last_report = time.monotonic()
                    print(f"  baseline: {n:,} events ({n / (last_report - started):,.0f}/s)", flush=True)
            finished = time.monotonic()
    finally:
        consumer.close()
    seconds = finished - started if n + bad else time.monotonic() - started
    return {"events": n, "bad": bad, "seconds": round(seconds, 2),
            "events_per_s": round(n / seconds, 1) if seconds else 0.0, "session_writes": session_writes}


def main() -> None:
    parser = argparse.ArgumentParser(description="Naive one-event-at-a-time baseline for the benchmark.")
    parser.add_argument("topic")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-events", type=int, default=None)
    parser.add_argument("--database", default="bench_baseline")
    parser.add_argument("--rules-file", default=None)
    args = parser.parse_args()
    result = run_baseline(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), args.topic,
                          os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/"), args.database,
                          args.seconds, args.max_events, args.rules_file)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
