"""user_activity (app/sinks/user_activity.py): a user's newest events and sessions in one document.

The document must be what the uncut collections show (enriched_events' newest events with their
corrections; user_behavior_segments' open sessions and newest closed ones), however the batches
are cut, and a replayed merge must change nothing. The sizes kept are made small here, so the
cuts happen on the generated traffic."""
from __future__ import annotations

import json
import random
import zlib
from datetime import datetime
from types import SimpleNamespace
from unittest import mock

import bson

from hypothesis import HealthCheck, given, note, settings as hsettings, strategies as st

from app import aggregates as A
from app.profiles.rules import DEFAULT_PROFILE_RULES, load_profile_rules
from app.sinks import leaderboard, open_sessions, packing, user_activity
from tests.unit.bson_store import BsonStore, Cut, CuttingStore
from tests.unit.spark_like import _NOW, _rows
from tests.unit.test_event_time import DAY, assert_same_outputs, ev, batch_cuts, in_batches, one_batch, traffic

EVENTS_KEPT, SESSIONS_KEPT = 12, 2
RANK = user_activity.ranker(load_profile_rules(DEFAULT_PROFILE_RULES))  # as traffic()'s settings


def expected(run) -> dict:
    """user -> (newest event ids with their session, open session ids, newest closed session ids), from
    the run's uncut store (its enriched events and session documents)."""
    events: dict = {}
    for event_id, (session_id, _, _) in run.store.events.items():
        events.setdefault(run.docs_user[event_id], []).append((run.event_ms[event_id], event_id, session_id))
    out: dict = {}
    for user, kept in events.items():
        newest = sorted(kept, reverse=True)[:EVENTS_KEPT]
        sessions = [d for d in run.store.sessions.values() if d["user_id"] == user]
        open_ids = sorted(d["_id"] for d in sessions if d["status"] == "active")
        closed = sorted(((d["session_end"], d["_id"]) for d in sessions if d["status"] == "closed"),
                        reverse=True)[:SESSIONS_KEPT]
        out[user] = ([(e, s) for _, e, s in newest], open_ids, [i for _, i in closed])
    return out


def shown(run) -> dict:
    return {user: ([(e["event_id"], e["session_id"]) for e in doc["events"]],
                   sorted(s["session_id"] for s in doc["sessions"] if s["status"] == "active"),
                   [s["session_id"] for s in doc["sessions"] if s["status"] == "closed"])
            for user, doc in run.store.activity.items()}


def _recorded(batches):
    """The run, and each state step's user_activity rows (user, rows) in the order it emitted them."""
    steps: list = []
    run = in_batches([])
    original = run._run

    def recording(user, step):
        steps.append((user, [r for r in _rows(step, run.docs, user) if r.kind in user_activity.KINDS]))
        original(user, step)

    run._run = recording
    return run.run(batches), steps


def _index(run, events) -> None:
    run.docs_user = {e.event_id: e.user_id for e in events}
    run.event_ms = {e.event_id: e.event_ms for e in events}


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_document_is_what_the_uncut_collections_show_however_the_batches_are_cut(data):
    events = data.draw(traffic(), label="events in arrival order")
    batches = data.draw(batch_cuts(events), label="batch sizes")
    note(f"{len(events)} events in {len(batches)} batches")
    with mock.patch.object(user_activity, "EVENTS_KEPT", EVENTS_KEPT), \
            mock.patch.object(user_activity, "SESSIONS_KEPT", SESSIONS_KEPT):
        reference, run = one_batch(events), in_batches(batches)
        assert_same_outputs(reference, run)  # user_activity and live_feed's open sessions among them
        for driver in (reference, run):
            assert open_buckets(driver) == expected_open_buckets(driver)  # sessions still open
            assert ranked(driver) == expected_ranks(driver)
            driver.advance(max(e.event_ms for e in events) + 2 * DAY)
            _index(driver, events)
            assert shown(driver) == expected(driver)
            assert open_buckets(driver) == expected_open_buckets(driver) == {}
        assert_same_outputs(reference, run)


