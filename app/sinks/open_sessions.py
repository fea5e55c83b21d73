"""Open sessions by urgency, in live_feed, for /v1/act-now on FerretDB (reads by _id only): the
activity query (app/sinks/user_activity.py) sees each user's open sessions before and after every
batch (a user_activity document holds all of them), and files the difference here.

    {_id: ["open", priority, minute], members: [{session_id, <the session's fields>, user_id}, ...]}
        the open sessions of that action_priority (99: none) whose session_end is in that minute,
        newest first, each as the user's user_activity document has it (the fields
        /v1/act-now returns), so the API reads no session on its own; the first PAGE of them
    {_id: ["open", priority, minute, k], members: [...]}: the next PAGE each (k = 1, 2, ...)
        (each page also has keys: ["<session_end in epoch ms>|<session_id>", ...], one a member,
        so a batch re-sorts a bucket without decoding the members it keeps)
    {_id: ["open"], buckets: [{priority, slot, newest, pages}, ...]}: the non-empty ones, with
        their newest session_end and their number of pages (an empty bucket, and an empty index,
        are deleted)
    {_id: ["open-head", priority, k], members: [...], keys: [...]}: the priority's newest HEAD
        open sessions, newest first, as its buckets have them, HEAD_PAGE a document (k = 0, 1, ...)
    {_id: ["open-head"], heads: [{priority, newest, count}, ...]}: the priorities with open
        sessions, each with its newest session_end and the members its head holds

/v1/act-now reads the heads: with `limit` <= HEAD, the most urgent priority's head (and the next
ones' while it has too few within `hours`) holds the answer, so a call with the default limit
reads the summary and one page of 20 (on FerretDB with the job idle: 0.5 ms and 1.2 ms, against
2.9 ms for a page of 100), not the index and a bucket a minute. A larger `limit`, or a store
whose heads an earlier version never wrote, reads the index and the buckets. A bucket's pages are
written so that a write cut short after any of them loses no member (_write_order).

Members and the index's entries are stored packed, one JSON string each (app/sinks/packing.py):
FerretDB 1.24 reads a document value by value, and an index of 600 buckets read nested took
16 ms. A page is at most PAGE members of ~600 bytes (a session's fields are bounded: its path
PATH_STEPS steps, its recommendations the rules'), ~0.6 MB, far from the 16 MB limit however
many sessions end in the same minute.

All are functions of the open sessions' latest versions alone, so no batch cut or replay
changes them (app/sinks/exactly_once.py 14): a session is filed where its latest version puts
it, with that version, and removed when it closes or is retracted. A bucket's pages are read
until one is missing and rewritten before the index, so a batch cut short between them is
mended by its replay, which makes the same moves again. The heads are rewritten after the
buckets, for each priority a batch touched, from its buckets as they then are, so a replay
rewrites them too.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from graphlib import TopologicalSorter

from app.aggregates import utc
from app.sinks.packing import from_millis, pack_items, to_millis, unpack_item, unpack_items

INDEX_ID = json.dumps(["open"])
NO_PRIORITY = 99  # as /v1/act-now ranks a session without action_priority
SLOT = timedelta(minutes=1)
PAGE = 1000  # members per document
HEAD = 100  # members of a priority's head: /v1/act-now's limit up to this reads the heads
HEAD_PAGE = 20  # members of a head's document (/v1/act-now's default limit)
HEADS_ID = json.dumps(["open-head"])
PACKED = ("members", "buckets")  # the lists stored packed (no wall-clock field in them: compared as stored)


def bucket_id(priority: int, slot: datetime, page: int = 0) -> str:
    return json.dumps(["open", priority, utc(slot).isoformat(), *([page] if page else [])], separators=(",", ":"))


def head_id(priority: int, page: int = 0) -> str:
    return json.dumps(["open-head", priority, page], separators=(",", ":"))


def open_sessions(doc: dict | None) -> dict:
    """A user_activity document -> session_id -> its member: the open session as the document
    has it (its dates aware UTC), with its user."""
    user_id = (doc or {}).get("_id")
    return {s["session_id"]: {**{k: utc(v) if isinstance(v, datetime) else v for k, v in s.items()}, "user_id": user_id}
            for s in (doc or {}).get("sessions", []) if s["status"] == "active"}


def priority_of(session: dict) -> int:
    priority = session.get("action_priority")
    return NO_PRIORITY if priority is None else priority


def _place(member: dict) -> tuple[int, datetime]:
    return priority_of(member), _floor_slot(member["session_end"])


class Changes:
    """The batch's moves: what left each bucket and what each holds anew (session -> its member)."""

    def __init__(self):
        self.removed: dict = {}  # (priority, slot) -> {session_id}
        self.added: dict = {}    # (priority, slot) -> {session_id: member}

    def user(self, before: dict | None, after: dict) -> None:
        """One user's document before and after the batch's merge."""
        old, new = open_sessions(before), open_sessions(after)
        for session_id, member in old.items():
            if new.get(session_id) != member:
                self.removed.setdefault(_place(member), set()).add(session_id)
        for session_id, member in new.items():
            if old.get(session_id) != member:
                self.added.setdefault(_place(member), {})[session_id] = member

    def apply(self, read, write, delete) -> int:
        """The touched buckets and the index, merged with what is stored: written, or deleted once
        empty (so they depend on the open sessions alone); returns the documents changed."""
        touched = set(self.removed) | set(self.added)
        if not touched:
            return 0
        docs, gone, placed, now_in = [], [], {}, {}
        for priority, slot in sorted(touched):
            stored = _stored_pages(read, priority, slot)
            entries: dict = {}  # session_id -> ((end ms, session_id), the member as stored)
            was_on: dict = {}   # session_id -> its stored page
            for k, page in enumerate(stored):
                for key, item in _entries(page):
                    entries.setdefault(key[1], (key, item))
                    was_on.setdefault(key[1], k)
            moved = set(self.removed.get((priority, slot), ())) | set(self.added.get((priority, slot), {}))
            for session_id in self.removed.get((priority, slot), ()):
                entries.pop(session_id, None)
            for session_id, member in self.added.get((priority, slot), {}).items():
                entries[session_id] = (_key(member), pack_items([member])[0])
            ordered = sorted(entries.values(), reverse=True)  # newest first, then by id
            now_in[(priority, slot)] = ordered
            pages = _pages(ordered, PAGE)
            shifts = {(k, was_on[sid]) for k, page in enumerate(pages) for (_, sid), _ in page
                      if sid not in moved and was_on[sid] != k}
            docs += [_page_doc(bucket_id(priority, slot, k), priority, pages[k], slot=slot)
                     for k in _write_order(len(pages), len(stored), shifts)]
            # the surplus pages, the last first: a delete cut short leaves the pages before a gap
            gone += [bucket_id(priority, slot, k) for k in reversed(range(len(pages), len(stored)))]
            placed[(priority, slot)] = (from_millis(ordered[0][0][0]), len(pages)) if ordered else None
        if docs:
            write(docs)
        index = {(b["priority"], utc(b["slot"])): (utc(b["newest"]), b.get("pages", 1)) for b in _index(read)}
        index.update(placed)
        buckets = [{"priority": priority, "slot": slot, "newest": place[0], "pages": place[1]}
                   for (priority, slot), place in sorted(index.items()) if place is not None]
        if gone:
            delete(gone)
        if buckets:
            write([{"_id": INDEX_ID, "buckets": pack_items(buckets)}])
        else:
            delete([INDEX_ID])
        changed = _write_heads(read, write, delete, now_in, [(b["priority"], b["slot"]) for b in buckets])
        self.removed, self.added = {}, {}  # made: the next batch of users starts anew
        return len(docs) + len(gone) + 1 + changed


