"""What each endpoint reads (DESIGN.md §15). Every read is a document by _id, an indexed range with a
limit, or a rollup the job keeps (app/rollups.py, conversion_funnel, segment_distribution,
experiment_results). `db` is a bounds.TimedDatabase: every query carries maxTimeMS; a rollup read
stops at bounds.MAX_DOCUMENTS with a 422 naming the parameter that narrows it (DESIGN.md §16)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import ASCENDING, DESCENDING

from app.api import analytics as A
from app import aggregates as AG, rollups as R
from app.api.bounds import MAX_SPAN, WINDOW, ParameterError, capped
from app.sinks import collections as C, leaderboard, live_feed, open_sessions
from app.sinks.profiles import ALERTS, PROFILES
from app.sinks.user_activity import (EVENTS_KEPT as USER_EVENTS_KEPT, SESSIONS_KEPT as USER_SESSIONS_KEPT,
                                    SESSION_FIELDS as USER_SESSION_FIELDS, STATUS_ID as ACTIVITY_STATUS_ID, unpack)

SCORES = ("engagement_score", "interest_score", "intent_score", "conversion_probability")
_HIDDEN = {"run_id": 0, "batch_id": 0}
SESSION_FIELDS = ("user_id", "user_session", "behavior_segment", "segment_color", "segment_score", "action_priority",
                  "status", "session_start", "session_end", "session_duration_minutes", "total_events", "view_count",
                  "cart_count", "purchase_count", "total_amount", "engagement_rate", "event_path", "recommendations",
                  "experiments", "rule_version", "processing_time")
PROFILE_FIELDS = ("first_seen", "last_seen", "cohort_week", "sessions", "total_events", "view_count", "cart_count",
                  "purchase_count", "total_revenue", "avg_session_duration", "avg_events_per_session", "last_segment",
                  "segment_counts", "preferred_device", "top_country", "top_category", *SCORES, "behavior_pattern")


# Only what the lookup returns: the stored totals and bases stay in the store.
ACT_NOW_SCAN = 5000  # open sessions read at most, newest first
MAX_BASELINE_DAYS, MAX_RECENT_DAYS = 365, 90  # /v1/anomalies' bounds (app.py)
_PROFILE_PROJECTION = {n: 1 for n in (*PROFILE_FIELDS, "current_session_id", "recent_alerts")}
_SESSION_PROJECTION = {n: 1 for n in (*SESSION_FIELDS, "user_scores")}
# What /v1/act-now returns of a session: what live_feed's open-session members carry (no wall-clock field).
ACT_NOW_FIELDS = ("user_id", *USER_SESSION_FIELDS)
_ACT_NOW_PROJECTION = {n: 1 for n in ACT_NOW_FIELDS}
_EVENT_PROJECTION = {n: 1 for n in ("event_type", "event_timestamp", "user_id", "session_id", "product_id",
                                    "category_code", "brand", "price", "country", "device_type", "is_late")}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _range(field: str, start: datetime | None, end: datetime | None) -> dict:
    bounds = {}
    if start is not None:
        bounds["$gte"] = start
    if end is not None:
        bounds["$lt"] = end
    return {field: bounds} if bounds else {}


def _pick(doc: dict, names) -> dict:
    return {n: doc.get(n) for n in names}


def personalization(db, user_id: str, open_alert_hours: float) -> dict | None:
    """The user's profile by _id, then the session it points to (the session of the user's latest
    event) by _id; the profile carries the latest alerts. Two reads by _id. A user without a
    profile (none of the user's events final yet, profiles off, or an id nobody sent): the
    latest session otherwise (_latest_session)."""
    profile = db[PROFILES].find_one({"_id": user_id}, _PROFILE_PROJECTION)
    session = None
    if profile is not None and profile.get("current_session_id"):
        session = db[C.SEGMENTS].find_one({"_id": profile["current_session_id"]}, _SESSION_PROJECTION)
    if session is None and profile is None:
        session = _latest_session(db, user_id)
    if profile is None and session is None:
        return None
    last_seen = (profile or {}).get("last_seen") or session["session_end"]
    since = last_seen - timedelta(hours=open_alert_hours)
    alerts = [a for a in (profile or {}).get("recent_alerts", []) if a["first_event_time"] >= since]
    scores = profile if profile is not None else (session.get("user_scores") or {})
    return {
        "user_id": user_id,
        "segment": session and {"session_id": session["_id"], **_pick(session, (
            "status", "behavior_segment", "segment_color", "segment_score", "action_priority", "session_start",
            "session_end", "total_events", "cart_count", "purchase_count", "total_amount", "rule_version"))},
        "recommendations": (session or {}).get("recommendations", []),
        "experiments": (session or {}).get("experiments") or {},
        "scores": _pick(scores, SCORES) if scores else None,
        "behavior_pattern": scores.get("behavior_pattern") if scores else None,
        "recency_days": round((_now() - last_seen).total_seconds() / 86400, 2),
        "profile": profile and _pick(profile, PROFILE_FIELDS),
        "open_alerts": sorted(({k: v for k, v in a.items() if k != "first_event_ms"} for a in alerts),
                              key=lambda a: a["first_event_time"], reverse=True),
    }


def _latest_session(db, user_id: str) -> dict | None:
    """The user's latest session (by session_end, active ones included): the newest of the user's
    user_activity document while the activity query keeps it (reads by _id; what a new user or
    an unknown id costs: FerretDB 1.24 would scan user_behavior_segments for the user_id), else
    the user_id index."""
    if activity_complete(db):
        kept = (unpack(db[C.USER_ACTIVITY].find_one({"_id": user_id}, {"sessions": 1})) or {}).get("sessions") or []
        return {"_id": kept[0]["session_id"], **kept[0]} if kept else None
    return db[C.SEGMENTS].find_one({"user_id": user_id}, _SESSION_PROJECTION, sort=[("session_end", DESCENDING)])


def activity(db, user_id: str | None, event_type: str | None, country: str | None, start, end, limit: int) -> dict:
    """The latest events, newest first: of one user, from the user's user_activity document (its
    newest USER_EVENTS_KEPT events; one read by _id; `complete` false when older events may match
    too); of all users, from live_feed's hours (the newest EVENTS_KEPT events of each hour, per
    type, country and both; reads by _id; `complete` false when an hour that may hold more
    matches kept only those); else (USER_ACTIVITY off, or a job on a checkpoint from before
    them) enriched_events' indexes, user_id or event_timestamp."""
    query: dict[str, Any] = {**_range("event_timestamp", start, end)}
    if event_type is not None:
        query["event_type"] = event_type
    if country is not None:
        query["country"] = country
    kept, cap, complete = None, None, True
    if user_id is not None and activity_complete(db):
        kept = (unpack(db[C.USER_ACTIVITY].find_one({"_id": user_id}, {"events": 1})) or {}).get("events", [])
        events = [{**e, "user_id": user_id} for e in kept if _matches(e, event_type, country, "event_timestamp",
                                                                      start, end)][:limit]
        cap, complete = USER_EVENTS_KEPT, _complete(kept, len(events), limit, USER_EVENTS_KEPT, "event_timestamp",
                                                    start)
    elif user_id is None and _events_complete(db):
        events, complete = live_feed.walk(db[C.LIVE_FEED], live_feed.EVENTS,
                                          {"event_type": event_type, "country": country}, start, end, limit)
        cap = live_feed.EVENTS_KEPT
    else:
        if user_id is not None:
            query["user_id"] = user_id
        events = [{"event_id": e.pop("_id"), **e} for e in
                  db[C.EVENTS].find(query, _EVENT_PROJECTION).sort("event_timestamp", DESCENDING).limit(limit)]
    counts: dict = {}
    for e in events:
        counts[e["event_type"]] = counts.get(e["event_type"], 0) + 1
    summary = None
    if user_id is not None:
        profile = db[PROFILES].find_one({"_id": user_id})
        summary = profile and _pick(profile, ("first_seen", "last_seen", "sessions", "total_events", "view_count",
                                              "cart_count", "purchase_count", "total_revenue", "last_segment"))
    return {"user_id": user_id, "count": len(events), "by_event_type": dict(sorted(counts.items())),
            "summary": summary, "events": events,
            **({} if cap is None else {"kept": cap, "complete": complete})}