def expected_ranks(run) -> list:
    """The users with a profile, the most engaged first, then by id: the user_profiles query's order."""
    rank = user_activity.ranker(load_profile_rules(DEFAULT_PROFILE_RULES))
    scores = {u: rank(SimpleNamespace(doc=json.dumps(p)))["score"] for u, p in run.store.profiles.items()}
    return sorted(scores, key=lambda u: (-scores[u], u))


def ranked(run) -> list:
    """The leaderboard's answer over every user (live_feed's rank pages)."""
    return [u for u, _ in leaderboard.top(SimpleNamespace(find_one=lambda q: run.store.open_feed.get(q["_id"])),
                                          0, None, 10 ** 6)]


def expected_open_buckets(run) -> dict:
    """(priority, minute) -> the open session ids, from the run's uncut session documents."""
    out: dict = {}
    for doc in run.store.sessions.values():
        if doc["status"] == "active":
            end = A.to_datetime(doc["session_end"]) if isinstance(doc["session_end"], int) else doc["session_end"]
            key = (open_sessions.priority_of(doc), end.replace(second=0, microsecond=0))
            out.setdefault(key, set()).add(doc["_id"])
    return out


def open_buckets(run) -> dict:
    unpacked = {_id: packing.unpacked(d, open_sessions.PACKED) for _id, d in run.store.open_feed.items()
                if json.loads(_id)[0] == "open"}
    index = unpacked.get(open_sessions.INDEX_ID, {"buckets": []})
    buckets = {_id: d for _id, d in unpacked.items() if _id != open_sessions.INDEX_ID}
    assert [(b["priority"], b["slot"], b["newest"], b["pages"]) for b in index["buckets"]] == sorted(
        (d["priority"], d["slot"], d["members"][0]["session_end"], 1) for d in buckets.values())
    for d in buckets.values():  # newest first; each member where its session's latest version is
        assert d["members"] == sorted(d["members"], key=lambda m: (m["session_end"], m["session_id"]), reverse=True)
        assert all(m["session_end"].replace(second=0, microsecond=0) == d["slot"] for m in d["members"])
    return {(d["priority"], d["slot"]): {m["session_id"] for m in d["members"]} for d in buckets.values()}


@hsettings(max_examples=60, deadline=None)
@given(data=st.data())
def test_merging_a_batch_again_changes_nothing(data):
    """A replayed store batch merges the same rows again, after later ones too (exactly_once.py 13)."""
    events = data.draw(traffic(), label="events in arrival order")
    batches = data.draw(batch_cuts(events), label="batch sizes")
    with mock.patch.object(user_activity, "EVENTS_KEPT", EVENTS_KEPT), \
            mock.patch.object(user_activity, "SESSIONS_KEPT", SESSIONS_KEPT):
        run, steps = _recorded(batches)
        final = dict(run.store.activity)
        replay_from = data.draw(st.integers(0, max(len(steps) - 1, 0)), label="replayed from step")
        docs: dict = {}
        for user, rows in steps + steps[replay_from:]:
            if rows:
                docs[user] = user_activity.merge(docs.get(user), user, rows, _NOW, RANK)
        assert docs == final


def test_a_merge_keeps_active_sessions_and_the_newest_closed_and_reads_stored_naive_dates():
    """Stored dates come back naive from pymongo: they compare with the new rows' aware ones."""
    def session(sid, end_min, status):
        return {"session_id": sid, "status": status, "session_start": datetime(2024, 5, 1, 12, 0),
                "session_end": datetime(2024, 5, 1, 12, end_min), "behavior_segment": "browser"}
    stored = {"_id": "u", "events": [{"event_id": "e1", "event_timestamp": datetime(2024, 5, 1, 12, 0)}],
              "sessions": [session("a", 1, "closed"), session("b", 2, "closed"), session("c", 3, "active"),
                           session("d", 4, "closed")]}
    with mock.patch.object(user_activity, "SESSIONS_KEPT", 2):
        doc = user_activity.merge(stored, "u", [], _NOW)
    assert [s["session_id"] for s in doc["sessions"]] == ["d", "c", "b"]
    assert doc["events"] == stored["events"]


