"""The per-user session state machine (DESIGN.md §5): pure Python, no Spark.

One `UserState` per user_id holds that user's open sessions, the events not yet final, the ids
of the user's recent events and the generation counters of the explicit session ids
(`user_session`). Spark keeps one state entry per user (app/sessions/stateful.py); a
micro-batch decodes and rewrites only the users it touches.

Transitions, each returning a `Step` (the new state or None, what to write, the next timeout):
- `process_events(state, events, watermark_ms, settings)`: a batch of one user's events.
- `process_timeout(state, watermark_ms, settings)`: the watermark passed the state's timeout.

Results depend on event time only (DESIGN §5). The mechanism: an event is *final* once the
watermark has passed it (event time < watermark). No event that arrives within the watermark
delay can be earlier than the watermark, so the final events are all the user's events up to
it, whatever the batches were. Only final events change what is decided once and for all:
- Final events are applied in event-time order (time, then event id), interleaved with the
  sessions' closes in event time: a session closes at min(last event + gap, start + SESSION_MAX
  - 1 ms), before any later event is applied, so an event more than the gap after a session's
  last event starts the next session whether or not a timeout ran first. The profile, the alert
  rules and the triggers see the user's events in that order, one event (or close) at a time.
- A session closes when the watermark passes its close time; its closed document, the alerts,
  the trigger executions and the profile are all decided by final events.
Events not yet final wait in the state (`pending`), and are shown at once *provisionally*: each
batch, the open sessions of the keys it touched are re-derived from the final state plus the
pending events (in event-time order) and written with `status: "active"`; an enriched event is
written on arrival with its provisional session (and seconds since the previous event), and
corrected whenever an earlier arrival or its becoming final changes that. A provisional session that the final events do not confirm (an earlier event bridged
it into another session) is retracted. So the last write of every document is the same
however the batches were cut; only the provisional writes before it differ.

Other rules the transitions keep:
- An event behind the watermark on arrival is late: written to enriched_events (`is_late`),
  counted, never sessionized (a live run marks the same events late when they arrive later
  than the watermark delay).
- An event id is counted once per user: the ids of the user's last `SeenIds.CAPACITY`
  distinct events are remembered (8 bytes each), across sessions.
- A `user_session` that comes back after its session closed continues as `<id>#2`, `#3`, ...:
  the user's entry remembers the generation counters for `id_retention_ms` after the user's
  last event, for the user's latest GENERATIONS_KEPT ids. A literal `#` in a user_session is written `##` in the session id, so a literal
  `S#2` never collides with the second generation of `S`. A user_session that comes back after
  the entry expired starts at generation 1 again: the sink keeps the old closed document under
  `archived_id` (`S#archived-<its start ms>`) and writes the new session as `S`.
- The entry's expiry is decided in event time: a final event later than the entry's retention,
  with no session open, finds the entry as the expiry would have left it (`_expire`), whether
  or not Spark's timeout ran before the event arrived. Whether a pending event finds the entry
  expired is open until it is final (an earlier event arriving within the delay can bridge the
  gap), and with it the generation of an explicit session it opens: such a session is not shown
  provisionally (`_expiry_horizon`), its events written on arrival without a session and
  corrected once final. A provisional write never takes an id its final session does not get,
  so it never makes the sink archive a closed document that then stays archived.
- Without a user_session, the user's events make derived sessions by the same gap and
  SESSION_MAX rules (one open derived session per user at a time).
- At most `max_open_sessions` sessions of one user are open at once (a bot rotating session
  ids): opening one more force-closes the user's session with the oldest last event, with
  `close_reason: "open_session_cap"`. Nothing is dropped, and the cost of a user's batch is
  bounded by the cap and the batch's events.
- The entry stays while it has open sessions or pending events, then `id_retention_ms`
  (SESSION_ID_RETENTION) after the user's last event, and while a trigger's cooldown runs: so
  generations, cooldowns, the user's event ids and the profile's epoch hold across sessions,
  whether or not the watermark passed one session before the next arrived.
- The rules are re-applied at every update and at close: a session classified under another
  rules file (content hash) is reclassified, and its history records the new rule_version.
- With profile rules, the entry also holds the user's profile totals of this epoch (with the
  base of the earlier epochs) and the alert windows (app/profiles/). When the entry expires, what
  its last profile update stored stays behind as a small entry of its own (`left`: the epoch and
  the totals, no timeout), and the user's next epoch opens on it: the state step reads nothing
  from MongoDB, so a slow or absent store never holds up the act lane (DESIGN.md §16). Only a
  checkpoint from before `left` existed has users who left without one: for those the epoch
  opens on the stored document (`stored_profile`, read once). With
  trigger rules, the triggers' cooldowns; with experiments, each session document carries its
  variants and their recommendations (app/experiments/design.py).
"""
from __future__ import annotations

