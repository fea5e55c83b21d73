"""The five output collections (DESIGN.md §8) plus stream_progress: documents, indexes, writes.

Every write is idempotent, so a batch replayed after a crash leaves the same result:
events and quarantine are insert-or-ignore on _id, sessions are inserted once and then replaced
whole by _id, and the aggregates apply a batch at most once per document (a (run_id, batch_id)
guard).
"""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone

from pymongo import ASCENDING, DESCENDING, ReplaceOne

from app import aggregates as A
from app.sinks.mongo import client_for, insert_or_ignore, insert_returning_duplicates

SEGMENTS = "user_behavior_segments"
DISTRIBUTION = "segment_distribution"
FUNNEL = "conversion_funnel"
EVENTS = "enriched_events"
QUARANTINE = "quarantined_events"
PROGRESS = "stream_progress"
FUNNEL_USERS = "conversion_funnel_users"
DISTRIBUTION_USERS = "segment_distribution_users"
RAPID_ACTION_SECONDS = 2.0


def ensure_indexes(db) -> None:
    db[SEGMENTS].create_index([("user_id", ASCENDING)])
    db[SEGMENTS].create_index([("behavior_segment", ASCENDING), ("processing_time", DESCENDING)])
    db[SEGMENTS].create_index([("status", ASCENDING), ("session_end", DESCENDING)])
    db[EVENTS].create_index([("user_id", ASCENDING)])
    db[EVENTS].create_index([("session_id", ASCENDING)])
    db[DISTRIBUTION].create_index([("window_start", ASCENDING)])
    db[QUARANTINE].create_index([("reasons", ASCENDING)])


def _now() -> datetime:
    return datetime.now(timezone.utc)


def event_document(row, ingest_time: datetime) -> dict:
    doc = json.loads(row.event_doc)
    doc["_id"] = doc["event_id"]
    doc["event_timestamp"] = A.to_datetime(doc.pop("event_ms"))
    kafka_ms = doc.pop("kafka_timestamp_ms", None)
    doc["kafka_timestamp"] = A.to_datetime(kafka_ms) if kafka_ms is not None else None
    doc["properties"] = _sub_document(doc.get("properties"))
    doc["session_id"] = row.session_id
    doc["seconds_since_prev_in_session"] = row.seconds_since_prev
    doc["is_rapid_action"] = row.seconds_since_prev is not None and row.seconds_since_prev < RAPID_ACTION_SECONDS
    doc["is_late"] = bool(row.is_late)
    doc["ingest_time"] = ingest_time
    return doc


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
    return session_for_mongo(json.loads(row.session_doc), processing_time)


def session_for_mongo(doc: dict, processing_time: datetime) -> dict:
    """A tracker session document (epoch-millis dates) -> the stored document (BSON dates)."""
    doc["session_start"] = A.to_datetime(doc["session_start"])
    doc["session_end"] = A.to_datetime(doc["session_end"])
    doc["segment_history"] = [{**change, "at": A.to_datetime(change["at"])} for change in doc["segment_history"]]
    doc["processing_time"] = processing_time
    return doc


def write_events(uri: str, database: str):
    def write(rows) -> None:
        now = _now()
        insert_or_ignore(client_for(uri)[database][EVENTS], (event_document(r, now) for r in rows))
    return write


# Sessions written for the first time (the state machine says which) are inserted in chunks,
# the rest replaced by _id. Measured on FerretDB 1.24 (SQLite, with deploy/local/patches):
# insert_many ~5,600 session documents/s, bulk ReplaceOne ~1,500/s (2,100/s from two writers),
# while delete-by-$in scans the whole collection (~200/s at 10,000 sessions, and falling).
SESSION_INSERT_CHUNK = 1000
SESSION_REPLACE_CHUNK = 500


def write_sessions(uri: str, database: str):
    def write(rows) -> None:
        coll, new, seen = client_for(uri)[database][SEGMENTS], [], []
        for row in rows:
            pending, chunk = (new, SESSION_INSERT_CHUNK) if row.first_write else (seen, SESSION_REPLACE_CHUNK)
            pending.append(row)
            if len(pending) >= chunk:
                _write_session_rows(coll, pending, insert=row.first_write)
                pending.clear()
        _write_session_rows(coll, new, insert=True)
        _write_session_rows(coll, seen, insert=False)
    return write


def _write_session_rows(coll, rows: list, insert: bool) -> None:
    if not rows:
        return
    now = _now()  # per chunk: processing_time is when the document was written
    docs = [session_document(row, now) for row in rows]
    if insert:  # on a replayed batch the documents may be there already: replace those
        docs = insert_returning_duplicates(coll, docs)
    for start in range(0, len(docs), SESSION_REPLACE_CHUNK):
        replace_documents(coll, docs[start:start + SESSION_REPLACE_CHUNK])


def replace_documents(coll, docs: list[dict]) -> None:
    if docs:
        coll.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False)


