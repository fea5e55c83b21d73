"""live_feed (app/sinks/live_feed.py): each hour's newest alerts and trigger executions, read by _id.

The buckets must not depend on how the rows were cut into batches, replayed or redelivered, and
a read must answer what the collection's indexed query answers (the newest `limit` matches),
or say it cannot. KEPT is made small here, so the hours overflow on the generated rows."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from unittest import mock

import bson
from hypothesis import given, note, settings as hsettings, strategies as st

from app import aggregates as A
from app.sinks import live_feed
from app.sinks.packing import unpacked
from tests.unit.bson_store import BsonStore

KEPT, HEAD = 3, 2
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
_NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
MINUTE_MS = 60_000


def _alert(i: int, minute: int, alert_type: str, severity: str, user: str):
    ms = int(T0.timestamp() * 1000) + minute * MINUTE_MS
    return SimpleNamespace(kind="alert", doc=json.dumps({
        "alert_id": f"a{i}", "alert_type": alert_type, "severity": severity, "user_id": user, "session_id": f"{user}-s",
        "first_event_ms": ms, "event_ms": ms + 1000, "evidence": {"n": i}, "rule_version": "v1"}))


def _action(i: int, minute: int, trigger: str, user: str):
    ms = int(T0.timestamp() * 1000) + minute * MINUTE_MS
    return SimpleNamespace(kind="action", doc=json.dumps({
        "execution_id": f"x{i}", "trigger": trigger, "user_id": user, "session_id": f"{user}-s", "event_ms": ms,
        "action": "email", "variant": None}))


@st.composite
def feed_rows(draw, minutes: int = 200):
    """Alerts and actions over a few hours (ties in time included), some redelivered."""
    n = draw(st.integers(1, 40))
    rows = []
    for i in range(n):
        minute = draw(st.integers(0, minutes))
        user = draw(st.sampled_from(["u1", "u2", "u3"]))
        if draw(st.booleans()):
            rows.append(_alert(i, minute, draw(st.sampled_from(["BOT", "FRAUD"])),
                               draw(st.sampled_from(["low", "high"])), user))
        else:
            rows.append(_action(i, minute, draw(st.sampled_from(["cart", "win"])), user))
    redelivered = draw(st.lists(st.sampled_from(rows), max_size=10))
    order = draw(st.permutations(rows + redelivered))
    return rows, order


def _applied(batches, clock: bool = False) -> BsonStore:
    """The batches applied in order; with `clock`, batch i runs at _NOW + i seconds."""
    store = BsonStore()
    for i, rows in enumerate(batches):
        live_feed.apply_rows(rows, store.read, store.write, _NOW + timedelta(seconds=i if clock else 0))
    return store


def _without_wall_clock(store: BsonStore) -> dict:
    docs = {_id: unpacked(doc, live_feed.ITEMS) for _id, doc in store.decoded().items()}
    for doc in docs.values():
        for item in doc.get("items", []):
            item.pop("detected_at", None), item.pop("executed_at", None)
    return docs


def _cuts(data, rows) -> list[list]:
    batches, i = [], 0
    while i < len(rows):
        size = data.draw(st.integers(1, 8), label="batch size")
        batches.append(rows[i:i + size])
        i += size
    return batches


def _reference(rows, feed, filters, start, end, limit) -> list[str]:
    """What the collection's query answers: distinct items, matching, newest `limit` by time (then id)."""
    items = {}
    for row in rows:
        if row.kind == feed.kind:
            item = live_feed.item_of(row.kind, row, _NOW)
            items.setdefault(item[feed.id], item)
    matching = [i for i in items.values()
                if all(v is None or i[n] == v for n, v in filters.items())
                and (start is None or i[feed.time] >= start) and (end is None or i[feed.time] < end)]
    matching.sort(key=lambda i: (i[feed.time], i[feed.id]), reverse=True)
    return [i[feed.id] for i in matching[:limit]]


