"""The session state machine (DESIGN.md §5) without Spark."""
from __future__ import annotations

import pytest

from app.config import DEFAULT_RULES_FILE
from app.segments.rules import load_rules
from app.sessions.tracker import (Event, SessionSettings, decode_state, encode_state, process_events,
                                  process_timeout)

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
GAP = 30 * MIN
MAX = 24 * HOUR
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@pytest.fixture(scope="module")
def settings():
    return SessionSettings(gap_ms=GAP, max_ms=MAX, rules=load_rules(DEFAULT_RULES_FILE))


def ev(at_ms, event_id, event_type="view", user_id="u1", user_session=None, product_id="p1",
       category_id="c1", price=None):
    return Event(T0 + at_ms, event_id, event_type, user_id, user_session, product_id, category_id, price)


def run_batches(key, batches, settings, delay=10 * MIN):
    """Feeds batches like Spark would: the watermark of a batch is max event time seen before it - delay."""
    state, docs, events, max_seen = None, [], [], 0
    for batch in batches:
        watermark = max(max_seen - delay, 0)
        state, out, _ = process_events(key, state, batch, watermark, settings)
        docs += out.sessions
        events += out.events
        max_seen = max([max_seen] + [e.event_ms for e in batch])
    return state, docs, events


def close(key, state, settings, timeout_ms):
    """The watermark passes the timeout."""
    return process_timeout(key, state, timeout_ms + 1, settings)


# A bouncer that becomes a browser (3rd event), then an engaged shopper (purchase).
JOURNEY = [ev(0, "e1"), ev(20 * SEC, "e2", product_id="p2"), ev(40 * SEC, "e3", product_id="p3"),
           ev(5 * MIN, "e4", "cart", product_id="p3"), ev(7 * MIN, "e5", "purchase", product_id="p3", price=49.5)]


def test_active_while_open_then_closed_on_timeout(settings):
    state, out, timeout = process_events("s:abc", None, [ev(0, "e1", user_session="abc")], 0, settings)
    [active] = out.sessions
    assert active["status"] == "active"
    assert (active["_id"], active["user_session"], active["user_id"]) == ("abc", "abc", "u1")
    assert (active["behavior_segment"], active["total_events"]) == ("bouncer", 1)
    assert timeout == T0 + GAP

    state, out, timeout = process_events("s:abc", state, [ev(2 * MIN, "e2", user_session="abc")], 0, settings)
    [active] = out.sessions
    assert (active["status"], active["behavior_segment"], active["total_events"]) == ("active", "browser", 2)
    assert timeout == T0 + 2 * MIN + GAP

    # A batch whose watermark reaches the timeout exactly does not close it yet.
    state_at, out, _ = process_events("s:abc", state, [], T0 + 2 * MIN + GAP, settings)
    assert [d["status"] for d in out.sessions] == ["active"]
    assert state_at["open"] is not None

    _, out, _ = close("s:abc", state, settings, timeout)
    [closed] = out.sessions
    assert closed["status"] == "closed"
    assert (closed["_id"], closed["behavior_segment"], closed["total_events"]) == ("abc", "browser", 2)
    assert (closed["session_start"], closed["session_end"]) == (T0, T0 + 2 * MIN)
    assert closed["session_duration_minutes"] == 2.0
    assert closed["rule_version"] == "segments-v1"


def test_document_carries_segment_attributes_metrics_and_recommendations(settings):
    batch = [ev(0, "e1", user_session="s"), ev(MIN, "e2", "cart", user_session="s"),
             ev(2 * MIN, "e3", user_session="s", product_id="p2")]
    _, out, _ = process_events("s:s", None, batch, 0, settings)
    [doc] = out.sessions
    assert (doc["behavior_segment"], doc["segment_color"], doc["segment_score"], doc["action_priority"]) == \
        ("browser", "🟡", 50, 2)
    assert (doc["view_count"], doc["cart_count"], doc["unique_products"]) == (2, 1, 2)
    assert doc["cart_conversion_rate"] == 50.0
    assert doc["recommendations"][0] == "Send an abandoned-cart email within 1 hour"


