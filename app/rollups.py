"""The rollups the query API reads instead of scanning collections that grow with events
(DESIGN.md §15). Pure Python; the driver adds each batch's deltas once (app/sinks/exactly_once.py).

- event_counts_hourly: counted events (sessionized: no duplicates, no late copy of a closed
  session's event) per hour of event time x event_type x country.
- session_paths: closed sessions per segment x event path (app/sessions/metrics.py event_path),
  with how many of them purchased and their revenue.
- retention_cohorts: distinct users with a closed session starting in week k of their cohort
  (the ISO week of the user's first event, from the profile), per cohort x k.
- daily_metrics: the same counted events, and the closed sessions with their revenue, per day of
  event time in one document by _id (FerretDB 1.24 scans any other read), for /v1/events/frequency
  and /v1/anomalies: `<day>|events|<country>` and `<day>|events|*` (all countries) hold
  {hours: {"HH": {event_type: events}}}; `<day>|windows` holds segment_distribution's windows of
  the day, {windows: {"HHMM": {segment: {session_count, unique_users, total_revenue,
  sum_duration_minutes}}}}, each window packed into one string (packed_window: FerretDB's cost is
  per value); `range` the first and last hour counted and the days with any,
  `range|windows` the last window and the days with any. Per month of event time, so that a read
  over many days is a few documents: `<YYYY-MM>|event_hours` {hours: {"DDHH": {event_type:
  events}}} (all countries), `<YYYY-MM>|window_hours` {hours: {"DDHH": {session_count,
  total_revenue}}} and `<YYYY-MM>|window_days` {days: {"DD": {segment: {session_count,
  total_revenue, sum_duration_minutes}}}}: the same deltas added by hour or day, for
  /v1/anomalies and /v1/sessions/metrics over whole hours or days.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Mapping

from app.aggregates import DISTRIBUTION_SUMS, add_minutes, to_datetime

HOUR_MS = 3_600_000
UNKNOWN_COUNTRY = "unknown"
EVENT_COUNT_SUMS = ("events",)
PATH_SUMS = ("sessions", "conversions", "total_revenue")
RETENTION_SUMS = ("users",)


def hour_start_ms(event_ms: int) -> int:
    return event_ms - event_ms % HOUR_MS


def _iso(ms: int) -> str:
    return to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_count_deltas(counts: Iterable[tuple[int, str, str | None, int]]) -> dict[str, dict]:
    """(hour_ms, event_type, country, events) rows -> document id -> delta with its key fields."""
    deltas: dict[str, dict] = {}
    for hour_ms, event_type, country, events in counts:
        country = country or UNKNOWN_COUNTRY
        doc_id = f"{_iso(hour_ms)}|{event_type}|{country}"
        delta = deltas.setdefault(doc_id, {"hour_ms": hour_ms, "event_type": event_type, "country": country,
                                           "events": 0})
        delta["events"] += events
    return deltas


def event_count_document(doc_id: str, delta: Mapping, sums: Mapping) -> dict:
    return {"_id": doc_id, "hour": to_datetime(delta["hour_ms"]), "event_type": delta["event_type"],
            "country": delta["country"], "events": sums["events"]}


ALL_COUNTRIES = "*"
DAILY_RANGE_ID, WINDOWS_RANGE_ID = "range", "range|windows"
DAILY_STATUS_ID = "daily_metrics"  # in stream_progress: {complete} (app/sinks/store_lane.py StoreBatchWriter)


def day_id(day: datetime, part: str, country: str | None = None) -> str:
    return f"{day.strftime('%Y-%m-%d')}|{part}" + ("" if country is None else f"|{country}")


def daily_event_deltas(counts: Iterable[tuple[int, str, str | None, int]]) -> dict[str, dict]:
    """(hour_ms, event_type, country, events) rows -> daily document id -> {day_ms, hours} to add."""
    deltas: dict[str, dict] = {}
    for hour_ms, event_type, country, events in counts:
        day_ms = hour_ms - hour_ms % (24 * HOUR_MS)
        hour = f"{(hour_ms - day_ms) // HOUR_MS:02d}"
        for place in (country or UNKNOWN_COUNTRY, ALL_COUNTRIES):
            delta = deltas.setdefault(day_id(to_datetime(day_ms), "events", place), {"day_ms": day_ms, "hours": {}})
            slot = delta["hours"].setdefault(hour, {})
            slot[event_type] = slot.get(event_type, 0) + events
    return deltas


def daily_window_deltas(by_window: Mapping[int, Mapping[str, Mapping]]) -> dict[str, dict]:
    """A batch's segment_distribution deltas (window_start_ms -> segment -> DISTRIBUTION_SUMS, with
    unique_users) -> `<day>|windows` -> {day_ms, windows: {HHMM: {segment: sums}}}."""
    deltas: dict[str, dict] = {}
    for window_ms, segments in by_window.items():
        day_ms = window_ms - window_ms % (24 * HOUR_MS)
        delta = deltas.setdefault(day_id(to_datetime(day_ms), "windows"), {"day_ms": day_ms, "windows": {}})
        delta["windows"][to_datetime(window_ms).strftime("%H%M")] = {
            segment: {n: sums[n] for n in DISTRIBUTION_SUMS} for segment, sums in segments.items()}
    return deltas


def month_id(day: datetime, part: str) -> str:
    return f"{day.strftime('%Y-%m')}|{part}"


def _month_of(ms: int) -> tuple[datetime, str, str]:
    """(the month's first midnight, "DD", "HH") of a time in ms."""
    at = to_datetime(ms)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0), at.strftime("%d"), at.strftime("%H")


