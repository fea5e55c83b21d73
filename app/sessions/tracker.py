"""The per-user session state machine (DESIGN.md §5): pure Python, no Spark.

One `UserState` per user_id holds that user's open sessions and the generation counters of the
explicit session ids (`user_session`) the user has used. Spark keeps one state entry per user
(app/sessions/stateful.py); a micro-batch decodes and rewrites only the users it touches.

Transitions, each returning a `Step` (the new state or None, what to write, the next timeout):
- `process_events(state, events, watermark_ms, settings)`: a batch of one user's events.
- `process_timeout(state, watermark_ms, settings)`: the watermark passed the state's timeout.

Rules the transitions keep:
- An event joins the user's open session it belongs to: the same `user_session`, or, without
  one, the derived session whose [start - gap, end + gap] it falls in. Nothing splits or closes
  an open session except the watermark passing its end + gap (or its start + SESSION_MAX).
- An event with no open session to join opens one, unless it is behind the watermark: then it is
  late (still written to enriched_events, counted, never sessionized).
- An event id already counted by its session is a duplicate: not counted again (the last
  `SeenIds.CAPACITY` distinct ids of a session are remembered).
- A `user_session` that comes back after its session closed continues as `<id>#2`, `#3`, ...:
  the user's entry remembers the generation counters for `id_retention_ms` after the user's last
  event, so a closed document is never overwritten within that window.
- The rules are re-applied at every update and at close: a session classified under another
  rules file (content hash) is reclassified, and its history records the new rule_version.
- With profile rules, the entry also holds the user's profile totals of this epoch (with the
  stored base, read once when the epoch opens) and the alert windows (app/profiles/); with
  trigger rules, the triggers' cooldowns: the step's sessions written, segments changed and
  alerts raised go through the triggers (app/actions/triggers.py); with experiments, each
  session document carries its variants and their recommendations (app/experiments/design.py).
"""
from __future__ import annotations

import base64
import hashlib
import json
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from app.profiles.alerts import AlertEvent, AlertState, detect
from app.actions.triggers import Happening, TriggerRules, TriggerState, fire
from app.experiments.design import Experiments
from app.profiles.profile import (OpenSession, ProfileTotals, cohort_week, new_epoch, profile_facts, profile_update,
                                  update_digest)
from app.profiles.rules import SCORES, ProfileRules
from app.segments.rules import RuleSet, Segment
from app.sessions.metrics import SessionAccumulator, event_path, session_metrics


class Event(NamedTuple):
    event_ms: int
    event_id: str
    event_type: str
    user_id: str
    user_session: str | None
    product_id: str | None
    category_id: str | None
    price: float | None
    category_code: str | None = None
    device_type: str | None = None
    country: str | None = None
    ip_address: str | None = None


class EventOut(NamedTuple):
    event_id: str
    session_id: str | None      # None: late, and its session is gone
    seconds_since_prev: float | None
    is_late: bool


@dataclass(frozen=True)
class SessionSettings:
    gap_ms: int
    max_ms: int
    rules: RuleSet
    id_retention_ms: int = 30 * 24 * 3_600_000
    profile_rules: ProfileRules | None = None  # None: no profiles, no alerts
    # user_id -> the user's stored user_profiles document (epoch, base, totals) or None; read once
    # when a user (re)enters the state store. None: nothing is stored (tests, a fresh output).
    stored_profile: Callable[[str], dict | None] | None = None
    triggers: TriggerRules | None = None        # None: no triggers
    experiments: Experiments | None = None      # None: no experiments


