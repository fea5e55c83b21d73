"""The arithmetic behind the analytics endpoints, over rollup documents the job keeps (app/rollups.py,
app/aggregates.py). Pure Python: no MongoDB, no HTTP."""
from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Iterable, Mapping

from app.aggregates import floor_hour, utc  # noqa: F401 (the endpoints' arithmetic: A.utc, A.floor_hour)

HOUR = timedelta(hours=1)
EVENT_METRICS = ("events", "views", "carts", "purchases")
SESSION_METRICS = ("sessions_closed", "revenue")
METRICS = EVENT_METRICS + SESSION_METRICS
_TYPE_METRIC = {"view": "views", "cart": "carts", "purchase": "purchases"}


def _rate(numerator: float, denominator: float) -> float:
    return round(100.0 * numerator / denominator, 2) if denominator else 0.0


def frequency(docs: Iterable[Mapping], interval: str) -> dict:
    """event_counts_hourly documents -> a series per bucket (hour or day) x event_type, and totals."""
    series: dict = defaultdict(lambda: defaultdict(int))
    totals: dict = defaultdict(int)
    for d in docs:
        bucket = floor_hour(d["hour"])
        if interval == "day":
            bucket = bucket.replace(hour=0)
        series[bucket][d["event_type"]] += d["events"]
        totals[d["event_type"]] += d["events"]
    return {"interval": interval, "total_events": sum(totals.values()), "by_event_type": dict(sorted(totals.items())),
            "series": [{"bucket": bucket, "events": sum(counts.values()), "by_event_type": dict(sorted(counts.items()))}
                       for bucket, counts in sorted(series.items())]}


def session_metrics(windows: Iterable[Mapping]) -> dict:
    """segment_distribution windows -> per segment: closed sessions, revenue, average duration.
    Revenue is added in cents and durations in milliseconds (what the windows keep), so the
    figures do not depend on the order the windows come in."""
    sums: dict = defaultdict(lambda: {"sessions": 0, "cents": 0, "duration_ms": 0})
    for w in windows:
        s = sums[w["behavior_segment"]]
        s["sessions"] += w["session_count"]
        s["cents"] += round(w["total_revenue"] * 100)
        minutes = (w["sum_duration_minutes"] if "sum_duration_minutes" in w
                   else w["avg_session_duration"] * w["session_count"])
        s["duration_ms"] += round(60_000 * minutes)
    total = sum(s["sessions"] for s in sums.values())
    segments = [{"behavior_segment": seg, "sessions": s["sessions"], "share_pct": _rate(s["sessions"], total),
                 "total_revenue": s["cents"] / 100,
                 "avg_session_duration": round(s["duration_ms"] / 60_000 / s["sessions"], 2) if s["sessions"] else 0.0,
                 "avg_revenue_per_session": round(s["cents"] / 100 / s["sessions"], 2) if s["sessions"] else 0.0}
                for seg, s in sorted(sums.items())]
    return {"total_sessions": total, "total_revenue": sum(s["cents"] for s in sums.values()) / 100,
            "segments": segments}


def user_session_metrics(sessions: list[Mapping]) -> dict:
    """One user's session documents -> the same figures, and the sessions themselves."""
    windows = [{"behavior_segment": s["behavior_segment"], "session_count": 1, "total_revenue": s.get("total_amount") or 0.0,
                "sum_duration_minutes": s["session_duration_minutes"], "avg_session_duration": 0.0} for s in sessions]
    return session_metrics(windows)


def patterns(docs: Iterable[Mapping], min_sessions: int, limit: int) -> dict:
    """session_paths documents -> the most frequent event paths (across the segments given)."""
    by_path: dict = defaultdict(lambda: {"sessions": 0, "conversions": 0, "total_revenue": 0.0, "segments": {}})
    for d in docs:
        p = by_path[d["event_path"]]
        p["sessions"] += d["sessions"]
        p["conversions"] += d["conversions"]
        p["total_revenue"] += d["total_revenue"]
        p["segments"][d["behavior_segment"]] = p["segments"].get(d["behavior_segment"], 0) + d["sessions"]
    total = sum(p["sessions"] for p in by_path.values())
    ranked = sorted(by_path.items(), key=lambda item: (-item[1]["sessions"], item[0]))
    return {"total_sessions": total, "distinct_paths": len(by_path), "patterns": [
        {"event_path": path, "steps": path.split(">") if path else [], "sessions": p["sessions"],
         "share_pct": _rate(p["sessions"], total), "conversions": p["conversions"],
         "conversion_rate": _rate(p["conversions"], p["sessions"]), "total_revenue": round(p["total_revenue"], 2),
         "segments": dict(sorted(p["segments"].items()))}
        for path, p in ranked if p["sessions"] >= min_sessions][:limit]}