@hsettings(max_examples=200, deadline=None)
@given(data=st.data(), drawn=feed_rows())
def test_the_buckets_are_the_same_however_the_rows_are_cut_replayed_or_redelivered(data, drawn):
    rows, arrival = drawn
    with mock.patch.object(live_feed, "KEPT", KEPT), mock.patch.object(live_feed, "HEAD", HEAD):
        whole = _applied([rows])
        batches = _cuts(data, arrival)
        replayed = data.draw(st.lists(st.integers(0, len(batches) - 1), max_size=3), label="replayed batches")
        for b in replayed:  # a batch applied again right after itself, as a replay does
            batches.insert(b + 1, batches[b])
        note(f"{len(rows)} rows, {len(batches)} batches")
        cut = _applied(batches, clock=True)
        assert _without_wall_clock(cut) == _without_wall_clock(whole)
        first_seen = {}  # id -> the clock of the first batch that carried it: its copy stays
        for i, batch in enumerate(batches):
            for row in batch:
                first_seen.setdefault(json.loads(row.doc).get("alert_id") or json.loads(row.doc)["execution_id"],
                                      A.utc(_NOW + timedelta(seconds=i)))
        for data_ in cut.docs.values():
            for item in unpacked(bson.decode(data_), live_feed.ITEMS).get("items", []):
                assert item.get("detected_at", item.get("executed_at")) == \
                    first_seen[item.get("alert_id") or item["execution_id"]]


@hsettings(max_examples=300, deadline=None)
@given(data=st.data(), drawn=feed_rows())
def test_a_read_answers_what_the_collection_answers_or_says_it_cannot(data, drawn):
    rows, arrival = drawn
    with mock.patch.object(live_feed, "KEPT", KEPT), mock.patch.object(live_feed, "HEAD", HEAD):
        store = _applied(_cuts(data, arrival))
        feed = data.draw(st.sampled_from([live_feed.ALERTS, live_feed.EXECUTIONS]), label="feed")
        names = ("user_id", "alert_type", "severity") if feed is live_feed.ALERTS else ("user_id", "trigger")
        values = {"user_id": ["u1", "u2"], "alert_type": ["BOT", "FRAUD"], "severity": ["low", "high"],
                  "trigger": ["cart", "win"]}
        filters = {n: data.draw(st.sampled_from([None, *values[n]]), label=n) for n in names}
        start, end = (data.draw(st.one_of(st.none(), st.integers(0, 200).map(
            lambda m: T0 + timedelta(minutes=m))), label=label) for label in ("start", "end"))
        limit = data.draw(st.integers(1, KEPT), label="limit")
        got = live_feed.read(store, feed, filters, start, end, limit)
        want = _reference(rows, feed, filters, start, end, limit)
        if got is not None:
            assert [i[feed.id] for i in got] == want
        else:  # only where the walk ran out of an overflowed hour of its key
            names = next(n for n in feed.keys if set(n) <= {k for k, v in filters.items() if v is not None})
            key = [[n, filters[n]] for n in names]
            overflowed = [h for h in (store.read(live_feed.index_id(feed, key)) or {}).get("hours", [])
                          if store.read(live_feed.bucket_id(feed, key, h))["truncated"]]
            assert overflowed, "no overflowed hour, yet the read gave up"
            assert any(v is not None for v in filters.values()) or start is not None or end is not None


def test_a_bucket_holds_as_many_items_as_the_api_may_ask_for():
    from app.api.settings import MAX_LIMIT
    assert live_feed.KEPT >= MAX_LIMIT


def test_an_item_is_its_collection_document_and_a_bucket_reads_back_as_stored():
    """The read gives what the collection holds (the same document function wrote it), and an
    hour's overflow is recorded."""
    rows = [_alert(i, 5, "BOT", "high", "u1") for i in range(KEPT + 2)]
    with mock.patch.object(live_feed, "KEPT", KEPT), mock.patch.object(live_feed, "HEAD", HEAD):
        store = _applied([rows])
        got = live_feed.read(store, live_feed.ALERTS, {"alert_type": "BOT"}, None, None, KEPT)
        bucket = store.read(live_feed.bucket_id(live_feed.ALERTS, [["alert_type", "BOT"]], T0))
    assert [i["alert_id"] for i in got] == ["a4", "a3", "a2"]
    assert bucket["truncated"] is True
    assert got[0]["evidence"] == {"n": 4} and got[0]["detected_at"] == A.utc(_NOW)
    assert got[0]["first_event_time"] == A.utc(T0 + timedelta(minutes=5)) and "_id" not in got[0]


