"""The segment rules engine and the default rules file (DESIGN.md §7)."""
from __future__ import annotations

import itertools

import pytest
import yaml

from app.config import DEFAULT_RULES_FILE, InvalidConfigError
from app.segments.rules import load_rules, parse_rules

ABANDONED_CART = "Send an abandoned-cart email within 1 hour"


@pytest.fixture(scope="module")
def rules():
    return load_rules(DEFAULT_RULES_FILE)


def metrics(**overrides):
    """A one-event bouncer session; overrides make it something else."""
    base = {"total_events": 1, "session_duration_minutes": 0.0, "view_count": 1, "cart_count": 0,
            "remove_cart_count": 0, "purchase_count": 0, "other_count": 0, "unique_products": 1,
            "unique_categories": 1, "total_amount": None, "engagement_rate": 1.0,
            "cart_conversion_rate": 0.0, "purchase_conversion_rate": 0.0, "overall_conversion_rate": 0.0}
    return {**base, **overrides}


POWER = dict(total_events=30, session_duration_minutes=30.0, purchase_count=1, total_amount=10.0)
ENGAGED_BY_ACTIVITY = dict(total_events=10, session_duration_minutes=10.0, cart_count=1)


@pytest.mark.parametrize("overrides, expected", [
    # power_user: total_events >= 30 (with duration 30 and a purchase; below -> engaged by purchase)
    ({**POWER, "total_events": 29}, "engaged_shopper"),
    ({**POWER, "total_events": 30}, "power_user"),
    ({**POWER, "total_events": 31}, "power_user"),
    # power_user: duration >= 30 min
    ({**POWER, "session_duration_minutes": 29.99}, "engaged_shopper"),
    ({**POWER, "session_duration_minutes": 30.0}, "power_user"),
    ({**POWER, "session_duration_minutes": 30.01}, "power_user"),
    # power_user: purchase_count >= 1 (without a purchase nor a cart, 30 events make a browser)
    ({**POWER, "purchase_count": 0, "total_amount": None}, "browser"),
    ({**POWER, "purchase_count": 1}, "power_user"),
    ({**POWER, "purchase_count": 2}, "power_user"),
    # engaged_shopper: purchase_count >= 1 on an otherwise tiny session
    (dict(purchase_count=0), "bouncer"),
    (dict(purchase_count=1, total_amount=5.0), "engaged_shopper"),
    (dict(purchase_count=2, total_amount=5.0), "engaged_shopper"),
    # engaged_shopper: total_events >= 10 (and duration 10 and a cart; below -> browser)
    ({**ENGAGED_BY_ACTIVITY, "total_events": 9}, "browser"),
    ({**ENGAGED_BY_ACTIVITY, "total_events": 10}, "engaged_shopper"),
    ({**ENGAGED_BY_ACTIVITY, "total_events": 11}, "engaged_shopper"),
    # engaged_shopper: duration >= 10 min
    ({**ENGAGED_BY_ACTIVITY, "session_duration_minutes": 9.99}, "browser"),
    ({**ENGAGED_BY_ACTIVITY, "session_duration_minutes": 10.0}, "engaged_shopper"),
    ({**ENGAGED_BY_ACTIVITY, "session_duration_minutes": 10.01}, "engaged_shopper"),
    # engaged_shopper: cart_count >= 1
    ({**ENGAGED_BY_ACTIVITY, "cart_count": 0}, "browser"),
    ({**ENGAGED_BY_ACTIVITY, "cart_count": 1}, "engaged_shopper"),
    ({**ENGAGED_BY_ACTIVITY, "cart_count": 2}, "engaged_shopper"),
    # browser: total_events >= 3
    (dict(total_events=2), "bouncer"),
    (dict(total_events=3), "browser"),
    (dict(total_events=4), "browser"),
    # browser: duration >= 1 min
    (dict(total_events=2, session_duration_minutes=0.99), "bouncer"),
    (dict(total_events=2, session_duration_minutes=1.0), "browser"),
    (dict(total_events=2, session_duration_minutes=1.01), "browser"),
    # browser: cart_count >= 1
    (dict(cart_count=0), "bouncer"),
    (dict(cart_count=1), "browser"),
    (dict(cart_count=2), "browser"),
])
def test_thresholds(rules, overrides, expected):
    assert rules.classify(metrics(**overrides)).name == expected


