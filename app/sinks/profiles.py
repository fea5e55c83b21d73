"""user_profiles and behavior_alerts (DESIGN.md §11, §12): documents, idempotent writes, and the
read of a stored profile that only a checkpoint from before the tracker's `left` entry needs.

A profile row carries the user's totals (the stored base of earlier epochs + this epoch, see
app/profiles/profile.py). The stored document keeps `epoch`, `base` and `totals` besides its
figures; a user whose entry expired continues from what the entry left in the state (the same
totals), or, on a checkpoint from before that, from the stored document (`StoredProfiles`, read
by the state function once per epoch), where a replayed batch finds the base of its own epoch. Alerts are
inserted by their deterministic id (type:user:first event time): a replay finds them there and
leaves them.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from pymongo import ASCENDING, DESCENDING

from app import aggregates as A
from app.profiles.profile import profile_document
from app.profiles.rules import ProfileRules
from app.sinks.mongo import Store, insert_returning_duplicates, is_ferretdb, replace_documents

PROFILES = "user_profiles"
ALERTS = "behavior_alerts"


def ensure_profile_indexes(db) -> None:
    db[PROFILES].create_index([("intent_score", DESCENDING)])
    db[PROFILES].create_index([("behavior_pattern", ASCENDING), ("last_seen", DESCENDING)])
    db[ALERTS].create_index([("user_id", ASCENDING)])
    db[ALERTS].create_index([("severity", ASCENDING), ("first_event_time", DESCENDING)])
    db[ALERTS].create_index([("first_event_time", DESCENDING)])
    db[ALERTS].create_index([("user_id", ASCENDING), ("first_event_time", DESCENDING)])
    db[PROFILES].create_index([("engagement_score", DESCENDING)])
    if not is_ferretdb(db):  # the API's filters by segment and alert type (see collections.ensure_indexes)
        db[PROFILES].create_index([("last_segment", ASCENDING), ("engagement_score", DESCENDING)])
        db[ALERTS].create_index([("alert_type", ASCENDING), ("first_event_time", DESCENDING)])


def write_profiles(coll, rows: list, rules: ProfileRules, now: datetime) -> list[dict]:
    """Stores one partition's profile rows; returns the documents. Users without a document are
    inserted (FerretDB inserts ~4x faster than it replaces), the others replaced by _id; nothing is
    read first."""
    fresh, known = [], []
    for row in rows:
        update = json.loads(row.doc)
        live = update.get("live") or {}
        doc = {**profile_document(row.id, update["totals"], rules), "epoch": update["epoch"], "base": update["base"],
               "totals": update["totals"], "current_session_id": live.get("session_id"),
               "recent_alerts": [{**a, "first_event_time": A.to_datetime(a["first_event_ms"])}
                                 for a in live.get("alerts", [])], "updated_at": now}
        (fresh if update["first_write"] else known).append(doc)
    # a retried step, or a replayed batch, may find its own inserts: those are replaced like the rest
    again = insert_returning_duplicates(coll, fresh) if fresh else []
    replace_documents(coll, known + again)
    return fresh + known


PREFETCH_THREADS = 4
_prefetched: dict = {}    # user_id -> Future of its lookup, in this Python worker
_pool: list = []          # this worker's lookup threads (created on first use)


@dataclass(frozen=True)
class StoredProfiles:
    """user_id -> the stored (epoch, base, totals) of the user's profile, or None: the state
    function's read when a user (re)enters the state store. One find by _id (FerretDB pushes an
    _id equality down to its index, where an $in of many ids scans the collection).

    `prefetch(user_ids)` starts those reads on a few threads, so they overlap with the state step
    of the users before them (the lean Arrow path calls it for each Arrow batch's users that have
    no state entry); a later call for a prefetched user takes the answer, or waits for it."""
    store: Store

    def __call__(self, user_id: str) -> dict | None:
        pending = _prefetched.pop(user_id, None)
        return pending.result() if pending is not None else self._read(user_id)

    def prefetch(self, user_ids) -> None:
        if not _pool:
            _pool.append(ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="profile-lookup"))
        for user_id in user_ids:
            if user_id not in _prefetched:
                _prefetched[user_id] = _pool[0].submit(self._read, user_id)

    def forget(self) -> None:
        """Drops answers nobody asked for (a task's start: they may predate its writes)."""
        _prefetched.clear()

    def _read(self, user_id: str) -> dict | None:
        coll = self.store.db()[PROFILES]
        return self.store.retrying("user_profiles lookup", lambda: coll.find_one(
            {"_id": user_id}, {"_id": 0, "epoch": 1, "base": 1, "totals": 1}))


def alert_document(row, detected_at: datetime) -> dict:
    alert = json.loads(row.doc)
    return {"_id": alert["alert_id"], "alert_type": alert["alert_type"], "severity": alert["severity"],
            "user_id": alert["user_id"], "session_id": alert["session_id"],
            "first_event_time": A.to_datetime(alert["first_event_ms"]), "event_time": A.to_datetime(alert["event_ms"]),
            "detected_at": detected_at, "evidence": alert["evidence"], "rule_version": alert["rule_version"]}
