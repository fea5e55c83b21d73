"""open_sessions (app/sinks/open_sessions.py): /v1/act-now's answer from the open-session buckets.

Whatever open sessions there are, and however they got there (moves, closes, a change of a
session's fields alone), the buckets give what the collection's query gives over all open
sessions: those within `hours` of the newest one's end, the most urgent priority first, then the
newest (ties by id), each with its latest fields; however many pages a bucket takes, and however
a batch's writes are cut short and replayed."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from app.api import queries
from app.sinks import collections as C, open_sessions
from app.sinks.user_activity import STATUS_ID
from tests.unit.bson_store import BsonStore, Cut, CuttingStore

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _user_doc(user: str, sessions: dict) -> dict:
    return {"_id": user, "sessions": [{"session_id": sid, "status": "active", "action_priority": p,
                                       "session_end": T0 + timedelta(seconds=end), "total_events": n,
                                       "recommendations": ["Offer free shipping"] * (n % 3)}
                                      for sid, (p, end, n) in sessions.items()]}


# (action_priority, session_end in seconds, total_events): a step may change the events alone;
# ends often in the same minute, so a bucket takes several sessions (and pages)
session_state = st.tuples(st.sampled_from([None, 0, 1, 2]), st.one_of(st.sampled_from([0, 10, 50, 70]),
                                                                    st.integers(0, 3 * 3600)), st.integers(1, 3))


@hsettings(max_examples=1000, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]),
                                st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), session_state, max_size=4),
                                st.one_of(st.none(), st.tuples(st.integers(1, 6), st.integers(0, 2)))),
                      min_size=1, max_size=12),
       hours=st.sampled_from([0.01, 0.5, 1.0, 2.0]), limit=st.integers(1, 8), page=st.sampled_from([1, 2, 1000]),
       head=st.sampled_from([(1, 1), (3, 2), (100, 2), (100, 20)]))
def test_act_now_from_the_buckets_is_the_query_over_all_open_sessions(steps, hours, limit, page, head):
    """From the heads (limit <= HEAD; head: (HEAD, HEAD_PAGE)), and from the index and buckets
    alone (a larger limit, or the heads' summary gone, as an earlier version left the store)."""
    with mock.patch.object(open_sessions, "PAGE", page), mock.patch.object(open_sessions, "HEAD", head[0]), \
            mock.patch.object(open_sessions, "HEAD_PAGE", head[1]):
        store = _stored(steps)
        _check_act_now(store, steps, hours, limit, page)
        store.delete([open_sessions.HEADS_ID])
        _check_act_now(store, steps, hours, limit, page)


def _stored(steps):
    store, docs = CuttingStore(), {}
    for user, sessions, crash_at in steps:  # each step: the user's open sessions now (moved, new, closed)
        after = _user_doc(user, {f"{user}-{sid}": s for sid, s in sessions.items()})
        # the step's write call crash_at[0] applies crash_at[1] documents and stops; then it is replayed whole
        store.calls, store.crash_at = 0, crash_at
        try:
            _move(store, docs.get(user), after)
        except Cut:
            store.crash_at = None
            _move(store, docs.get(user), after)
        store.crash_at = None
        docs[user] = after
    return store


def _check_act_now(store, steps, hours, limit, page):
    docs = {user: _user_doc(user, {f"{user}-{sid}": s for sid, s in sessions.items()}) for user, sessions, _ in steps}
    everything = [(open_sessions.priority_of(s), s["session_end"], s["session_id"])
                  for d in docs.values() for s in d["sessions"]]
    since, members = open_sessions.act_now(store, hours, limit)
    ids = [m["session_id"] for m in members]
    if not everything:
        assert (since, ids) == (None, []) and not store.docs
        return
    latest = {s["session_id"]: {**s, "user_id": d["_id"]} for d in docs.values() for s in d["sessions"]}
    assert members == [latest[i] for i in ids]  # each with its latest fields, as its user's document has it
    pages = {_id: len(d["members"]) for _id, d in store.decoded().items() if _id.startswith('["open",')}
    assert pages and max(pages.values()) <= page
    heads = {_id: len(d["members"]) for _id, d in store.decoded().items() if _id.startswith('["open-head",')}
    assert max(heads.values(), default=0) <= open_sessions.HEAD_PAGE
    want_since = max(end for _, end, _ in everything) - timedelta(hours=hours)
    want = sorted((e for e in everything if e[1] >= want_since), key=lambda e: (e[0], -e[1].timestamp(), e[2]))
    assert since == want_since
    # ties in (priority, end) may come in either id order: compare what is ranked, then the ids
    got = {sid: (p, end) for p, end, sid in everything}
    assert [(got[i][0], got[i][1]) for i in ids] == [(p, end) for p, end, _ in want[:limit]]
    assert set(ids) <= {sid for _, _, sid in want}


def _move(store, before, after) -> None:
    changes = open_sessions.Changes()
    changes.user(before, after)
    changes.apply(store.read, store.write, store.delete)


def test_a_bucket_grown_a_page_and_cut_short_before_its_index_is_mended_by_the_replay():
    """The pages are written, the batch stops before the index: the replay reads the bucket's
    pages until one is missing, not by the index, so the session pushed to the new page stays."""
    with mock.patch.object(open_sessions, "PAGE", 1):
        store = CuttingStore()
        first = _user_doc("u1", {"a": (1, 10, 1)})
        _move(store, None, first)
        second = _user_doc("u1", {"a": (1, 10, 1), "b": (1, 50, 1)})  # b is newer: a moves to page 1
        store.calls, store.crash_at = 0, (2, 0)  # the pages are written; the index's write fails
        with pytest.raises(Cut):
            _move(store, first, second)
        store.crash_at = None
        _move(store, first, second)  # the batch replayed
        assert [m["session_id"] for m in open_sessions.act_now(store, 1.0, 10)[1]] == ["b", "a"]


@pytest.mark.parametrize("before, after", [
    ({"a": (1, 10, 1)}, {"a": (1, 10, 1), "b": (1, 50, 1)}),  # b is newer: a shifts to page 1
    ({"a": (1, 10, 1), "b": (1, 50, 1), "c": (1, 5, 1)}, {"a": (1, 10, 1), "c": (1, 5, 1)}),  # a, c shift back
    ({"a": (1, 10, 1), "c": (1, 5, 1)}, {"a": (1, 10, 1), "b": (1, 50, 1), "d": (1, 55, 1), "c": (1, 5, 1)}),
])
@pytest.mark.parametrize("cut_after", [0, 1, 2, 3])
def test_a_bucket_write_cut_short_after_any_page_loses_no_session_the_batch_kept(before, after, cut_after):
    """Sessions the batch did not move shift between pages when others come or go: whichever
    page the write stops after, each kept session is on a page still (written on its new page
    before its old one is overwritten), and the replay gives the bucket whole."""
    with mock.patch.object(open_sessions, "PAGE", 1):
        store = CuttingStore()
        first, second = _user_doc("u1", before), _user_doc("u1", after)
        _move(store, None, first)
        store.calls, store.crash_at = 0, (1, cut_after)  # the pages' write applies cut_after pages
        try:
            _move(store, first, second)
        except Cut:
            pass
        store.crash_at = None
        kept = set(before) & set(after)
        on_pages = {open_sessions.unpack_item(m)["session_id"] for _id, d in store.decoded().items()
                    if _id.startswith('["open",') for m in d["members"]}
        assert kept <= on_pages
        _move(store, first, second)  # the batch replayed
        assert {m["session_id"] for m in open_sessions.act_now(store, 1.0, 10)[1]} == set(after)


def test_buckets_stored_before_members_carried_their_sessions_still_answer():
    """A bucket and index an earlier version stored (nested; members of session_id, session_end
    and user_id only): /v1/act-now reads those sessions by _id, leaving out one closed meanwhile;
    the next move into the bucket keeps them and writes it packed."""
    feed, segments = BsonStore(), BsonStore()
    slot = T0.replace(second=0)
    old = [{"session_id": sid, "session_end": T0 + timedelta(seconds=s), "user_id": "u9"} for sid, s in (("y", 40), ("x", 20))]
    other = [{"session_id": "z", "session_end": T0, "user_id": "u8"}]  # of a priority the next move leaves alone
    feed.write([{"_id": open_sessions.bucket_id(1, slot), "priority": 1, "slot": slot, "members": old},
                {"_id": open_sessions.bucket_id(2, slot), "priority": 2, "slot": slot, "members": other},
                {"_id": open_sessions.INDEX_ID, "buckets": [{"priority": 1, "slot": slot, "newest": old[0]["session_end"]},
                                                            {"priority": 2, "slot": slot, "newest": T0}]}])
    segments.write([{"_id": "x", "status": "active", "user_id": "u9", "session_end": old[1]["session_end"],
                     "behavior_segment": "browser", "processing_time": T0},
                    {"_id": "y", "status": "closed", "user_id": "u9", "session_end": old[0]["session_end"]},
                    {"_id": "z", "status": "active", "user_id": "u8", "session_end": T0, "behavior_segment": "bouncer"}])
    progress = BsonStore()
    progress.write([{"_id": STATUS_ID, "feed_complete": True}])
    db = {C.LIVE_FEED: feed, C.SEGMENTS: _Projecting(segments), C.PROGRESS: progress}
    body = queries.act_now(db, 1.0, 10)
    assert [(s["session_id"], s["behavior_segment"], s["user_id"]) for s in body["sessions"]] == [
        ("x", "browser", "u9"), ("z", "bouncer", "u8")]
    assert "processing_time" not in body["sessions"][0]  # what the members carry: no wall-clock field
    _move(feed, None, _user_doc("u1", {"a": (1, 30, 2)}))
    # the first move writes every priority's head (no summary yet), the one it left alone too
    assert feed.read(open_sessions.HEADS_ID) is not None
    assert [m["session_id"] for m in open_sessions.act_now(feed, 1.0, 10)[1]] == ["y", "a", "x", "z"]
    assert all(isinstance(m, str) for m in feed.decoded()[open_sessions.bucket_id(1, slot)]["members"])


class _Projecting:
    """A BsonStore read as a collection with a projection (find_one(query, projection))."""

    def __init__(self, store):
        self.store = store

    def find_one(self, query, projection=None):
        doc = self.store.find_one(query)
        return doc and {k: v for k, v in doc.items() if k == "_id" or projection is None or k in projection}


def test_a_head_that_shrinks_with_its_surplus_delete_cut_short_leaves_no_page_behind():
    """The summary is written with the head's new count, then its surplus pages are deleted; that
    delete cut short and replayed still deletes them (not by the count already stored)."""
    with mock.patch.object(open_sessions, "HEAD", 3), mock.patch.object(open_sessions, "HEAD_PAGE", 1):
        store = CuttingStore()
        first = _user_doc("u1", {"a": (1, 10, 1), "b": (1, 20, 1), "c": (1, 30, 1)})
        second = _user_doc("u1", {"a": (1, 10, 1)})
        _move(store, None, first)
        store.calls, store.crash_at = 0, (5, 0)  # pages, index, heads, summary, then the head's surplus: cut
        with pytest.raises(Cut):
            _move(store, first, second)
        store.crash_at = None
        _move(store, first, second)  # the replay
        _move(store, second, _user_doc("u1", {}))  # everything closes
        assert not store.docs


def test_the_heads_window_is_as_exact_as_the_buckets():
    """`hours` of any float: a session that ended within the millisecond before `since` is out of
    the window from the heads as from the buckets."""
    store = BsonStore()
    _move(store, None, _user_doc("u1", {"new": (1, 10, 1), "old": (1, 9, 1), "edge": (1, 10 - 444.445, 1)}))
    hours = 0.123456789  # 444.44444 s: `since` falls 0.56 ms after "edge" ended, in the same millisecond
    from_heads = open_sessions.act_now(store, hours, 10)
    from_buckets = open_sessions.act_now(store, hours, open_sessions.HEAD + 1)
    assert [m["session_id"] for m in from_heads[1]] == [m["session_id"] for m in from_buckets[1]] == ["new", "old"]
