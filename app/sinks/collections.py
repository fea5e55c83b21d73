"""The output collections (DESIGN.md §8) plus stream_progress: names, indexes, documents, writes.

How each write stays exact when a micro-batch is replayed after a crash is stated in one place:
app/sinks/exactly_once.py.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pymongo import ASCENDING, DESCENDING, DeleteOne, UpdateOne

from app import aggregates as A
from app.profiles.rules import parse_profile_rules
from app.sinks import profiles as P
from app.sessions.tracker import archived_id
from app.sinks.mongo import Store, insert_or_ignore, insert_returning_duplicates, is_ferretdb, replace_documents

SEGMENTS = "user_behavior_segments"
DISTRIBUTION = "segment_distribution"
FUNNEL = "conversion_funnel"
EVENTS = "enriched_events"
QUARANTINE = "quarantined_events"
PROGRESS = "stream_progress"
FUNNEL_USERS = "conversion_funnel_users"
DISTRIBUTION_USERS = "segment_distribution_users"
EXECUTIONS = "trigger_executions"
EXPERIMENT_RESULTS = "experiment_results"
EVENT_COUNTS = "event_counts_hourly"   # app/rollups.py: what the query API reads
DAILY = "daily_metrics"                # app/rollups.py: the same by day, by _id, for FerretDB
PATHS = "session_paths"
RETENTION = "retention_cohorts"
RETENTION_USERS = "retention_users"
USER_ACTIVITY = "user_activity"        # app/sinks/user_activity.py: a user's newest events and sessions
LIVE_FEED = "live_feed"                # app/sinks/live_feed.py, open_sessions.py, leaderboard.py: by _id for the API
RAPID_ACTION_SECONDS = 2.0
# Everything the job writes: what --reset-output drops.
OUTPUTS = (SEGMENTS, DISTRIBUTION, FUNNEL, EVENTS, QUARANTINE, PROGRESS, FUNNEL_USERS, DISTRIBUTION_USERS,
           "user_profiles", "behavior_alerts", EXECUTIONS, EXPERIMENT_RESULTS, EVENT_COUNTS, PATHS, RETENTION,
           RETENTION_USERS, USER_ACTIVITY, LIVE_FEED, DAILY)
# additive sums tagged with the run (query id) that made them
AGGREGATES = (FUNNEL, DISTRIBUTION, EXPERIMENT_RESULTS, EVENT_COUNTS, PATHS, RETENTION, DAILY)


def ensure_indexes(db) -> None:
    db[SEGMENTS].create_index([("user_id", ASCENDING)])
    db[SEGMENTS].create_index([("behavior_segment", ASCENDING), ("processing_time", DESCENDING)])
    db[SEGMENTS].create_index([("status", ASCENDING), ("session_end", DESCENDING)])
    db[EVENTS].create_index([("user_id", ASCENDING)])
    db[EVENTS].create_index([("session_id", ASCENDING)])
    db[DISTRIBUTION].create_index([("window_start", ASCENDING)])
    db[QUARANTINE].create_index([("reasons", ASCENDING)])
    db[EXECUTIONS].create_index([("user_id", ASCENDING)])
    db[EXECUTIONS].create_index([("trigger", ASCENDING), ("event_time", DESCENDING)])
    # What the query API (app/api) reads by range.
    db[EXECUTIONS].create_index([("event_time", DESCENDING)])
    db[EVENTS].create_index([("user_id", ASCENDING), ("event_timestamp", DESCENDING)])
    db[EVENTS].create_index([("event_timestamp", DESCENDING)])
    db[SEGMENTS].create_index([("user_id", ASCENDING), ("session_end", DESCENDING)])
    db[EVENT_COUNTS].create_index([("hour", ASCENDING)])
    db[PROGRESS].create_index([("query", ASCENDING), ("timestamp", DESCENDING)])
    # The API's filters by type, country, user and segment (tests/unit/test_query_indexes.py holds
    # every query shape it sends to an index here). Not on FerretDB, which would not read them and
    # would keep them on every insert (two more on enriched_events: ~18% fewer inserts/s, measured).
    if is_ferretdb(db):
        return
    db[EVENTS].create_index([("event_type", ASCENDING), ("event_timestamp", DESCENDING)])
    db[EVENTS].create_index([("country", ASCENDING), ("event_timestamp", DESCENDING)])
    db[EXECUTIONS].create_index([("user_id", ASCENDING), ("event_time", DESCENDING)])
    db[DISTRIBUTION].create_index([("behavior_segment", ASCENDING), ("window_start", DESCENDING)])
    db[EVENT_COUNTS].create_index([("event_type", ASCENDING), ("hour", ASCENDING)])
    db[EVENT_COUNTS].create_index([("country", ASCENDING), ("hour", ASCENDING)])


def _now() -> datetime:
    return datetime.now(timezone.utc)


def event_document(row, ingest_time: datetime) -> dict:
    """An `event` row of the state step (app/sessions/stateful.py OutputRow) -> enriched_events document."""
    doc = json.loads(row.doc)
    doc["_id"] = doc["event_id"]
    doc["event_timestamp"] = A.to_datetime(doc.pop("event_ms"))
    kafka_ms = doc.pop("kafka_timestamp_ms", None)
    doc["kafka_timestamp"] = A.to_datetime(kafka_ms) if kafka_ms is not None else None
    doc["properties"] = _sub_document(doc.get("properties"))
    doc.update(event_session_fields(row))
    doc["is_late"] = bool(row.is_late)
    doc["ingest_time"] = ingest_time
    return doc


def event_session_fields(row) -> dict:
    """What an event's document says of its session (written on arrival, corrected later)."""
    since = None if row.seconds_since_prev is None or row.seconds_since_prev != row.seconds_since_prev \
        else row.seconds_since_prev
    return {"session_id": row.session_id, "seconds_since_prev_in_session": since,
            "is_rapid_action": since is not None and since < RAPID_ACTION_SECONDS}