def activity_complete(db) -> bool:
    """Whether the job's activity query has seen all of its run's history (stream_progress)."""
    return bool((db[C.PROGRESS].find_one({"_id": ACTIVITY_STATUS_ID}) or {}).get("complete"))


def _complete(kept: list, matched: int, limit: int, cap: int, field: str, start) -> bool:
    """Whether the newest `limit` matches among `kept` (the newest `cap`, newest first) are the
    newest of all: the document holds everything, or `limit` matched (an item it dropped is older
    than all it kept), or `start` is after the oldest item it kept."""
    return (len(kept) < cap or matched >= limit
            or (start is not None and bool(kept) and A.utc(start) > A.utc(kept[-1][field])))


def _matches(doc: dict, event_type: str | None, country: str | None, field: str, start, end) -> bool:
    when = A.utc(doc[field])
    return ((event_type is None or doc.get("event_type") == event_type)
            and (country is None or doc.get("country") == country)
            and (start is None or when >= A.utc(start)) and (end is None or when < A.utc(end)))


def user_segments(db, min_engagement: float, segment: str | None, limit: int) -> dict:
    """Users at or above an engagement score, the most engaged first, then by _id: from live_feed's
    leaderboard while the activity query keeps it: its head (one read) for at most HEAD users,
    else the ids from its pages, then each profile by _id (user_profiles is the store query's,
    which may be a batch ahead of the leaderboard or behind it: a profile whose score or segment
    differs from the leaderboard's is left out, so the order holds); else the engagement_score
    index."""
    fields = leaderboard.FIELDS
    projection = {n: 1 for n in fields}
    if _rank_complete(db):
        docs = leaderboard.head(db[C.LIVE_FEED], min_engagement, segment, limit)
        if docs is None:
            picked = leaderboard.top(db[C.LIVE_FEED], min_engagement, segment, limit)
            docs = [{"user_id": d.pop("_id"), **d} for d, score in (
                (db[PROFILES].find_one({"_id": i}, projection), score) for i, score in picked)
                if d is not None and d.get("engagement_score") == score
                and (segment is None or d.get("last_segment") == segment)]
    else:
        query: dict[str, Any] = {"engagement_score": {"$gte": min_engagement}}
        if segment is not None:
            query["last_segment"] = segment
        docs = [{"user_id": d.pop("_id"), **d} for d in db[PROFILES].find(query, projection).sort(
            [("engagement_score", DESCENDING), ("_id", ASCENDING)]).limit(limit)]
    users = [{"user_id": d["user_id"], **_pick(d, fields)} for d in docs]
    return {"min_engagement": min_engagement, "segment": segment, "count": len(users), "users": users}