def test_segment_history_records_each_change_with_event_time_and_total_events(settings):
    batch = [e._replace(user_session="j") for e in JOURNEY]
    _, out, _ = process_events("s:j", None, batch, 0, settings)
    [doc] = out.sessions
    assert doc["segment_history"] == [
        {"segment": "bouncer", "at": T0, "total_events": 1},
        {"segment": "browser", "at": T0 + 40 * SEC, "total_events": 3},
        {"segment": "engaged_shopper", "at": T0 + 7 * MIN, "total_events": 5},
    ]
    assert doc["behavior_segment"] == "engaged_shopper"
    assert doc["total_amount"] == 49.5


@pytest.mark.parametrize("split", [[5], [1, 2, 2], [2, 2, 1], [1, 1, 3], [4, 1]])
def test_final_document_and_history_do_not_depend_on_the_batch_split(settings, split):
    events = [e._replace(user_session="j") for e in JOURNEY]
    one_state, one_docs, _ = run_batches("s:j", [events], settings)
    batches, i = [], 0
    for size in split:
        batches.append(events[i:i + size])
        i += size
    many_state, many_docs, _ = run_batches("s:j", batches, settings)
    assert len(many_docs) == len(split)
    assert many_docs[-1] == one_docs[-1]

    _, one_out, _ = close("s:j", one_state, settings, T0 + 7 * MIN + GAP)
    _, many_out, _ = close("s:j", many_state, settings, T0 + 7 * MIN + GAP)
    assert one_out.sessions == many_out.sessions
    assert [h["segment"] for h in many_out.sessions[0]["segment_history"]] == [
        "bouncer", "browser", "engaged_shopper"]


def test_events_within_a_batch_are_applied_in_event_time_order(settings):
    in_order = [e._replace(user_session="j") for e in JOURNEY]
    _, a, _ = process_events("s:j", None, in_order, 0, settings)
    _, b, _ = process_events("s:j", None, list(reversed(in_order)), 0, settings)
    assert a.sessions == b.sessions
    assert sorted(a.events) == sorted(b.events)


def test_derived_sessions_split_by_the_inactivity_gap(settings):
    batch = [ev(0, "a1"), ev(10 * MIN, "a2"), ev(10 * MIN + GAP + 1, "b1"), ev(10 * MIN + GAP + 2 * MIN, "b2")]
    state, out, timeout = process_events("u:u1", None, batch, 0, settings)
    first, second = out.sessions
    assert first["status"] == "closed" and second["status"] == "active"
    assert first["_id"] != second["_id"]
    assert first["user_session"] == first["_id"] and second["user_session"] == second["_id"]
    assert first["_id"].startswith("u1") and second["_id"].startswith("u1")
    assert (first["session_start"], first["session_end"], first["total_events"]) == (T0, T0 + 10 * MIN, 2)
    assert (second["session_start"], second["total_events"]) == (T0 + 10 * MIN + GAP + 1, 2)
    assert {e[0]: e[1] for e in out.events} == {"a1": first["_id"], "a2": first["_id"],
                                                 "b1": second["_id"], "b2": second["_id"]}
    assert timeout == T0 + 12 * MIN + 2 * GAP


def test_exactly_the_gap_does_not_split_a_derived_session(settings):
    _, out, _ = process_events("u:u1", None, [ev(0, "a1"), ev(GAP, "a2")], 0, settings)
    [doc] = out.sessions
    assert doc["total_events"] == 2


def test_derived_session_ids_stay_distinct_across_batches(settings):
    state, first_out, timeout = process_events("u:u1", None, [ev(0, "a1")], 0, settings)
    state, closed_out, _ = close("u:u1", state, settings, timeout)
    assert state is None
    _, second_out, _ = process_events("u:u1", None, [ev(GAP + MIN, "b1")], timeout + 1, settings)
    assert closed_out.sessions[0]["_id"] != second_out.sessions[0]["_id"]


def test_explicit_session_is_not_split_by_the_gap(settings):
    batch = [ev(0, "e1", user_session="x"), ev(2 * GAP, "e2", user_session="x")]
    _, out, _ = process_events("s:x", None, batch, 0, settings)
    [doc] = out.sessions
    assert (doc["_id"], doc["total_events"], doc["status"]) == ("x", 2, "active")