class SeenIds:
    """The last CAPACITY distinct event ids of a session, as 64-bit hashes (8 bytes each in state)."""
    CAPACITY = 4096

    def __init__(self, hashes: Iterable[int] = ()):
        self.order = array("Q", hashes)
        self.members = set(self.order)

    @staticmethod
    def digest(event_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")

    def add(self, event_id: str) -> bool:
        """True when the id is new (and now remembered); False for a duplicate."""
        h = self.digest(event_id)
        if h in self.members:
            return False
        self.order.append(h)
        self.members.add(h)
        if len(self.order) > self.CAPACITY:
            self.members.discard(self.order.pop(0))
        return True

    def to_text(self) -> str:
        return base64.b64encode(self.order.tobytes()).decode()

    @classmethod
    def from_text(cls, text: str) -> "SeenIds":
        hashes = array("Q")
        hashes.frombytes(base64.b64decode(text))
        return cls(hashes)


@dataclass
class Session:
    session_id: str
    user_session: str              # the explicit id, or the derived session's own id
    explicit: bool
    acc: SessionAccumulator
    last_ms: int | None = None     # latest event time, for seconds_since_prev
    segment: str | None = None
    rule_hash: str | None = None   # the rules content the segment was decided with
    history: list = field(default_factory=list)
    seen: SeenIds = field(default_factory=SeenIds)
    written: bool = False          # a document exists: later writes replace it

    def timeout_ms(self, settings: SessionSettings) -> int:
        return min(self.acc.end_ms + settings.gap_ms, self.acc.start_ms + settings.max_ms)

    def covers(self, event_ms: int, gap_ms: int) -> bool:
        """A derived session takes the events within the gap on either side of it."""
        return self.acc.start_ms - gap_ms <= event_ms <= self.acc.end_ms + gap_ms


@dataclass
class UserState:
    user_id: str
    sessions: dict = field(default_factory=dict)     # session_id -> open Session
    generations: dict = field(default_factory=dict)  # user_session -> generations used so far
    last_event_ms: int = 0
    profile: ProfileTotals | None = None             # this epoch's profile totals (profiles on)
    alerts: AlertState = field(default_factory=AlertState)
    triggers: TriggerState = field(default_factory=TriggerState)  # cooldowns: trigger -> last fired

    def encode(self) -> str:
        """-> the JSON text kept in Spark's state store."""
        raw = {"user_id": self.user_id, "generations": self.generations, "last_event_ms": self.last_event_ms,
               "sessions": [_session_to_dict(s) for s in self.sessions.values()]}
        if self.profile is not None:
            raw["profile"], raw["alerts"] = self.profile.to_state(), self.alerts.to_state()
        if self.triggers.last_fired:
            raw["triggers"] = self.triggers.to_state()
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> "UserState":
        raw = json.loads(text)
        sessions = [_session_from_dict(s) for s in raw["sessions"]]
        profile = ProfileTotals.from_state(raw["profile"]) if "profile" in raw else None
        alerts = AlertState.from_state(raw["alerts"]) if "alerts" in raw else AlertState()
        return cls(raw["user_id"], {s.session_id: s for s in sessions}, raw["generations"], raw["last_event_ms"],
                   profile, alerts, TriggerState.from_state(raw.get("triggers")))


@dataclass
class Outputs:
    events: list = field(default_factory=list)       # EventOut of every counted or late event
    duplicates: list = field(default_factory=list)   # ids of events already counted: not written again
    sessions: list = field(default_factory=list)     # session documents (dates as epoch millis)
    first_writes: set = field(default_factory=set)   # ids among `sessions` never written before
    profile: dict | None = None                      # profile_update(): when the user changed
    alerts: list = field(default_factory=list)       # Alert raised by this batch's events
    actions: list = field(default_factory=list)      # trigger executions (app/actions/triggers.py)
    history_before: dict = field(default_factory=dict)  # session -> its history's length before the step


class Step(NamedTuple):
    state: UserState | None        # None: the entry leaves the state store
    out: Outputs
    timeout_ms: int | None


def process_events(state: UserState | None, events: Iterable[Event], watermark_ms: int,
                   settings: SessionSettings) -> Step:
    """Folds a batch of one user's events into the user's state."""
    events = sorted(events, key=lambda e: (e.event_ms, e.event_id))
    if state is None:
        state = UserState(events[0].user_id if events else "")
    out, touched, counted = _outputs(state, settings), {}, []
    for ev in events:
        session = _session_for(state, ev, settings)
        if session is not None and ev.event_id and not session.seen.add(ev.event_id):
            out.duplicates.append(ev.event_id)
            continue
        if session is not None and session.explicit and ev.event_ms - session.acc.start_ms >= settings.max_ms:
            _close(state, session, out, settings)  # the 24 h guard: the id continues as #n+1
            touched.pop(session.session_id, None)
            session = None
        if session is None:
            if ev.event_ms < watermark_ms:
                out.events.append(EventOut(ev.event_id, None, None, True))
                continue
            session = _open(state, ev)
            session.seen.add(ev.event_id)
            if settings.profile_rules is not None:
                _profile(state, ev, watermark_ms, settings).open_session()
        out.events.append(_add(session, ev, watermark_ms, settings.rules))
        counted.append(ev)  # in a session: a late copy of an event whose session closed never gets here
        state.last_event_ms = max(state.last_event_ms, ev.event_ms)
        touched[session.session_id] = session
    if settings.profile_rules is not None and counted:
        _count_in_profile(state, counted, out, settings, watermark_ms)
    return _finish(state, out, touched, watermark_ms, settings)


def _profile(state: UserState, ev: Event, watermark_ms: int, settings: SessionSettings) -> ProfileTotals:
    if state.profile is None:  # a new epoch: the user (re)enters the state store
        lookup = settings.stored_profile
        state.profile = new_epoch(watermark_ms, ev.event_ms, ev.event_id, lookup(state.user_id) if lookup else None)
    return state.profile


def _count_in_profile(state: UserState, counted: list, out: Outputs, settings: SessionSettings,
                      watermark_ms: int) -> None:
    """The batch's sessionized events (not duplicates, not late without a session) into the profile
    and through the alert rules: the profile adds up what the user's sessions hold."""
    for ev in counted:
        _profile(state, ev, watermark_ms, settings).add_event(ev.event_ms, ev.event_type, ev.price, ev.device_type,
                                                              ev.country, ev.category_code)
    raised = detect(state.alerts, state.user_id, (
        AlertEvent(ev.event_ms, ev.event_type, _session_of(state, ev), ev.ip_address, ev.country, ev.price,
                   ev.product_id) for ev in counted), settings.profile_rules)
    for alert in raised:
        state.profile.saw_alert(alert.alert_id, alert.alert_type, alert.severity, alert.first_event_ms)
    out.alerts.extend(raised)


def _session_of(state: UserState, ev: Event) -> str | None:
    return ev.user_session  # the explicit id groups a session's events for the rapid-action run


def process_timeout(state: UserState, watermark_ms: int, settings: SessionSettings) -> Step:
    """The watermark passed the entry's timeout: close what is due, or let the entry expire."""
    return _finish(state, _outputs(state, settings), {}, watermark_ms, settings)


def _outputs(state: UserState, settings: SessionSettings) -> Outputs:
    if settings.triggers is None:  # only the triggers ask which segments changed
        return Outputs()
    return Outputs(history_before={sid: len(s.history) for sid, s in state.sessions.items()})


def _session_for(state: UserState, ev: Event, settings: SessionSettings) -> Session | None:
    for session in state.sessions.values():
        if ev.user_session is not None:
            if session.explicit and session.user_session == ev.user_session:
                return session
        elif not session.explicit and session.covers(ev.event_ms, settings.gap_ms):
            return session
    return None


def _open(state: UserState, ev: Event) -> Session:
    if ev.user_session is not None:
        generation = state.generations.get(ev.user_session, 0) + 1
        state.generations[ev.user_session] = generation
        session_id = ev.user_session if generation == 1 else f"{ev.user_session}#{generation}"
        user_session, explicit = ev.user_session, True
    else:
        session_id = user_session = f"{ev.user_id}-{ev.event_ms}"
        explicit = False
    session = Session(session_id, user_session, explicit, SessionAccumulator(ev.event_ms, ev.event_ms))
    state.sessions[session_id] = session
    return session


def _add(session: Session, ev: Event, watermark_ms: int, rules: RuleSet) -> EventOut:
    acc = session.acc
    acc.add(ev.event_ms, ev.event_type, ev.product_id, ev.category_id, ev.price)
    previous = session.last_ms
    since_prev = (ev.event_ms - previous) / 1000.0 if previous is not None and ev.event_ms >= previous else None
    session.last_ms = ev.event_ms if previous is None else max(previous, ev.event_ms)
    _classify(session, rules, ev.event_ms)
    return EventOut(ev.event_id, session.session_id, since_prev, ev.event_ms < watermark_ms)


def _classify(session: Session, rules: RuleSet, at_ms: int) -> Segment:
    """The session's segment under the current rules; a change of segment or of rules is history."""
    segment = rules.classify(session_metrics(session.acc))
    if segment.name != session.segment or rules.content_hash != session.rule_hash:
        session.segment, session.rule_hash = segment.name, rules.content_hash
        session.history.append({"segment": segment.name, "at": at_ms, "total_events": session.acc.total_events,
                                "rule_version": rules.version})
    return segment


def _close(state: UserState, session: Session, out: Outputs, settings: SessionSettings) -> None:
    _emit(state, session, "closed", out, settings)
    del state.sessions[session.session_id]
    if state.profile is not None:
        acc = session.acc
        state.profile.close_session((acc.end_ms - acc.start_ms) / 60_000.0, session.segment, acc.end_ms)
        state.alerts.forget_session(session.user_session)


def _finish(state: UserState, out: Outputs, touched: dict, watermark_ms: int, settings: SessionSettings) -> Step:
    for session in list(state.sessions.values()):
        if session.timeout_ms(settings) < watermark_ms:  # Spark's rule: the watermark passed it
            _close(state, session, out, settings)
        elif session.session_id in touched:
            _emit(state, session, "active", out, settings)
    facts = None
    if state.profile is not None and (out.events or out.sessions):  # events counted, or sessions closed
        for doc in out.sessions:
            state.profile.saw_session(doc["_id"], doc["session_end"])
        update = profile_update(state.user_id, state.profile, [
            OpenSession((s.acc.end_ms - s.acc.start_ms) / 60_000.0, s.segment, s.acc.end_ms)
            for s in state.sessions.values()])
        if out.sessions or settings.triggers is not None:
            facts = profile_facts(update["totals"], settings.profile_rules)
            scores = {name: facts[name] for name in SCORES + ("behavior_pattern",)}
            cohort = cohort_week(update["totals"]["first_seen"])
            for doc in out.sessions:  # one read answers "who is this and what do they do now"
                doc["user_scores"], doc["user_cohort_week"] = scores, cohort
        digest = update_digest(update)
        if digest != state.profile.written:  # a session closing alone changes nothing stored
            out.profile = update
            state.profile.stored, state.profile.written = True, digest  # the next batch replaces it
    if settings.triggers is not None and (out.sessions or out.alerts):
        out.actions = fire(state.triggers, state.user_id, _happenings(out), settings.triggers, lambda: facts)
    if state.sessions:
        return Step(state, out, min(s.timeout_ms(settings) for s in state.sessions.values()))
    retain_until = state.last_event_ms + settings.id_retention_ms
    if state.generations and retain_until >= watermark_ms:
        return Step(state, out, retain_until)
    return Step(None, out, None)


def _happenings(out: Outputs) -> list[Happening]:
    """What the step did to the user, for the triggers: sessions written, segments changed, alerts."""
    happenings = []
    for doc in out.sessions:
        kind = "session_closed" if doc["status"] == "closed" else "session_updated"
        happenings.append(Happening(kind, doc["session_end"], session=doc))
        history, before = doc["segment_history"], out.history_before.get(doc["_id"], 0)
        previous = history[max(before - 1, 0)]["segment"]
        if previous != doc["behavior_segment"]:
            happenings.append(Happening("segment_changed", doc["session_end"], session=doc, previous_segment=previous))
    for alert in out.alerts:
        happenings.append(Happening("alert", alert.event_ms, alert={
            "alert_id": alert.alert_id, "alert_type": alert.alert_type, "severity": alert.severity,
            "session_id": alert.session_id, "evidence": alert.evidence}))
    return happenings


def _emit(state: UserState, session: Session, status: str, out: Outputs, settings: SessionSettings) -> None:
    rules = settings.rules
    segment = _classify(session, rules, session.acc.end_ms)
    doc = session_document(state.user_id, session, segment, status, rules)
    if settings.experiments is not None:
        doc["experiments"], doc["recommendations"] = settings.experiments.apply(
            state.user_id, session.history, segment.name, doc["recommendations"])
    out.sessions.append(doc)
    if not session.written:  # kept in the state, so a replayed batch says the same
        out.first_writes.add(session.session_id)
        session.written = True


def session_document(user_id: str, session: Session, segment: Segment, status: str, rules: RuleSet) -> dict:
    acc = session.acc
    metrics = session_metrics(acc)
    return {
        "_id": session.session_id,
        "user_id": user_id,
        "user_session": session.user_session,
        "behavior_segment": segment.name,
        "segment_color": segment.color,
        "segment_score": segment.score,
        "action_priority": segment.action_priority,
        "status": status,
        "session_start": acc.start_ms,
        "session_end": acc.end_ms,
        **metrics,
        "event_path": event_path(acc),
        "recommendations": segment.recommend(metrics),
        "segment_history": [dict(h) for h in session.history],
        "rule_version": rules.version,
    }


def _session_to_dict(s: Session) -> dict:
    return {"session_id": s.session_id, "user_session": s.user_session, "explicit": s.explicit,
            "acc": s.acc.to_state(), "last_ms": s.last_ms, "segment": s.segment, "rule_hash": s.rule_hash,
            "history": s.history, "seen": s.seen.to_text(), "written": s.written}


def _session_from_dict(raw: dict) -> Session:
    return Session(raw["session_id"], raw["user_session"], raw["explicit"],
                   SessionAccumulator.from_state(raw["acc"]), raw["last_ms"], raw["segment"], raw["rule_hash"],
                   raw["history"], SeenIds.from_text(raw["seen"]), raw["written"])