def test_segment_attributes(rules):
    got = {s.name: (s.score, s.color, s.action_priority) for s in rules.segments}
    assert got == {"power_user": (100, "🔵", 1), "engaged_shopper": (75, "🟢", 3),
                   "browser": (50, "🟡", 2), "bouncer": (25, "🔴", 4)}
    assert [s.name for s in rules.segments] == ["power_user", "engaged_shopper", "browser", "bouncer"]


def test_rule_version(rules):
    assert rules.version == "segments-v1"


def test_first_match_wins(rules):
    # A power user also satisfies engaged_shopper and browser: the first listed wins.
    power = metrics(**POWER, cart_count=3)
    assert [s.name for s in rules.segments if s.matches(power)] == ["power_user", "engaged_shopper",
                                                                     "browser", "bouncer"]
    assert rules.classify(power).name == "power_user"


def test_first_match_wins_follows_file_order():
    document = {"rule_version": "t1", "segments": [
        {"name": "wide", "score": 1, "color": "x", "action_priority": 1,
         "when": {"metric": "total_events", "op": ">=", "value": 1}},
        {"name": "narrow", "score": 2, "color": "y", "action_priority": 2,
         "when": {"metric": "total_events", "op": ">=", "value": 5}},
        {"name": "rest", "score": 3, "color": "z", "action_priority": 3, "when": "otherwise"},
    ]}
    assert parse_rules(document).classify(metrics(total_events=10)).name == "wide"
    document["segments"][:2] = reversed(document["segments"][:2])
    assert parse_rules(document).classify(metrics(total_events=10)).name == "narrow"
    assert parse_rules(document).classify(metrics(total_events=0)).name == "rest"


def _first_matching_by_hand(events: int, minutes: float, carts: int, purchases: int) -> str:
    """DESIGN §7's table, written out independently of the rules file."""
    if events >= 30 and minutes >= 30 and purchases >= 1:
        return "power_user"
    if purchases >= 1 or (events >= 10 and minutes >= 10 and carts >= 1):
        return "engaged_shopper"
    if events >= 3 or minutes >= 1 or carts >= 1:
        return "browser"
    return "bouncer"


def test_every_session_gets_exactly_the_segment_of_the_design_table(rules):
    seen = set()
    grid = itertools.product([0, 1, 2, 3, 9, 10, 29, 30, 100], [0.0, 0.5, 1.0, 9.9, 10.0, 30.0, 1440.0],
                             [0, 1, 3], [0, 1, 2])
    for events, minutes, carts, purchases in grid:
        segment = rules.classify(metrics(total_events=events, session_duration_minutes=minutes,
                                         cart_count=carts, purchase_count=purchases))
        assert segment.name == _first_matching_by_hand(events, minutes, carts, purchases), \
            (events, minutes, carts, purchases)
        seen.add(segment.name)
    assert seen == {s.name for s in rules.segments}


def test_missing_metric_counts_as_zero(rules):
    assert rules.classify({}).name == "bouncer"
    assert rules.classify({"total_amount": None, "purchase_count": None}).name == "bouncer"


def test_browser_with_a_cart_gets_the_abandoned_cart_email(rules):
    m = metrics(total_events=4, cart_count=1)
    segment = rules.classify(m)
    assert segment.name == "browser"
    assert segment.recommend(m) == [
        ABANDONED_CART,
        "Offer a limited-time 5-10% discount on viewed items",
        "Show social proof: ratings and 'n people bought this today'",
    ]


def test_browser_without_a_cart_gets_no_abandoned_cart_email(rules):
    m = metrics(total_events=4, cart_count=0)
    segment = rules.classify(m)
    assert segment.name == "browser"
    recommendations = segment.recommend(m)
    assert ABANDONED_CART not in recommendations
    assert len(recommendations) == 2


def test_engaged_shopper_recommendations_depend_on_purchase(rules):
    engaged = rules.by_name("engaged_shopper")
    bought = engaged.recommend(metrics(purchase_count=1))
    carted = engaged.recommend(metrics(**ENGAGED_BY_ACTIVITY))
    assert "Send a post-purchase thank-you with cross-sell recommendations" in bought
    assert "Remind about items still in the cart with free-shipping threshold" not in bought
    assert "Remind about items still in the cart with free-shipping threshold" in carted
    assert "Send a post-purchase thank-you with cross-sell recommendations" not in carted
    assert "Invite to the loyalty programme" in bought and "Invite to the loyalty programme" in carted