import base64
import hashlib
import heapq
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

DERIVED = ""  # the key of derived sessions (a blank user_session is null, so no explicit key is "")
OPEN_SESSION_CAP = "open_session_cap"
GENERATIONS_KEPT = 1000  # session ids whose generation a user's entry remembers (a bot's oldest go first)


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


class EventFix(NamedTuple):
    """A final event whose written session differs: its new session, and the event (its hour and
    keys locate it in live_feed: app/sinks/live_feed.py)."""
    event_id: str
    session_id: str | None
    seconds_since_prev: float | None
    event: Event


@dataclass(frozen=True)
class SessionSettings:
    gap_ms: int
    max_ms: int
    rules: RuleSet
    id_retention_ms: int = 30 * 24 * 3_600_000
    profile_rules: ProfileRules | None = None  # None: no profiles, no alerts
    # user_id -> the user's stored user_profiles document (epoch, base, totals) or None; read once
    # when a user without an entry (not even `left`) enters the state store, for checkpoints from
    # before `left` existed. None: not read (a checkpoint with `left` from its start, tests).
    stored_profile: Callable[[str], dict | None] | None = None
    triggers: TriggerRules | None = None        # None: no triggers
    experiments: Experiments | None = None      # None: no experiments
    max_open_sessions: int = 100                # per user; see the module docstring


class SeenIds:
    """The last CAPACITY distinct event ids of a user, as 64-bit hashes (8 bytes each in state)."""
    CAPACITY = 4096

    def __init__(self, hashes: Iterable[int] = ()):
        self.order = array("Q", hashes)
        del self.order[:-self.CAPACITY]
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

    @property
    def key(self) -> str:
        return self.user_session if self.explicit else DERIVED

    def close_ms(self, settings: SessionSettings) -> int:
        """The last event time this session still takes: a later event starts another session."""
        return min(self.acc.end_ms + settings.gap_ms, self.acc.start_ms + settings.max_ms - 1)

    def copy(self) -> "Session":
        return _session_from_dict(json.loads(json.dumps(_session_to_dict(self))))


class Pending(NamedTuple):
    """An event not yet final, with what its enriched document was written with on arrival."""
    event: Event
    session_id: str | None
    seconds_since_prev: float | None


def _key(ev: Event) -> str:
    return DERIVED if ev.user_session is None else ev.user_session


def _order(ev: Event) -> tuple:
    return ev.event_ms, ev.event_id