def test_an_events_corrected_session_reaches_the_document():
    """An earlier event arriving later moves a derived session's id: the stored event is corrected."""
    events = [ev(60_000, "e1"), ev(0, "e0")]
    run = in_batches([[events[0]], [events[1]]])
    run.advance(max(e.event_ms for e in events) + 2 * DAY)
    _index(run, events)
    first_id = f"u1-{events[0].event_ms}"
    assert run.store.events["e1"][0] != first_id  # the correction happened
    assert shown(run) == expected(run)
    assert {e["event_id"]: e["session_id"] for e in run.store.activity["u1"]["events"]}["e1"] == run.store.events["e1"][0]


def _messages(steps, partitions: int = 3) -> list[user_activity.Row]:
    """The rows in the order the sessions batches sent them, each in the partition of its key (the
    document's _id), at the next offset there."""
    offsets = [0] * partitions
    out = []
    for user, rows in steps:
        for r in rows:
            p = zlib.crc32(r.id.encode()) % partitions
            out.append(user_activity.Row(r.kind, r.id, r.doc, r.session_id, r.seconds_since_prev, r.is_late,
                                         r.status, r.first_write, user, p, offsets[p]))
            offsets[p] += 1
    return out


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_activity_batches_cut_anywhere_in_each_partition_and_replayed_give_the_same_documents(data):
    """The activity query's batches end at any offset of each partition (its own trigger, not the
    sessions batches'), a batch may be applied twice (a replay), and documents go through BSON
    (naive dates back from the store): the documents are those of the per-step merge."""
    events = data.draw(traffic(), label="events in arrival order")
    batches = data.draw(batch_cuts(events), label="batch sizes")
    with mock.patch.object(user_activity, "EVENTS_KEPT", EVENTS_KEPT), \
            mock.patch.object(user_activity, "SESSIONS_KEPT", SESSIONS_KEPT):
        run, steps = _recorded(batches)
        messages = _messages(steps)
        by_partition = {p: [m for m in messages if m.kafka_partition == p] for p in range(3)}
        cuts = {p: sorted(data.draw(st.lists(st.integers(0, len(ms)), max_size=4), label=f"cuts of {p}")) + [len(ms)]
                for p, ms in by_partition.items()}
        rounds = max(len(c) for c in cuts.values())
        stored: dict = {}

        def read(user_id):
            return bson.decode(stored[user_id]) if user_id in stored else None

        def write(docs):
            stored.update({d["_id"]: bson.encode(d) for d in docs})

        start = {p: 0 for p in by_partition}
        for k in range(rounds):
            batch = []
            for p, ms in by_partition.items():
                end = cuts[p][k] if k < len(cuts[p]) else len(ms)
                batch += ms[start[p]:end]
                start[p] = end
            random.Random(k).shuffle(batch)  # collect() gives no order: apply_rows sorts
            for _ in range(1 + data.draw(st.integers(0, 1), label=f"batch {k} replayed")):
                user_activity.apply_rows(batch, read, write, _NOW, rank=RANK)
        assert {u: bson.decode(d) for u, d in stored.items()} == \
            {u: bson.decode(bson.encode(d)) for u, d in run.store.activity.items()}


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_activity_batch_cut_short_anywhere_and_replayed_leaves_the_same_documents(data):
    """The merger dies in any write of a batch (user documents, open-session buckets, live_feed),
    after any part of it; the batch is replayed onto what was stored: the user documents, the
    open-session buckets and the rank pages are those of the run without the crash (exactly_once.py 13, 14)."""
    events = data.draw(traffic(), label="events in arrival order")
    batches = data.draw(batch_cuts(events), label="batch sizes")
    with mock.patch.object(user_activity, "EVENTS_KEPT", EVENTS_KEPT), \
            mock.patch.object(user_activity, "SESSIONS_KEPT", SESSIONS_KEPT), \
            mock.patch.object(user_activity, "WRITE_CHUNK", 1), mock.patch.object(user_activity, "FLUSH_USERS", 2):
        run, steps = _recorded(batches)
        messages = _messages(steps)
        size = data.draw(st.integers(1, max(len(messages), 1)), label="activity batch size")
        activity_batches = [messages[i:i + size] for i in range(0, len(messages), size)]
        users, feeds = CuttingStore(), CuttingStore()
        crashed = data.draw(st.integers(0, len(activity_batches) - 1), label="batch cut short")
        for k, batch in enumerate(activity_batches):
            if k == crashed:
                victim = data.draw(st.sampled_from([users, feeds]), label="collection")
                victim.calls = 0
                victim.crash_at = (data.draw(st.integers(1, 8), label="write call"),
                                   data.draw(st.integers(0, 12), label="documents applied"))
                try:
                    user_activity.merge_batch(batch, user_activity.Packed(users), feeds, _NOW, RANK)
                except Cut:
                    note(f"cut short in batch {k}")
                victim.crash_at = None
            user_activity.merge_batch(batch, user_activity.Packed(users), feeds, _NOW, RANK)  # (again: the replay)
        # stored packed (user_activity.pack), each item's text the same as the uncut run's
        assert users.decoded() == {u: bson.decode(bson.encode(user_activity.pack(d))) for u, d in run.store.activity.items()}
        assert feeds.decoded() == {k: bson.decode(bson.encode(d)) for k, d in run.store.open_feed.items()}