def retention(docs: Iterable[Mapping], max_weeks: int) -> dict:
    """retention_cohorts documents -> per cohort: its size (users active in week 0) and, for weeks
    0..max_weeks, the users active that week and their share of the cohort."""
    cohorts: dict = defaultdict(dict)
    for d in docs:
        if 0 <= d["week"] <= max_weeks:
            cohorts[d["cohort_week"]][d["week"]] = d["users"]
    rows = []
    for cohort, weeks in sorted(cohorts.items()):
        size = weeks.get(0, 0)
        rows.append({"cohort_week": cohort, "users": size, "weeks": [
            {"week": k, "users": weeks.get(k, 0), "retention_pct": _rate(weeks.get(k, 0), size)}
            for k in range(max_weeks + 1)]})
    return {"max_weeks": max_weeks, "cohorts": rows}


def hourly_metrics(event_docs: Iterable[Mapping], windows: Iterable[Mapping]) -> dict[datetime, dict]:
    """hour -> {events, views, carts, purchases} from event_counts_hourly, {sessions_closed, revenue}
    from segment_distribution's 5-minute windows."""
    hours: dict = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    for d in event_docs:
        h = hours[floor_hour(d["hour"])]
        h["events"] += d["events"]
        metric = _TYPE_METRIC.get(d["event_type"])
        if metric:
            h[metric] += d["events"]
    cents: dict = defaultdict(int)  # revenue added in cents: the same in any order of the windows
    for w in windows:
        hour = floor_hour(w["window_start"])
        hours[hour]["sessions_closed"] += w["session_count"]
        cents[hour] += round(w["total_revenue"] * 100)
    for hour, total in cents.items():
        hours[hour]["revenue"] = total / 100
    return dict(hours)


def anomalies(hours: Mapping[datetime, Mapping], recent_start: datetime, end: datetime, baseline_start: datetime,
              threshold: float, metrics: Iterable[str] = METRICS) -> dict:
    """Each metric's hourly values over [baseline_start, recent_start) are its baseline (hours with
    nothing count as 0); each hour of [recent_start, end) gets z = (value - mean) / std (sample
    standard deviation of the baseline), and is an anomaly when |z| >= threshold. The metric's own
    z compares the recent hours' mean with the baseline the same way."""
    baseline_hours = _hours(baseline_start, recent_start)
    recent_hours = _hours(recent_start, end)
    out = []
    for metric in metrics:
        base = [float(hours.get(h, {}).get(metric, 0)) for h in baseline_hours]
        recent = [(h, float(hours.get(h, {}).get(metric, 0))) for h in recent_hours]
        mean = sum(base) / len(base) if base else None
        std = math.sqrt(sum((v - mean) ** 2 for v in base) / (len(base) - 1)) if len(base) >= 2 else None
        recent_mean = sum(v for _, v in recent) / len(recent) if recent else None
        flagged = []
        for h, v in recent:
            z = _z(v, mean, std)
            if z is not None and abs(z) >= threshold:
                flagged.append({"hour": h, "value": round(v, 2), "z_score": round(z, 2)})
        z_mean = _z(recent_mean, mean, std) if recent_mean is not None else None
        out.append({"metric": metric, "baseline_hours": len(base), "recent_hours": len(recent),
                    "baseline_mean": _round(mean), "baseline_std": _round(std), "recent_mean": _round(recent_mean),
                    "z_score": _round(z_mean), "anomalous": z_mean is not None and abs(z_mean) >= threshold,
                    "anomalous_hours": flagged})
    return {"baseline_start": baseline_start, "recent_start": recent_start, "end": end, "z_score_threshold": threshold,
            "metrics": out, "anomalies": sum(len(m["anomalous_hours"]) for m in out)}


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hours, h = [], floor_hour(start)
    while h < end:
        hours.append(h)
        h += HOUR
    return hours


def _z(value: float | None, mean: float | None, std: float | None) -> float | None:
    if value is None or mean is None or not std:
        return None  # no baseline, or a flat one: no z-score
    return (value - mean) / std


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