def _sub_document(properties):
    """`properties` arrives as JSON text (an object, or a string holding one)."""
    if properties is None:
        return None
    try:
        value = json.loads(properties)
    except ValueError:
        return properties
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return value


def session_document(row, processing_time: datetime) -> dict:
    return session_for_mongo(json.loads(row.doc), processing_time)


def session_for_mongo(doc: dict, processing_time: datetime) -> dict:
    """A tracker session document (epoch-millis dates) -> the stored document (BSON dates)."""
    doc["session_start"] = A.to_datetime(doc["session_start"])
    doc["session_end"] = A.to_datetime(doc["session_end"])
    doc["segment_history"] = [{**change, "at": A.to_datetime(change["at"])} for change in doc["segment_history"]]
    doc["processing_time"] = processing_time
    return doc


# Sessions written for the first time (the state machine says which) are inserted in chunks,
# the rest replaced by _id. Measured on FerretDB 1.24 (SQLite, with deploy/local/patches):
# insert_many ~5,600 session documents/s, bulk ReplaceOne ~1,500/s (2,100/s from two writers),
# while delete-by-$in scans the whole collection (~200/s at 10,000 sessions, and falling).
SESSION_INSERT_CHUNK = 1000
SESSION_REPLACE_CHUNK = 500


def write_outputs(store: Store, profile_rules_document: dict | None = None):
    """foreachPartition writer of one partition of the state step's output: bad records, events
    (insert-or-ignore on _id), profiles (a user's first document inserted, later ones replaced),
    sessions (first writes inserted, the rest replaced by _id; each carries its user's scores),
    then alerts and trigger executions (insert-or-ignore). Each step is idempotent, so a step cut short by a store outage is simply run again."""
    rules_cache: list = []

    def write(rows) -> None:
        db, now = store.db(), _now()
        quarantine, events, profiles, alerts, executions, new_sessions, seen_sessions = [], [], [], [], [], [], []
        fixes, retracted = [], []
        for row in rows:
            if row.kind == "event":
                events.append(event_document(row, now))
            elif row.kind == "event_fix":
                fixes.append(UpdateOne({"_id": row.id}, {"$set": event_session_fields(row)}))
            elif row.kind == "retract":
                retracted.append(DeleteOne({"_id": row.id, "status": "active"}))
            elif row.kind == "session":
                (new_sessions if row.first_write else seen_sessions).append(row)
            elif row.kind == "quarantine":
                quarantine.append(quarantine_document(row, now))
            elif row.kind == "profile":
                profiles.append(row)
            elif row.kind == "alert":
                alerts.append(P.alert_document(row, now))
            elif row.kind == "action":
                executions.append(execution_document(row, now))
        store.retrying("quarantined_events", lambda: insert_or_ignore(db[QUARANTINE], quarantine))
        store.retrying("enriched_events", lambda: insert_or_ignore(db[EVENTS], events))
        if fixes:  # an earlier arrival, or the event becoming final, changed its session: idempotent $set
            store.retrying("enriched_events corrections", lambda: db[EVENTS].bulk_write(fixes, ordered=False))
        if profiles:
            if not rules_cache:  # parsed once per Python worker
                rules_cache.append(parse_profile_rules(profile_rules_document))
            store.retrying("user_profiles", lambda: P.write_profiles(db[P.PROFILES], profiles, rules_cache[0], now))
        for pending, insert, chunk_size, step in ((new_sessions, True, SESSION_INSERT_CHUNK, "new sessions"),
                                                  (seen_sessions, False, SESSION_REPLACE_CHUNK, "session updates")):
            for start in range(0, len(pending), chunk_size):
                chunk = pending[start:start + chunk_size]
                store.retrying(step, lambda: _write_session_rows(db[SEGMENTS], chunk, insert))
        if retracted:  # provisional sessions the final events did not confirm (never a closed one)
            store.retrying("retracted sessions", lambda: db[SEGMENTS].bulk_write(retracted, ordered=False))
        store.retrying("behavior_alerts", lambda: insert_or_ignore(db[P.ALERTS], alerts))
        store.retrying("trigger_executions", lambda: insert_or_ignore(db[EXECUTIONS], executions))
    return write


