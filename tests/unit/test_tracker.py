"""The per-user session state machine (DESIGN.md §5) without Spark."""
from __future__ import annotations

import copy

import pytest
import yaml

from app.config import DEFAULT_RULES_FILE
from app.segments.rules import load_rules, parse_rules
from app.sessions.tracker import (Event, EventOut, SeenIds, SessionSettings, UserState, process_events,
                                  process_timeout)

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
GAP = 30 * MIN
MAX = 24 * HOUR
RETENTION = 30 * 24 * HOUR
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@pytest.fixture(scope="module")
def settings():
    return SessionSettings(gap_ms=GAP, max_ms=MAX, rules=load_rules(DEFAULT_RULES_FILE), id_retention_ms=RETENTION)


def ev(at_ms, event_id, event_type="view", user_id="u1", user_session=None, product_id="p1",
       category_id="c1", price=None):
    return Event(T0 + at_ms, event_id, event_type, user_id, user_session, product_id, category_id, price)


def run_batches(batches, settings, delay=10 * MIN):
    """Feeds batches like Spark would: the watermark of a batch is max event time seen before it - delay."""
    state, docs, events, max_seen = None, [], [], 0
    for batch in batches:
        watermark = max(max_seen - delay, 0)
        step = process_events(state, batch, watermark, settings)
        state, docs, events = step.state, docs + step.out.sessions, events + step.out.events
        max_seen = max([max_seen] + [e.event_ms for e in batch])
    return state, docs, events


def close(state, settings, timeout_ms):
    """The watermark passes the timeout."""
    return process_timeout(state, timeout_ms + 1, settings)


def roundtrip(state: UserState) -> UserState:
    return UserState.decode(state.encode())


# A bouncer that becomes a browser (3rd event), then an engaged shopper (purchase).
JOURNEY = [ev(0, "e1"), ev(20 * SEC, "e2", product_id="p2"), ev(40 * SEC, "e3", product_id="p3"),
           ev(5 * MIN, "e4", "cart", product_id="p3"), ev(7 * MIN, "e5", "purchase", product_id="p3", price=49.5)]


def test_active_while_open_then_closed_on_timeout(settings):
    step = process_events(None, [ev(0, "e1", user_session="abc")], 0, settings)
    [active] = step.out.sessions  # shown at once, provisionally
    assert active["status"] == "active"
    assert (active["_id"], active["user_session"], active["user_id"]) == ("abc", "abc", "u1")
    assert (active["behavior_segment"], active["total_events"]) == ("bouncer", 1)
    assert step.timeout_ms == T0  # the event becomes final when the watermark passes it

    step = process_events(step.state, [ev(2 * MIN, "e2", user_session="abc")], 0, settings)
    [active] = step.out.sessions
    assert (active["status"], active["behavior_segment"], active["total_events"]) == ("active", "browser", 2)

    step = process_timeout(step.state, T0 + 3 * MIN, settings)  # both final; the session is open
    assert [d["status"] for d in step.out.sessions] == ["active"] and list(step.state.sessions) == ["abc"]
    assert step.timeout_ms == T0 + 2 * MIN + GAP

    # A batch whose watermark reaches the timeout exactly does not close it yet.
    at = process_timeout(copy.deepcopy(step.state), T0 + 2 * MIN + GAP, settings)
    assert at.out.sessions == [] and at.timeout_ms == T0 + 2 * MIN + GAP

    closed_step = close(step.state, settings, step.timeout_ms)
    [closed] = closed_step.out.sessions
    assert closed["status"] == "closed"
    assert (closed["_id"], closed["behavior_segment"], closed["total_events"]) == ("abc", "browser", 2)
    assert (closed["session_start"], closed["session_end"]) == (T0, T0 + 2 * MIN)
    assert closed["session_duration_minutes"] == 2.0
    assert closed["rule_version"] == "segments-v1"


def test_document_carries_segment_attributes_metrics_and_recommendations(settings):
    batch = [ev(0, "e1", user_session="s"), ev(MIN, "e2", "cart", user_session="s"),
             ev(2 * MIN, "e3", user_session="s", product_id="p2")]
    [doc] = process_events(None, batch, 0, settings).out.sessions
    assert (doc["behavior_segment"], doc["segment_color"], doc["segment_score"], doc["action_priority"]) == \
        ("browser", "🟡", 50, 2)
    assert (doc["view_count"], doc["cart_count"], doc["unique_products"]) == (2, 1, 2)
    assert doc["cart_conversion_rate"] == 50.0
    assert doc["recommendations"][0] == "Send an abandoned-cart email within 1 hour"


