"""Funnel and segment-distribution arithmetic over closed sessions (DESIGN.md §8). Pure Python.

The stores keep additive sums; every derived figure is recomputed from them, so applying a
batch is a pure function of (previous sums, the batch's closed sessions).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping

WINDOW_MS = 5 * 60 * 1000
FUNNEL_SUMS = ("total_sessions", "total_views", "total_carts", "total_purchases", "sum_duration_minutes",
               "total_revenue", "unique_users")
DISTRIBUTION_SUMS = ("session_count", "unique_users", "total_revenue", "sum_duration_minutes")


def _rate(numerator: float, denominator: float) -> float:
    return round(100.0 * numerator / denominator, 2) if denominator else 0.0


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 2) if denominator else 0.0


def add_minutes(a: float, b: float) -> float:
    """Durations are whole milliseconds: added as integers, so the sum does not depend on the
    order the sessions were added in (float addition does, in its last digits)."""
    return (round(a * 60_000) + round(b * 60_000)) / 60_000


def window_start_ms(session_end_ms: int) -> int:
    return session_end_ms - session_end_ms % WINDOW_MS


def utc(value: datetime) -> datetime:
    """A stored datetime (naive UTC, as BSON gives it back) or an aware one -> aware, in UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def floor_hour(value: datetime) -> datetime:
    return utc(value).replace(minute=0, second=0, microsecond=0)


def to_datetime(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)


def funnel_deltas(closed: Iterable[Mapping]) -> dict[str, dict]:
    """segment -> additive sums of this batch's closed sessions (unique_users added separately)."""
    deltas: dict[str, dict] = defaultdict(lambda: dict.fromkeys(FUNNEL_SUMS, 0))
    for s in closed:
        d = deltas[s["behavior_segment"]]
        d["total_sessions"] += 1
        d["total_views"] += s["view_count"]
        d["total_carts"] += s["cart_count"]
        d["total_purchases"] += s["purchase_count"]
        d["sum_duration_minutes"] = add_minutes(d["sum_duration_minutes"], s["session_duration_minutes"])
        d["total_revenue"] += s["total_amount"] or 0.0
    return dict(deltas)


def distribution_deltas(closed: Iterable[Mapping]) -> dict[tuple[int, str], dict]:
    """(window_start_ms, segment) -> additive sums, windows by session_end."""
    deltas: dict[tuple[int, str], dict] = defaultdict(lambda: dict.fromkeys(DISTRIBUTION_SUMS, 0))
    for s in closed:
        d = deltas[(window_start_ms(s["session_end_ms"]), s["behavior_segment"])]
        d["session_count"] += 1
        d["sum_duration_minutes"] = add_minutes(d["sum_duration_minutes"], s["session_duration_minutes"])
        d["total_revenue"] += s["total_amount"] or 0.0
    return dict(deltas)


def add_sums(previous: Mapping | None, delta: Mapping, names: Iterable[str]) -> dict:
    previous = previous or {}
    return {n: add_minutes(previous.get(n, 0), delta.get(n, 0)) if n == "sum_duration_minutes"
            else previous.get(n, 0) + delta.get(n, 0) for n in names}


def funnel_document(segment: str, sums: Mapping) -> dict:
    sessions, revenue = sums["total_sessions"], sums["total_revenue"]
    return {
        "_id": segment,
        "behavior_segment": segment,
        **{n: sums[n] for n in FUNNEL_SUMS},
        "total_revenue": round(revenue, 2),
        "avg_session_duration": _ratio(sums["sum_duration_minutes"], sessions),
        "avg_revenue_per_session": _ratio(revenue, sessions),
        "view_to_cart_rate": _rate(sums["total_carts"], sums["total_views"]),
        "cart_to_purchase_rate": _rate(sums["total_purchases"], sums["total_carts"]),
        "overall_conversion_rate": _rate(sums["total_purchases"], sums["total_views"]),
        "avg_order_value": _ratio(revenue, sums["total_purchases"]),
    }


def distribution_document(window_ms: int, segment: str, sums: Mapping) -> dict:
    start = to_datetime(window_ms)
    figures = window_figures(sums)
    return {
        "_id": f"{start.strftime('%Y-%m-%dT%H:%M:%SZ')}|{segment}",
        "window_start": start,
        "window_end": to_datetime(window_ms + WINDOW_MS),
        "behavior_segment": segment,
        **{n: sums[n] for n in DISTRIBUTION_SUMS},
        "total_revenue": figures["total_revenue"],
        "avg_session_duration": figures["avg_session_duration"],
    }


def window_figures(sums: Mapping, share_pct: float | None = None) -> dict:
    """A segment's figures in a window, from its DISTRIBUTION_SUMS, as /v1/segments/distribution
    shows them (with its share of the window's sessions, when given)."""
    figures = {"session_count": sums["session_count"]}
    if share_pct is not None:
        figures["share_pct"] = share_pct
    figures.update(unique_users=sums["unique_users"], total_revenue=round(sums["total_revenue"], 2),
                   avg_session_duration=_ratio(sums["sum_duration_minutes"], sums["session_count"]))
    return figures


def share_pct(session_counts: Mapping[str, int]) -> dict[str, float]:
    """segment -> share of the window's closed sessions, in percent."""
    total = sum(session_counts.values())
    return {segment: _rate(count, total) for segment, count in session_counts.items()}