def session_metrics(db, user_id: str | None, segment: str | None, start, end, limit: int | None) -> dict:
    """Closed sessions by segment: from segment_distribution's windows (by session end), the newest
    `limit` 5-minute windows when given; or for one user from the user's own sessions, the newest
    `limit` (100) of them: the user's user_activity document (its open sessions and newest
    USER_SESSIONS_KEPT closed ones; one read by _id)."""
    if user_id is not None:
        limit = 100 if limit is None else limit
        if not activity_complete(db):  # a job on a checkpoint from before user_activity: the user_id index
            query = {"user_id": user_id, **_range("session_end", start, end)}
            if segment is not None:
                query["behavior_segment"] = segment
            sessions = [{"session_id": d.pop("_id"), **d} for d in db[C.SEGMENTS].find(
                query, {n: 1 for n in SESSION_FIELDS}).sort("session_end", DESCENDING).limit(limit)]
            extra = {}
        else:
            kept = (unpack(db[C.USER_ACTIVITY].find_one({"_id": user_id}, {"sessions": 1})) or {}).get("sessions", [])
            sessions = [{**s, "user_id": user_id} for s in kept
                        if (segment is None or s["behavior_segment"] == segment)
                        and _matches(s, None, None, "session_end", start, end)][:limit]
            closed_kept = [s for s in kept if s["status"] == "closed"]
            extra = {"kept": USER_SESSIONS_KEPT, "complete": _complete(
                closed_kept, len(sessions), limit, USER_SESSIONS_KEPT, "session_end", start)}
        closed = [s for s in sessions if s["status"] == "closed"]
        return {"user_id": user_id, **A.user_session_metrics(closed), "active_sessions": len(sessions) - len(closed),
                "sessions": sessions, **extra}
    kept = _daily_kept(db)
    if kept is not None:  # the days with windows by _id (at most MAX_SPAN's)
        db = _ReadOnce(db)
        if limit is not None:  # the newest `limit` windows (of the segment) up to end: from the latest one back
            latest = _latest_window_end(db, True, segment, end)
            if latest is not None:
                first = latest - limit * WINDOW
                start = first if start is None else max(start, first)
        windows: Any = [d for d in (_window_sums(db, start, end, "start") if kept == "months"
                                    else _daily_windows(db, start, end, "start"))
                        if segment is None or d["behavior_segment"] == segment]
        return {"start": start, "end": end, "limit": limit, **A.session_metrics(windows)}
    query = _range("window_start", start, end)
    if segment is not None:
        query["behavior_segment"] = segment
    if limit is not None:  # the newest `limit` windows: from the latest one back
        latest = db[C.DISTRIBUTION].find_one(query, {"window_start": 1}, sort=[("window_start", DESCENDING)])
        if latest is not None:
            first = A.utc(latest["window_start"]) - (limit - 1) * WINDOW
            start = first if start is None else max(start, first)
            query.update(_range("window_start", start, end))
    windows = capped(db[C.DISTRIBUTION].find(query, _HIDDEN), "start")
    return {"start": start, "end": end, "limit": limit, **A.session_metrics(windows)}


