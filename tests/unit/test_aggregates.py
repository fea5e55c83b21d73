"""Funnel and segment-distribution arithmetic (DESIGN.md §8)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from app.aggregates import (DISTRIBUTION_SUMS, FUNNEL_SUMS, add_sums, distribution_deltas, distribution_document,
                            funnel_deltas, funnel_document, share_pct, window_start_ms)

MIN = 60_000
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z, on a 5-minute boundary


def closed(segment, views=0, carts=0, purchases=0, minutes=0.0, amount=None, end_ms=T0):
    return {"behavior_segment": segment, "view_count": views, "cart_count": carts, "purchase_count": purchases,
            "session_duration_minutes": minutes, "total_amount": amount, "session_end_ms": end_ms}


SESSIONS = [
    closed("engaged_shopper", views=4, carts=2, purchases=1, minutes=12.0, amount=100.0),
    closed("engaged_shopper", views=6, carts=1, purchases=1, minutes=20.5, amount=50.55),
    closed("engaged_shopper", views=2, carts=0, purchases=0, minutes=10.0, amount=None),
    closed("bouncer", views=1, minutes=0.0),
]


def test_funnel_deltas_sum_per_segment():
    deltas = funnel_deltas(SESSIONS)
    assert set(deltas) == {"engaged_shopper", "bouncer"}
    assert deltas["engaged_shopper"] == {"total_sessions": 3, "total_views": 12, "total_carts": 3,
                                         "total_purchases": 2, "sum_duration_minutes": 42.5,
                                         "total_revenue": pytest.approx(150.55), "unique_users": 0}
    assert deltas["bouncer"] == {"total_sessions": 1, "total_views": 1, "total_carts": 0, "total_purchases": 0,
                                 "sum_duration_minutes": 0.0, "total_revenue": 0.0, "unique_users": 0}


def test_funnel_deltas_of_no_sessions_is_empty():
    assert funnel_deltas([]) == {}


def test_funnel_document_rates_and_averages():
    sums = {**funnel_deltas(SESSIONS)["engaged_shopper"], "unique_users": 2}
    doc = funnel_document("engaged_shopper", sums)
    assert doc == {
        "_id": "engaged_shopper",
        "behavior_segment": "engaged_shopper",
        "total_sessions": 3, "total_views": 12, "total_carts": 3, "total_purchases": 2,
        "sum_duration_minutes": 42.5, "unique_users": 2,
        "total_revenue": 150.55,
        "avg_session_duration": 14.17,        # 42.5 / 3
        "avg_revenue_per_session": 50.18,     # 150.55 / 3
        "view_to_cart_rate": 25.0,            # 100 * 3 / 12
        "cart_to_purchase_rate": 66.67,       # 100 * 2 / 3
        "overall_conversion_rate": 16.67,     # 100 * 2 / 12
        "avg_order_value": 75.28,             # 150.55 / 2 = 75.275
    }


def test_funnel_document_with_zero_denominators():
    doc = funnel_document("bouncer", funnel_deltas([closed("bouncer", minutes=0.5)])["bouncer"])
    assert (doc["view_to_cart_rate"], doc["cart_to_purchase_rate"], doc["overall_conversion_rate"]) == (0.0, 0.0, 0.0)
    assert (doc["avg_order_value"], doc["total_revenue"], doc["avg_revenue_per_session"]) == (0.0, 0.0, 0.0)
    assert doc["avg_session_duration"] == 0.5


def test_funnel_sums_accumulate_across_batches_like_one_batch():
    first, second = SESSIONS[:2], SESSIONS[2:]
    running = None
    for batch in (first, second):
        delta = funnel_deltas(batch).get("engaged_shopper", {})
        running = add_sums(running, delta, FUNNEL_SUMS)
    assert funnel_document("engaged_shopper", running) == \
        funnel_document("engaged_shopper", funnel_deltas(SESSIONS)["engaged_shopper"])


def test_add_sums_starts_from_nothing():
    assert add_sums(None, {"session_count": 2, "total_revenue": 1.5}, DISTRIBUTION_SUMS) == {
        "session_count": 2, "unique_users": 0, "total_revenue": 1.5, "sum_duration_minutes": 0}


@pytest.mark.parametrize("end_ms, window_ms", [
    (T0, T0),
    (T0 + 1, T0),
    (T0 + 5 * MIN - 1, T0),
    (T0 + 5 * MIN, T0 + 5 * MIN),
    (T0 + 7 * MIN + 30_000, T0 + 5 * MIN),
    (T0 - 1, T0 - 5 * MIN),
])
def test_window_start_is_the_5_minute_floor_of_session_end(end_ms, window_ms):
    assert window_start_ms(end_ms) == window_ms


def test_distribution_deltas_window_by_session_end():
    sessions = [
        closed("browser", minutes=3.0, end_ms=T0 + 1 * MIN),
        closed("browser", minutes=5.0, end_ms=T0 + 4 * MIN + 59_999),
        closed("browser", minutes=7.0, end_ms=T0 + 5 * MIN),
        closed("engaged_shopper", purchases=1, minutes=12.0, amount=20.0, end_ms=T0 + 2 * MIN),
        closed("engaged_shopper", purchases=1, minutes=8.0, amount=10.25, end_ms=T0 + 3 * MIN),
    ]
    deltas = distribution_deltas(sessions)
    assert deltas == {
        (T0, "browser"): {"session_count": 2, "unique_users": 0, "total_revenue": 0.0, "sum_duration_minutes": 8.0},
        (T0 + 5 * MIN, "browser"): {"session_count": 1, "unique_users": 0, "total_revenue": 0.0,
                                    "sum_duration_minutes": 7.0},
        (T0, "engaged_shopper"): {"session_count": 2, "unique_users": 0, "total_revenue": 30.25,
                                  "sum_duration_minutes": 20.0},
    }


def test_distribution_document():
    sums = {"session_count": 3, "unique_users": 2, "total_revenue": 30.256, "sum_duration_minutes": 10.0}
    doc = distribution_document(T0 + 5 * MIN, "browser", sums)
    assert doc == {
        "_id": "2024-05-01T12:05:00Z|browser",
        "window_start": datetime(2024, 5, 1, 12, 5, tzinfo=timezone.utc),
        "window_end": datetime(2024, 5, 1, 12, 10, tzinfo=timezone.utc),
        "behavior_segment": "browser",
        "session_count": 3, "unique_users": 2, "sum_duration_minutes": 10.0,
        "total_revenue": 30.26,
        "avg_session_duration": 3.33,
    }
    assert doc["window_start"].utcoffset().total_seconds() == 0


def test_share_pct_of_a_window():
    shares = share_pct({"bouncer": 1, "browser": 2, "engaged_shopper": 1})
    assert shares == {"bouncer": 25.0, "browser": 50.0, "engaged_shopper": 25.0}


@pytest.mark.parametrize("counts, expected", [
    ({"a": 1, "b": 1, "c": 1}, {"a": 33.33, "b": 33.33, "c": 33.33}),
    ({"a": 1, "b": 2, "c": 4}, {"a": 14.29, "b": 28.57, "c": 57.14}),
    ({"a": 7}, {"a": 100.0}),
    ({"a": 5, "b": 3, "c": 1, "d": 13}, {"a": 22.73, "b": 13.64, "c": 4.55, "d": 59.09}),
])
def test_share_pct_of_known_windows(counts, expected):
    shares = share_pct(counts)
    assert shares == expected
    assert sum(shares.values()) == pytest.approx(100.0, abs=0.01 * len(counts))


def test_share_pct_of_thirds():
    assert share_pct({"a": 1, "b": 1, "c": 1}) == {"a": 33.33, "b": 33.33, "c": 33.33}
