"""A user's profile across sessions (DESIGN.md §11): pure Python, no Spark, no MongoDB.

The state keeps `ProfileTotals` for the user's current *epoch*: everything counted since the
user's entry (re)appeared in the state store. Event-level figures are added as events are
counted (duplicates never reach here); session-level figures (durations, segments) are added
when a session closes, and open sessions are folded in by `epoch_totals` when a document is
written. A user whose entry left the state store and comes back starts a new epoch on top of
the stored document's totals (its `base`, see `open_epoch`), so first_seen and the counts never
reset. The base is read once, when the epoch opens, and then travels in the state: every later
write of the epoch is a plain write, and a replayed batch (same epoch, same base) writes the same
document.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping

from app.profiles.rules import ProfileRules

COUNTS = ("sessions", "total_events", "view_count", "cart_count", "remove_cart_count", "purchase_count")
TALLIES = ("segment_counts", "devices", "countries", "categories")
RECENT_ALERTS = 10  # alerts kept on the profile for the personalization lookup
_LIVE = ("latest_session_id", "latest_session_ms", "recent_alerts")
_TYPE_COUNTS = {"view": "view_count", "cart": "cart_count", "remove_from_cart": "remove_cart_count",
                "purchase": "purchase_count"}


@dataclass
class ProfileTotals:
    epoch: str                      # which entry of the state store (see `new_epoch`): kept in the stored document
    first_seen: int
    last_seen: int
    sessions: int = 0               # sessions opened
    total_events: int = 0
    view_count: int = 0
    cart_count: int = 0
    remove_cart_count: int = 0
    purchase_count: int = 0
    total_revenue: float = 0.0
    closed_sessions: int = 0
    closed_duration_minutes: float = 0.0
    segment_counts: dict = field(default_factory=dict)  # closed sessions by final segment
    devices: dict = field(default_factory=dict)
    countries: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)      # top-level category (before the first dot)
    last_segment: str | None = None
    last_segment_ms: int = -1
    base: dict | None = None        # the stored totals of the user's earlier epochs (None: a new user)
    stored: bool = False            # a user_profiles document exists (the next write replaces it)
    written: str = ""               # digest of the last update written: an unchanged profile is not rewritten
    # What a storefront's lookup needs besides the totals (the query API reads the profile by _id
    # and follows these, never a scan): the session of the user's latest event, the latest alerts.
    latest_session_id: str | None = None
    latest_session_ms: int = -1
    recent_alerts: list = field(default_factory=list)

    def add_event(self, event_ms: int, event_type: str, price: float | None, device_type: str | None = None,
                  country: str | None = None, category_code: str | None = None) -> None:
        self.first_seen, self.last_seen = min(self.first_seen, event_ms), max(self.last_seen, event_ms)
        self.total_events += 1
        counter = _TYPE_COUNTS.get(event_type)
        if counter:
            setattr(self, counter, getattr(self, counter) + 1)
        if event_type == "purchase":
            self.total_revenue += price or 0.0
        for tally, key in (("devices", device_type), ("countries", country),
                           ("categories", category_code.split(".", 1)[0] if category_code else None)):
            if key:
                values = getattr(self, tally)
                values[key] = values.get(key, 0) + 1

    def open_session(self) -> None:
        self.sessions += 1

    def close_session(self, duration_minutes: float, segment: str, end_ms: int) -> None:
        self.closed_sessions += 1
        self.closed_duration_minutes += duration_minutes
        self.segment_counts[segment] = self.segment_counts.get(segment, 0) + 1
        self.saw_segment(segment, end_ms)

    def saw_segment(self, segment: str, at_ms: int) -> None:
        if at_ms >= self.last_segment_ms:
            self.last_segment, self.last_segment_ms = segment, at_ms

    def saw_session(self, session_id: str, end_ms: int) -> None:
        if end_ms >= self.latest_session_ms:
            self.latest_session_id, self.latest_session_ms = session_id, end_ms

    def saw_alert(self, alert_id: str, alert_type: str, severity: str, first_event_ms: int) -> None:
        if any(a["alert_id"] == alert_id for a in self.recent_alerts):
            return
        self.recent_alerts.append({"alert_id": alert_id, "alert_type": alert_type, "severity": severity,
                                   "first_event_ms": first_event_ms})
        self.recent_alerts = sorted(self.recent_alerts, key=lambda a: (a["first_event_ms"], a["alert_id"]))[
            -RECENT_ALERTS:]

    def to_state(self) -> dict:
        state = dict(self.__dict__)  # asdict() deep-copies field by field: 10x slower, per event
        for name in TALLIES + ("segment_counts",):
            state[name] = dict(state[name])
        state["recent_alerts"] = [dict(a) for a in self.recent_alerts]
        state["base"] = None if self.base is None else dict(self.base)
        return state

    @classmethod
    def from_state(cls, raw: Mapping) -> "ProfileTotals":
        return cls(**raw)


def new_epoch(event_ms: int, event_id: str, stored: Mapping | None = None) -> ProfileTotals:
    """A user (re)entering the state store, with its first final event. The epoch's id names that
    event: a replay gives the same id, however the batches were cut, and an event is final only
    once, so two epochs never share an id. `stored` is the user's user_profiles document (epoch,
    base, totals) when there is one."""
    epoch = f"{event_ms}:{event_id}"
    base = base_of(stored, epoch)
    totals = ProfileTotals(epoch=epoch, first_seen=event_ms, last_seen=event_ms, base=base, stored=stored is not None)
    live = (base or {}).get("live")
    if live:  # the latest session and alerts of the earlier epochs carry on
        totals.latest_session_id, totals.latest_session_ms = live["session_id"], live["session_ms"]
        totals.recent_alerts = [dict(a) for a in live["alerts"]]
    return totals


def base_of(stored: Mapping | None, epoch: str) -> dict | None:
    """What the stored document held before `epoch`: its own base when the document was written by
    this very epoch (a replayed batch), else everything it holds."""
    if stored is None:
        return None
    return stored.get("base") if stored.get("epoch") == epoch else stored["totals"]


@dataclass(frozen=True)
class OpenSession:
    """What an open session adds to its user's profile when a document is written."""
    duration_minutes: float
    segment: str
    end_ms: int


