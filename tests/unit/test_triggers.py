"""Triggers (DESIGN.md §13): conditions, targets, cooldown edges, priority and exclusivity, the
rules file's checks, and the triggers inside the user's state step (replay-stable)."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from app.actions.triggers import (DEFAULT_TRIGGER_RULES, Happening, TriggerState, fire, load_trigger_rules,
                                  parse_trigger_rules)
from app.config import DEFAULT_RULES_FILE, InvalidConfigError
from app.profiles.rules import DEFAULT_PROFILE_RULES, load_profile_rules
from app.segments.rules import load_rules
from app.sessions.tracker import Event, SessionSettings, UserState, process_events, process_timeout
from tests.unit.spark_like import arrive_then_final

MIN = 60_000
T0 = 1_714_564_800_000


def _rules(*triggers: dict):
    return parse_trigger_rules({"trigger_version": "t1", "triggers": list(triggers)})


def _trigger(name="t", on="session_closed", cooldown="10 minutes", priority=1, **extra):
    return {"name": name, "on": on, "cooldown": cooldown, "priority": priority,
            "actions": [{"channel": "email", "template": name}], **extra}


def _session(segment="browser", end=T0, cart_count=1, total_amount=None, status="closed"):
    return {"_id": "s1", "behavior_segment": segment, "status": status, "session_end": end, "cart_count": cart_count,
            "total_events": 3, "total_amount": total_amount}


def test_default_file_has_the_four_triggers_of_the_design():
    rules = load_trigger_rules(DEFAULT_TRIGGER_RULES)
    assert [(t.name, t.on, t.priority) for t in rules.triggers] == [
        ("fraud_review", "alert", 1), ("vip_enrolment", "session_closed", 2),
        ("exit_intent_offer", "session_updated", 3), ("abandoned_cart_email", "session_closed", 4)]


@pytest.mark.parametrize("cart_count, fires", [(0, False), (1, True), (2, True)])
def test_condition_on_session_metrics(cart_count, fires):
    rules = _rules(_trigger(segments=["browser"], when={"metric": "cart_count", "op": ">=", "value": 1}))
    executions = fire(TriggerState(), "u1", [Happening("session_closed", T0, session=_session(cart_count=cart_count))],
                      rules)
    assert bool(executions) is fires


def test_targets_kind_and_segment():
    rules = _rules(_trigger(segments=["browser"]))
    assert fire(TriggerState(), "u1", [Happening("session_closed", T0, session=_session("bouncer"))], rules) == []
    assert fire(TriggerState(), "u1", [Happening("session_updated", T0, session=_session(status="active"))],
                rules) == []
    assert len(fire(TriggerState(), "u1", [Happening("session_closed", T0, session=_session())], rules)) == 1


def test_condition_on_profile_facts_reads_the_profile_once():
    calls = []
    rules = _rules(_trigger(when={"metric": "profile.intent_score", "op": ">=", "value": 60}))
    happenings = [Happening("session_closed", T0, session=_session()),
                  Happening("session_closed", T0 + 60 * MIN, session=_session(end=T0 + 60 * MIN))]
    executions = fire(TriggerState(), "u1", happenings, rules, lambda: calls.append(1) or {"intent_score": 75})
    assert len(executions) == 2 and calls == [1]
    assert executions[0]["facts"]["profile"] == {"intent_score": 75}
    assert fire(TriggerState(), "u1", happenings, rules, lambda: {"intent_score": 59}) == []


def test_alert_trigger_targets_severity_and_type():
    rules = _rules(_trigger(on="alert", severities=["high"], alert_types=["MULTIPLE_IPS", "LOCATION_JUMP"]))

    def alert(alert_type, severity):
        return Happening("alert", T0, alert={"alert_id": f"{alert_type}:u1:{T0}", "alert_type": alert_type,
                                             "severity": severity, "session_id": "s1", "evidence": {}})
    assert fire(TriggerState(), "u1", [alert("MULTIPLE_IPS", "medium")], rules) == []
    assert fire(TriggerState(), "u1", [alert("HIGH_VALUE_PURCHASE", "high")], rules) == []
    [execution] = fire(TriggerState(), "u1", [alert("LOCATION_JUMP", "high")], rules)
    assert execution["session_id"] == "s1" and execution["facts"]["alert"]["alert_type"] == "LOCATION_JUMP"


@pytest.mark.parametrize("later_ms, fires", [(10 * MIN - 1, False), (10 * MIN, True), (10 * MIN + 1, True)])
def test_cooldown_edges(later_ms, fires):
    rules, state = _rules(_trigger(cooldown="10 minutes")), TriggerState()
    first = fire(state, "u1", [Happening("session_closed", T0, session=_session())], rules)
    again = fire(state, "u1", [Happening("session_closed", T0 + later_ms, session=_session(end=T0 + later_ms))], rules)
    assert first[0]["execution_id"] == f"t:u1:{T0}"
    assert bool(again) is fires
    assert state.last_fired["t"] == (T0 + later_ms if fires else T0)


def test_cooldown_is_per_user_and_trigger():
    rules = _rules(_trigger("a"), _trigger("b", priority=2))
    state = TriggerState()
    happening = [Happening("session_closed", T0, session=_session())]
    assert [e["trigger"] for e in fire(state, "u1", happening, rules)] == ["a", "b"]
    assert fire(state, "u1", happening, rules) == []
    assert len(fire(TriggerState(), "u2", happening, rules)) == 2  # another user's state


def test_priority_orders_and_an_exclusive_trigger_suppresses_lower_ones():
    low, high = _trigger("low", priority=5), _trigger("high", priority=1)
    happening = [Happening("session_closed", T0, session=_session())]
    assert [e["trigger"] for e in fire(TriggerState(), "u1", happening, _rules(low, high))] == ["high", "low"]
    exclusive = dict(high, exclusive=True)
    same_rank = _trigger("same", priority=1)
    state = TriggerState()
    fired = fire(state, "u1", happening, _rules(low, exclusive, same_rank))
    assert [e["trigger"] for e in fired] == ["high", "same"]  # equal priority is not suppressed
    assert "low" not in state.last_fired  # suppressed: no cooldown started either


def test_exclusive_in_cooldown_does_not_suppress():
    state = TriggerState({"high": T0})
    rules = _rules(_trigger("high", exclusive=True), _trigger("low", priority=2))
    fired = fire(state, "u1", [Happening("session_closed", T0 + MIN, session=_session(end=T0 + MIN))], rules)
    assert [e["trigger"] for e in fired] == ["low"]


@pytest.mark.parametrize("change, field", [
    ({"on": "page_view"}, ".on"),
    ({"priority": 0}, ".priority"),
    ({"cooldown": "soon"}, ".cooldown"),
    ({"cooldown": "0s"}, ".cooldown"),
    ({"actions": []}, ".actions"),
    ({"actions": [{"channel": "email"}]}, ".template"),
    ({"when": {"metric": "nope", "op": ">=", "value": 1}}, ".when.metric"),
    ({"severities": ["high"]}, "alert_types and severities"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"name": "a:b"}, ".name"),
])
def test_a_broken_trigger_fails_naming_the_field(change, field):
    with pytest.raises(InvalidConfigError, match="TRIGGER_RULES_FILE") as err:
        _rules({**_trigger(), **change})
    assert field in str(err.value)


def test_yaml_on_key_is_read_as_on(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"trigger_version": "x"}) + "triggers:\n  - name: a\n    on: alert\n"
                    "    cooldown: 1h\n    priority: 1\n    actions: [{channel: c, template: t}]\n", encoding="utf-8")
    assert load_trigger_rules(path).triggers[0].on == "alert"


# ---- inside the state step -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def settings():
    return SessionSettings(gap_ms=30 * MIN, max_ms=24 * 60 * MIN, rules=load_rules(DEFAULT_RULES_FILE),
                           profile_rules=load_profile_rules(DEFAULT_PROFILE_RULES),
                           triggers=load_trigger_rules(DEFAULT_TRIGGER_RULES))


def ev(at_ms, event_id, event_type="view", session="s1", price=None, user="u1"):
    return Event(T0 + at_ms, event_id, event_type, user, session, "p1", "c1", price, "electronics.audio", "mobile",
                 "PL", "10.0.0.1")


def test_exit_intent_fires_for_an_active_bouncer_once_per_cooldown(settings):
    arrived = process_events(None, [ev(0, "e1")], 0, settings)
    assert arrived.out.actions == []  # decided by final events only
    step = arrive_then_final(None, [ev(0, "e1")], settings)
    assert [a["trigger"] for a in step.out.actions] == ["exit_intent_offer"]
    action = step.out.actions[0]
    assert action["facts"]["session"]["behavior_segment"] == "bouncer" and action["facts"]["profile"]["sessions"] == 1
    again = arrive_then_final(UserState.decode(step.state.encode()), [ev(10 * 1000, "e2")], settings)
    assert again.out.actions == []  # still a bouncer, within the hour


def test_abandoned_cart_fires_when_a_browser_with_a_cart_closes(settings):
    state = arrive_then_final(None, [ev(0, "e1"), ev(MIN, "e2", "cart"), ev(2 * MIN, "e3")], settings).state
    step = process_timeout(UserState.decode(state.encode()), T0 + 40 * MIN, settings)
    assert [a["trigger"] for a in step.out.actions] == ["abandoned_cart_email"]
    assert step.out.actions[0]["execution_id"] == f"abandoned_cart_email:u1:{T0 + 2 * MIN}"


def test_segment_changed_is_a_happening(settings):
    changed = dataclasses.replace(settings, triggers=_rules(_trigger("moved", on="segment_changed",
                                                                     segments=["browser"])))
    first = arrive_then_final(None, [ev(0, "e1")], changed)
    assert first.out.actions == []  # a new session's first segment is not a change
    second = arrive_then_final(UserState.decode(first.state.encode()), [ev(MIN, "e2", "cart")], changed)
    [action] = second.out.actions
    assert action["facts"]["session"]["previous_segment"] == "bouncer"


def test_a_replayed_batch_fires_the_same_executions(settings):
    """The step that makes the events final is replayed from the same state: the same executions
    (a fraud review for three addresses within 10 minutes, an exit-intent offer)."""
    hops = [Event(T0 + i * MIN, f"h{i}", "view", "u1", "s1", "p1", "c1", None, "electronics.audio", "mobile", "PL",
                  f"10.0.0.{i}") for i in range(3)]
    arrived = process_events(None, hops, 0, settings).state.encode()
    first = process_timeout(UserState.decode(arrived), T0 + 5 * MIN, settings)
    second = process_timeout(UserState.decode(arrived), T0 + 5 * MIN, settings)
    assert sorted(a["trigger"] for a in first.out.actions) == ["exit_intent_offer", "fraud_review"]
    assert first.out.actions == second.out.actions


def test_the_reference_consumer_skips_redelivered_executions_and_describes_an_action():
    from app.actions.consume import Deduplicator, describe
    seen = Deduplicator(capacity=2)
    assert [seen.first_time(i) for i in ("a", "b", "a", "c", "a")] == [True, True, False, True, True]  # "a" forgotten
    [action] = fire(TriggerState(), "u1", [Happening("session_closed", T0, session=_session())],
                    _rules(_trigger("cart", segments=["browser"])))
    line = describe(action)
    assert "cart" in line and "user u1" in line and "email/cart" in line and "browser" in line