def test_segment_history_records_each_change_with_event_time_total_events_and_rule_version(settings):
    [doc] = process_events(None, [e._replace(user_session="j") for e in JOURNEY], 0, settings).out.sessions
    assert doc["segment_history"] == [
        {"segment": "bouncer", "at": T0, "total_events": 1, "rule_version": "segments-v1"},
        {"segment": "browser", "at": T0 + 40 * SEC, "total_events": 3, "rule_version": "segments-v1"},
        {"segment": "engaged_shopper", "at": T0 + 7 * MIN, "total_events": 5, "rule_version": "segments-v1"},
    ]
    assert doc["behavior_segment"] == "engaged_shopper"
    assert doc["total_amount"] == 49.5


@pytest.mark.parametrize("split", [[5], [1, 2, 2], [2, 2, 1], [1, 1, 3], [4, 1]])
def test_final_document_and_history_do_not_depend_on_the_batch_split(settings, split):
    events = [e._replace(user_session="j") for e in JOURNEY]
    one_state, one_docs, _ = run_batches([events], settings)
    batches, i = [], 0
    for size in split:
        batches.append(events[i:i + size])
        i += size
    many_state, many_docs, _ = run_batches(batches, settings)
    assert len(many_docs) == len(split)
    assert many_docs[-1] == one_docs[-1]
    one_closed = close(one_state, settings, T0 + 7 * MIN + GAP).out.sessions
    many_closed = close(many_state, settings, T0 + 7 * MIN + GAP).out.sessions
    assert one_closed == many_closed
    assert [h["segment"] for h in many_closed[0]["segment_history"]] == ["bouncer", "browser", "engaged_shopper"]


def test_events_within_a_batch_are_applied_in_event_time_order(settings):
    in_order = [e._replace(user_session="j") for e in JOURNEY]
    a = process_events(None, in_order, 0, settings).out
    b = process_events(None, list(reversed(in_order)), 0, settings).out
    assert a.sessions == b.sessions
    assert sorted(a.events) == sorted(b.events)


def test_derived_sessions_are_separated_by_more_than_the_gap(settings):
    batch = [ev(0, "a1"), ev(10 * MIN, "a2"), ev(10 * MIN + GAP + 1, "b1"), ev(10 * MIN + GAP + 2 * MIN, "b2")]
    step = process_events(None, batch, 0, settings)
    first, second = sorted(step.out.sessions, key=lambda d: d["session_start"])
    assert first["status"] == second["status"] == "active"  # provisional, until the watermark passes them
    assert first["_id"] != second["_id"]
    assert first["user_session"] == first["_id"] and second["user_session"] == second["_id"]
    assert (first["session_start"], first["session_end"], first["total_events"]) == (T0, T0 + 10 * MIN, 2)
    assert (second["session_start"], second["total_events"]) == (T0 + 10 * MIN + GAP + 1, 2)
    assert {e.event_id: e.session_id for e in step.out.events} == {
        "a1": first["_id"], "a2": first["_id"], "b1": second["_id"], "b2": second["_id"]}
    closing = process_timeout(step.state, T0 + 10 * MIN + GAP + 1, settings)  # a1, a2 final; b1 not yet
    assert [(d["_id"], d["status"]) for d in closing.out.sessions] == [(first["_id"], "closed"),
                                                                         (second["_id"], "active")]
    assert closing.timeout_ms == T0 + 10 * MIN + GAP + 1  # b1's event time
    done = process_timeout(closing.state, T0 + 10 * MIN + GAP + 3 * MIN, settings)
    assert [(d["_id"], d["status"]) for d in done.out.sessions] == [(second["_id"], "active")]
    assert done.timeout_ms == T0 + 12 * MIN + 2 * GAP


def test_exactly_the_gap_does_not_split_a_derived_session(settings):
    [doc] = process_events(None, [ev(0, "a1"), ev(GAP, "a2")], 0, settings).out.sessions
    assert doc["total_events"] == 2


def test_derived_session_ids_stay_distinct_across_batches(settings):
    step = process_events(None, [ev(0, "a1")], 0, settings)
    closed = close(step.state, settings, T0 + GAP)
    assert closed.timeout_ms == T0 + RETENTION  # the entry stays: the user's ids and epoch hold
    again = process_events(closed.state, [ev(GAP + MIN, "b1")], T0 + GAP + 1, settings)
    assert closed.out.sessions[0]["_id"] != again.out.sessions[0]["_id"]


