"""Open sessions by urgency, in live_feed, for /v1/act-now on FerretDB (reads by _id only): the
activity query (app/sinks/user_activity.py) sees each user's open sessions before and after every
batch (a user_activity document holds all of them), and files the difference here.

    {_id: ["open", priority, minute], members: [{session_id, session_end, user_id}, ...]}
        every open session of that action_priority (99: none) whose session_end is in that minute
        (open sessions end within a session gap of each other: minutes keep a bucket small, ~110
        bytes a member, 16 MB at ~150,000 sessions ending in the same minute)
    {_id: ["open"], buckets: [{priority, minute, newest}, ...]}: the non-empty ones, with their
        newest session_end (an empty bucket, and an empty index, are deleted)

Both are functions of the set of open sessions alone, so no batch cut or replay changes them
(app/sinks/exactly_once.py 14): a session is filed where its latest version puts it and removed
when it closes or is retracted. Entries are small (an id, a time, a user); the API reads the
sessions it picks by _id from user_behavior_segments.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from app.aggregates import utc

INDEX_ID = json.dumps(["open"])
NO_PRIORITY = 99  # as /v1/act-now ranks a session without action_priority
SLOT = timedelta(minutes=1)


def bucket_id(priority: int, slot: datetime) -> str:
    return json.dumps(["open", priority, utc(slot).isoformat()], separators=(",", ":"))


def open_sessions(doc: dict | None) -> dict:
    """A user_activity document -> session_id -> (priority, session_end) of its open sessions."""
    return {s["session_id"]: (priority_of(s), utc(s["session_end"]))
            for s in (doc or {}).get("sessions", []) if s["status"] == "active"}


def priority_of(session: dict) -> int:
    priority = session.get("action_priority")
    return NO_PRIORITY if priority is None else priority


class Changes:
    """The batch's moves: what left each bucket and what each holds anew (session -> its entry)."""

    def __init__(self):
        self.removed: dict = {}  # (priority, slot) -> {session_id}
        self.added: dict = {}    # (priority, slot) -> {session_id: entry}

    def user(self, before: dict | None, after: dict) -> None:
        """One user's document before and after the batch's merge."""
        old, new = open_sessions(before), open_sessions(after)
        for session_id, (priority, end) in old.items():
            if new.get(session_id) != (priority, end):
                self.removed.setdefault((priority, _floor_slot(end)), set()).add(session_id)
        for session_id, (priority, end) in new.items():
            if old.get(session_id) != (priority, end):
                self.added.setdefault((priority, _floor_slot(end)), {})[session_id] = {
                    "session_id": session_id, "session_end": end, "user_id": after["_id"]}

    def apply(self, read, write, delete) -> int:
        """The touched buckets and the index, merged with what is stored: written, or deleted once
        empty (so they depend on the open sessions alone); returns the documents changed."""
        touched = set(self.removed) | set(self.added)
        if not touched:
            return 0
        docs, empty, newest = [], [], {}
        for priority, slot in sorted(touched):
            _id = bucket_id(priority, slot)
            members = {m["session_id"]: m for m in (read(_id) or {}).get("members", [])}
            for session_id in self.removed.get((priority, slot), ()):
                members.pop(session_id, None)
            members.update(self.added.get((priority, slot), {}))
            ordered = sorted(members.values(), key=lambda m: (utc(m["session_end"]), m["session_id"]), reverse=True)
            if ordered:
                docs.append({"_id": _id, "priority": priority, "slot": slot, "members": ordered})
            else:
                empty.append(_id)
            newest[(priority, slot)] = utc(ordered[0]["session_end"]) if ordered else None
        index = {(b["priority"], utc(b["slot"])): utc(b["newest"]) for b in (read(INDEX_ID) or {}).get("buckets", [])}
        index.update(newest)
        buckets = [{"priority": p, "slot": t, "newest": n} for (p, t), n in sorted(index.items()) if n is not None]
        if buckets:
            docs.append({"_id": INDEX_ID, "buckets": buckets})
        else:
            empty.append(INDEX_ID)
        if docs:
            write(docs)
        if empty:
            delete(empty)
        self.removed, self.added = {}, {}  # made: the next batch of users starts anew
        return len(docs) + len(empty)


def act_now(coll, hours: float, limit: int) -> tuple[datetime | None, list[str]]:
    """The open sessions within `hours` of the newest one's end, most urgent priority first, then
    the newest: (since, session ids). No index: no open session."""
    index = coll.find_one({"_id": INDEX_ID}) or {}
    buckets = [(b["priority"], utc(b["slot"]), utc(b["newest"])) for b in index.get("buckets", [])]
    if not buckets:
        return None, []
    since = max(newest for _, _, newest in buckets) - timedelta(hours=hours)
    picked: list[str] = []
    for priority, slot, _ in sorted(buckets, key=lambda b: (b[0], -b[1].timestamp())):
        if slot + SLOT <= since:
            continue
        for m in (coll.find_one({"_id": bucket_id(priority, slot)}) or {}).get("members", []):
            if utc(m["session_end"]) < since:
                break  # newest first
            picked.append(m["session_id"])
            if len(picked) >= limit:
                return since, picked
    return since, picked


def _floor_slot(value: datetime) -> datetime:
    return utc(value).replace(second=0, microsecond=0)
