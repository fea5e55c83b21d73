"""Session metrics, DESIGN.md §6, on small hand-computed sessions."""
from __future__ import annotations

import pytest

from app.sessions.metrics import SessionAccumulator, session_metrics

T0 = 1_569_888_000_000  # 2019-10-01T00:00:00Z in epoch millis
SEC = 1000
MIN = 60 * SEC


def session(*events):
    """events: (offset_ms, event_type, product_id, category_id, price) -> metrics dict."""
    first = T0 + events[0][0]
    acc = SessionAccumulator(start_ms=first, end_ms=first)
    for offset_ms, event_type, product_id, category_id, price in events:
        acc.add(T0 + offset_ms, event_type, product_id, category_id, price)
    return acc, session_metrics(acc)


def views(n, spacing_ms=SEC, start_ms=0):
    return [(start_ms + i * spacing_ms, "view", f"p{i}", "c1", None) for i in range(n)]


def test_session_start_end_and_duration_in_minutes():
    acc, m = session((0, "view", "p1", "c1", None), (90 * SEC, "view", "p2", "c1", None))
    assert (acc.start_ms, acc.end_ms) == (T0, T0 + 90 * SEC)
    assert m["session_duration_minutes"] == 1.5


def test_out_of_order_events_use_min_and_max_event_time():
    acc, m = session((5 * MIN, "view", "p1", "c1", None), (0, "view", "p2", "c1", None),
                     (2 * MIN, "cart", "p2", "c1", None))
    assert (acc.start_ms, acc.end_ms) == (T0, T0 + 5 * MIN)
    assert m["session_duration_minutes"] == 5.0


def test_single_event_session_has_zero_duration():
    _, m = session((0, "view", "p1", "c1", None))
    assert m["session_duration_minutes"] == 0.0
    assert m["total_events"] == 1


def test_counts_per_event_type_including_other():
    _, m = session(
        (0, "view", "p1", "c1", None), (1 * SEC, "view", "p2", "c1", None), (2 * SEC, "view", "p3", "c1", None),
        (3 * SEC, "cart", "p1", "c1", None), (4 * SEC, "cart", "p2", "c1", None),
        (5 * SEC, "remove_from_cart", "p2", "c1", None),
        (6 * SEC, "purchase", "p1", "c1", 10.0),
        (7 * SEC, "other", None, None, None), (8 * SEC, "other", "p9", None, None),
    )
    assert {k: m[k] for k in ("total_events", "view_count", "cart_count", "remove_cart_count",
                              "purchase_count", "other_count")} == {
        "total_events": 9, "view_count": 3, "cart_count": 2, "remove_cart_count": 1,
        "purchase_count": 1, "other_count": 2}


def test_unique_products_and_categories_are_exact_distinct_counts():
    _, m = session(
        (0, "view", "1004237", "2053013555631882655", None),
        (1 * SEC, "view", "1004237", "2053013555631882655", None),   # same product again
        (2 * SEC, "cart", "1004237", "2053013555631882655", None),
        (3 * SEC, "view", "44600062", "2103807459595387724", None),
        (4 * SEC, "view", "44600063", "2053013555631882656", None),  # differs only in the last digit
        (5 * SEC, "view", None, None, None),                           # missing ids are not a product
    )
    assert (m["unique_products"], m["unique_categories"]) == (3, 3)


def test_many_distinct_products_are_counted_exactly():
    _, m = session(*views(1000))
    assert m["unique_products"] == 1000
    assert m["unique_categories"] == 1


def test_total_amount_is_null_without_purchase():
    _, m = session((0, "view", "p1", "c1", 99.0), (SEC, "cart", "p1", "c1", 99.0))
    assert m["total_amount"] is None


def test_total_amount_sums_purchase_prices_only():
    _, m = session((0, "view", "p1", "c1", 500.0), (SEC, "purchase", "p1", "c1", 10.10),
                   (2 * SEC, "cart", "p2", "c1", 300.0), (3 * SEC, "purchase", "p2", "c1", 20.25))
    assert m["total_amount"] == 30.35