def event_frequency(db, event_type: str | None, country: str | None, start, end, interval: str) -> dict:
    """Counted events per hour or day: from daily_metrics by _id (a day's document of the country,
    or of all; at most MAX_SPAN's days with events), while the store query keeps it; else
    event_counts_hourly (at most MAX_DOCUMENTS hour x type x country documents)."""
    kept = _daily_kept(db)
    if kept is not None:
        bounds = db[C.DAILY].find_one({"_id": R.DAILY_RANGE_ID}) or {}
        first = A.floor_hour(start) if start is not None else None
        days = _days(bounds, first, end, "start")
        docs: Any = [{"hour": hour, "event_type": t, "events": n}
                     for hour, sums in (_month_hours(db, days, "event_hours")
                                        if country is None and kept == "months" else
                                        _daily(db, days, "events", country or R.ALL_COUNTRIES))
                     if (first is None or hour >= first) and (end is None or hour < end)
                     for t, n in sums.items() if event_type is None or t == event_type]
    else:
        query = _range("hour", start and A.floor_hour(start), end)
        if event_type is not None:
            query["event_type"] = event_type
        if country is not None:
            query["country"] = country
        docs = capped(db[C.EVENT_COUNTS].find(query, _HIDDEN), "start")
    return {"start": start, "end": end, "event_type": event_type, "country": country,
            **A.frequency(docs, interval)}


class _ReadOnce(dict):
    """`db` for one answer, its daily_metrics documents read once each (by _id and projection):
    an answer that finds the latest window and then sums up to it, or reads the range document
    twice, reads each document once."""

    class _Collection:
        def __init__(self, coll):
            self._coll, self._docs = coll, {}

        def find_one(self, query: dict, projection: dict | None = None):
            key = (query["_id"], tuple(sorted(projection or {})))
            if key not in self._docs:
                self._docs[key] = self._coll.find_one(query, projection)
            return self._docs[key]

    def __init__(self, db):
        super().__init__({C.DAILY: self._Collection(db[C.DAILY])})
        self._db = db

    def __missing__(self, name: str):
        return self._db[name]


def _daily_kept(db) -> str | None:
    """What the store query has counted every batch of its run into: "months" (daily_metrics' day
    and month documents), "days" (its day documents only: a checkpoint from before the month
    documents), or None (event_counts_hourly and segment_distribution only)."""
    status = db[C.PROGRESS].find_one({"_id": R.DAILY_STATUS_ID}) or {}
    return None if not status.get("complete") else "months" if status.get("months") else "days"


def _daily_complete(db) -> bool:
    """Whether the store query has counted every batch of its run into daily_metrics."""
    return _daily_kept(db) is not None


def _month_parts(db, days: list[datetime], part: str, field: str):
    """(the month's first day, the document's `field`) of the month documents of `days`' months,
    each read by _id: one read per month."""
    for month in sorted({day.replace(day=1) for day in days}):
        doc = db[C.DAILY].find_one({"_id": R.month_id(month, part)}, {field: 1}) or {}
        yield month, doc.get(field, {})


def _month_hours(db, days: list[datetime], part: str):
    """(hour, its sums) of the month documents of `days`' months (hours of other days included:
    the caller bounds them)."""
    for month, hours in _month_parts(db, days, part, "hours"):
        for slot, sums in sorted(hours.items()):
            yield month.replace(day=int(slot[:2])) + timedelta(hours=int(slot[2:])), sums