def epoch_totals(totals: ProfileTotals, open_sessions: Iterable[OpenSession]) -> dict:
    """The epoch's figures with the open sessions folded in (the state is not changed)."""
    figures = totals.to_state()
    # what is stored: the open sessions folded in, so closing one changes nothing that is stored
    for internal in ("base", "stored", "written", "closed_sessions", "closed_duration_minutes", *_LIVE):
        del figures[internal]
    segments, last = Counter(totals.segment_counts), (totals.last_segment, totals.last_segment_ms)
    duration = totals.closed_duration_minutes
    for session in open_sessions:
        duration += session.duration_minutes
        segments[session.segment] += 1
        if session.end_ms >= last[1]:
            last = (session.segment, session.end_ms)
    figures.update(duration_minutes=duration, segment_counts=dict(segments), last_segment=last[0],
                   last_segment_ms=last[1])
    return figures


def profile_update(user_id: str, totals: ProfileTotals, open_sessions: Iterable[OpenSession],
                   bounce_segment: str | None = "bouncer") -> dict:
    """What the sink stores for the user now: the epoch, its base, the totals (base + epoch, open
    sessions folded in), and whether a document exists already (insert, or replace).
    `bounce_segment`: the segment rules' fallback segment (what a session with nothing else is),
    whatever its name: `last_session_bounced` says whether the user's latest session ended there."""
    figures = epoch_totals(totals, open_sessions)
    combined = figures if totals.base is None else _add(totals.base, figures)
    combined["last_session_bounced"] = int(combined.get("last_segment") is not None
                                           and combined.get("last_segment") == bounce_segment)
    # kept in the totals, so a later epoch's base carries them on (see new_epoch)
    combined["live"] = {"session_id": totals.latest_session_id, "session_ms": totals.latest_session_ms,
                        "alerts": list(totals.recent_alerts)}
    return {"user_id": user_id, "epoch": totals.epoch, "base": totals.base,
            "totals": combined, "first_write": not totals.stored,
            "live": {"session_id": totals.latest_session_id, "alerts": list(totals.recent_alerts)}}