def test_total_amount_of_a_free_purchase_is_zero_not_null():
    _, m = session((0, "purchase", "p1", "c1", 0.0))
    assert m["total_amount"] == 0.0


def test_engagement_rate_uses_one_minute_when_shorter():
    _, m = session(*views(5, spacing_ms=6 * SEC))  # 24 s
    assert m["session_duration_minutes"] == pytest.approx(0.4)
    assert m["engagement_rate"] == 5.0


def test_engagement_rate_of_a_zero_length_session():
    _, m = session((0, "view", "p1", "c1", None), (0, "cart", "p1", "c1", None))
    assert m["engagement_rate"] == 2.0


def test_engagement_rate_divides_by_duration_when_longer_than_a_minute():
    _, m = session(*views(9, spacing_ms=MIN), (4 * MIN, "view", "px", "c1", None))  # 10 events over 8 minutes
    assert m["session_duration_minutes"] == 8.0
    assert m["engagement_rate"] == 1.25


def test_engagement_rate_is_rounded_to_two_decimals():
    _, m = session(*views(7, spacing_ms=30 * SEC))  # 7 events over 3 minutes = 2.333...
    assert m["session_duration_minutes"] == 3.0
    assert m["engagement_rate"] == 2.33


def test_conversion_rates():
    _, m = session(
        (0, "view", "p1", "c1", None), (1 * SEC, "view", "p2", "c1", None), (2 * SEC, "view", "p3", "c1", None),
        (3 * SEC, "cart", "p1", "c1", None), (4 * SEC, "cart", "p2", "c1", None),
        (5 * SEC, "purchase", "p1", "c1", 5.0),
    )
    assert m["cart_conversion_rate"] == 66.67      # 100 * 2 / 3
    assert m["purchase_conversion_rate"] == 50.0   # 100 * 1 / 2
    assert m["overall_conversion_rate"] == 33.33   # 100 * 1 / 3


def test_conversion_rates_round_half_and_thirds_to_two_decimals():
    _, m = session(*views(6), (10 * SEC, "cart", "p0", "c1", None))
    assert m["cart_conversion_rate"] == 16.67  # 100 * 1 / 6 = 16.666...
    _, m = session(*views(7), (10 * SEC, "cart", "p0", "c1", None), (11 * SEC, "cart", "p1", "c1", None))
    assert m["cart_conversion_rate"] == 28.57  # 100 * 2 / 7 = 28.571...


def test_rates_are_zero_without_views():
    _, m = session((0, "cart", "p1", "c1", None), (SEC, "purchase", "p1", "c1", 3.0))
    assert m["cart_conversion_rate"] == 0.0
    assert m["overall_conversion_rate"] == 0.0
    assert m["purchase_conversion_rate"] == 100.0


def test_purchase_conversion_is_zero_without_carts():
    _, m = session((0, "view", "p1", "c1", None), (SEC, "purchase", "p1", "c1", 3.0))
    assert m["purchase_conversion_rate"] == 0.0
    assert m["overall_conversion_rate"] == 100.0
    assert m["cart_conversion_rate"] == 0.0


def test_rates_can_exceed_100_when_more_carts_than_views():
    _, m = session((0, "view", "p1", "c1", None), (SEC, "cart", "p1", "c1", None), (2 * SEC, "cart", "p2", "c1", None))
    assert m["cart_conversion_rate"] == 200.0


def test_accumulator_state_round_trip():
    acc, m = session((0, "view", "p2", "c1", None), (SEC, "purchase", "p1", "c2", 9.99))
    state = acc.to_state()
    assert state["products"] == ["p1", "p2"] and state["categories"] == ["c1", "c2"]
    restored = SessionAccumulator.from_state(state)
    assert restored == acc
    assert session_metrics(restored) == m