def _write_heads(read, write, delete, now_in: dict, slots: list) -> int:
    """Each touched priority's head, and the heads' summary (every priority's, if no summary is
    stored: an earlier version's buckets); a head's pages past its new count are deleted after
    the summary, which no longer counts them. Returns the documents changed."""
    stored = read(HEADS_ID)
    summary = {h["priority"]: h for h in (stored or {}).get("heads", [])}
    priorities = {p for p, _ in now_in} if stored is not None else {p for p, _ in now_in} | {p for p, _ in slots}
    heads, emptied = [], []
    for priority in sorted(priorities):
        head = _head(read, priority, now_in, [s for p, s in slots if p == priority])
        pages = _pages(head, HEAD_PAGE)
        heads += [_page_doc(head_id(priority, k), priority, page) for k, page in enumerate(pages)]
        # every page a head can have past the new ones, the last first (not by the stored count:
        # a delete cut short after the summary was written would leave pages no count names)
        emptied += [head_id(priority, k) for k in reversed(range(len(pages), _page_count(HEAD, HEAD_PAGE)))]
        if head:
            summary[priority] = {"priority": priority, "newest": from_millis(head[0][0][0]), "count": len(head)}
        else:
            summary.pop(priority, None)
    if heads:
        write(heads)
    if summary:
        write([{"_id": HEADS_ID, "heads": [summary[p] for p in sorted(summary)]}])
    else:
        delete([HEADS_ID])
    if emptied:
        delete(emptied)  # after the summary, which no longer names them
    return len(heads) + len(emptied) + 1


def _pages(entries, size: int) -> list:
    """`entries` cut into pages of `size`, in order."""
    return [entries[start:start + size] for start in range(0, len(entries), size)]