def _window_sums(db, first: datetime | None, last: datetime | None, parameter: str) -> list[dict]:
    """Sums per segment of the windows starting in [first, last), as session_metrics takes them: a
    whole day's from its month document (`window_days`, one read a month), a day cut by first or
    last from its day document's windows."""
    days = _days(db[C.DAILY].find_one({"_id": R.WINDOWS_RANGE_ID}) or {}, first, last, parameter)
    whole = {d for d in days if (first is None or d >= A.utc(first))
             and (last is None or d + timedelta(days=1) <= A.utc(last))}
    cut = [d for d in days if d not in whole]
    out = _daily_windows(db, first, last, parameter, days=cut) if cut else []
    for month, kept in _month_parts(db, sorted(whole), "window_days", "days"):
        for dd, segments in sorted(kept.items()):
            if month.replace(day=int(dd)) in whole:
                out += [{"behavior_segment": segment, **sums} for segment, sums in sorted(segments.items())]
    return out


def _days(bounds: dict, first: datetime | None, last: datetime | None, parameter: str,
          most: int = MAX_SPAN.days + 1) -> list[datetime]:
    """The days with counted events (daily_metrics' `range` document) overlapping [first, last):
    at most `most` (a 422 naming `parameter` past it)."""
    days = [d for d in map(A.utc, bounds.get("days", []))
            if (first is None or d + timedelta(days=1) > A.utc(first)) and (last is None or d < A.utc(last))]
    if len(days) > most:
        raise ParameterError(parameter, f"the request reads more than {most} days with events: narrow it "
                                        f"with {parameter}")
    return days


def _day_windows(db, day: datetime) -> list[tuple[datetime, Any]]:
    """(window_start, the stored window) of a day's `<day>|windows` document, oldest first."""
    doc = db[C.DAILY].find_one({"_id": R.day_id(day, R.WINDOWS)}, {R.WINDOWS: 1}) or {}
    return [(day + timedelta(hours=int(hhmm[:2]), minutes=int(hhmm[2:])), stored)
            for hhmm, stored in sorted(doc.get(R.WINDOWS, {}).items())]


def _stored_windows(db, first: datetime | None, last: datetime | None, parameter: str,
                    most: int = MAX_SPAN.days + 1, days: list[datetime] | None = None):
    """(window_start, {segment: DISTRIBUTION_SUMS}) of the 5-minute windows starting in [first,
    last), oldest first, from daily_metrics' day documents (each read by _id; `days`: those days,
    else the listed ones)."""
    if days is None:
        days = _days(db[C.DAILY].find_one({"_id": R.WINDOWS_RANGE_ID}) or {}, first, last, parameter, most)
    first, last = first and A.utc(first), last and A.utc(last)
    for day in days:
        for window, stored in _day_windows(db, day):
            if (first is None or window >= first) and (last is None or window < last):
                yield window, R.window_segments(stored)


def _daily_windows(db, first: datetime | None, last: datetime | None, parameter: str,
                   most: int = MAX_SPAN.days + 1, days: list[datetime] | None = None) -> list[dict]:
    """{window_start, behavior_segment, DISTRIBUTION_SUMS} of each segment of the windows starting
    in [first, last), oldest first (_stored_windows): what session_metrics and hourly_metrics sum."""
    return [{"window_start": window, "behavior_segment": segment, **sums}
            for window, segments in _stored_windows(db, first, last, parameter, most, days)
            for segment, sums in sorted(segments.items())]


def _latest_window_end(db, daily: bool, segment: str | None = None, end: datetime | None = None) -> datetime | None:
    """The end of the latest 5-minute window with closed sessions (of `segment`, before `end`;
    from daily_metrics, within the newest MAX_SPAN days with windows)."""
    if not daily:
        doc = db[C.DISTRIBUTION].find_one({}, {"window_end": 1}, sort=[("window_start", DESCENDING)])
        return doc and A.utc(doc["window_end"])
    bounds = db[C.DAILY].find_one({"_id": R.WINDOWS_RANGE_ID}) or {}
    if segment is None and end is None:
        return A.utc(bounds["last_window"]) + WINDOW if bounds else None
    days = _days(bounds, None, end, "start", most=len(bounds.get("days", [])))
    for day in reversed(days[-(MAX_SPAN.days + 1):]):  # (a segment without windows there: none)
        for window, stored in reversed(_day_windows(db, day)):  # newest first, none built
            if (segment is None or segment in R.window_segments(stored)) and (end is None or window < A.utc(end)):
                return window + WINDOW
    return None


