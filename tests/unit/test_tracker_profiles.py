"""The profile and alert state inside the per-user entry (DESIGN.md §11, §12): counted once,
closed sessions folded in, carried through the state store's encoding, replay-stable, and off
when no profile rules are given."""
from __future__ import annotations

import dataclasses

import pytest

from app.config import DEFAULT_RULES_FILE
from app.profiles.rules import DEFAULT_PROFILE_RULES, load_profile_rules
from app.segments.rules import load_rules
from app.sessions.tracker import Event, SessionSettings, Step, UserState, process_events, process_timeout
from tests.unit.spark_like import arrive_then_final

MIN = 60_000
T0 = 1_714_564_800_000


@pytest.fixture(scope="module")
def settings():
    return SessionSettings(gap_ms=30 * MIN, max_ms=24 * 60 * MIN, rules=load_rules(DEFAULT_RULES_FILE),
                           profile_rules=load_profile_rules(DEFAULT_PROFILE_RULES))


def ev(at_ms, event_id, event_type="view", session="s1", price=None, country="PL", ip="10.0.0.1"):
    return Event(T0 + at_ms, event_id, event_type, "u1", session, "p1", "c1", price, "electronics.audio",
                 "mobile", country, ip)


def settle(state, events, _watermark, settings) -> Step:
    """The events arrive, then the watermark passes them (they become final): both steps' outputs."""
    return arrive_then_final(state, events, settings)


def test_profile_counts_each_event_once_and_folds_in_the_open_session(settings):
    step = settle(None, [ev(0, "e1"), ev(MIN, "e2", "cart"), ev(MIN, "e2", "cart")], 0, settings)
    profile = step.out.profile["totals"]
    assert (profile["sessions"], profile["total_events"], profile["cart_count"]) == (1, 2, 1)  # e2 once
    assert profile["segment_counts"] == {"browser": 1} and profile["duration_minutes"] == 1.0  # a cart: browser
    assert step.out.duplicates == ["e2"]


def test_closing_a_session_moves_it_into_the_closed_figures_and_rewrites_nothing(settings):
    first = settle(None, [ev(0, "e1"), ev(2 * MIN, "e2"), ev(3 * MIN, "e3", "purchase", price=20.0)],
                           0, settings)
    written = first.out.profile["totals"]
    assert written["segment_counts"] == {"engaged_shopper": 1} and written["duration_minutes"] == 3.0
    step = process_timeout(UserState.decode(first.state.encode()), T0 + 34 * MIN, settings)
    assert step.out.sessions[0]["status"] == "closed"
    # the open session was folded in as it stood: closing it changes nothing stored, so no rewrite
    assert step.out.profile is None
    assert "user_scores" in step.out.sessions[0]  # a closed document carries the user's scores at its close
    totals = step.state.profile if step.state else None
    assert totals is None or (totals.closed_sessions == 1 and totals.closed_duration_minutes == 3.0)


def test_a_changed_profile_is_written_again(settings):
    first = settle(None, [ev(0, "e1")], 0, settings)
    again = settle(UserState.decode(first.state.encode()), [ev(MIN, "e1")], 0, settings)  # a duplicate
    assert again.out.profile is None  # nothing counted: nothing to write
    later = settle(UserState.decode(first.state.encode()), [ev(MIN, "e2", "cart")], 0, settings)
    assert later.out.profile["totals"]["cart_count"] == 1 and not later.out.profile["first_write"]
    assert "user_scores" not in later.out.sessions[0]  # an open session's scores are the profile's


def test_alerts_are_raised_once_and_survive_the_state_encoding(settings):
    countries = ["PL", "DE"]
    events = [ev(i * 1000, f"e{i}", country=countries[i % 2], ip=f"10.0.0.{i % 3}") for i in range(4)]
    step = settle(None, events, 0, settings)
    assert sorted(a.alert_type for a in step.out.alerts) == ["LOCATION_JUMP", "MULTIPLE_IPS"]
    assert {a.session_id for a in step.out.alerts} == {"s1"}
    state = UserState.decode(step.state.encode())
    assert state.alerts == step.state.alerts and state.profile == step.state.profile
    later = settle(state, [ev(5000, "e9", country="PL")], 0, settings)  # within the cooldown
    assert later.out.alerts == []