def write_quarantine(uri: str, database: str):
    def write(rows) -> None:
        now = _now()
        docs = ({**r.asDict(), "quarantined_at": now} for r in rows)
        insert_or_ignore(client_for(uri)[database][QUARANTINE], docs)
    return write


def apply_closed_sessions(db, run_id: str, batch_id: int, closed: list[dict]) -> None:
    """Folds one batch's closed sessions into conversion_funnel and segment_distribution, once."""
    if not closed:
        return
    funnel_users = _new_members(db[FUNNEL_USERS], run_id, batch_id, {
        f"{s['behavior_segment']}|{s['user_id']}": s["behavior_segment"] for s in closed})
    for segment, delta in A.funnel_deltas(closed).items():
        delta["unique_users"] = funnel_users.get(segment, 0)
        _apply_once(db[FUNNEL], segment, run_id, batch_id, delta, A.FUNNEL_SUMS,
                    lambda sums, seg=segment: A.funnel_document(seg, sums))

    window_users = _new_members(db[DISTRIBUTION_USERS], run_id, batch_id, {
        f"{A.window_start_ms(s['session_end_ms'])}|{s['behavior_segment']}|{s['user_id']}":
            (A.window_start_ms(s["session_end_ms"]), s["behavior_segment"]) for s in closed})
    by_window: dict = defaultdict(dict)
    for (window, segment), delta in A.distribution_deltas(closed).items():
        delta["unique_users"] = window_users.get((window, segment), 0)
        by_window[window][segment] = delta
    for window, deltas in by_window.items():
        _apply_window(db[DISTRIBUTION], window, run_id, batch_id, deltas)


def _apply_window(coll, window: int, run_id: str, batch_id: int, deltas: dict) -> None:
    """One 5-minute window: add this batch's sums once per segment, then every share_pct."""
    start = A.to_datetime(window)
    docs = {d["behavior_segment"]: d for d in coll.find({"window_start": start})}
    changed = set()
    for segment, delta in deltas.items():
        previous = docs.get(segment)
        if _already_applied(previous, run_id, batch_id):
            continue
        sums = A.add_sums(previous, delta, A.DISTRIBUTION_SUMS)
        docs[segment] = {**A.distribution_document(window, segment, sums), "run_id": run_id, "batch_id": batch_id}
        changed.add(segment)
    shares = A.share_pct({segment: d["session_count"] for segment, d in docs.items()})
    now = _now()
    for segment, doc in docs.items():
        if segment in changed or doc.get("share_pct") != shares[segment]:
            doc.update(share_pct=shares[segment], processing_time=now)
            coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)


def _already_applied(previous: dict | None, run_id: str, batch_id: int) -> bool:
    return bool(previous) and previous.get("run_id") == run_id and previous.get("batch_id", -1) >= batch_id


def _new_members(coll, run_id: str, batch_id: int, groups_by_id: dict) -> dict:
    """Inserts member ids; counts, per group, those first seen in this batch (stable on replay).

    A marker written before the inserts tells a replayed batch from a fresh one. Fresh: every
    duplicate was seen by an earlier batch. Replayed: a duplicate may come from this batch's
    first attempt, so its batch tag is read back (by _id, which FerretDB looks up by index)."""
    marker = {"_id": f"members:{coll.name}:{run_id}"}
    replay = (coll.database[PROGRESS].find_one(marker) or {}).get("batch_id", -1) >= batch_id
    coll.database[PROGRESS].replace_one(marker, {**marker, "batch_id": batch_id}, upsert=True)
    ids, counts = list(groups_by_id), defaultdict(int)
    for start in range(0, len(ids), 1000):
        chunk = [{"_id": i, "run_id": run_id, "batch_id": batch_id} for i in ids[start:start + 1000]]
        seen_before = {d["_id"] for d in insert_returning_duplicates(coll, chunk)}
        if replay:
            seen_before = {i for i in seen_before if not _tagged(coll.find_one({"_id": i}), run_id, batch_id)}
        for doc in chunk:
            if doc["_id"] not in seen_before:
                counts[groups_by_id[doc["_id"]]] += 1
    return counts


def _tagged(doc: dict | None, run_id: str, batch_id: int) -> bool:
    return bool(doc) and doc.get("run_id") == run_id and doc.get("batch_id") == batch_id


def _apply_once(coll, doc_id, run_id: str, batch_id: int, delta: dict, sum_names, render) -> None:
    previous = coll.find_one({"_id": doc_id})
    if _already_applied(previous, run_id, batch_id):
        return  # this batch was applied before the crash
    sums = A.add_sums(previous, delta, sum_names)
    doc = {**render(sums), "sum_duration_minutes": sums["sum_duration_minutes"],
           "run_id": run_id, "batch_id": batch_id, "processing_time": _now()}
    coll.replace_one({"_id": doc_id}, doc, upsert=True)


def record_progress(db, doc: dict) -> None:
    db[PROGRESS].replace_one({"_id": doc["_id"]}, doc, upsert=True)
