"""Profile scores, behaviour patterns and alert rules (DESIGN.md §11, §12): bounds, monotonicity,
every pattern, every alert rule just below / at / above its threshold, cooldown and window edges,
and a broken rules file failing with the field's name."""
from __future__ import annotations

import copy
import random

import pytest
import yaml

from app.config import InvalidConfigError
from app.profiles.alerts import AlertEvent, AlertState, detect
from app.profiles.rules import DEFAULT_PROFILE_RULES, SCORE_INPUTS, load_profile_rules, parse_profile_rules

RULES = load_profile_rules(DEFAULT_PROFILE_RULES)
DOCUMENT = yaml.safe_load(DEFAULT_PROFILE_RULES.read_text())


def test_scores_are_bounded_by_0_and_100():
    assert RULES.score({}) == dict.fromkeys(RULES.score({}), 0)
    huge = dict.fromkeys(SCORE_INPUTS, 10**9)
    assert set(RULES.score(huge).values()) == {100}
    assert set(RULES.score(dict.fromkeys(SCORE_INPUTS, -5)).values()) == {0}


def test_scores_never_fall_when_an_input_grows():
    rng = random.Random(5)
    for _ in range(2000):
        figures = {name: rng.uniform(0, 60) for name in SCORE_INPUTS}
        grown = dict(figures)
        name = rng.choice(SCORE_INPUTS)
        grown[name] += rng.uniform(0, 30)
        before, after = RULES.score(figures), RULES.score(grown)
        assert all(after[s] >= before[s] for s in before), (name, figures, before, after)


def test_default_scores_of_a_known_profile():
    figures = {"sessions": 5, "avg_events_per_session": 10, "avg_session_duration": 15, "view_count": 25,
               "unique_categories": 5, "cart_count": 5, "purchase_count": 1}
    assert RULES.score(figures) == {"engagement_score": 50,  # 0.4*0.5 + 0.3*0.5 + 0.3*0.5
                                    "interest_score": 75,  # 0.5*0.5 + 0.2*1 + 0.3*1
                                    "intent_score": 75,  # 0.5*1 + 0.5*0.5
                                    "conversion_probability": 57}  # 0.5/3 + 0.3*1 + 0.2*0.5 = 0.5667


@pytest.mark.parametrize("figures, pattern", [
    ({"intent_score": 60}, "high_intent"),
    ({"intent_score": 59, "interest_score": 50}, "qualified_interest"),
    ({"intent_score": 24, "interest_score": 50, "sessions": 2, "last_session_bounced": 1}, "at_risk"),
    ({"sessions": 2, "last_session_bounced": 1, "purchase_count": 1, "interest_score": 30}, "researching"),
    ({"sessions": 1, "last_session_bounced": 1, "interest_score": 30}, "researching"),
    ({"interest_score": 29}, "exploring"),
    ({}, "exploring"),
])
def test_each_pattern_rule(figures, pattern):
    assert RULES.pattern(figures) == pattern


def _broken(path: list, value):
    document = copy.deepcopy(DOCUMENT)
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize("path, value, named", [
    (["rule_version"], "", "rule_version"),
    (["scores", "intent_score"], KeyError, "scores must define exactly"),
    (["scores", "intent_score", "cart_count", "weight"], -0.5, "scores.intent_score.cart_count.weight"),
    (["scores", "intent_score", "cart_count", "weight"], 0.7, "scores.intent_score: the weights must add up to 1"),
    (["scores", "intent_score", "cart_count", "cap"], 0, "scores.intent_score.cart_count.cap"),
    (["scores", "intent_score", "dwell_time"], {"weight": 0, "cap": 1}, "scores.intent_score.dwell_time: unknown input"),
    (["patterns", 0, "when", "metric"], "intent", "patterns[0] (high_intent).when.metric"),
    (["patterns", -1, "when"], {"metric": "sessions", "op": ">=", "value": 0}, "must have 'when: otherwise'"),
    (["alerts", "HIGH_VELOCITY", "events"], 0, "alerts.HIGH_VELOCITY.events must be a positive integer"),
    (["alerts", "MULTIPLE_IPS", "window"], "soon", "alerts.MULTIPLE_IPS.window"),
    (["alerts", "LOCATION_JUMP", "severity"], "urgent", "alerts.LOCATION_JUMP.severity"),
    (["alerts", "HIGH_VALUE_PURCHASE"], KeyError, "alerts.HIGH_VALUE_PURCHASE is missing"),
    (["alerts", "HIGH_VALUE_PURCHASE", "min_price"], -1, "alerts.HIGH_VALUE_PURCHASE.min_price"),
    (["alerts", "cooldown"], "a while", "alerts.cooldown"),
    (["alerts", "BOT_SCORE"], {"severity": "low"}, "unknown alert type"),
])
def test_a_broken_rules_file_fails_naming_the_field(path, value, named):
    with pytest.raises(InvalidConfigError, match=None) as raised:
        parse_profile_rules(_broken(path, value), source="bad.yaml")
    assert named in str(raised.value)
    assert str(raised.value).startswith("PROFILE_RULES_FILE bad.yaml")


# ---- alerts ---------------------------------------------------------------------------------

def _types(alerts):
    return [a.alert_type for a in alerts]


def _views(times_ms, session="s1", **fields):
    return [AlertEvent(t, "view", session, **fields) for t in times_ms]