def test_an_explicit_session_is_split_by_more_than_the_gap_in_event_time(settings):
    batch = [ev(0, "e1", user_session="x"), ev(2 * GAP, "e2", user_session="x")]
    shown = process_events(None, batch, 0, settings)
    assert sorted((d["_id"], d["total_events"]) for d in shown.out.sessions) == [("x", 1), ("x#2", 1)]
    final = process_timeout(shown.state, T0 + 2 * GAP + 1, settings)
    assert [(d["_id"], d["status"]) for d in final.out.sessions] == [("x", "closed"), ("x#2", "active")]


def test_a_user_keeps_several_explicit_sessions_open_at_once(settings):
    batch = [ev(0, "a1", user_session="a"), ev(MIN, "b1", user_session="b"), ev(2 * MIN, "a2", user_session="a")]
    step = process_events(None, batch, 0, settings)
    assert sorted((d["_id"], d["total_events"]) for d in step.out.sessions) == [("a", 2), ("b", 1)]
    step = process_timeout(step.state, T0 + 3 * MIN, settings)
    assert set(step.state.sessions) == {"a", "b"}


def test_explicit_session_force_closed_at_24h_continues_as_generation_2(settings):
    batch = [ev(i * 20 * MIN, f"e{i}", user_session="bot") for i in range(73)]  # never a gap; the last at 24 h
    shown = process_events(None, batch, 0, settings)
    assert {e.session_id for e in shown.out.events if e.event_id != "e72"} == {"bot"}
    assert [e.session_id for e in shown.out.events if e.event_id == "e72"] == ["bot#2"]
    out = process_timeout(shown.state, T0 + MAX + 1, settings).out
    first, second = out.sessions
    assert (first["_id"], first["status"], first["total_events"]) == ("bot", "closed", 72)
    assert (second["_id"], second["status"], second["total_events"]) == ("bot#2", "active", 1)
    assert second["user_session"] == "bot"


def test_explicit_session_times_out_at_24h_cap_even_while_busy(settings):
    # Events every 20 minutes never leave a gap; the cap (start + 24 h) is the timeout.
    batch = [ev(i * 20 * MIN, f"e{i}", user_session="busy") for i in range(72)]  # up to 23h40
    step = process_timeout(process_events(None, batch, 0, settings).state, T0 + 23 * HOUR + 41 * MIN, settings)
    assert step.timeout_ms == T0 + MAX - 1  # the last event time the session still takes
    out = close(step.state, settings, step.timeout_ms).out
    assert [(d["_id"], d["status"], d["total_events"]) for d in out.sessions] == [("busy", "closed", 72)]


@pytest.mark.parametrize("later", [GAP + 5 * MIN, 25 * HOUR, 29 * 24 * HOUR])
def test_a_reused_user_session_continues_as_the_next_generation(settings, later):
    step = process_events(None, [ev(0, "e1", user_session="r")], 0, settings)
    closed = close(step.state, settings, T0 + GAP)
    assert closed.out.sessions[0]["_id"] == "r"
    assert closed.timeout_ms == T0 + RETENTION  # the entry keeps the id's generation
    state = roundtrip(closed.state)
    out = process_events(state, [ev(later, "e2", user_session="r")], T0 + later - 10 * MIN, settings).out
    assert [(d["_id"], d["status"], d["user_session"]) for d in out.sessions] == [("r#2", "active", "r")]


def test_the_entry_leaves_the_store_when_the_id_retention_passes(settings):
    step = process_events(None, [ev(0, "e1", user_session="k"), ev(MIN, "e2", user_session="k")], 0, settings)
    closed = close(step.state, settings, T0 + MIN + GAP)
    assert [d["status"] for d in closed.out.sessions] == ["closed"]
    assert (closed.state.sessions, closed.state.generations) == ({}, {"k": 1})
    assert closed.timeout_ms == T0 + MIN + RETENTION
    kept = process_timeout(closed.state, closed.timeout_ms, settings)
    assert (kept.out.sessions, kept.timeout_ms) == ([], closed.timeout_ms)
    dropped = close(closed.state, settings, closed.timeout_ms)
    assert (dropped.state, dropped.out.sessions, dropped.out.events, dropped.timeout_ms) == (None, [], [], None)


def test_late_event_without_open_session_is_kept_as_late_and_opens_nothing(settings):
    step = process_events(None, [ev(0, "late")], T0 + HOUR, settings)
    assert step.out.events == [EventOut("late", None, None, True)]
    assert (step.out.sessions, step.state, step.timeout_ms) == ([], None, None)