@dataclass
class UserState:
    user_id: str
    sessions: dict = field(default_factory=dict)     # session_id -> open Session (final events only)
    generations: dict = field(default_factory=dict)  # user_session -> generations used so far
    last_event_ms: int = 0
    profile: ProfileTotals | None = None             # this epoch's profile totals (profiles on)
    alerts: AlertState = field(default_factory=AlertState)
    triggers: TriggerState = field(default_factory=TriggerState)  # cooldowns: trigger -> last fired
    seen: SeenIds = field(default_factory=SeenIds)   # the user's recent event ids (final and pending)
    pending: list = field(default_factory=list)      # Pending, not yet final (event time >= frontier)
    frontier_ms: int | None = None                   # every event before it is final
    live: dict = field(default_factory=dict)         # session_id -> key: documents written as active
    left: dict | None = None                          # the last stored profile of an expired entry

    def open_session_of(self, key: str) -> Session | None:
        for session in self.sessions.values():  # the cap keeps this short
            if session.key == key:
                return session
        return None

    def encode(self) -> str:
        """-> the JSON text kept in Spark's state store."""
        if self.left is not None and not (self.profile or self.pending or self.sessions or self.live):
            # what an expired entry leaves (the user came back with nothing final yet: the whole entry)
            return json.dumps({"user_id": self.user_id, "left": self.left}, separators=(",", ":"))
        raw = {"user_id": self.user_id, "generations": self.generations, "last_event_ms": self.last_event_ms,
               "sessions": [_session_to_dict(s) for s in self.sessions.values()], "seen": self.seen.to_text(),
               "pending": [[*p.event, p.session_id, p.seconds_since_prev] for p in self.pending],
               "frontier_ms": self.frontier_ms, "live": self.live}
        if self.profile is not None:
            raw["profile"], raw["alerts"] = self.profile.to_state(), self.alerts.to_state()
        if self.triggers.last_fired:
            raw["triggers"] = self.triggers.to_state()
        if self.left is not None:
            raw["left"] = self.left
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> "UserState":
        raw = json.loads(text)
        if "left" in raw and "pending" not in raw:
            return cls(raw["user_id"], left=raw["left"])
        if "pending" not in raw:
            raise ValueError("a state entry written before event-time ordering (no `pending`): this checkpoint "
                             "needs a new one (see README: state layout changes)")
        sessions = [_session_from_dict(s) for s in raw["sessions"]]
        profile = ProfileTotals.from_state(raw["profile"]) if "profile" in raw else None
        alerts = AlertState.from_state(raw["alerts"]) if "alerts" in raw else AlertState()
        pending = [Pending(Event(*p[:-2]), p[-2], p[-1]) for p in raw["pending"]]
        return cls(raw["user_id"], {s.session_id: s for s in sessions}, raw["generations"], raw["last_event_ms"],
                   profile, alerts, TriggerState.from_state(raw.get("triggers")), SeenIds.from_text(raw["seen"]),
                   pending, raw["frontier_ms"], raw["live"], raw.get("left"))


@dataclass
class Outputs:
    events: list = field(default_factory=list)       # EventOut of every event on arrival (pending or late)
    event_fixes: list = field(default_factory=list)  # EventFix of final events whose written session differs
    duplicates: list = field(default_factory=list)   # ids of events already counted: not written again
    sessions: list = field(default_factory=list)     # session documents (dates as epoch millis)
    first_writes: set = field(default_factory=set)   # ids among `sessions` never written before
    retracted: list = field(default_factory=list)    # provisional session ids the final events did not confirm
    profile: dict | None = None                      # profile_update(): when the user changed
    alerts: list = field(default_factory=list)       # Alert raised by final events
    actions: list = field(default_factory=list)      # trigger executions (app/actions/triggers.py)


class Step(NamedTuple):
    state: UserState | None        # None: the entry leaves the state store
    out: Outputs
    timeout_ms: int | None


def process_events(state: UserState | None, events: Iterable[Event], watermark_ms: int,
                   settings: SessionSettings) -> Step:
    """Folds a batch of one user's events into the user's state."""
    events = sorted(events, key=_order)
    if state is None:
        state = UserState(events[0].user_id if events else "")
    out = Outputs()
    frontier = watermark_ms if state.frontier_ms is None else max(watermark_ms, state.frontier_ms)
    arrived = []
    for ev in events:
        if not state.seen.add(ev.event_id):
            out.duplicates.append(ev.event_id)
        elif ev.event_ms < frontier:  # behind the watermark: its place in the user's order is gone
            out.events.append(EventOut(ev.event_id, None, None, True))
        else:
            arrived.append(ev)
    state.pending.extend(Pending(ev, None, None) for ev in arrived)
    touched = _finalize(state, frontier, out, settings)
    finalized = bool(touched)  # an event applied or a session closed: only that changes the profile
    touched.update(_key(ev) for ev in arrived)
    _show(state, touched, {ev.event_id for ev in arrived}, out, settings)
    return _finish(state, out, frontier, settings, finalized)


