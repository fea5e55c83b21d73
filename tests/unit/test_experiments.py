"""Experiments (DESIGN.md §14): assignment (stable, in proportion to the weights), exposure and
recommendations, the statistics against values computed by hand, and the file's checks."""
from __future__ import annotations

import math

import pytest
from scipy.stats import chisquare

from app.config import DEFAULT_RULES_FILE, InvalidConfigError
from app.experiments.design import EXAMPLE_EXPERIMENTS, load_experiments, parse_experiments
from app.experiments.results import variant_documents
from app.segments.rules import load_rules
from app.sessions.tracker import Event, SessionSettings, process_events
from app.sinks.exactly_once import experiment_deltas

SEGMENTS = [s.name for s in load_rules(DEFAULT_RULES_FILE).segments]


def _experiments(**change):
    experiment = {"name": "exp", "segments": ["browser"], "success": {"metric": "purchase_count", "op": ">=", "value": 1},
                  "variants": [{"name": "control", "weight": 2},
                               {"name": "b", "weight": 1, "recommendations": {"browser": ["B text"]}},
                               {"name": "c", "weight": 1}], **change}
    return parse_experiments({"experiment_version": "e1", "experiments": [experiment]}, segments=SEGMENTS)


def test_assignment_is_stable_and_follows_the_weights():
    experiment = _experiments().experiments[0]
    users = [str(500_000_000 + i) for i in range(100_000)]
    first = [experiment.variant_for(u).name for u in users]
    assert first == [experiment.variant_for(u).name for u in users]  # the same, every time
    observed = [first.count(name) for name in ("control", "b", "c")]
    expected = [50_000, 25_000, 25_000]
    assert chisquare(observed, expected).pvalue > 0.001, observed
    other = parse_experiments({"experiment_version": "e1", "experiments": [
        {**{"name": "other", "segments": ["browser"], "success": {"metric": "purchase_count", "op": ">=", "value": 1}},
         "variants": [{"name": "control", "weight": 2}, {"name": "b", "weight": 1}, {"name": "c", "weight": 1}]}]},
        segments=SEGMENTS).experiments[0]
    same = sum(a == other.variant_for(u).name for u, a in zip(users[:10_000], first))
    assert 3_000 < same < 4_500  # another experiment's assignment is independent (0.5²+0.25²+0.25² = 37.5%)


def test_exposure_and_the_variants_recommendations():
    experiments = _experiments()
    user = next(str(i) for i in range(1000) if experiments.experiments[0].variant_for(str(i)).name == "b")
    control = next(str(i) for i in range(1000) if experiments.experiments[0].variant_for(str(i)).name == "control")
    assert experiments.apply(user, [{"segment": "bouncer"}], "bouncer", ["stay"]) == ({}, ["stay"])
    assert experiments.apply(user, [{"segment": "bouncer"}], "browser", ["default"]) == ({"exp": "b"}, ["B text"])
    assert experiments.apply(control, [], "browser", ["default"]) == ({"exp": "control"}, ["default"])
    # exposed once in a target segment, always exposed; the replacement only in that segment
    assert experiments.apply(user, [{"segment": "browser"}], "engaged_shopper", ["buy"]) == ({"exp": "b"}, ["buy"])


def test_sessions_carry_their_experiments():
    experiments = _experiments()
    user = next(str(i) for i in range(1000) if experiments.experiments[0].variant_for(str(i)).name == "b")
    settings = SessionSettings(30 * 60_000, 24 * 3_600_000, load_rules(DEFAULT_RULES_FILE), experiments=experiments)
    events = [Event(1_000_000 + i * 1000, f"e{i}", kind, user, "s1", "p1", "c1", 5.0)
              for i, kind in enumerate(["view", "cart"])]
    [doc] = process_events(None, events, 0, settings).out.sessions
    assert doc["experiments"] == {"exp": "b"} and doc["recommendations"] == ["B text"]