def test_a_document_is_stored_packed_and_read_back_as_merged_and_one_stored_nested_reads_the_same():
    """user_activity.pack / unpack: each event and session one JSON string (FerretDB's cost is per
    value), read back with aware UTC dates; a document an earlier version stored nested (BSON's
    naive dates) reads as the same document."""
    when = datetime(2026, 3, 1, 12, 30, 15, 123000)
    doc = {"_id": "u", "rank": {"score": 40, "segment": "browser", "fields": {}},
           "events": [{"event_id": "e1", "event_type": "cart", "event_timestamp": when, "session_id": "s",
                       "price": 12.5, "brand": None, "is_late": False}],
           "sessions": [{"session_id": "s", "status": "active", "session_start": when, "session_end": when,
                         "event_path": ["view", "cart"], "experiments": {"x": "b"}, "total_amount": 0.1 + 0.2}]}
    store = BsonStore()
    user_activity.Packed(store).write([doc])
    stored = store.read("u")
    assert all(isinstance(item, str) for item in stored["events"] + stored["sessions"])
    assert stored["rank"] == doc["rank"]
    aware = A.utc(when)
    back = user_activity.Packed(store).read("u")
    assert back["events"][0] == {**doc["events"][0], "event_timestamp": aware}
    assert back["sessions"][0] == {**doc["sessions"][0], "session_start": aware, "session_end": aware}
    store.write([doc])  # as an earlier version stored it
    nested = user_activity.Packed(store).read("u")
    assert [A.utc(e["event_timestamp"]) for e in nested["events"]] == [aware]
    assert user_activity.pack(nested) == user_activity.pack(back) == stored
    assert user_activity.Packed(store).read("nobody") is None


def test_the_mergers_writes_and_deletes_are_ordered():
    """open_sessions relies on a write or delete cut short leaving a prefix of it applied (a
    bucket's pages in their write order, surplus pages last first): the bulk writes are ordered."""
    from app.sinks.user_activity import _Documents

    class Coll:
        def __init__(self):
            self.ordered = []

        def bulk_write(self, requests, ordered):
            self.ordered.append(ordered)

    class Store:
        def __init__(self):
            self.coll = Coll()

        def db(self):
            return {"live_feed": self.coll}

        def retrying(self, what, fn):
            return fn()

    store = Store()
    docs = _Documents(store, "live_feed", 1 << 20)
    docs.write([{"_id": "a"}, {"_id": "b"}])
    docs.delete(["b", "a"])
    assert store.coll.ordered == [True, True]