def test_explicit_session_force_closed_at_24h_continues_as_generation_2(settings):
    batch = [ev(0, "e1", user_session="bot"), ev(12 * HOUR, "e2", user_session="bot"),
             ev(MAX, "e3", user_session="bot")]
    state, out, _ = process_events("s:bot", None, batch, 0, settings)
    first, second = out.sessions
    assert (first["_id"], first["status"], first["total_events"]) == ("bot", "closed", 2)
    assert (second["_id"], second["status"], second["total_events"]) == ("bot#2", "active", 1)
    assert second["user_session"] == "bot"
    assert dict((e[0], e[1]) for e in out.events) == {"e1": "bot", "e2": "bot", "e3": "bot#2"}


def test_explicit_session_times_out_at_24h_cap_even_while_busy(settings):
    # Events every 20 minutes never leave a gap; the cap (start + 24 h) is the timeout.
    batch = [ev(i * 20 * MIN, f"e{i}", user_session="busy") for i in range(72)]  # up to 23h40
    state, out, timeout = process_events("s:busy", None, batch, 0, settings)
    assert timeout == T0 + MAX
    _, out, _ = close("s:busy", state, settings, timeout)
    assert [(d["_id"], d["status"], d["total_events"]) for d in out.sessions] == [("busy", "closed", 72)]


def test_reused_explicit_id_after_close_gets_a_new_document_id(settings):
    state, _, timeout = process_events("s:r", None, [ev(0, "e1", user_session="r")], 0, settings)
    state, closed, tomb_timeout = close("s:r", state, settings, timeout)
    assert closed.sessions[0]["_id"] == "r"
    state, out, _ = process_events("s:r", state, [ev(GAP + 5 * MIN, "e2", user_session="r")],
                                   timeout + 1, settings)
    assert [(d["_id"], d["status"]) for d in out.sessions] == [("r#2", "active")]


def test_late_event_without_open_session_is_kept_as_late_and_opens_nothing(settings):
    state, out, timeout = process_events("u:u1", None, [ev(0, "late")], T0 + HOUR, settings)
    assert out.events == [("late", None, None, True)]
    assert out.sessions == []
    assert (state, timeout) == (None, None)


def test_late_event_for_a_closed_explicit_session_does_not_reopen_it(settings):
    state, _, timeout = process_events("s:t", None, [ev(0, "e1", user_session="t")], 0, settings)
    state, _, _ = close("s:t", state, settings, timeout)
    state2, out, _ = process_events("s:t", state, [ev(MIN, "late", user_session="t")], timeout + 1, settings)
    assert out.events == [("late", None, None, True)]
    assert out.sessions == []
    assert state2["open"] is None


def test_late_event_for_a_still_open_session_joins_it(settings):
    state, _, _ = process_events("u:u1", None, [ev(0, "e1"), ev(20 * MIN, "e2")], 0, settings)
    # The watermark moved past 5 min; a late event at 5 min still belongs to the open session.
    state, out, _ = process_events("u:u1", state, [ev(5 * MIN, "late")], T0 + 10 * MIN, settings)
    [doc] = out.sessions
    assert out.events == [("late", doc["_id"], None, True)]
    assert (doc["total_events"], doc["session_start"], doc["session_end"]) == (3, T0, T0 + 20 * MIN)


def test_late_event_more_than_the_gap_before_an_open_derived_session_does_not_join_it(settings):
    # §5: derived sessions are separated by more than the gap. The open session starts at 100 min;
    # a late event at 60 min (40 min earlier, nothing in between) is a different, already-gone session.
    state, _, _ = process_events("u:u1", None, [ev(100 * MIN, "e1")], 0, settings)
    state, out, _ = process_events("u:u1", state, [ev(60 * MIN, "late")], T0 + 95 * MIN, settings)
    assert out.events == [("late", None, None, True)]
    [doc] = out.sessions
    assert (doc["total_events"], doc["session_start"], doc["session_duration_minutes"]) == (1, T0 + 100 * MIN, 0.0)


def test_seconds_since_prev_and_out_of_order_events(settings):
    state, out, _ = process_events("u:u1", None, [ev(0, "e1"), ev(1500, "e2"), ev(61500, "e3")], 0, settings)
    assert [(e[0], e[2]) for e in out.events] == [("e1", None), ("e2", 1.5), ("e3", 60.0)]
    # An event older than the session's latest arrives in a later batch: no negative gap.
    state, out, _ = process_events("u:u1", state, [ev(30 * SEC, "old"), ev(70 * SEC, "new")], 0, settings)
    assert [(e[0], e[2], e[3]) for e in out.events] == [("old", None, False), ("new", 8.5, False)]
    [doc] = out.sessions
    assert (doc["total_events"], doc["session_start"], doc["session_end"]) == (5, T0, T0 + 70 * SEC)