def process_timeout(state: UserState, watermark_ms: int, settings: SessionSettings) -> Step:
    """The watermark passed the entry's timeout: apply what became final, close what is due, or expire."""
    return process_events(state, (), watermark_ms, settings)


# ---- final events, in event-time order --------------------------------------------------------

def _finalize(state: UserState, frontier: int, out: Outputs, settings: SessionSettings) -> set:
    """Applies the pending events before `frontier` in event-time order, closing each session
    before the first event after its close time; then closes what the frontier passed.
    Returns the keys touched."""
    due = sorted((p for p in state.pending if p.event.event_ms < frontier), key=lambda p: _order(p.event))
    if due:
        state.pending = [p for p in state.pending if p.event.event_ms >= frontier]
    closes = [(s.close_ms(settings), s.session_id) for s in state.sessions.values()]
    heapq.heapify(closes)
    touched: set = set()
    for i, p in enumerate(due):
        _close_before(state, closes, p.event.event_ms, out, settings, touched)
        if not state.sessions and state.last_event_ms and p.event.event_ms > _retained_until(state, settings):
            _expire(state, due[i:], settings)
        session = _apply(state, p, out, settings)
        heapq.heappush(closes, (session.close_ms(settings), session.session_id))
        touched.add(session.key)
    _close_before(state, closes, frontier, out, settings, touched)
    state.frontier_ms = frontier
    return touched


def _close_before(state: UserState, closes: list, bound_ms: int, out: Outputs, settings: SessionSettings,
                  touched: set) -> None:
    """Closes, in close-time order, the open sessions whose close time is before `bound_ms`."""
    while closes and closes[0][0] < bound_ms:
        close_ms, session_id = heapq.heappop(closes)
        session = state.sessions.get(session_id)
        if session is None or session.close_ms(settings) != close_ms:
            continue  # closed already, or it took events since: a newer entry is in the heap
        touched.add(session.key)
        _close(state, session, out, settings)


def _apply(state: UserState, p: Pending, out: Outputs, settings: SessionSettings) -> Session:
    """One final event: into its session (opened if need be), the profile, the alert rules and
    the triggers; corrects its enriched document if it was written with another session."""
    ev, happenings = p.event, []
    session = state.open_session_of(_key(ev))
    if session is None:
        if len(state.sessions) >= settings.max_open_sessions:
            oldest = min(state.sessions.values(), key=lambda s: (s.acc.end_ms, s.session_id))
            _close(state, oldest, out, settings, reason=OPEN_SESSION_CAP)
        session = _open(state, ev, state.generations)
        state.sessions[session.session_id] = session
        if settings.profile_rules is not None:
            _profile(state, ev, settings).open_session()
    since = _since(session, ev)
    history_before = len(session.history)
    _add(session, ev, settings.rules)
    state.last_event_ms = max(state.last_event_ms, ev.event_ms)
    if (session.session_id, since) != (p.session_id, p.seconds_since_prev):
        out.event_fixes.append(EventFix(ev.event_id, session.session_id, since, ev))
    raised = []
    if settings.profile_rules is not None:
        profile = _profile(state, ev, settings)
        profile.add_event(ev.event_ms, ev.event_type, ev.price, ev.device_type, ev.country, ev.category_code)
        profile.saw_session(session.session_id, session.acc.end_ms)
        raised = detect(state.alerts, state.user_id, [AlertEvent(
            ev.event_ms, ev.event_type, session.session_id, ev.ip_address, ev.country, ev.price, ev.product_id)],
            settings.profile_rules)
        for alert in raised:
            profile.saw_alert(alert.alert_id, alert.alert_type, alert.severity, alert.first_event_ms)
        out.alerts.extend(raised)
    if settings.triggers is not None:
        changed = len(session.history) > history_before and history_before > 0
        if _wants(settings.triggers, "session_updated", session.segment) or (
                changed and _wants(settings.triggers, "segment_changed", session.segment)):
            doc = _document(state, session, "active", settings)
            happenings.append(Happening("session_updated", ev.event_ms, session=doc))
            if changed:
                happenings.append(Happening("segment_changed", ev.event_ms, session=doc,
                                            previous_segment=session.history[history_before - 1]["segment"]))
        happenings += [Happening("alert", a.event_ms, alert={
            "alert_id": a.alert_id, "alert_type": a.alert_type, "severity": a.severity,
            "session_id": a.session_id, "evidence": a.evidence}) for a in raised]
        _fire(state, happenings, out, settings)
    return session


