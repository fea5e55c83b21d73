"""user_activity: one document per user (_id = user_id) holding the user's newest events and
sessions, kept by the job's third query, `activity`, from the store lane's messages
(app/sinks/store_lane.py), so the per-user endpoints
(/v1/activity?user_id=, /v1/sessions/metrics?user_id=) read one document by _id: the only read
FerretDB 1.24 does not scan for (DESIGN.md §15).

    {_id: user_id, events: [EVENTS_KEPT newest, by (event_timestamp, event_id), newest first],
     sessions: [every active session + the SESSIONS_KEPT newest closed ones, by (session_end, id), newest first]}

How a replay or another batch cut leaves the same document (app/sinks/exactly_once.py 13): each
user's rows are merged into the stored document in message order, as
enriched_events and user_behavior_segments take them (an event is inserted once and only its
session fields change; a session is replaced by _id, a retracted active one removed, a closed
one whose id is reused copied to its archived id). The newest-N cuts keep what the uncut
collections would show: events never leave enriched_events, and a closed session is final, so
an event or a closed session the cut drops can never climb back above the kept ones; active
sessions (at most MAX_OPEN_SESSIONS per user) are never cut, as a retraction may remove them.
"""
from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from itertools import groupby

from pymongo import ReplaceOne

from app.sessions.tracker import archived_id
from app.sinks.collections import USER_ACTIVITY, event_document, event_session_fields, session_document
from app.sinks.mongo import Store

ACTIVITY_QUERY = "activity"
EVENTS_KEPT = 100
SESSIONS_KEPT = 100
KINDS = ("event", "event_fix", "retract", "session")
EVENT_FIELDS = ("event_type", "event_timestamp", "session_id", "product_id", "category_code", "brand", "price",
                "country", "device_type", "is_late")
# What /v1/sessions/metrics returns of a session (no wall-clock field: a replay writes the same document).
SESSION_FIELDS = ("user_session", "behavior_segment", "segment_color", "segment_score", "action_priority", "status",
                  "session_start", "session_end", "session_duration_minutes", "total_events", "view_count",
                  "cart_count", "purchase_count", "total_amount", "engagement_rate", "event_path", "recommendations",
                  "experiments", "rule_version")
WRITE_CHUNK = 200
CACHED = 20_000  # documents the driver keeps (most are a few KB)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ActivityBatchWriter:
    """foreachBatch sink of the activity query (STORE_TOPIC, its own trigger: ACTIVITY_INTERVAL):
    the run's rows, in the driver, per user in message order (one document's messages are in one
    Kafka partition, in order), merged into the user's document and replaced in bulk. The driver
    keeps the documents it wrote last (CACHED users, least recent out), so a user active all
    along costs one write per batch and no read; only this query writes user_activity."""

    def __init__(self, store: Store, run_id):
        self.store = store
        self.run_id = run_id  # () -> the sessions query's id
        self.cache: OrderedDict = OrderedDict()

    def __call__(self, batch, batch_id: int) -> None:
        from pyspark.sql import functions as F  # here: the query API imports this module and runs without Spark
        rows = (batch.filter((F.col("src_run") == self.run_id()) & F.col("kind").isin(*KINDS))
                .select("kind", "id", "doc", "session_id", "seconds_since_prev", "is_late", "status", "first_write",
                        F.get_json_object("doc", "$.user_id").alias("user_id"), "kafka_partition", "kafka_offset")
                .filter(F.col("user_id").isNotNull()).collect())
        rows.sort(key=lambda r: (r.user_id, r.kafka_partition, r.kafka_offset))
        coll, now = self.store.db()[USER_ACTIVITY], datetime.now(timezone.utc)
        pending: list = []
        for user_id, user_rows in groupby(rows, key=lambda r: r.user_id):
            stored = self.cache.get(user_id)
            if stored is None:
                stored = self.store.retrying(USER_ACTIVITY, lambda: coll.find_one({"_id": user_id}))
            pending.append(merge(stored, user_id, user_rows, now))
            if len(pending) >= WRITE_CHUNK:
                self._write(coll, pending)
        self._write(coll, pending)

    def _write(self, coll, docs: list) -> None:
        if docs:
            self.store.retrying(USER_ACTIVITY, lambda: coll.bulk_write(
                [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False))
            for d in docs:  # what the store holds now
                self.cache[d["_id"]] = d
                self.cache.move_to_end(d["_id"])
            while len(self.cache) > CACHED:
                self.cache.popitem(last=False)
            docs.clear()


def merge(stored: dict | None, user_id: str, rows, now: datetime) -> dict:
    """The user's document after `rows` (OutputRow-like, in message order); `stored` may be None."""
    events = {e["event_id"]: dict(e) for e in (stored or {}).get("events", [])}  # never changes `stored`
    sessions = {s["session_id"]: s for s in (stored or {}).get("sessions", [])}
    for row in rows:
        if row.kind == "event":
            if row.id not in events:  # as enriched_events: insert-or-ignore
                doc = event_document(row, now)
                events[row.id] = {"event_id": row.id, **{n: doc.get(n) for n in EVENT_FIELDS}}
        elif row.kind == "event_fix":
            if row.id in events:
                events[row.id]["session_id"] = event_session_fields(row)["session_id"]
        elif row.kind == "retract":
            if sessions.get(row.id, {}).get("status") == "active":
                del sessions[row.id]
        elif row.kind == "session":
            doc = session_document(row, now)
            old = sessions.get(doc["_id"])
            if row.first_write and old is not None and old["status"] == "closed" \
                    and _utc(old["session_end"]) < _utc(doc["session_start"]):
                archived = archived_id(doc["_id"], _millis(old["session_start"]))
                sessions[archived] = {**old, "session_id": archived}
            sessions[doc["_id"]] = {"session_id": doc["_id"], **{n: doc.get(n) for n in SESSION_FIELDS}}
    kept_events = sorted(events.values(), key=lambda e: (_utc(e["event_timestamp"]), e["event_id"]),
                         reverse=True)[:EVENTS_KEPT]
    by_end = sorted(sessions.values(), key=lambda s: (_utc(s["session_end"]), s["session_id"]), reverse=True)
    closed = {s["session_id"] for s in [s for s in by_end if s["status"] == "closed"][:SESSIONS_KEPT]}
    kept_sessions = [s for s in by_end if s["status"] != "closed" or s["session_id"] in closed]
    return {"_id": user_id, "events": kept_events, "sessions": kept_sessions}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _millis(value: datetime) -> int:
    return (_utc(value) - _EPOCH) // timedelta(milliseconds=1)