def test_state_of_a_derived_key_is_dropped_on_close(settings):
    state, _, timeout = process_events("u:u1", None, [ev(0, "e1")], 0, settings)
    state, out, next_timeout = close("u:u1", state, settings, timeout)
    assert [d["status"] for d in out.sessions] == ["closed"]
    assert (state, next_timeout) == (None, None)


def test_explicit_key_keeps_only_a_tombstone_until_the_watermark_passes_it(settings):
    state, _, timeout = process_events("s:k", None, [ev(0, "e1", user_session="k"), ev(MIN, "e2", user_session="k")],
                                       0, settings)
    state, out, tomb_timeout = close("s:k", state, settings, timeout)
    assert [d["status"] for d in out.sessions] == ["closed"]
    assert state["open"] is None
    assert state["tomb_until"] == T0 + MIN + MAX == tomb_timeout
    assert set(state) == {"gen", "open", "tomb_until"}

    kept, out, again = process_timeout("s:k", state, tomb_timeout, settings)
    assert (out.sessions, again) == ([], tomb_timeout)
    assert kept == state

    dropped, out, none = close("s:k", state, settings, tomb_timeout)
    assert (dropped, out.sessions, out.events, none) == (None, [], [], None)


def test_session_closed_within_a_batch_when_the_watermark_already_passed(settings):
    # The watermark is already past last event + gap when the batch ends: closed immediately.
    batch = [ev(0, "e1"), ev(MIN, "e2")]
    state, out, timeout = process_events("u:u1", None, batch, T0, settings)
    assert [d["status"] for d in out.sessions] == ["active"]
    state, out, timeout = process_events("u:u1", state, [], T0 + MIN + GAP + 1, settings)
    assert [d["status"] for d in out.sessions] == ["closed"]
    assert (state, timeout) == (None, None)


def test_encode_decode_round_trip(settings):
    batch = [e._replace(user_session="j") for e in JOURNEY[:3]]
    state, _, _ = process_events("s:j", None, batch, 0, settings)
    text = encode_state(state)
    assert isinstance(text, str)
    decoded = decode_state(text)
    assert decoded == state
    assert encode_state(decoded) == text
    assert decode_state(None) is None

    rest = [e._replace(user_session="j") for e in JOURNEY[3:]]
    _, from_memory, _ = process_events("s:j", state, rest, 0, settings)
    _, from_store, _ = process_events("s:j", decode_state(text), rest, 0, settings)
    assert from_store.sessions == from_memory.sessions


def test_encode_decode_round_trip_of_a_tombstone(settings):
    state, _, timeout = process_events("s:k", None, [ev(0, "e1", user_session="k")], 0, settings)
    tomb, _, _ = close("s:k", state, settings, timeout)
    assert decode_state(encode_state(tomb)) == tomb


def test_first_writes_name_each_session_once_across_batches_and_replays(settings):
    first, out1, _ = process_events("s:a", None, [ev(0, "e1", user_session="a")], 0, settings)
    assert out1.first_writes == {"a"}
    second, out2, _ = process_events("s:a", decode_state(encode_state(first)), [ev(MIN, "e2", user_session="a")],
                                     0, settings)
    assert [d["_id"] for d in out2.sessions] == ["a"] and out2.first_writes == set()
    _, replayed, _ = process_events("s:a", decode_state(encode_state(first)), [ev(MIN, "e2", user_session="a")],
                                    0, settings)
    assert replayed.first_writes == set()  # the state says it was written: a replay replaces it
    _, closed, _ = process_timeout("s:a", second, T0 + MIN + GAP + 1, settings)
    assert [d["status"] for d in closed.sessions] == ["closed"] and closed.first_writes == set()


def test_session_opened_and_closed_in_one_batch_is_a_first_write(settings):
    _, out, _ = process_events("u:u1", None, [ev(0, "e1"), ev(GAP + MIN, "e2")], 0, settings)
    assert [d["status"] for d in out.sessions] == ["closed", "active"]
    assert out.first_writes == {d["_id"] for d in out.sessions}