def _wants(triggers: TriggerRules, kind: str, segment: str) -> bool:
    """Whether a trigger of `kind` could fire for a session in `segment` (fire() decides): the
    session's document is built for the triggers only then, not for every final event."""
    return any(t.on == kind and (not t.segments or segment in t.segments) for t in triggers.triggers)


def _fire(state: UserState, happenings: list, out: Outputs, settings: SessionSettings) -> None:
    """One moment's happenings (one final event, or one close) through the triggers."""
    if happenings:
        out.actions.extend(fire(state.triggers, state.user_id, happenings, settings.triggers,
                                lambda: _facts(state, settings)))


def _facts(state: UserState, settings: SessionSettings) -> dict | None:
    if state.profile is None:
        return None
    return profile_facts(_profile_update(state, settings)["totals"], settings.profile_rules)


def _profile_update(state: UserState, settings: SessionSettings) -> dict:
    return profile_update(state.user_id, state.profile, [
        OpenSession((s.acc.end_ms - s.acc.start_ms) / 60_000.0, s.segment, s.acc.end_ms)
        for s in state.sessions.values()], bounce_segment=settings.rules.segments[-1].name)


def _profile(state: UserState, ev: Event, settings: SessionSettings) -> ProfileTotals:
    if state.profile is None:  # a new epoch: the user (re)enters the state store
        if state.left is not None:
            stored, state.left = state.left, None
        else:
            lookup = settings.stored_profile
            stored = lookup(state.user_id) if lookup else None
        state.profile = new_epoch(ev.event_ms, ev.event_id, stored)
    return state.profile


def _close(state: UserState, session: Session, out: Outputs, settings: SessionSettings,
           reason: str | None = None) -> None:
    """A final close: the closed document (with the user's scores at this moment), the profile,
    the `session_closed` triggers."""
    history_before = len(session.history)
    segment = _classify(session, settings.rules, session.acc.end_ms)  # rules may have changed since
    del state.sessions[session.session_id]
    if state.profile is not None:
        acc = session.acc
        state.profile.close_session((acc.end_ms - acc.start_ms) / 60_000.0, segment.name, acc.end_ms)
        state.profile.saw_session(session.session_id, acc.end_ms)
        state.alerts.forget_session(session.session_id)
    doc = _document(state, session, "closed", settings, segment)
    if reason is not None:
        doc["close_reason"] = reason
    if state.profile is not None:
        facts = _facts(state, settings)
        doc["user_scores"] = {name: facts[name] for name in SCORES + ("behavior_pattern",)}
        doc["user_cohort_week"] = cohort_week(state.profile.first_seen if state.profile.base is None else
                                              min(state.profile.first_seen, state.profile.base["first_seen"]))
    _write(state, doc, out)
    state.live.pop(session.session_id, None)
    if settings.triggers is not None:
        happenings = [Happening("session_closed", session.acc.end_ms, session=doc)]
        if len(session.history) > history_before and history_before > 0:
            happenings.append(Happening("segment_changed", session.acc.end_ms, session=doc,
                                        previous_segment=session.history[history_before - 1]["segment"]))
        _fire(state, happenings, out, settings)


def _write(state: UserState, doc: dict, out: Outputs) -> None:
    out.sessions.append(doc)
    if doc["_id"] not in state.live:  # kept in the state, so a replayed batch says the same
        out.first_writes.add(doc["_id"])


def _open(state: UserState, ev: Event, generations: dict) -> Session:
    """A new session for `ev` (not registered anywhere); `generations` is counted on."""
    if ev.user_session is not None:
        generation = generations.pop(ev.user_session, 0) + 1
        generations[ev.user_session] = generation  # newest last: the oldest are forgotten first
        if len(generations) > GENERATIONS_KEPT:
            del generations[next(iter(generations))]
        session_id = session_id_of(ev.user_session, generation)
        user_session, explicit = ev.user_session, True
    else:
        session_id = user_session = f"{ev.user_id}-{ev.event_ms}"
        explicit = False
    return Session(session_id, user_session, explicit, SessionAccumulator(ev.event_ms, ev.event_ms))


