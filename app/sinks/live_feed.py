"""live_feed: the newest alerts, trigger executions and events of each hour (and the open
sessions by urgency: app/sinks/open_sessions.py; users by engagement: app/sinks/leaderboard.py),
kept by the job's activity query (app/sinks/user_activity.py runs it) from the store lane's
alert, action and event messages, so /v1/alerts, /v1/trigger-executions and /v1/activity without
user_id read documents by _id: the only read FerretDB 1.24 does not scan for (DESIGN.md §15).
Kept only with USER_ACTIVITY on, and read by the API only while the activity query is complete
(its stream_progress markers); otherwise the API reads the collections through their indexes.

    feed "alerts" (behavior_alerts, by first_event_time), "executions" (trigger_executions, by event_time),
        "events" (enriched_events, by event_timestamp);
    a key: the filter values the bucket holds: [] (all), [[alert_type, X]], [[severity, Y]],
        [[alert_type, X], [severity, Y]], [[user_id, U]]; [[trigger, T]], [[user_id, U]];
        [[event_type, T]], [[country, C]], [[event_type, T], [country, C]]
    {_id: [feed, key, hour], items: [the feed's `kept` newest of the hour (KEPT; events:
     EVENTS_KEPT), by (time, id), newest first], truncated: whether the hour has had more}
    {_id: [feed, key, hour, "head"], items: [the bucket's HEAD newest], more: it holds more}
        (the items of both stored one JSON string each: app/sinks/packing.py)
        (alerts and executions: a bucket of events holds no more than a head)
    {_id: [feed, key], hours: [every hour with an item, newest first]}

Alerts and executions are insert-or-ignore by id and never change (as in their collections), so
a bucket is the KEPT newest distinct items of its hour, whatever the batch cuts and replays were:
an item the cut drops is older than every kept one for good, and a replayed one is ignored or
dropped again (app/sinks/exactly_once.py 14). A read walks the key's hours newest first and takes
the matching items until `limit`: exact, since a bucket holds its hour's newest items and
limit <= KEPT. Only when a truncated bucket runs out before `limit` (filters applied on top of
the key: a user's with a type, severity or trigger; or a range bound inside the hour) can older
items of that hour be missing; the read says so and the API reads the collection instead.
Events are inserted once too, and only their session changes (an `event_fix` row, which carries
the event's time, type and country, so its buckets are found): a correction is applied to the
items that hold the event, in message order (an event's rows share a key on the store lane), and
one whose event a bucket dropped is dropped too. So an event bucket holds its hour's newest
EVENTS_KEPT events with their latest sessions, as the collection shows them. EVENTS_KEPT is the
API's default limit, not its largest: a read past what a truncated hour kept is answered as far
as the feed goes, marked incomplete (`walk`; the API says `complete: false`), instead of scanning
the collection.
The feed trails the collections by up to ACTIVITY_INTERVAL (more while the activity query
catches up). Each key's hour list grows by one entry per hour with an item (8,760 a year).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import NamedTuple

from app.aggregates import floor_hour, to_datetime, utc
from app.sinks.collections import event_document, event_session_fields, execution_document
from app.sinks.packing import packed, unpacked
from app.sinks.profiles import alert_document

FIX = "event_fix"  # a correction of an event's session: applied to the items of the buckets holding it
KINDS = ("alert", "action", "event", FIX)
KEPT = 1000  # >= the API's MAX_LIMIT (a test holds them so): any limit is answered from one bucket's items
HEAD = 100  # the newest items of a bucket, also kept on their own (head_of): the API's default limit
WRITE_CHUNK = 50  # documents per bulk write (a bucket is up to KEPT items)
HOUR = timedelta(hours=1)
ITEMS = ("items",)  # a bucket's and a head's items are stored packed, one JSON string each (packing.py)


class Feed(NamedTuple):
    name: str
    kind: str        # the store lane's row kind
    time: str        # the field it is ordered and bucketed by
    id: str          # the item's id field (the collection's _id)
    keys: tuple      # the filter names a bucket can hold, most specific first
    kept: str = "KEPT"  # the constant of how many newest items a bucket keeps (above HEAD: a head too)
    mutable: tuple = ()  # the item's fields a later row may change (an event's session: `event_fix`)


# A user's buckets come first: with user_id among the filters, the walk reads only the user's hours.
ALERTS = Feed("alerts", "alert", "first_event_time", "alert_id",
              (("user_id",), ("alert_type", "severity"), ("alert_type",), ("severity",), ()))
EXECUTIONS = Feed("executions", "action", "event_time", "execution_id", (("user_id",), ("trigger",), ()))
# /v1/activity without user_id: the newest EVENTS_KEPT events of each hour, per type, country and both
# (a user's own are in user_activity). Events come at thousands a second, so a bucket keeps what a
# default request shows, not MAX_LIMIT: a read past it says it is incomplete (`walk`).
EVENTS_KEPT = HEAD
EVENTS = Feed("events", "event", "event_timestamp", "event_id",
              (("event_type", "country"), ("country",), ("event_type",), ()), "EVENTS_KEPT", ("session_id",))
EVENT_FIELDS = ("user_id", "event_type", "event_timestamp", "session_id", "product_id", "category_code", "brand",
                "price", "country", "device_type", "is_late")  # what the collection path shows (api/queries.py)
FEEDS = {f.kind: f for f in (ALERTS, EXECUTIONS, EVENTS)}


def item_of(kind: str, row, now: datetime) -> dict:
    """An alert, action or event row -> the document its collection holds (the same function writes
    it there; of an event, the fields the API shows), its _id named as the API names it."""
    if kind == "event":
        doc = event_document(row, now)
        return {"event_id": doc["_id"], **{n: doc[n] for n in EVENT_FIELDS if n in doc}}  # as projected
    doc = (alert_document if kind == "alert" else execution_document)(row, now)
    return {FEEDS[kind].id: doc.pop("_id"), **doc}


def _fix_of(row) -> tuple[dict, str | None] | None:
    """An event_fix row -> the event's keys and time (where its buckets are), and its new session;
    None for a row from before fixes carried them (on the store lane when the job was upgraded: its
    checkpoint has no event_feed_complete marker, so the API does not read the event buckets)."""
    where = json.loads(row.doc)
    if "event_ms" not in where:
        return None
    return ({"event_type": where["event_type"], "country": where.get("country"),
             "event_timestamp": to_datetime(where["event_ms"])}, event_session_fields(row)["session_id"])


def bucket_id(feed: Feed, key: list, hour: datetime) -> str:
    return json.dumps([feed.name, key, utc(hour).isoformat()], separators=(",", ":"))


def index_id(feed: Feed, key: list) -> str:
    return json.dumps([feed.name, key], separators=(",", ":"))


def _key(item: dict, names: tuple) -> list:
    return [[n, item.get(n)] for n in names]


def _order(feed: Feed):
    return lambda item: (utc(item[feed.time]), item[feed.id])


def apply_rows(rows, read, write, now: datetime) -> int:
    """Alert, action and event rows, and event corrections (any order of batches; kind, doc) -> the
    buckets and hour indexes they touch, merged with what is stored (read(_id) -> doc | None),
    written with write(docs) when they changed (their items packed). Returns the documents written."""
    read = _unpacking(read)
    # bucket _id -> (feed, key, hour, {id: item}, [(id, session) corrections, in order])
    fresh: dict[str, tuple[Feed, list, datetime, dict, list]] = {}
    for row in rows:
        if row.kind == FIX:
            feed, fix = EVENTS, _fix_of(row)
            if fix is None:
                continue
            item, session_id = fix
        else:
            feed = FEEDS.get(row.kind)
            if feed is None:
                continue
            item = item_of(row.kind, row, now)
        hour = floor_hour(item[feed.time])
        for names in feed.keys:
            key = _key(item, names)
            if any(value is None for _, value in key):
                continue
            _, _, _, items, fixes = fresh.setdefault(bucket_id(feed, key, hour), (feed, key, hour, {}, []))
            if row.kind == FIX:
                fixes.append((row.id, session_id))
            else:
                items.setdefault(item[feed.id], item)  # insert-or-ignore: the first copy stays
    changed, hours_of = [], {}
    for _id, (feed, key, hour, items, fixes) in fresh.items():
        stored = read(_id)
        if stored is None and not items:
            continue  # corrections only, of events this bucket never held
        merged = merge_bucket(stored, _id, hour, items.values(), feed, fixes)
        if kept_of(feed) > HEAD:
            head = head_of(merged)
            # a replayed or redelivered item changes nothing (the head is checked too: a batch cut
            # short between the two writes leaves them apart until its replay)
            if not (_same(stored, merged, feed) and _same(read(head["_id"]), head, feed, "more")):
                changed += [merged, head]
        elif not _same(stored, merged, feed):
            changed.append(merged)
        if items:
            hours_of.setdefault(index_id(feed, key), set()).add(utc(hour))
    for _id, hours in hours_of.items():
        stored = read(_id)
        known = {utc(h) for h in (stored or {}).get("hours", [])}
        if not hours <= known:
            changed.append({"_id": _id, "hours": sorted(known | hours, reverse=True)})
    for start in range(0, len(changed), WRITE_CHUNK):
        write([packed(d, ITEMS) for d in changed[start:start + WRITE_CHUNK]])
    return len(changed)


def _unpacking(read):
    """read(_id) of the stored documents -> read(_id) of them with their items decoded."""
    return lambda _id: unpacked(read(_id), ITEMS)


def head_of(bucket: dict) -> dict:
    """The bucket's newest HEAD items, a document of their own: a read of up to HEAD items decodes
    this (an execution is ~1 KB, so a full bucket is ~1 MB); `more`: the bucket holds more."""
    return {"_id": head_id(bucket["_id"]), "items": bucket["items"][:HEAD],
            "more": len(bucket["items"]) > HEAD or bucket["truncated"]}


def head_id(bucket_id_: str) -> str:
    return json.dumps([*json.loads(bucket_id_), "head"], separators=(",", ":"))


def _same(stored: dict | None, merged: dict, feed: Feed, flag: str = "truncated") -> bool:
    def shown(items: list) -> list:
        return [(i[feed.id], *(i.get(n) for n in feed.mutable)) for i in items]
    return (stored is not None and bool(stored.get(flag)) == merged[flag]
            and shown(stored["items"]) == shown(merged["items"]))


def merge_bucket(stored: dict | None, _id: str, hour: datetime, items, feed: Feed, fixes=()) -> dict:
    """A bucket after `items`: insert-or-ignore by id, then the corrections (id, session) in order
    to the items it holds, the feed's `kept` newest by (time, id). A correction comes after its
    event's row (they share a key on the store lane); one whose event the bucket has dropped is
    dropped too (the event would have been)."""
    kept = {i[feed.id]: i for i in (stored or {}).get("items", [])}
    for item in items:
        kept.setdefault(item[feed.id], item)
    for item_id, session_id in fixes:
        if item_id in kept:
            kept[item_id] = {**kept[item_id], "session_id": session_id}
    ordered = sorted(kept.values(), key=_order(feed), reverse=True)
    # A dropped item is older than every kept one, and the kept ones only get newer: it never returns.
    truncated = bool((stored or {}).get("truncated")) or len(ordered) > kept_of(feed)
    return {"_id": _id, "hour": utc(hour), "items": ordered[:kept_of(feed)], "truncated": truncated}


def kept_of(feed: Feed) -> int:
    return globals()[feed.kept]


def read(coll, feed: Feed, filters: dict, start: datetime | None, end: datetime | None,
         limit: int) -> list[dict] | None:
    """The newest `limit` items matching `filters` (walk), or None when a truncated bucket ran out
    before `limit` (the caller reads the collection)."""
    items, complete = walk(coll, feed, filters, start, end, limit)
    return items if complete else None


def walk(coll, feed: Feed, filters: dict, start: datetime | None, end: datetime | None,
         limit: int) -> tuple[list[dict], bool]:
    """The newest `limit` items matching `filters` (name -> value, None: any) with start <= time <
    end, newest first, from the buckets of the most specific key the filters give, and whether
    they are all of them: False when a truncated bucket ran out before `limit` (the items are then
    the newest matches down to that hour's oldest kept item)."""
    given = {n: v for n, v in filters.items() if v is not None}
    names = next(names for names in feed.keys if set(names) <= set(given))
    key = [[n, given[n]] for n in names]
    rest = {n: v for n, v in given.items() if n not in names}
    index = coll.find_one({"_id": index_id(feed, key)}) or {}
    start, end = start and utc(start), end and utc(end)
    items: list[dict] = []

    def take(candidates: list) -> bool:
        """The matching ones onto `items`, newest first; True once there are `limit`."""
        for item in candidates:
            when = utc(item[feed.time])
            if ((start is None or when >= start) and (end is None or when < end)
                    and all(item.get(n) == v for n, v in rest.items())):
                items.append(item)
                if len(items) >= limit:
                    return True
        return False

    for hour in index.get("hours", []):  # newest first
        hour = utc(hour)
        if start is not None and hour + HOUR <= start:
            break
        if end is not None and hour >= end:
            continue
        _id = bucket_id(feed, key, hour)
        head = unpacked(coll.find_one({"_id": head_id(_id)}), ITEMS) if kept_of(feed) > HEAD else None
        if head is not None:
            if take(head["items"]):
                return items, True
            if not head["more"]:
                continue  # the hour's items were all in its head
            if start is not None and head["items"] and utc(head["items"][-1][feed.time]) < start:
                return items, True  # the rest of the hour, and the hours after it, are older still
        bucket = unpacked(coll.find_one({"_id": _id}), ITEMS) or {}
        kept = bucket.get("items", [])
        # past the head by (time, id), not by position: the activity query may have rewritten
        # both between the two reads (a missing head: the whole bucket)
        last = _order(feed)(head["items"][-1]) if head is not None and head["items"] else None
        if take([i for i in kept if last is None or _order(feed)(i) < last]):
            return items, True
        if bucket.get("truncated"):
            # what the hour dropped is older than all it kept: missing only if some of it may be in range
            return items, start is not None and bool(kept) and utc(kept[-1][feed.time]) < start
    return items, True