def update_digest(update: Mapping) -> str:
    """Identifies what an update stores (not whether it inserts): equal digests, equal documents."""
    stored = {key: update.get(key) for key in ("epoch", "base", "totals", "live")}
    return hashlib.sha1(json.dumps(stored, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _add(a: Mapping, b: Mapping) -> dict:
    total = dict(b)
    for name in COUNTS + ("total_revenue", "duration_minutes"):
        total[name] = a.get(name, 0) + b.get(name, 0)
    for tally in TALLIES:
        total[tally] = dict(Counter(a.get(tally, {})) + Counter(b.get(tally, {})))
    total["first_seen"], total["last_seen"] = min(a["first_seen"], b["first_seen"]), max(a["last_seen"], b["last_seen"])
    if a.get("last_segment_ms", -1) > b.get("last_segment_ms", -1):
        total["last_segment"], total["last_segment_ms"] = a["last_segment"], a["last_segment_ms"]
    return total


def _top(tally: Mapping[str, int]) -> str | None:
    """Most frequent key; ties go to the smallest key, so the answer does not depend on order."""
    return min(tally.items(), key=lambda item: (-item[1], item[0]))[0] if tally else None


def _date(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def cohort_week(first_seen_ms: int) -> str:
    """The ISO week of the user's first event, e.g. 2019-W40: the user's retention cohort."""
    year, week, _ = _date(first_seen_ms).isocalendar()
    return f"{year}-W{week:02d}"


def profile_document(user_id: str, totals: Mapping, rules: ProfileRules) -> dict:
    """The user_profiles document's figures, scores and pattern (dates as datetimes)."""
    figures, scores = _figures_and_scores(totals, rules)
    return {
        "_id": user_id, "user_id": user_id, "first_seen": _date(totals["first_seen"]),
        "last_seen": _date(totals["last_seen"]), "cohort_week": cohort_week(totals["first_seen"]),
        **{k: v for k, v in figures.items() if k != "last_session_bounced"},
        "last_segment": totals.get("last_segment"), "segment_counts": dict(sorted(totals["segment_counts"].items())),
        "preferred_device": _top(totals["devices"]), "top_country": _top(totals["countries"]),
        "top_category": _top(totals["categories"]), **scores, "behavior_pattern": rules.pattern({**figures, **scores}),
        "rule_version": rules.version,
    }


def profile_facts(totals: Mapping, rules: ProfileRules) -> dict:
    """The figures, scores and pattern (what the patterns and the triggers read; no dates)."""
    figures, scores = _figures_and_scores(totals, rules)
    return {**figures, **scores, "behavior_pattern": rules.pattern({**figures, **scores})}


def _figures_and_scores(totals: Mapping, rules: ProfileRules) -> tuple[dict, dict]:
    sessions = totals["sessions"]
    figures = {
        "sessions": sessions, "total_events": totals["total_events"], "view_count": totals["view_count"],
        "cart_count": totals["cart_count"], "purchase_count": totals["purchase_count"],
        "total_revenue": round(totals["total_revenue"], 2),
        "avg_session_duration": round(totals["duration_minutes"] / sessions, 2) if sessions else 0.0,
        "avg_events_per_session": round(totals["total_events"] / sessions, 2) if sessions else 0.0,
        "unique_categories": len(totals["categories"]),
        # the tracker names the rules' fallback segment; documents from before it did: "bouncer"
        "last_session_bounced": int(totals.get("last_session_bounced", totals.get("last_segment") == "bouncer")),
    }
    return figures, rules.score(figures)