def test_late_event_for_a_closed_explicit_session_does_not_reopen_it(settings):
    step = process_events(None, [ev(0, "e1", user_session="t")], 0, settings)
    closed = close(step.state, settings, T0 + GAP)
    late = process_events(closed.state, [ev(MIN, "late", user_session="t")], T0 + GAP + 1, settings)
    assert late.out.events == [EventOut("late", None, None, True)]
    assert late.out.sessions == [] and late.state.sessions == {}


def test_a_late_event_is_late_even_while_its_session_is_open(settings):
    """Behind the watermark, an event's place in the user's order is gone (alerts, triggers and
    history have moved on): it is written and counted as late, never sessionized, whatever the
    batches; a live run marks late exactly the events that arrive later than the delay."""
    step = process_events(None, [ev(0, "e1"), ev(20 * MIN, "e2")], 0, settings)
    step = process_events(step.state, [ev(5 * MIN, "late")], T0 + 10 * MIN, settings)
    assert EventOut("late", None, None, True) in step.out.events
    [doc] = step.out.sessions  # e1 became final: the session is shown again, without the late event
    assert (doc["total_events"], doc["session_start"], doc["session_end"]) == (2, T0, T0 + 20 * MIN)


def test_late_event_more_than_the_gap_before_an_open_derived_session_leaves_it_open_and_whole(settings):
    step = process_events(None, [ev(100 * MIN, "e1")], 0, settings)
    live_id = step.out.sessions[0]["_id"]
    step = process_events(step.state, [ev(60 * MIN, "late")], T0 + 95 * MIN, settings)
    assert step.out.events == [EventOut("late", None, None, True)]
    assert step.out.sessions == []  # nothing about the live session changed
    step = process_events(step.state, [ev(101 * MIN, "e2")], T0 + 95 * MIN, settings)
    [doc] = step.out.sessions
    assert (doc["_id"], doc["status"], doc["total_events"]) == (live_id, "active", 2)


def test_early_event_not_behind_the_watermark_opens_its_own_derived_session(settings):
    step = process_events(None, [ev(100 * MIN, "e1")], 0, settings)
    step = process_events(step.state, [ev(60 * MIN, "early")], T0 + 50 * MIN, settings)
    docs = sorted(step.out.sessions, key=lambda d: d["session_start"])
    assert [(d["session_start"], d["total_events"], d["status"]) for d in docs] == [
        (T0 + 60 * MIN, 1, "active"), (T0 + 100 * MIN, 1, "active")]
    step = process_timeout(step.state, T0 + 100 * MIN + 1, settings)
    assert len(step.state.sessions) == 1  # the early session closed in event time before e1


def test_seconds_since_prev_and_out_of_order_events(settings):
    step = process_events(None, [ev(0, "e1"), ev(1500, "e2"), ev(61500, "e3")], 0, settings)
    assert [(e.event_id, e.seconds_since_prev) for e in step.out.events] == [("e1", None), ("e2", 1.5), ("e3", 60.0)]
    # An event older than the session's latest arrives in a later batch: e3 is corrected.
    step = process_events(step.state, [ev(30 * SEC, "old"), ev(70 * SEC, "new")], 0, settings)
    assert [(e.event_id, e.seconds_since_prev, e.is_late) for e in step.out.events] == [
        ("old", 28.5, False), ("new", 8.5, False)]
    assert [(e.event_id, e.seconds_since_prev) for e in step.out.event_fixes] == [("e3", 31.5)]
    [doc] = step.out.sessions
    assert (doc["total_events"], doc["session_start"], doc["session_end"]) == (5, T0, T0 + 70 * SEC)


def test_a_redelivered_event_counts_once_in_the_same_batch(settings):
    batch = [ev(0, "d1", user_session="d"), ev(MIN, "d2", user_session="d"), ev(0, "d1", user_session="d")]
    step = process_events(None, batch, 0, settings)
    [doc] = step.out.sessions
    assert doc["total_events"] == 2
    assert [e.event_id for e in step.out.events] == ["d1", "d2"] and step.out.duplicates == ["d1"]


def test_a_redelivered_event_counts_once_in_a_later_batch_after_a_restart(settings):
    step = process_events(None, [ev(0, "d1", "cart", user_session="d")], 0, settings)
    step = process_events(roundtrip(step.state), [ev(0, "d1", "cart", user_session="d"), ev(MIN, "d2",
                                                  user_session="d")], 0, settings)
    [doc] = step.out.sessions
    assert (doc["total_events"], doc["cart_count"]) == (2, 1)
    assert step.out.duplicates == ["d1"]