def session_id_of(user_session: str, generation: int) -> str:
    """`S`, `S#2`, `S#3`, ...; a literal `#` is doubled, so no literal id equals a generation's."""
    base = user_session.replace("#", "##")
    return base if generation == 1 else f"{base}#{generation}"


def archived_id(session_id: str, session_start_ms: int) -> str:
    """Where the sink keeps a closed document whose id a later session took: a user_session
    reused after the user's entry expired (SESSION_ID_RETENTION) starts again at generation 1.
    A literal `#` is doubled in ids, so no user_session produces this id."""
    return f"{session_id}#archived-{session_start_ms}"


def _since(session: Session, ev: Event) -> float | None:
    return None if session.last_ms is None else (ev.event_ms - session.last_ms) / 1000.0


def _add(session: Session, ev: Event, rules: RuleSet) -> None:
    session.acc.add(ev.event_ms, ev.event_type, ev.product_id, ev.category_id, ev.price)
    session.last_ms = ev.event_ms if session.last_ms is None else max(session.last_ms, ev.event_ms)
    _classify(session, rules, ev.event_ms)


def _classify(session: Session, rules: RuleSet, at_ms: int) -> Segment:
    """The session's segment under the current rules; a change of segment or of rules is history."""
    segment = rules.classify(session_metrics(session.acc))
    if segment.name != session.segment or rules.content_hash != session.rule_hash:
        session.segment, session.rule_hash = segment.name, rules.content_hash
        session.history.append({"segment": segment.name, "at": at_ms, "total_events": session.acc.total_events,
                                "rule_version": rules.version})
    return segment


# ---- provisional documents: final state + pending events -------------------------------------

def _show(state: UserState, keys: set, arrived: set, out: Outputs, settings: SessionSettings) -> None:
    """Writes the open sessions of `keys` as they stand with the pending events (provisional),
    the arrived events with their provisional sessions, and retracts what is no longer shown."""
    by_key: dict = {}
    in_order = sorted(state.pending, key=lambda p: _order(p.event))
    for p in in_order:
        by_key.setdefault(_key(p.event), []).append(p)
    horizon = _expiry_horizon(state, in_order, settings)
    rewritten = {}
    for key in sorted(keys):
        final = state.open_session_of(key)
        current = final.copy() if final is not None else None
        shown, generations = [], dict(state.generations)
        pending = by_key.get(key, [])
        for i, p in enumerate(pending):
            ev = p.event
            if current is not None and ev.event_ms > current.close_ms(settings):
                shown.append(current)
                current = None
            if current is None and key != DERIVED and horizon is not None and _order(ev) >= horizon:
                for later in pending[i:]:  # the generation is open until they are final: not shown yet
                    if later.event.event_id in arrived:
                        out.events.append(EventOut(later.event.event_id, None, None, False))
                break
            if current is None:
                current = _open(state, ev, generations)
            since = _since(current, ev)
            _add(current, ev, settings.rules)
            if ev.event_id in arrived:
                out.events.append(EventOut(ev.event_id, current.session_id, since, False))
            elif (p.session_id, p.seconds_since_prev) != (current.session_id, since):
                out.event_fixes.append(EventFix(ev.event_id, current.session_id, since, ev))
            rewritten[ev.event_id] = Pending(ev, current.session_id, since)
        if current is not None:
            shown.append(current)
        for session in shown:
            _write(state, _document(state, session, "active", settings), out)
            state.live[session.session_id] = key
        ids = {s.session_id for s in shown}
        for session_id in sorted(sid for sid, k in state.live.items() if k == key and sid not in ids):
            out.retracted.append(session_id)
            del state.live[session_id]
    if rewritten:
        state.pending = [rewritten.get(p.event.event_id, p) for p in state.pending]