def _page_count(entries: int, size: int) -> int:
    """The pages `entries` take at `size` a page."""
    return -(-entries // size)


def _page_doc(_id: str, priority: int, page: list, **place) -> dict:
    """A bucket's (place: its slot) or a head's page document: its members as stored and their keys
    "end ms|session_id", in the same order (so a read finds a session's place without decoding the
    members). The fields in the order earlier versions stored them."""
    return {"_id": _id, "priority": priority, **place, "members": [item for _, item in page],
            "keys": [f"{end}|{sid}" for (end, sid), _ in page]}


def _head(read, priority: int, now_in: dict, slots: list) -> list:
    """The priority's newest HEAD members as ((end ms, session_id), the member as stored), newest
    first, from its buckets as they now are (`slots`: its non-empty ones; those the batch touched
    are in `now_in`), read newest first until HEAD are found."""
    head: list = []
    for slot in sorted(slots, reverse=True):
        if (priority, slot) in now_in:
            head += now_in[(priority, slot)]
        else:
            head += [entry for page in _stored_pages(read, priority, slot) for entry in _entries(page)]
        if len(head) >= HEAD:
            break
    return head[:HEAD]


def _write_order(pages: int, stored: int, shifts: set) -> list[int]:
    """The order to write a bucket's pages in, so that a write cut short after any of them loses
    no member the batch kept (one the batch moved is moved again by its replay): a member that
    shifts from stored page j to page k (shifts: (k, j)) is written on k before j is overwritten,
    and pages past the stored ones are written in order, so reading pages until one is missing
    reaches them. Members keep their order, so the shifts make no cycle."""
    order = TopologicalSorter({k: set() for k in range(pages)})
    for k, j in shifts:
        if j < pages:  # a page past the new ones is deleted after every write
            order.add(j, k)
    for k in range(stored + 1, pages):
        order.add(k, k - 1)
    return list(order.static_order())


def _stored_pages(read, priority: int, slot: datetime) -> list[dict]:
    """A bucket's stored pages, read until one is missing (not by the index, which a batch cut
    short may not have rewritten)."""
    pages = []
    while (page := read(bucket_id(priority, slot, len(pages)))) is not None:
        pages.append(page)
    return pages


def _key(member: dict) -> tuple[int, str]:
    return to_millis(member["session_end"]), member["session_id"]


def _entries(page: dict):
    """A stored page's members as ((end ms, session_id), the member as stored), by its `keys`: a
    member kept as it is is neither decoded nor encoded again (a page an earlier version stored,
    without keys: each member decoded)."""
    items, keys = page.get("members", []), page.get("keys")
    if keys is not None and len(keys) == len(items):
        for key, item in zip(keys, items):
            end, session_id = key.split("|", 1)
            yield (int(end), session_id), item
    else:
        for member in unpack_items(items):
            yield _key(member), pack_items([member])[0]


def _index(read) -> list[dict]:
    return unpack_items((read(INDEX_ID) or {}).get("buckets", []))


def act_now(coll, hours: float, limit: int) -> tuple[datetime | None, list[dict]]:
    """The open sessions within `hours` of the newest one's end, most urgent priority first, then
    the newest: (since, members). Only the members returned are decoded. From the heads when
    `limit` <= HEAD and they are stored, else from the index and the buckets (no index: no open
    session). (A member stored by a version before members carried their session has only
    session_id, session_end and user_id.)"""
    summary = coll.find_one({"_id": HEADS_ID}) if limit <= HEAD else None
    if summary is not None:
        return _act_now_from_heads(coll, summary["heads"], hours, limit)
    buckets = [(b["priority"], utc(b["slot"]), utc(b["newest"]), b.get("pages", 1))
               for b in _index(lambda _id: coll.find_one({"_id": _id}))]
    if not buckets:
        return None, []
    since = max(newest for _, _, newest, _ in buckets) - timedelta(hours=hours)
    picked: list[dict] = []
    for priority, slot, _, pages in sorted(buckets, key=lambda b: (b[0], -b[1].timestamp())):
        if slot + SLOT <= since:
            continue
        for member in _members(coll, priority, slot, pages):
            if utc(member["session_end"]) < since:
                break  # newest first: the bucket's others are older still
            picked.append(member)
            if len(picked) >= limit:
                return since, picked
    return since, picked


def _act_now_from_heads(coll, heads: list, hours: float, limit: int) -> tuple[datetime | None, list[dict]]:
    if not heads:
        return None, []
    since = max(utc(h["newest"]) for h in heads) - timedelta(hours=hours)
    picked: list[dict] = []
    for h in sorted(heads, key=lambda h: h["priority"]):
        if utc(h["newest"]) < since:
            continue
        for key, item in _head_members(coll, h["priority"], h["count"]):
            if from_millis(key[0]) < since:
                break  # newest first: the head's others are older still
            picked.append(unpack_item(item))
            if len(picked) >= limit:
                return since, picked
    return since, picked


def _head_members(coll, priority: int, count: int):
    """A head's members as ((end ms, session_id), the member as stored), newest first, a page
    read when reached."""
    for page in range(_page_count(count, HEAD_PAGE)):
        yield from _entries(coll.find_one({"_id": head_id(priority, page)}) or {})


def _members(coll, priority: int, slot: datetime, pages: int):
    """A bucket's members, newest first, each decoded when it is reached (a page read when reached)."""
    for page in range(pages):
        for item in (coll.find_one({"_id": bucket_id(priority, slot, page)}) or {}).get("members", []):
            yield unpack_item(item)


def _floor_slot(value: datetime) -> datetime:
    return utc(value).replace(second=0, microsecond=0)