@hsettings(max_examples=400, deadline=None)
@given(data=st.data(), drawn=feed_rows(minutes=50))
def test_a_read_between_a_head_and_its_bucket_rewritten_repeats_nothing(data, drawn):
    """The activity query may rewrite a head and its bucket between the API's two reads, and a
    head may be missing (a batch cut short): past the head the read goes on by (time, id), so no
    item comes twice and the order stays newest first."""
    rows, arrival = drawn
    with mock.patch.object(live_feed, "KEPT", KEPT), mock.patch.object(live_feed, "HEAD", HEAD):
        cut = data.draw(st.integers(0, len(arrival)), label="rows before the rewrite")
        before, after = _applied([arrival[:cut]]), _applied([arrival])
        mixed = BsonStore()  # heads of one moment, buckets of the other, some heads missing
        newer_heads = data.draw(st.booleans(), label="heads newer than buckets")
        for _id in set(before.docs) | set(after.docs):
            is_head = json.loads(_id)[-1] == "head"
            source = (after if newer_heads else before) if is_head else (before if newer_heads else after)
            if _id in source.docs and not (is_head and data.draw(st.booleans(), label="head missing")):
                mixed.docs[_id] = source.docs[_id]
        feed = data.draw(st.sampled_from([live_feed.ALERTS, live_feed.EXECUTIONS]), label="feed")
        got = live_feed.read(mixed, feed, {}, None, None, KEPT)
    if got is not None:
        ids = [i[feed.id] for i in got]
        assert len(ids) == len(set(ids)), f"an item twice: {ids}"
        order = [(i[feed.time], i[feed.id]) for i in got]
        assert order == sorted(order, reverse=True)


# --- events (/v1/activity without user_id) --------------------------------------------------

EVENTS_KEPT = 2  # <= HEAD: an event bucket has no head, as in the job


def _event(i: int, minute: int, event_type: str, country: str | None, session: str):
    ms = int(T0.timestamp() * 1000) + minute * MINUTE_MS
    doc = {"event_id": f"e{i}", "event_ms": ms, "event_type": event_type, "user_id": f"u{i % 3}",
           "product_id": f"p{i}", "price": 1.5, "kafka_timestamp_ms": ms, "kafka_partition": 0, "kafka_offset": i}
    if country is not None:
        doc["country"] = country
    return SimpleNamespace(kind="event", id=f"e{i}", doc=json.dumps(doc), session_id=session,
                           seconds_since_prev=None, is_late=False)


def _fix(event, session: str):
    doc = json.loads(event.doc)
    return SimpleNamespace(kind="event_fix", id=event.id, session_id=session, seconds_since_prev=2.0, is_late=False,
                           doc=json.dumps({"user_id": doc["user_id"], "event_ms": doc["event_ms"],
                                           "event_type": doc["event_type"], "country": doc.get("country")}))


@st.composite
def event_messages(draw, minutes: int = 200):
    """Events over a few hours (ties in time included), each followed by 0-2 corrections of its
    session, the events' messages interleaved as partitions interleave them (an event's own stay
    in order: they share a key)."""
    n = draw(st.integers(1, 30))
    streams = []
    for i in range(n):
        event = _event(i, draw(st.integers(0, minutes)), draw(st.sampled_from(["view", "cart"])),
                       draw(st.sampled_from(["DE", "FR", None])), f"s{i}")
        streams.append([event] + [_fix(event, f"s{i}-{k}") for k in range(draw(st.integers(0, 2)))])
    messages = []
    while any(streams):
        stream = draw(st.sampled_from([s for s in streams if s]))
        messages.append(stream.pop(0))
    return messages


def _replayed(data, messages) -> list[list]:
    """The messages cut into batches, some batches applied twice in a row (a replay)."""
    batches = _cuts(data, messages)
    for b in data.draw(st.lists(st.integers(0, len(batches) - 1), max_size=3), label="replayed batches"):
        batches.insert(b + 1, batches[b])
    return batches


def _final_events(messages) -> dict:
    """What enriched_events holds after the messages: each event once, with its last session."""
    events = {}
    for m in messages:
        if m.kind == "event":
            events.setdefault(m.id, live_feed.item_of("event", m, _NOW))
        elif m.id in events:
            events[m.id] = {**events[m.id], "session_id": m.session_id}
    return events


def _patched():
    return mock.patch.multiple(live_feed, KEPT=KEPT, HEAD=HEAD, EVENTS_KEPT=EVENTS_KEPT)


@hsettings(max_examples=300, deadline=None)
@given(data=st.data(), messages=event_messages())
def test_event_buckets_are_the_same_however_the_messages_are_cut_or_replayed(data, messages):
    with _patched():
        whole = _applied([messages])
        batches = _replayed(data, messages)
        note(f"{len(messages)} messages, {len(batches)} batches")
        assert _applied(batches).decoded() == whole.decoded()
        assert not any(json.loads(_id)[-1] == "head" for _id in whole.docs), "an event bucket needs no head"