def execution_document(row, executed_at: datetime) -> dict:
    """An `action` row (app/actions/triggers.py `execution`) -> trigger_executions document."""
    action = json.loads(row.doc)
    execution_id, event_ms = action.pop("execution_id"), action.pop("event_ms")
    return {"_id": execution_id, **action, "event_time": A.to_datetime(event_ms), "executed_at": executed_at}


def quarantine_document(row, quarantined_at: datetime) -> dict:
    doc = json.loads(row.doc)
    kafka_ms = doc.pop("kafka_timestamp_ms", None)
    doc["kafka_timestamp"] = A.to_datetime(kafka_ms) if kafka_ms is not None else None
    doc["quarantined_at"] = quarantined_at
    return doc


def _write_session_rows(coll, rows: list, insert: bool) -> None:
    if not rows:
        return
    now = _now()  # per chunk: processing_time is when the document was written
    docs = [session_document(row, now) for row in rows]
    if insert:  # on a replayed batch the documents may be there already: replace those
        docs = insert_returning_duplicates(coll, docs)
        archive_reused(coll, docs)
    for start in range(0, len(docs), SESSION_REPLACE_CHUNK):
        replace_documents(coll, docs[start:start + SESSION_REPLACE_CHUNK])


def archive_reused(coll, docs: list[dict]) -> None:
    """First writes that found a document with their id: a replayed batch's own document (replaced
    next), or a closed session whose user_session came back after the user's entry expired
    (SESSION_ID_RETENTION): that one ended before the new session started, and is copied to
    `archived_id` before the new session replaces it. The copy is an upsert, so a crash between
    the two writes repeats both with the same result."""
    if not docs:
        return
    new_start = {d["_id"]: d["session_start"] for d in docs}
    old = [d for d in coll.find({"_id": {"$in": list(new_start)}, "status": "closed"})
           if _as_utc(d["session_end"]) < new_start[d["_id"]]]
    replace_documents(coll, [{**d, "_id": archived_id(d["_id"], _millis(d["session_start"]))} for d in old])


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _millis(value: datetime) -> int:
    return (_as_utc(value) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def record_progress(db, doc: dict) -> None:
    """A batch's figures, and the query's latest batch again under `latest:<query>` (`batch`), so
    /v1/health reads it by _id: a query by `query` scans the collection on FerretDB, and it
    grows by a document a batch. (Batches are recorded in order: the listener's one thread.)"""
    db[PROGRESS].replace_one({"_id": doc["_id"]}, doc, upsert=True)
    latest = latest_progress_id(doc["query"])
    db[PROGRESS].replace_one({"_id": latest}, {"_id": latest, "batch": doc}, upsert=True)


def latest_progress_id(query: str) -> str:
    return f"latest:{query}"