@pytest.mark.parametrize("n, span_ms, fires", [
    (29, 10_000, False),  # below the count
    (30, 59_999, True),  # at the count, inside the window
    (31, 20_000, True),  # above
    (30, 60_000, False),  # at the count, the window's edge: 60 s apart is not within 60 s
])
def test_high_velocity(n, span_ms, fires):
    times = [round(i * span_ms / (n - 1)) for i in range(n)]
    sessions = [AlertEvent(t, "view", f"s{i}") for i, t in enumerate(times)]  # no run of one session
    alerts = detect(AlertState(), "u1", sessions, RULES)
    assert ("HIGH_VELOCITY" in _types(alerts)) is fires
    if fires:
        alert = next(a for a in alerts if a.alert_type == "HIGH_VELOCITY")
        # raised at the 30th event (the 31st is within the cooldown): the evidence starts at the first
        assert (alert.alert_id, alert.severity, alert.first_event_ms, alert.event_ms) == (
            f"HIGH_VELOCITY:u1:{times[0]}", "high", times[0], times[29])


@pytest.mark.parametrize("n, gap_ms, fires", [
    (9, 500, False), (10, 1_999, True), (11, 500, True), (10, 2_000, False),
])
def test_rapid_actions(n, gap_ms, fires):
    alerts = detect(AlertState(), "u1", _views([i * gap_ms for i in range(n)]), RULES)
    assert ("RAPID_ACTIONS" in _types(alerts)) is fires


def test_rapid_actions_run_restarts_after_a_pause_and_is_per_session():
    slow_break = [0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 6500]  # 9 quick, then a 2.5 s pause
    assert "RAPID_ACTIONS" not in _types(detect(AlertState(), "u1", _views(slow_break), RULES))
    interleaved = [AlertEvent(i * 300, "view", f"s{i % 2}") for i in range(18)]  # 9 per session
    assert "RAPID_ACTIONS" not in _types(detect(AlertState(), "u1", interleaved, RULES))


@pytest.mark.parametrize("ips, times, fires", [
    (["a", "b"], [0, 1000], False),
    (["a", "b", "c"], [0, 1000, 599_999], True),
    (["a", "b", "c", "d"], [0, 1, 2, 3], True),
    (["a", "b", "c"], [0, 1000, 600_000], False),  # "a" left the 10-minute window
    (["a", "a", "b", "b"], [0, 1, 2, 3], False),
])
def test_multiple_ips(ips, times, fires):
    events = [AlertEvent(t, "view", None, ip_address=ip) for ip, t in zip(ips, times)]
    alerts = detect(AlertState(), "u1", events, RULES)
    assert ("MULTIPLE_IPS" in _types(alerts)) is fires
    if fires:  # raised by the third address; the fourth falls in the cooldown
        assert next(a for a in alerts if a.alert_type == "MULTIPLE_IPS").evidence["ips"] == ["a", "b", "c"]


@pytest.mark.parametrize("countries, times, fires", [
    (["PL", "PL"], [0, 60_000], False),
    (["PL", "DE"], [0, 1_799_999], True),
    (["PL", "DE"], [0, 1_800_000], False),
    (["PL", None, "DE"], [0, 1000, 2000], True),  # an event without a country does not reset it
])
def test_location_jump(countries, times, fires):
    events = [AlertEvent(t, "view", None, country=c) for c, t in zip(countries, times)]
    alerts = detect(AlertState(), "u1", events, RULES)
    assert ("LOCATION_JUMP" in _types(alerts)) is fires
    if fires:
        assert next(a for a in alerts if a.alert_type == "LOCATION_JUMP").evidence["from_country"] == "PL"


@pytest.mark.parametrize("event_type, price, fires", [
    ("purchase", 499.99, False), ("purchase", 500, True), ("purchase", 1200.5, True), ("cart", 900, False),
])
def test_high_value_purchase(event_type, price, fires):
    alerts = detect(AlertState(), "u1", [AlertEvent(0, event_type, "s1", price=price, product_id="p9")], RULES)
    assert ("HIGH_VALUE_PURCHASE" in _types(alerts)) is fires
    if fires:
        assert alerts[0].evidence == {"price": price, "product_id": "p9"} and alerts[0].severity == "medium"


def test_cooldown_per_user_and_type_ends_exactly_after_10_minutes():
    state = AlertState()
    buy = lambda t: AlertEvent(t, "purchase", "s1", price=800)  # noqa: E731
    assert len(detect(state, "u1", [buy(0)], RULES)) == 1
    assert detect(state, "u1", [buy(599_999)], RULES) == []  # still cooling down
    again = detect(state, "u1", [buy(600_000)], RULES)
    assert [a.alert_id for a in again] == ["HIGH_VALUE_PURCHASE:u1:600000"]
    # another type is not held back by this one's cooldown
    other = detect(state, "u1", [AlertEvent(600_001, "view", None, country="PL"),
                                 AlertEvent(600_002, "view", None, country="FR")], RULES)
    assert _types(other) == ["LOCATION_JUMP"]


def test_the_same_events_from_the_same_state_raise_the_same_alerts():
    events = [AlertEvent(i * 100, "view", "s1", ip_address=f"10.0.0.{i % 4}") for i in range(40)]
    first = detect(AlertState(), "u7", events, RULES)
    assert first == detect(AlertState(), "u7", events, RULES)
    assert sorted(_types(first)) == ["HIGH_VELOCITY", "MULTIPLE_IPS", "RAPID_ACTIONS"]