def test_seen_ids_keep_the_most_recent_capacity_ids():
    seen = SeenIds()
    for i in range(SeenIds.CAPACITY + 1):
        assert seen.add(f"id{i}")
    assert not seen.add(f"id{SeenIds.CAPACITY}")  # recent: still known
    assert seen.add("id0")  # the oldest was forgotten: the bound
    assert len(SeenIds.from_text(seen.to_text()).order) == SeenIds.CAPACITY


def _renamed_rules():
    document = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    document["rule_version"] = "segments-v2"
    for segment in document["segments"]:
        if segment["name"] == "bouncer":
            segment["name"] = "one_pager"
    return parse_rules(document)


def test_a_renamed_segment_is_reclassified_at_the_next_update_and_never_raises(settings):
    step = process_timeout(process_events(None, [ev(0, "e1", user_session="r")], 0, settings).state, T0 + 1,
                           settings)
    assert step.out.sessions[0]["behavior_segment"] == "bouncer"
    v2 = SessionSettings(GAP, MAX, _renamed_rules(), RETENTION)
    step = process_events(roundtrip(step.state), [ev(10 * SEC, "e2", user_session="r")], T0 + 1, v2)
    [doc] = step.out.sessions
    assert (doc["behavior_segment"], doc["rule_version"]) == ("one_pager", "segments-v2")
    assert [(h["segment"], h["rule_version"]) for h in doc["segment_history"]] == [
        ("bouncer", "segments-v1"), ("one_pager", "segments-v2")]


def test_a_session_closing_after_a_threshold_change_is_classified_with_the_new_rules(settings):
    batch = [ev(0, "e1", user_session="t"), ev(10 * SEC, "e2", user_session="t")]
    step = process_timeout(process_events(None, batch, 0, settings).state, T0 + MIN, settings)
    assert step.out.sessions[0]["behavior_segment"] == "bouncer"
    document = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    browser = next(s for s in document["segments"] if s["name"] == "browser")
    browser["when"] = {"metric": "total_events", "op": ">=", "value": 2}  # same names, new threshold
    v1b = SessionSettings(GAP, MAX, parse_rules(document), RETENTION)
    assert v1b.rules.version == settings.rules.version and v1b.rules.content_hash != settings.rules.content_hash
    [doc] = close(roundtrip(step.state), v1b, step.timeout_ms).out.sessions
    assert (doc["status"], doc["behavior_segment"]) == ("closed", "browser")
    assert [h["segment"] for h in doc["segment_history"]] == ["bouncer", "browser"]


def test_encode_decode_round_trip(settings):
    step = process_events(None, [e._replace(user_session="j") for e in JOURNEY[:3]] + [ev(0, "x1")], 0, settings)
    text = step.state.encode()
    decoded = UserState.decode(text)
    assert decoded.encode() == text
    rest = [e._replace(user_session="j") for e in JOURNEY[3:]]
    from_memory = process_events(step.state, rest, 0, settings).out
    from_store = process_events(UserState.decode(text), rest, 0, settings).out
    assert from_store.sessions == from_memory.sessions


def test_first_writes_name_each_session_once_across_batches_and_replays(settings):
    first = process_events(None, [ev(0, "e1", user_session="a")], 0, settings)
    assert first.out.first_writes == {"a"}
    saved = first.state.encode()
    second = process_events(UserState.decode(saved), [ev(MIN, "e2", user_session="a")], 0, settings)
    assert [d["_id"] for d in second.out.sessions] == ["a"] and second.out.first_writes == set()
    replayed = process_events(UserState.decode(saved), [ev(MIN, "e2", user_session="a")], 0, settings)
    assert replayed.out.first_writes == set()  # the state says it was written: a replay replaces it
    closed = process_timeout(second.state, T0 + MIN + GAP + 1, settings)
    assert [d["status"] for d in closed.out.sessions] == ["closed"] and closed.out.first_writes == set()


def test_session_closed_before_it_was_ever_shown_is_a_first_write(settings):
    batch = [ev(0, "e1", user_session="cap"), ev(MAX, "e2", user_session="cap")]  # the 24 h guard closes it
    out = process_events(None, batch, T0 + MAX + 1, settings).out  # both late: nothing shown or written
    assert out.sessions == [] and [e.is_late for e in out.events] == [True, True]
    shown = process_events(None, batch, 0, settings)
    assert shown.out.first_writes == {"cap", "cap#2"}
    out = process_timeout(shown.state, T0 + MAX + 1, settings).out
    assert [(d["_id"], d["status"]) for d in out.sessions] == [("cap", "closed"), ("cap#2", "active")]
    assert out.first_writes == set()  # both were shown provisionally: replaced