def _expiry_horizon(state: UserState, in_order: list, settings: SessionSettings) -> tuple | None:
    """The order key (_order) of the first pending event that could find the entry expired when it
    becomes final (_finalize -> _expire): the first one more than SESSION_ID_RETENTION after the
    user's events before it. None: no pending event can, and no later arrival makes one (arrivals
    only narrow the gaps, and triggers' cooldowns only lengthen the retention)."""
    last = state.last_event_ms
    for p in in_order:
        if last and p.event.event_ms > last + settings.id_retention_ms:
            return _order(p.event)
        last = max(last, p.event.event_ms)
    return None


def _document(state: UserState, session: Session, status: str, settings: SessionSettings,
              segment: Segment | None = None) -> dict:
    rules = settings.rules
    if segment is None:
        segment = rules.by_name(session.segment) if session.rule_hash == rules.content_hash else \
            _classify(session, rules, session.acc.end_ms)
    doc = session_document(state.user_id, session, segment, status, rules)
    if settings.experiments is not None:
        doc["experiments"], doc["recommendations"] = settings.experiments.apply(
            state.user_id, session.history, segment.name, doc["recommendations"])
    return doc


def _finish(state: UserState, out: Outputs, frontier: int, settings: SessionSettings, finalized: bool) -> Step:
    if state.profile is not None and finalized:
        update = _profile_update(state, settings)
        digest = update_digest(update)
        if digest != state.profile.written:
            out.profile = update
            state.profile.stored, state.profile.written = True, digest  # the next batch replaces it
    due = [s.close_ms(settings) for s in state.sessions.values()] + [p.event.event_ms for p in state.pending]
    if due:
        return Step(state, out, min(due))
    retain_until = _retained_until(state, settings)
    if retain_until >= frontier:
        return Step(state, out, retain_until)
    if state.profile is not None:  # the profile stays behind; everything else goes
        return Step(UserState(state.user_id, left=_left(_profile_update(state, settings))), out, None)
    if state.left is not None:  # a user who came back with only late events: nothing changed
        return Step(UserState(state.user_id, left=state.left), out, None)
    return Step(None, out, None)


def _left(update: dict) -> dict:
    """What an expired entry keeps of its profile: what its last update stored (see new_epoch)."""
    return {"epoch": update["epoch"], "totals": update["totals"]}


def _retained_until(state: UserState, settings: SessionSettings) -> int:
    """Without open sessions, the entry leaves the store once the watermark passes this."""
    retain_until = state.last_event_ms + settings.id_retention_ms  # ids, generations, the profile's epoch
    if settings.triggers is not None:
        cooldowns = {t.name: t.cooldown_ms for t in settings.triggers.triggers}
        for name, fired_ms in state.triggers.last_fired.items():
            retain_until = max(retain_until, fired_ms + cooldowns.get(name, 0))
    return retain_until


def _expire(state: UserState, rest: list, settings: SessionSettings) -> None:
    """The entry's retention ended before the final event `rest[0]`: the user goes on as Spark's
    timeout would have left it had it run first (the entry gone, the user re-entering with that
    event), so whether the timeout ran before the event arrived changes nothing. Kept: what is not
    final yet (pending, frontier, the provisional documents written); the event ids remembered are
    those of the events not applied yet. The new profile epoch opens on the last update emitted
    (what the store holds), as it would on the `left` entry the expiry leaves."""
    stored = _profile_update(state, settings) if state.profile is not None else state.left
    fresh = UserState(state.user_id, pending=state.pending, frontier_ms=state.frontier_ms, live=state.live,
                      seen=SeenIds(SeenIds.digest(p.event.event_id) for p in [*rest, *state.pending]))
    state.__dict__.update(fresh.__dict__)
    if stored is not None:
        state.profile = new_epoch(rest[0].event.event_ms, rest[0].event.event_id, stored)


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
            "history": s.history}


def _session_from_dict(raw: dict) -> Session:
    return Session(raw["session_id"], raw["user_session"], raw["explicit"],
                   SessionAccumulator.from_state(raw["acc"]), raw["last_ms"], raw["segment"], raw["rule_hash"],
                   raw["history"])
