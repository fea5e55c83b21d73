"""user_profiles and behavior_alerts (DESIGN.md §11, §12): documents and idempotent writes.

A profile row carries the totals of the user's current state epoch (app/profiles/profile.py).
The stored document keeps `epoch`, `base` (the totals before that epoch) and `totals`, so each
write of an epoch starts from the same base: a replayed batch writes the same document, and a
user who left the state store continues from the stored totals. Alerts are inserted by their
deterministic id (type:user:first event time): a replay finds them there and leaves them.
"""
from __future__ import annotations

import json
from datetime import datetime

from pymongo import ASCENDING, DESCENDING

from app import aggregates as A
from app.profiles.profile import merge_epochs, profile_document
from app.profiles.rules import SCORES, ProfileRules
from app.sinks.mongo import insert_returning_duplicates, replace_documents

PROFILES = "user_profiles"
ALERTS = "behavior_alerts"
LOOKUP_CHUNK = 500


def ensure_profile_indexes(db) -> None:
    db[PROFILES].create_index([("intent_score", DESCENDING)])
    db[PROFILES].create_index([("behavior_pattern", ASCENDING), ("last_seen", DESCENDING)])
    db[ALERTS].create_index([("user_id", ASCENDING)])
    db[ALERTS].create_index([("severity", ASCENDING), ("first_event_time", DESCENDING)])


def write_profiles(coll, rows: list, rules: ProfileRules, now: datetime) -> list[dict]:
    """Merges and stores one partition's profile rows; returns the documents. New users are
    inserted (FerretDB inserts ~4x faster than it replaces), known ones replaced by _id."""
    docs, known = profile_documents(coll, rows, rules, now)
    fresh = [d for d in docs if d["_id"] not in known]
    fresh_ids = {d["_id"] for d in fresh}
    # a retried step may find its own inserts: those are replaced like the known ones
    again = insert_returning_duplicates(coll, fresh) if fresh else []
    replace_documents(coll, [d for d in docs if d["_id"] not in fresh_ids] + again)
    return docs


def profile_documents(coll, rows: list, rules: ProfileRules, now: datetime) -> tuple[list[dict], set]:
    """Profile rows of one partition -> (the documents to store, merged with what is stored; the
    users already stored)."""
    epochs = {row.id: json.loads(row.doc) for row in rows}
    users, stored = list(epochs), {}
    for start in range(0, len(users), LOOKUP_CHUNK):
        for doc in coll.find({"_id": {"$in": users[start:start + LOOKUP_CHUNK]}}, {"epoch": 1, "base": 1, "totals": 1}):
            stored[doc["_id"]] = doc
    documents = []
    for user, epoch in epochs.items():
        base, totals = merge_epochs(stored.get(user), epoch)
        documents.append({**profile_document(user, totals, rules), "epoch": epoch["epoch"], "base": base,
                          "totals": totals, "updated_at": now})
    return documents, set(stored)


def user_scores(profile: dict) -> dict:
    """What a session document carries of its user's profile at write time."""
    return {**{name: profile[name] for name in SCORES}, "behavior_pattern": profile["behavior_pattern"]}


def alert_document(row, detected_at: datetime) -> dict:
    alert = json.loads(row.doc)
    return {"_id": alert["alert_id"], "alert_type": alert["alert_type"], "severity": alert["severity"],
            "user_id": alert["user_id"], "session_id": alert["session_id"],
            "first_event_time": A.to_datetime(alert["first_event_ms"]), "event_time": A.to_datetime(alert["event_ms"]),
            "detected_at": detected_at, "evidence": alert["evidence"], "rule_version": alert["rule_version"]}