def test_two_proportion_test_matches_the_textbook():
    # 200/1000 vs 150/1000: pooled p = 0.175, se = sqrt(p(1-p)(2/1000)), z = 0.05 / se = 2.9424, p = 0.00326
    experiment = _experiments().experiments[0]
    docs = variant_documents(experiment, {"control": {"exposed_sessions": 1000, "conversions": 150},
                                          "b": {"exposed_sessions": 1000, "conversions": 200},
                                          "c": {"exposed_sessions": 0, "conversions": 0}})
    b = docs["b"]
    se = math.sqrt(0.175 * 0.825 * 2 / 1000)
    assert b["z"] == pytest.approx(0.05 / se, rel=1e-9)
    assert b["p_value"] == pytest.approx(math.erfc(0.05 / se / math.sqrt(2)), rel=1e-9)
    assert b["p_value"] == pytest.approx(0.00326, abs=1e-5) and b["significant"]
    assert (b["lift_abs"], b["lift_pct"]) == (0.05, pytest.approx(33.3333, abs=1e-4))
    # Wilson 95% interval of 200/1000, by hand
    z, p, n = 1.959963984540054, 0.2, 1000
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (b["ci95_low"], b["ci95_high"]) == (pytest.approx(centre - half, abs=1e-6), pytest.approx(centre + half, abs=1e-6))
    assert docs["control"]["p_value"] is None and docs["control"]["is_control"]
    assert docs["c"]["conversion_rate"] is None and docs["c"]["p_value"] is None


def test_sample_ratio_mismatch():
    experiment = _experiments().experiments[0]
    fine = variant_documents(experiment, {"control": {"exposed_sessions": 2010, "conversions": 1},
                                          "b": {"exposed_sessions": 990, "conversions": 1},
                                          "c": {"exposed_sessions": 1000, "conversions": 1}})
    broken = variant_documents(experiment, {"control": {"exposed_sessions": 2000, "conversions": 1},
                                            "b": {"exposed_sessions": 1300, "conversions": 1},
                                            "c": {"exposed_sessions": 700, "conversions": 1}})
    assert not fine["b"]["sample_ratio_mismatch"] and fine["b"]["srm_p_value"] > 0.5
    assert broken["c"]["sample_ratio_mismatch"] and broken["c"]["srm_p_value"] < 1e-6


def test_deltas_count_exposed_sessions_and_conversions():
    experiments = _experiments()
    closed = [{"experiments": {"exp": "b"}, "metrics": {"purchase_count": 1}},
              {"experiments": {"exp": "b"}, "metrics": {"purchase_count": 0}},
              {"experiments": {"exp": "control"}, "metrics": {"purchase_count": 0}},
              {"experiments": {}, "metrics": {"purchase_count": 3}},
              {"experiments": {"removed": "x"}, "metrics": {"purchase_count": 1}}]
    deltas = experiment_deltas(experiments, closed)
    assert {k: dict(v) for k, v in deltas.items()} == {"exp": {"b": {"exposed_sessions": 2, "conversions": 1},
                                                               "control": {"exposed_sessions": 1, "conversions": 0}}}


def test_example_file_loads():
    experiments = load_experiments(EXAMPLE_EXPERIMENTS)
    assert [v.name for v in experiments.experiments[0].variants] == ["control", "ten_percent_off", "free_shipping"]


@pytest.mark.parametrize("change, field", [
    ({"segments": ["vip"]}, ".segments: unknown segment 'vip'"),
    ({"variants": [{"name": "only", "weight": 1}]}, ".variants"),
    ({"variants": [{"name": "a", "weight": 0}, {"name": "b", "weight": 1}]}, ".weight"),
    ({"variants": [{"name": "a", "weight": 1, "recommendations": {"nope": ["x"]}}, {"name": "b", "weight": 1}]},
     ".recommendations: unknown segment 'nope'"),
    ({"control": "z"}, ".control"),
    ({"success": {"metric": "x", "op": ">=", "value": 1}}, ".success.metric"),
    ({"name": "a|b"}, ".name"),
])
def test_a_broken_experiment_fails_naming_the_field(change, field):
    with pytest.raises(InvalidConfigError, match="EXPERIMENTS_FILE") as err:
        _experiments(**change)
    assert field in str(err.value)