def _month_delta(deltas: dict, month: datetime, part: str, field: str) -> dict:
    return deltas.setdefault(month_id(month, part), {"day_ms": int(month.timestamp() * 1000), field: {}})[field]


def monthly_event_deltas(counts: Iterable[tuple[int, str, str | None, int]]) -> dict[str, dict]:
    """(hour_ms, event_type, country, events) rows -> `<YYYY-MM>|event_hours` -> {day_ms (the
    month's first day), hours: {DDHH: {event_type: events}}}, all countries."""
    deltas: dict[str, dict] = {}
    for hour_ms, event_type, _country, events in counts:
        month, dd, hh = _month_of(hour_ms)
        slot = _month_delta(deltas, month, "event_hours", "hours").setdefault(dd + hh, {})
        slot[event_type] = slot.get(event_type, 0) + events
    return deltas


def monthly_window_deltas(by_window: Mapping[int, Mapping[str, Mapping]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """A batch's segment_distribution deltas (window_start_ms -> segment -> sums) -> per month,
    (`<YYYY-MM>|window_hours` {hours: {DDHH: {session_count, total_revenue}}},
    `<YYYY-MM>|window_days` {days: {DD: {segment: {session_count, total_revenue,
    sum_duration_minutes}}}}). Revenue goes in as each window's delta to the cent, as the window
    documents add it, so a whole day or hour sums to what its windows hold."""
    hours: dict[str, dict] = {}
    days: dict[str, dict] = {}
    for window_ms, segments in by_window.items():
        month, dd, hh = _month_of(window_ms)
        hour = _month_delta(hours, month, "window_hours", "hours").setdefault(dd + hh, {})
        day = _month_delta(days, month, "window_days", "days").setdefault(dd, {})
        for segment, sums in segments.items():
            cents = round(sums["total_revenue"] * 100)
            hour.update(session_count=hour.get("session_count", 0) + sums["session_count"],
                        total_revenue=(round(hour.get("total_revenue", 0) * 100) + cents) / 100)
            kept = day.setdefault(segment, {"session_count": 0, "total_revenue": 0.0, "sum_duration_minutes": 0.0})
            kept.update(session_count=kept["session_count"] + sums["session_count"],
                        total_revenue=(round(kept["total_revenue"] * 100) + cents) / 100,
                        sum_duration_minutes=add_minutes(kept["sum_duration_minutes"], sums["sum_duration_minutes"]))
    return hours, days


def add_nested(previous: Mapping | None, delta: Mapping) -> dict:
    """Nested sums (key -> ... -> name -> number) added: minutes as whole milliseconds and revenue
    to the cent, as the rollups keep them, so the sums do not depend on how batches grouped them."""
    out = dict(previous or {})
    for key, value in delta.items():
        if isinstance(value, Mapping):
            out[key] = add_nested(out.get(key), value)
        elif key == "sum_duration_minutes":
            out[key] = add_minutes(out.get(key, 0), value)
        elif key in ("revenue", "total_revenue"):
            out[key] = round(out.get(key, 0) + value, 2)
        else:
            out[key] = out.get(key, 0) + value
    return dict(sorted(out.items()))


WINDOWS = "windows"  # the field of `<day>|windows`


def packed_window(segments: Mapping[str, Mapping]) -> str:
    """A day document's window as stored: one JSON string, {segment: [session_count, unique_users,
    total_revenue, sum_duration_minutes]}. FerretDB 1.24 reads and writes a document in time that
    grows with its values, not its bytes: a day of 288 windows of 4 segments took 49 ms to read as
    nested fields, 34 ms as arrays and 4 ms as a string a window (one run, idle). Floats go
    through JSON exactly (repr), so the sums are the same."""
    return json.dumps({segment: [sums[n] for n in DISTRIBUTION_SUMS] for segment, sums in sorted(segments.items())},
                      separators=(",", ":"))


def window_segments(stored: str | Mapping) -> dict:
    """A stored window -> {segment: {DISTRIBUTION_SUMS}}: packed_window's string, or the nested
    fields a store written before it holds (both are read, so no marker is needed)."""
    if isinstance(stored, str):
        return {segment: dict(zip(DISTRIBUTION_SUMS, values)) for segment, values in json.loads(stored).items()}
    return dict(stored)


def added_daily_sums(previous: Mapping | None, delta: Mapping, field: str) -> dict:
    """What a daily_metrics document's `field` holds with `delta` added to the stored document
    `previous` (None: none yet)."""
    stored = (previous or {}).get(field)
    if field == WINDOWS and stored:
        stored = {hhmm: window_segments(value) for hhmm, value in stored.items()}
    return add_nested(stored, delta[field])


def daily_document(doc_id: str, delta: Mapping, field: str, sums: Mapping) -> dict:
    if field == WINDOWS:
        sums = {hhmm: packed_window(segments) for hhmm, segments in sums.items()}
    return {"_id": doc_id, "day": to_datetime(delta["day_ms"]), field: sums}


def path_deltas(closed: Iterable[Mapping]) -> dict[str, dict]:
    """Closed sessions -> `<segment>|<path>` -> {segment, path, sessions, conversions, total_revenue}."""
    deltas: dict[str, dict] = {}
    for s in closed:
        segment, path = s["behavior_segment"], s.get("event_path") or ""
        delta = deltas.setdefault(f"{segment}|{path}", {"behavior_segment": segment, "event_path": path,
                                                        **dict.fromkeys(PATH_SUMS, 0)})
        delta["sessions"] += 1
        delta["conversions"] += int(s["purchase_count"] > 0)
        delta["total_revenue"] += s["total_amount"] or 0.0
    return deltas


def path_document(doc_id: str, delta: Mapping, sums: Mapping) -> dict:
    return {"_id": doc_id, "behavior_segment": delta["behavior_segment"], "event_path": delta["event_path"],
            "steps": len(delta["event_path"].split(">")) if delta["event_path"] else 0,
            "sessions": sums["sessions"], "conversions": sums["conversions"],
            "total_revenue": round(sums["total_revenue"], 2)}


def cohort_monday(cohort_week: str) -> date:
    year, week = cohort_week.split("-W")
    return date.fromisocalendar(int(year), int(week), 1)


def week_offset(cohort_week: str, event_ms: int) -> int:
    """Whole weeks from the cohort's Monday to the Monday of the week of event_ms (0: the cohort week)."""
    day = datetime.fromtimestamp(event_ms / 1000, timezone.utc).date()
    monday = day - timedelta(days=day.weekday())
    return (monday - cohort_monday(cohort_week)).days // 7


def retention_members(closed: Iterable[Mapping]) -> dict[str, tuple[str, int]]:
    """Closed sessions with the user's cohort -> member id `<cohort>|<k>|<user>` -> (cohort, k)."""
    members = {}
    for s in closed:
        cohort = s.get("user_cohort_week")
        if cohort is None:  # profiles off: no cohort
            continue
        k = week_offset(cohort, s["session_start_ms"])
        members[f"{cohort}|{k}|{s['user_id']}"] = (cohort, k)
    return members


def retention_deltas(new_members: Mapping[tuple[str, int], int]) -> dict[str, dict]:
    return {f"{cohort}|{k}": {"cohort_week": cohort, "week": k, "users": users}
            for (cohort, k), users in new_members.items() if users}


def retention_document(doc_id: str, delta: Mapping, sums: Mapping) -> dict:
    return {"_id": doc_id, "cohort_week": delta["cohort_week"], "week": delta["week"], "users": sums["users"]}