def test_a_replayed_batch_gives_the_same_profile_and_alerts(settings):
    before = settle(None, [ev(0, "e1")], 0, settings).state.encode()
    batch = [ev(1000 * i, f"x{i}", ip=f"10.1.0.{i}") for i in range(1, 5)] + [ev(9000, "b", "purchase", price=900.0)]
    first = settle(UserState.decode(before), batch, 0, settings)
    second = settle(UserState.decode(before), batch, 0, settings)
    assert first.out.profile == second.out.profile
    assert [a.alert_id for a in first.out.alerts] == [a.alert_id for a in second.out.alerts]
    assert sorted(a.alert_type for a in first.out.alerts) == ["HIGH_VALUE_PURCHASE", "MULTIPLE_IPS"]


def test_without_profile_rules_the_state_carries_no_profile(settings):
    off = dataclasses.replace(settings, profile_rules=None)
    step = settle(None, [ev(0, "e1", "purchase", price=900.0)], 0, off)
    assert step.out.profile is None and step.out.alerts == []
    assert "profile" not in step.state.encode()


def test_a_late_copy_of_an_event_whose_session_closed_is_not_counted_again(settings):
    state = settle(None, [ev(0, "e1"), ev(MIN, "e2")], 0, settings).state
    state = process_timeout(state, T0 + 40 * MIN, settings).state  # the session closes
    step = process_events(state, [ev(MIN, "e2")], T0 + 40 * MIN, settings)  # redelivered, behind the watermark
    assert step.out.duplicates == ["e2"] and step.out.events == []  # the user's ids outlive the session
    assert step.out.profile is None  # not counted again: the stored profile stays as it is
    assert step.state.profile.total_events == 2 and step.state.profile.sessions == 1


def test_the_stored_profile_is_read_once_per_epoch_and_the_first_write_inserts(settings):
    reads = []
    stored = {"epoch": "earlier", "base": None,
              "totals": settle(None, [ev(0, "old")], 0, settings).out.profile["totals"]}
    lookup = dataclasses.replace(settings, stored_profile=lambda user: reads.append(user) or stored)
    first = settle(None, [ev(40 * MIN, "e1")], 0, lookup)
    second = settle(UserState.decode(first.state.encode()), [ev(41 * MIN, "e2")], 0, lookup)
    assert reads == ["u1"]  # the epoch's base travels in the state
    assert (first.out.profile["first_write"], second.out.profile["first_write"]) == (False, False)
    assert second.out.profile["base"] == stored["totals"]
    assert second.out.profile["totals"]["total_events"] == 3  # the stored event and this epoch's two

    new_user = dataclasses.replace(settings, stored_profile=lambda user: None)
    first = settle(None, [ev(0, "e1")], 0, new_user)
    second = settle(UserState.decode(first.state.encode()), [ev(MIN, "e2")], 0, new_user)
    assert (first.out.profile["first_write"], second.out.profile["first_write"]) == (True, False)


def test_the_profile_points_at_the_latest_session_and_keeps_the_last_alerts(settings):
    first = settle(None, [ev(0, "e1", session="s1"), ev(MIN, "e2", session="s1")], 0, settings)
    assert first.out.profile["live"] == {"session_id": "s1", "alerts": []}
    later = settle(UserState.decode(first.state.encode()),
                           [ev(2 * MIN, "e3", session="s2"), ev(3 * MIN, "e4", "purchase", session="s2", price=900.0)],
                           0, settings)
    live = later.out.profile["live"]
    assert live["session_id"] == "s2"
    assert [(a["alert_type"], a["first_event_ms"]) for a in live["alerts"]] == [("HIGH_VALUE_PURCHASE", T0 + 3 * MIN)]
    # an event of the older session does not move the pointer back
    back = settle(UserState.decode(later.state.encode()), [ev(3 * MIN + 1, "e5", session="s1")], 0, settings)
    assert back.out.profile["live"]["session_id"] == "s1"  # the session of the latest event
    # each purchase more than the 10-minute cooldown apart raises another alert; the profile keeps the last 10
    state = UserState.decode(back.state.encode())
    for i in range(12):
        state = settle(state, [ev((20 + 11 * i) * MIN, f"p{i}", "purchase", session="s2", price=600.0)],
                               0, settings).state
    alerts = state.profile.recent_alerts
    assert len(alerts) == 10 and alerts[-1]["first_event_ms"] == T0 + (20 + 11 * 11) * MIN
    assert [a["first_event_ms"] for a in alerts] == sorted(a["first_event_ms"] for a in alerts)