@hsettings(max_examples=400, deadline=None)
@given(data=st.data(), messages=event_messages())
def test_an_event_read_answers_what_the_collection_answers_or_a_prefix_of_it_marked_incomplete(data, messages):
    """The newest `limit` matches, with their latest sessions; where an hour kept fewer than the
    read needs, the newest ones down to there, and `complete` false."""
    with _patched():
        store = _applied(_replayed(data, messages))
        filters = {"event_type": data.draw(st.sampled_from([None, "view", "cart"]), label="event_type"),
                   "country": data.draw(st.sampled_from([None, "DE", "FR"]), label="country")}
        start, end = (data.draw(st.one_of(st.none(), st.integers(0, 200).map(
            lambda m: T0 + timedelta(minutes=m))), label=label) for label in ("start", "end"))
        limit = data.draw(st.integers(1, 6), label="limit")
        got, complete = live_feed.walk(store, live_feed.EVENTS, filters, start, end, limit)
    events = _final_events(messages)
    matching = sorted((e for e in events.values()
                       if all(v is None or e.get(n) == v for n, v in filters.items())
                       and (start is None or e["event_timestamp"] >= start)
                       and (end is None or e["event_timestamp"] < end)),
                      key=lambda e: (e["event_timestamp"], e["event_id"]), reverse=True)[:limit]
    want = [(e["event_id"], e["session_id"]) for e in matching]
    shown = [(e["event_id"], e["session_id"]) for e in got]
    if complete:
        assert shown == want
    else:
        assert len(shown) < limit and shown == want[:len(shown)], (shown, want)
    # (a packed item's dates read back aware, as the API's tz-aware client gives them)
    aware = [{**e, "event_timestamp": A.utc(e["event_timestamp"])} for e in matching]
    assert got == aware[:len(got)], "an item differs from its collection document"


def test_an_event_bucket_keeps_its_hours_newest_and_a_read_past_them_says_so():
    events = [_event(i, 5 + i, "view", "DE", f"s{i}") for i in range(EVENTS_KEPT + 2)]
    with _patched():
        store = _applied([events, [_fix(events[-1], "moved")]])
        got, complete = live_feed.walk(store, live_feed.EVENTS, {"country": "DE"}, None, None, EVENTS_KEPT + 1)
        only_kept, whole = live_feed.walk(store, live_feed.EVENTS, {}, None, None, EVENTS_KEPT)
    assert [(e["event_id"], e["session_id"]) for e in got] == [("e3", "moved"), ("e2", "s2")]
    assert complete is False and whole is True and [e["event_id"] for e in only_kept] == ["e3", "e2"]
    assert got[0]["country"] == "DE" and got[0]["user_id"] == "u0" and "_id" not in got[0]
    assert "brand" not in got[0], "a field the event lacks is left out, as the collection's projection does"


def test_the_state_step_tells_a_correction_where_its_event_is():
    """An event_fix row carries the event's time, type and country (app/sessions/stateful.py)."""
    from app.sessions import stateful
    from app.sessions.tracker import Event, EventFix, Outputs, Step
    ev = Event(1_700_000_000_000, "e1", "cart", "u1", None, "p1", None, 2.0, country="DE")
    rows = stateful._rows(Step(None, Outputs(event_fixes=[EventFix("e1", "s2", 3.0, ev)]), None), {}, "u1")
    assert json.loads(rows[0].doc) == {"user_id": "u1", "event_ms": 1_700_000_000_000, "event_type": "cart",
                                       "country": "DE"}
    item, session = live_feed._fix_of(rows[0])
    assert (item["event_type"], item["country"], session) == ("cart", "DE", "s2")


def test_a_correction_from_before_fixes_carried_their_event_is_skipped():
    """A store lane written by the job before this change holds fixes with only the user: the
    merger skips them (that checkpoint never marks the event buckets complete)."""
    event = _event(1, 5, "view", "DE", "s1")
    old_fix = SimpleNamespace(kind="event_fix", id=event.id, session_id="s9", seconds_since_prev=None, is_late=False,
                              doc=json.dumps({"user_id": "u1"}))
    with _patched():
        assert _applied([[event, old_fix]]).decoded() == _applied([[event]]).decoded()