@pytest.mark.parametrize("name, count", [("power_user", 3), ("bouncer", 2)])
def test_unconditional_recommendations_always_apply(rules, name, count):
    assert len(rules.by_name(name).recommend(metrics())) == count


# ---------------------------------------------------------------- broken rules files


def valid_document():
    return yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))


def _unknown_metric(doc):
    doc["segments"][0]["when"]["all"][0]["metric"] = "total_eventz"


def _bad_op(doc):
    doc["segments"][2]["when"]["any"][0]["op"] = "=>"


def _missing_score(doc):
    del doc["segments"][1]["score"]


def _string_priority(doc):
    doc["segments"][1]["action_priority"] = "high"


def _float_priority(doc):
    doc["segments"][1]["action_priority"] = 1.5


def _last_not_otherwise(doc):
    doc["segments"][-1]["when"] = {"metric": "total_events", "op": ">=", "value": 0}


def _duplicate_names(doc):
    doc["segments"][2]["name"] = "engaged_shopper"


def _missing_rule_version(doc):
    del doc["rule_version"]


def _non_numeric_value(doc):
    doc["segments"][2]["when"]["any"][0]["value"] = "three"


def _recommendation_without_text(doc):
    doc["segments"][3]["recommendations"][0] = {"when": {"metric": "cart_count", "op": ">=", "value": 1}}


@pytest.mark.parametrize("breaks, must_name", [
    (_unknown_metric, "metric"),
    (_bad_op, ".op"),
    (_missing_score, "score"),
    (_string_priority, "action_priority"),
    (_float_priority, "action_priority"),
    (_last_not_otherwise, "otherwise"),
    (_duplicate_names, "names"),
    (_missing_rule_version, "rule_version"),
    (_non_numeric_value, "value"),
    (_recommendation_without_text, "text"),
])
def test_broken_rules_file_fails_with_a_one_line_message_naming_the_field(tmp_path, breaks, must_name):
    doc = valid_document()
    breaks(doc)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(InvalidConfigError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert "\n" not in message
    assert must_name in message
    assert "RULES_FILE" in message and str(path) in message


def test_unknown_metric_message_names_the_metric_and_where(tmp_path):
    doc = valid_document()
    _unknown_metric(doc)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    where = r"segments\[0\] \(power_user\)\.when\.all\[0\]\.metric"
    with pytest.raises(InvalidConfigError, match=where + r".*'total_eventz'"):
        load_rules(path)


def test_bad_op_message_names_the_operator(tmp_path):
    doc = valid_document()
    _bad_op(doc)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(InvalidConfigError, match=r"segments\[2\] \(browser\)\.when\.any\[0\]\.op.*'=>'"):
        load_rules(path)


@pytest.mark.parametrize("text", [
    "rule_version: v1\nsegments: [\n  - name: a\n",   # unterminated flow sequence
    "rule_version: 'v1\n",                             # unterminated quote
    "\tkey: value\n",                                  # tab indentation
])
def test_unreadable_yaml_fails_with_a_one_line_message(tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidConfigError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"RULES_FILE {path}")


def test_missing_rules_file_fails_with_invalid_config(tmp_path):
    with pytest.raises(InvalidConfigError, match="RULES_FILE") as caught:
        load_rules(tmp_path / "nope.yaml")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text, must_name", [
    ("", "mapping"),
    ("- just\n- a list\n", "mapping"),
    ("rule_version: v1\n", "segments"),
    ("rule_version: v1\nsegments: []\n", "segments"),
    ("rule_version: ''\nsegments: []\n", "rule_version"),
])
def test_wrong_top_level_shape(tmp_path, text, must_name):
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidConfigError, match=must_name):
        load_rules(path)


def test_a_valid_custom_rules_file_loads(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rule_version: custom-7\n"
        "segments:\n"
        "  - {name: buyer, score: 9, color: g, action_priority: 1,\n"
        "     when: {metric: total_amount, op: '>', value: 100}}\n"
        "  - {name: rest, score: 1, color: r, action_priority: 2, when: otherwise}\n",
        encoding="utf-8")
    rules = load_rules(path)
    assert rules.version == "custom-7"
    assert rules.classify(metrics(purchase_count=1, total_amount=100.01)).name == "buyer"
    assert rules.classify(metrics(purchase_count=1, total_amount=100.0)).name == "rest"
    assert rules.classify(metrics(total_amount=None)).name == "rest"