def _daily(db, days: list[datetime], part: str, country: str | None = None):
    """(hour, its sums) of daily_metrics' documents of `days`, each read by _id."""
    for day in days:
        doc = db[C.DAILY].find_one({"_id": R.day_id(day, part, country)}, {"hours": 1})
        for hour, sums in sorted((doc or {}).get("hours", {}).items()):
            yield day + timedelta(hours=int(hour)), sums


def behavior_patterns(db, segment: str | None, min_sessions: int, limit: int) -> dict:
    query = {} if segment is None else {"behavior_segment": segment}
    return {"segment": segment, **A.patterns(capped(db[C.PATHS].find(query, _HIDDEN), "segment"), min_sessions, limit)}


def retention(db, max_weeks: int, cohort: str | None) -> dict:
    query = {} if cohort is None else {"cohort_week": cohort}
    return A.retention(capped(db[C.RETENTION].find(query, _HIDDEN), "cohort"), max_weeks)


def latest_hour(db) -> datetime | None:
    return _hour_counted(db, DESCENDING)


def _hour_counted(db, order) -> datetime | None:
    """The last (DESCENDING) or first hour with counted events."""
    if _daily_complete(db):
        bounds = db[C.DAILY].find_one({"_id": R.DAILY_RANGE_ID})
        return bounds and A.floor_hour(bounds["last_hour" if order == DESCENDING else "first_hour"])
    doc = db[C.EVENT_COUNTS].find_one({}, {"hour": 1}, sort=[("hour", order)])
    return doc and A.floor_hour(doc["hour"])


def anomalies(db, threshold: float, recent_days: float, baseline_days: float, end: datetime | None,
              metric: str | None) -> dict:
    """Recent hours against the hours before them; `end` defaults to the end of the latest hour of
    event time the job has counted (replayed history and live traffic alike)."""
    latest = latest_hour(db)
    if latest is None:
        return {"baseline_start": None, "recent_start": None, "end": None, "z_score_threshold": threshold,
                "metrics": [], "anomalies": 0, "note": "no events counted yet"}
    if end is None:  # the hour still filling on live traffic would look like a dip: complete hours only
        end = latest + A.HOUR if latest + A.HOUR <= _now() else latest
    end = A.floor_hour(end) if A.floor_hour(end) == end else A.floor_hour(end) + A.HOUR
    recent_start = end - timedelta(days=recent_days)
    # The baseline starts no earlier than the first hour the job counted: before it, nothing was
    # measured (zeros there would be made up); within it, an hour without events counts as 0.
    baseline_start = max(recent_start - timedelta(days=baseline_days), _hour_counted(db, ASCENDING))
    baseline_start = min(baseline_start, recent_start)
    most = MAX_BASELINE_DAYS + MAX_RECENT_DAYS + 1
    kept = _daily_kept(db)
    if kept == "months":  # each month's two documents by _id
        days = _days(db[C.DAILY].find_one({"_id": R.DAILY_RANGE_ID}) or {}, baseline_start, end, "baseline_days", most)
        window_days = _days(db[C.DAILY].find_one({"_id": R.WINDOWS_RANGE_ID}) or {}, baseline_start, end,
                            "baseline_days", most)
        events: Any = [{"hour": hour, "event_type": t, "events": n}
                       for hour, sums in _month_hours(db, days, "event_hours")
                       if baseline_start <= hour < end for t, n in sums.items()]
        windows: Any = [{"window_start": hour, **sums} for hour, sums in _month_hours(db, window_days, "window_hours")
                        if baseline_start <= hour < end]
    elif kept == "days":  # each day's two documents by _id
        days = _days(db[C.DAILY].find_one({"_id": R.DAILY_RANGE_ID}) or {}, baseline_start, end, "baseline_days", most)
        events = [{"hour": hour, "event_type": t, "events": n}
                  for hour, sums in _daily(db, days, "events", R.ALL_COUNTRIES)
                  if baseline_start <= hour < end for t, n in sums.items()]
        windows = _daily_windows(db, baseline_start, end, "baseline_days", most=most)
    else:
        events = capped(db[C.EVENT_COUNTS].find(_range("hour", baseline_start, end), _HIDDEN), "baseline_days")
        windows = capped(db[C.DISTRIBUTION].find(_range("window_start", baseline_start, end), _HIDDEN),
                         "baseline_days")
    hours = A.hourly_metrics(events, windows)
    return A.anomalies(hours, recent_start, end, baseline_start, threshold,
                       A.METRICS if metric is None else (metric,))


