"""user_activity: one document per user (_id = user_id) holding the user's newest events and
sessions, kept by the job's third query, `activity`, from the store lane's messages
(app/sinks/store_lane.py), so the per-user endpoints
(/v1/activity?user_id=, /v1/sessions/metrics?user_id=) read one document by _id: the only read
FerretDB 1.24 does not scan for (DESIGN.md §15).

    {_id: user_id, events: [EVENTS_KEPT newest, by (event_timestamp, event_id), newest first],
     sessions: [every active session + the SESSIONS_KEPT newest closed ones, by (session_end, id), newest first],
     (each event and session stored as one JSON string: pack / unpack)
     rank: {score, segment, fields}: the engagement score, last segment and the fields
           /v1/users/segments shows, of the user's newest profile row (with profiles on), which
           app/sinks/leaderboard.py files}

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

import json
import logging
import multiprocessing
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from itertools import groupby
from typing import NamedTuple

import bson
from pymongo import DeleteOne, ReplaceOne

from app.aggregates import utc
from app.profiles.profile import profile_document
from app.profiles.rules import ProfileRules, parse_profile_rules
from app.sessions.tracker import archived_id
from app.sinks import leaderboard, live_feed, open_sessions
from app.sinks.collections import LIVE_FEED, PROGRESS, USER_ACTIVITY, event_document, event_session_fields, session_document
from app.sinks.mongo import Store
from app.sinks.packing import packed, to_millis, unpacked

ACTIVITY_QUERY = "activity"
EVENTS_KEPT = 100
SESSIONS_KEPT = 100
KINDS = ("event", "event_fix", "retract", "session", "profile")
EVENT_FIELDS = ("event_type", "event_timestamp", "session_id", "product_id", "category_code", "brand", "price",
                "country", "device_type", "is_late")
# What /v1/sessions/metrics returns of a session (no wall-clock field: a replay writes the same document).
SESSION_FIELDS = ("user_session", "behavior_segment", "segment_color", "segment_score", "action_priority", "status",
                  "session_start", "session_end", "session_duration_minutes", "total_events", "view_count",
                  "cart_count", "purchase_count", "total_amount", "engagement_rate", "event_path", "recommendations",
                  "experiments", "rule_version")
PACKED = ("events", "sessions")  # each item stored as one JSON string (app/sinks/packing.py)
WRITE_CHUNK = 200
FLUSH_USERS = 2000  # users merged between open-session moves (merge_batch): their documents wait in memory
CACHE_BYTES = 256 * 1024 * 1024  # the documents the driver keeps, as BSON
FEED_CACHE_BYTES = 64 * 1024 * 1024  # live_feed's buckets and hour indexes, the same way
STATUS_ID = "activity"  # in stream_progress: {complete: bool} (see ActivityBatchWriter)


class ActivityBatchWriter:
    """foreachBatch sink of the activity query (STORE_TOPIC, its own trigger: ACTIVITY_INTERVAL):
    the run's rows, as Arrow, handed to a merger process of the driver's (`_Merger`: the driver's
    Python also runs the other queries' foreachBatch, and merging thousands of users there would
    hold its interpreter lock for seconds). The merger keeps the documents it wrote last (BSON, at
    most CACHE_BYTES, least recent out), so a user active all along costs one write per batch and
    no read; only this query writes user_activity. `complete`: the checkpoint's sessions query
    sent everything through the store lane since its first batch (pipeline.ACTIVITY_FILE);
    recorded in stream_progress (`_id: activity`) for the query API, which reads the collections
    instead while it is not; `feed_complete`, `rank_complete`, `events_complete` the same for
    live_feed's alerts, executions and open sessions, its leaderboard and its events
    (pipeline.FEED_FILE, RANK_FILE, EVENTS_FILE)."""

    def __init__(self, store: Store, run_id, complete: bool, feed_complete: bool = False,
                 rank_complete: bool = False, profile_rules: dict | None = None, events_complete: bool = False):
        self.store = store
        self.run_id = run_id  # () -> the sessions query's id
        self.complete, self.feed_complete, self.rank_complete = complete, feed_complete, rank_complete
        self.events_complete = events_complete
        self.merger = _Merger(store, profile_rules)
        self.marked = False

    def __call__(self, batch, batch_id: int) -> None:
        from pyspark.sql import functions as F  # here: the query API imports this module and runs without Spark
        if not self.marked:
            db = self.store.db()
            self.store.retrying(PROGRESS, lambda: db[PROGRESS].replace_one(
                {"_id": STATUS_ID}, {"_id": STATUS_ID, "complete": self.complete, "feed_complete": self.feed_complete,
                                  "rank_complete": self.rank_complete, "events_complete": self.events_complete},
                upsert=True))
            self.marked = True
        table = (batch.filter((F.col("src_run") == self.run_id()) & F.col("kind").isin(*KINDS, *live_feed.KINDS))
                 .select(*Row._fields[:-3], F.get_json_object("doc", "$.user_id").alias("user_id"),
                         "kafka_partition", "kafka_offset")
                 .filter(F.col("user_id").isNotNull() | F.col("kind").isin(*live_feed.KINDS)).toArrow())
        if table.num_rows:
            self.merger.apply(table)


class Row(NamedTuple):
    """What the merge reads of a store-lane message (OutputRow's fields), its user and its place."""
    kind: str
    id: str
    doc: str | None
    session_id: str | None
    seconds_since_prev: float | None
    is_late: bool | None
    status: str | None
    first_write: bool | None
    user_id: str | None  # (an alert's or action's, always set today, is not needed: live_feed)
    kafka_partition: int
    kafka_offset: int


class _Merger:
    """A process of the driver's that merges Arrow tables of rows into user_activity (apply_rows),
    keeping its cache between batches. The driver waits for each table (the batch commits after),
    without holding its interpreter lock; a failure there fails the batch."""

    def __init__(self, store: Store, profile_rules: dict | None = None):
        self.store, self.profile_rules = store, profile_rules
        self.conn = None

    def apply(self, table) -> int:
        import pyarrow as pa
        if self.conn is None:
            context = multiprocessing.get_context("spawn")
            self.conn, child = context.Pipe()
            context.Process(target=_serve, args=(child, self.store, self.profile_rules), name="user-activity", daemon=True).start()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self.conn.send_bytes(sink.getvalue().to_pybytes())
        try:
            outcome, value = self.conn.recv()
        except EOFError:
            self.conn = None
            raise RuntimeError("the user_activity merger process ended") from None
        if outcome != "ok":
            raise RuntimeError(f"user_activity merge failed: {value}")
        return value


def _serve(conn, store: Store, profile_rules: dict | None) -> None:
    """The merger process: Arrow tables in, the number of users written (or the error) out."""
    import pyarrow as pa
    rank = None if profile_rules is None else ranker(parse_profile_rules(profile_rules))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    users = Packed(_Documents(store, USER_ACTIVITY, CACHE_BYTES))
    feeds = _Documents(store, LIVE_FEED, FEED_CACHE_BYTES)

    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        try:
            table = pa.ipc.open_stream(data).read_all()
            rows = [Row(**r) for r in table.to_pylist()]
            conn.send(("ok", merge_batch(rows, users, feeds, datetime.now(timezone.utc), rank)))
        except Exception as exc:  # noqa: BLE001 (sent back: the driver fails the batch with it)
            # a write that failed part-way may have been applied in part: the replay reads the store
            users.documents.cache.clear()
            feeds.cache.clear()
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def merge_batch(rows: list, users, feeds, now: datetime, rank=None) -> int:
    """One activity batch (Rows) into user_activity (`users`: read/write) and live_feed (`feeds`:
    read/write/delete); `rank`: a profile row -> the user's rank (`ranker`), None without profiles.
    Each FLUSH_USERS users' moves (open sessions: open_sessions.Changes; ranks:
    leaderboard.Changes) are made before those users' documents are written: a batch cut short
    anywhere is replayed onto the stored documents, so a move whose user document was not written
    is made again, and a move made twice puts the session or user where it was put once; a user
    document written already moves nothing again. Returns the users written."""
    sessions, ranks = open_sessions.Changes(), leaderboard.Changes()

    def merged(before: dict | None, after: dict) -> None:
        sessions.user(before, after)
        ranks.user(before, after)

    def write(pending: list) -> None:
        sessions.apply(feeds.read, feeds.write, feeds.delete)
        ranks.apply(feeds.read, feeds.write, feeds.delete,
                    lambda user_id: ((users.read(user_id) or {}).get("rank") or {}).get("fields", {}))
        for start in range(0, len(pending), WRITE_CHUNK):
            users.write(pending[start:start + WRITE_CHUNK])

    written = apply_rows([r for r in rows if r.kind in KINDS], users.read, write, now, merged, FLUSH_USERS, rank)
    feed_rows = sorted((r for r in rows if r.kind in live_feed.KINDS), key=lambda r: (r.kafka_partition, r.kafka_offset))
    live_feed.apply_rows(feed_rows, feeds.read, feeds.write, now)
    return written


def apply_rows(rows: list, read, write, now: datetime, merged=None, chunk: int = WRITE_CHUNK, rank=None) -> int:
    """Rows of any number of sessions batches -> each user's document merged with the user's rows
    in message order (by Kafka partition and offset: one document's messages are in one partition,
    in order), written in chunks of `chunk`; merged(before, after) sees each user's document
    before and after (open_sessions.Changes.user). Returns the users written."""
    rows = sorted(rows, key=lambda r: (r.user_id, r.kafka_partition, r.kafka_offset))
    pending: list = []
    users = 0
    for user_id, user_rows in groupby(rows, key=lambda r: r.user_id):
        before = read(user_id)
        pending.append(merge(before, user_id, user_rows, now, rank))
        if merged is not None:
            merged(before, pending[-1])
        users += 1
        if len(pending) >= chunk:
            write(pending)
            pending = []
    if pending:
        write(pending)
    return users


def pack(doc: dict) -> dict:
    """A user_activity document as stored: each event and session one JSON string (packing.py)."""
    return packed(doc, PACKED)


def unpack(doc: dict | None) -> dict | None:
    """A stored user_activity document as merge() and the query API read it: each packed item
    decoded, its dates as aware UTC datetimes; an item stored nested (before packing) as it is."""
    return unpacked(doc, PACKED)


class Packed:
    """user_activity's documents as merge_batch reads and writes them (unpacked) over a collection
    of them as stored (packed): read / write / delete by _id."""

    def __init__(self, documents):
        self.documents = documents

    def read(self, _id: str) -> dict | None:
        return unpack(self.documents.read(_id))

    def write(self, docs: list[dict]) -> None:
        self.documents.write([pack(d) for d in docs])

    def delete(self, ids: list[str]) -> None:
        self.documents.delete(ids)


class _Documents:
    """One collection's documents as the merger reads and writes them: by _id, through the cache."""

    def __init__(self, store: Store, name: str, cache_bytes: int):
        self.store, self.name = store, name
        self.coll = store.db()[name]
        self.cache = _Cache(cache_bytes)

    def read(self, _id: str) -> dict | None:
        cached = self.cache.get(_id)
        if cached is not None:
            return cached
        return self.store.retrying(self.name, lambda: self.coll.find_one({"_id": _id}))

    def write(self, docs: list[dict]) -> None:
        """In order (a write cut short leaves a prefix of `docs` applied: open_sessions orders a
        bucket's pages so that any prefix loses no member)."""
        self.store.retrying(self.name, lambda: self.coll.bulk_write(
            [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=True))
        for d in docs:  # what the store holds now
            self.cache.put(d["_id"], d)

    def delete(self, ids: list[str]) -> None:
        """In order too (open_sessions deletes a bucket's surplus pages last first)."""
        self.store.retrying(self.name, lambda: self.coll.bulk_write([DeleteOne({"_id": i}) for i in ids], ordered=True))
        for i in ids:
            self.cache.drop(i)


class _Cache:
    """user_id -> the user's document as written (BSON), at most `limit` bytes, least recent out."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self.docs: OrderedDict = OrderedDict()

    def get(self, user_id: str) -> dict | None:
        data = self.docs.get(user_id)
        if data is None:
            return None
        self.docs.move_to_end(user_id)
        return bson.decode(data)

    def clear(self) -> None:
        self.docs.clear()
        self.size = 0

    def drop(self, user_id: str) -> None:
        old = self.docs.pop(user_id, None)
        self.size -= len(old) if old is not None else 0

    def put(self, user_id: str, doc: dict) -> None:
        data = bson.encode(doc)
        self.drop(user_id)
        self.size += len(data)
        self.docs[user_id] = data
        while self.size > self.limit and self.docs:
            _, dropped = self.docs.popitem(last=False)
            self.size -= len(dropped)


def merge(stored: dict | None, user_id: str, rows, now: datetime, rank=None) -> dict:
    """The user's document after `rows` (OutputRow-like, in message order); `stored` may be None.
    A profile row sets the user's `rank` (with `rank` given: profiles on), the newest one last."""
    user_rank = (stored or {}).get("rank")
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
        elif row.kind == "profile":
            if rank is not None:
                user_rank = rank(row)
        elif row.kind == "session":
            doc = session_document(row, now)
            old = sessions.get(doc["_id"])
            if row.first_write and old is not None and old["status"] == "closed" \
                    and utc(old["session_end"]) < utc(doc["session_start"]):
                archived = archived_id(doc["_id"], to_millis(old["session_start"]))
                sessions[archived] = {**old, "session_id": archived}
            sessions[doc["_id"]] = {"session_id": doc["_id"], **{n: doc.get(n) for n in SESSION_FIELDS}}
    kept_events = sorted(events.values(), key=lambda e: (utc(e["event_timestamp"]), e["event_id"]),
                         reverse=True)[:EVENTS_KEPT]
    by_end = sorted(sessions.values(), key=lambda s: (utc(s["session_end"]), s["session_id"]), reverse=True)
    closed = {s["session_id"] for s in [s for s in by_end if s["status"] == "closed"][:SESSIONS_KEPT]}
    kept_sessions = [s for s in by_end if s["status"] != "closed" or s["session_id"] in closed]
    return {"_id": user_id, "events": kept_events, "sessions": kept_sessions,
            **({} if user_rank is None else {"rank": user_rank})}


def ranker(rules: ProfileRules):
    """A profile row -> {score: its engagement score, segment: its last segment, fields: what
    /v1/users/segments shows}: the figures the store query writes to user_profiles
    (app/profiles/profile.py), for the leaderboard."""
    def rank(row) -> dict:
        update = json.loads(row.doc)
        doc = profile_document(update["user_id"], update["totals"], rules)
        fields = {n: doc[n] for n in leaderboard.FIELDS}
        # naive UTC, as the stored document gives it back: an unchanged profile leaves an equal rank
        fields["last_seen"] = fields["last_seen"].replace(tzinfo=None)
        return {"score": doc["engagement_score"], "segment": doc["last_segment"], "fields": fields}
    return rank