def funnel(db, segment_order: tuple[str, ...]) -> dict:
    rank = {name: i for i, name in enumerate(segment_order)}
    docs = sorted(capped(db[C.FUNNEL].find({}, _HIDDEN), "segment"),
                  key=lambda d: (rank.get(d["_id"], len(rank)), d["_id"]))
    return {"segments": [{k: round(v, 2) if k == "sum_duration_minutes" else v for k, v in d.items() if k != "_id"}
                         for d in docs]}


def segment_distribution(db, hours: float, start, end, segment: str | None) -> dict:
    """5-minute windows of closed sessions over [start, end) (bounds.window_range: at most
    MAX_WINDOW_SPAN); without start, the last `hours` hours of event time up to end or the
    latest window."""
    daily = _daily_complete(db)
    db = _ReadOnce(db)
    if start is None:
        latest = _latest_window_end(db, daily)
        if latest is None:
            return {"start": None, "end": None, "windows": [], "totals": {}}
        end = end or latest
        start = end - timedelta(hours=hours)
    windows = _daily_distribution(db, start, end, segment) if daily else _stored_distribution(db, start, end, segment)
    totals: dict = {}
    for w in windows:
        for name, figures in w["segments"].items():
            totals[name] = totals.get(name, 0) + figures["session_count"]
    return {"start": start, "end": end, "windows": windows, "totals": dict(sorted(totals.items()))}


def _daily_distribution(db, start: datetime, end: datetime, segment: str | None) -> list[dict]:
    """The answer's windows over [start, end) from daily_metrics' day documents by _id
    (MAX_WINDOW_SPAN: 8 at most), each built once from its stored sums."""
    windows = []
    for window, segments in _stored_windows(db, start, end, "hours"):
        if segment is None or segment in segments:
            shares = AG.share_pct({name: sums["session_count"] for name, sums in segments.items()})
            windows.append({"window_start": window, "window_end": window + WINDOW, "segments": {
                name: AG.window_figures(sums, shares[name]) for name, sums in sorted(segments.items())
                if segment is None or name == segment}})
    return windows


def _stored_distribution(db, start: datetime, end: datetime, segment: str | None) -> list[dict]:
    """The answer's windows over [start, end) from segment_distribution's documents (its
    window_start index)."""
    query = _range("window_start", start, end)
    if segment is not None:
        query["behavior_segment"] = segment
    windows: dict = {}
    for d in capped(db[C.DISTRIBUTION].find(query, _HIDDEN).sort("window_start", ASCENDING), "hours"):
        w = windows.setdefault(d["window_start"], {"window_start": d["window_start"], "window_end": d["window_end"],
                                                   "segments": {}})
        w["segments"][d["behavior_segment"]] = _pick(d, ("session_count", "share_pct", "unique_users",
                                                         "total_revenue", "avg_session_duration"))
    return list(windows.values())


def alerts(db, user_id, alert_type, severity, start, end, limit: int) -> dict:
    """The newest alerts, by first_event_time: from live_feed's hour buckets (reads by _id) while
    the activity query keeps them, else behavior_alerts' indexes."""
    filters = {"user_id": user_id, "alert_type": alert_type, "severity": severity}
    docs = _from_feed(db, live_feed.ALERTS, filters, start, end, limit)
    if docs is None:
        query = _range("first_event_time", start, end)
        query.update({name: value for name, value in filters.items() if value is not None})
        docs = [{"alert_id": d.pop("_id"), **d}
                for d in db[ALERTS].find(query).sort("first_event_time", DESCENDING).limit(limit)]
    return {"count": len(docs), "alerts": docs}


def trigger_executions(db, user_id, trigger, start, end, limit: int) -> dict:
    """The newest trigger executions, by event_time: as alerts, from live_feed or trigger_executions."""
    filters = {"user_id": user_id, "trigger": trigger}
    docs = _from_feed(db, live_feed.EXECUTIONS, filters, start, end, limit)
    if docs is None:
        query = _range("event_time", start, end)
        query.update({name: value for name, value in filters.items() if value is not None})
        docs = [{"execution_id": d.pop("_id"), **d}
                for d in db[C.EXECUTIONS].find(query).sort("event_time", DESCENDING).limit(limit)]
    return {"count": len(docs), "executions": docs}


def _from_feed(db, feed, filters: dict, start, end, limit: int) -> list[dict] | None:
    """The feed's answer, or None: the job does not keep it (USER_ACTIVITY off, or a checkpoint from
    before it or before live_feed), or a truncated hour left it short (live_feed.read)."""
    if not _feed_complete(db):
        return None
    return live_feed.read(db[C.LIVE_FEED], feed, filters, start, end, limit)


def _feed_complete(db) -> bool:
    """Whether the activity query has filed every alert, execution and open session of its run."""
    return bool((db[C.PROGRESS].find_one({"_id": ACTIVITY_STATUS_ID}) or {}).get("feed_complete"))


def _events_complete(db) -> bool:
    """Whether the activity query has filed every event of its run into live_feed."""
    return bool((db[C.PROGRESS].find_one({"_id": ACTIVITY_STATUS_ID}) or {}).get("events_complete"))


def _rank_complete(db) -> bool:
    """Whether the activity query has filed every user's rank (the leaderboard) of its run."""
    return bool((db[C.PROGRESS].find_one({"_id": ACTIVITY_STATUS_ID}) or {}).get("rank_complete"))


def experiment_results(db, experiment: str | None) -> dict:
    query = {} if experiment is None else {"experiment": experiment}
    by_name: dict = {}
    for d in capped(db[C.EXPERIMENT_RESULTS].find(query, _HIDDEN).sort("_id", ASCENDING), "experiment"):
        by_name.setdefault(d["experiment"], []).append({k: v for k, v in d.items() if k != "_id"})
    return {"experiments": [{"experiment": name, "variants": variants} for name, variants in by_name.items()]}


def act_now(db, hours: float, limit: int) -> dict:
    """Active sessions of the last `hours` of event time, the most urgent first (action_priority,
    then the newest): from live_feed's open-session heads or buckets (by _id), which carry each
    session's fields, while the activity query keeps them; else the (status, session_end) index bounds the
    read (the newest ACT_NOW_SCAN open sessions)."""
    if _feed_complete(db):
        since, members = open_sessions.act_now(db[C.LIVE_FEED], hours, limit)
        sessions = [m if "status" in m else _open_session(db, m["session_id"]) for m in members]
        sessions = [_act_now_fields(s) for s in sessions if s is not None]
        return {"since": since, "count": len(sessions), "sessions": sessions}
    # One read, newest first: the window is measured from the newest open session it returns.
    docs = list(db[C.SEGMENTS].find({"status": "active"}, _ACT_NOW_PROJECTION)
                .sort("session_end", DESCENDING).limit(ACT_NOW_SCAN))
    if not docs:
        return {"since": None, "count": 0, "sessions": []}
    since = docs[0]["session_end"] - timedelta(hours=hours)
    docs = [d for d in docs if d["session_end"] >= since]
    docs.sort(key=lambda d: (open_sessions.priority_of(d), -d["session_end"].timestamp()))
    return {"since": since, "count": len(docs[:limit]),
            "sessions": [_act_now_fields({"session_id": d.pop("_id"), **d}) for d in docs[:limit]]}


def _open_session(db, session_id: str) -> dict | None:
    """An open-session member stored by a version before members carried their fields: the
    session by _id (None if it closed meanwhile)."""
    doc = db[C.SEGMENTS].find_one({"_id": session_id}, _ACT_NOW_PROJECTION)
    return None if doc is None or doc["status"] != "active" else {"session_id": doc.pop("_id"), **doc}


def _act_now_fields(session: dict) -> dict:
    return {"session_id": session["session_id"], **{n: session.get(n) for n in ACT_NOW_FIELDS}}


def job_progress(db) -> dict | None:
    """The sessions query's latest recorded batch: by _id (a job from before that document: the
    newest by time)."""
    doc = (db[C.PROGRESS].find_one({"_id": C.latest_progress_id("sessions")}) or {}).get("batch")
    if doc is None:
        doc = db[C.PROGRESS].find_one({"query": "sessions"}, sort=[("timestamp", DESCENDING)])
    return doc and {k: v for k, v in doc.items() if k not in ("_id", "duration_ms")}
