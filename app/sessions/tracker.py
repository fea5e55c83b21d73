"""The session state machine (DESIGN.md §5): pure Python, no Spark.

One state per session key: `s:<user_session>` (explicit sessions) or `u:<user_id>` (sessions
derived by the inactivity gap). Spark's GroupState holds the dict this module returns; the
adapter in app/sessions/stateful.py moves it in and out of the state store.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from app.segments.rules import RuleSet
from app.sessions.metrics import SessionAccumulator, session_metrics


class Event(NamedTuple):
    event_ms: int
    event_id: str
    event_type: str
    user_id: str
    user_session: str | None
    product_id: str | None
    category_id: str | None
    price: float | None


@dataclass(frozen=True)
class SessionSettings:
    gap_ms: int
    max_ms: int
    rules: RuleSet


@dataclass
class Outputs:
    events: list      # (event_id, session_id | None, seconds_since_prev | None, is_late)
    sessions: list    # session documents (dates as epoch millis), status active | closed
    # Ids among `sessions` never written before: the sink can insert them instead of replacing.
    first_writes: set = field(default_factory=set)


def process_events(key: str, state: dict | None, events: Iterable[Event], watermark_ms: int,
                   settings: SessionSettings) -> tuple[dict | None, Outputs, int | None]:
    """Folds a batch of one key's events into its state. Returns (state, outputs, timeout_ms)."""
    state = dict(state or {"gen": 0, "open": None})
    out = Outputs([], [])
    explicit = key.startswith("s:")
    for ev in sorted(events, key=lambda e: (e.event_ms, e.event_id)):
        session = state["open"]
        if session is not None and _must_split(session, ev, explicit, settings):
            _close(state, out, explicit, settings)
            session = None
        if session is None:
            if ev.event_ms < watermark_ms:
                # Behind the watermark and its session is gone: kept as an event, counted as late.
                out.events.append((ev.event_id, None, None, True))
                continue
            session = _open(state, ev, explicit)
        out.events.append(_add(session, ev, watermark_ms, settings.rules))
    return _finish_batch(state, out, watermark_ms, explicit, settings)


def process_timeout(key: str, state: dict, watermark_ms: int,
                    settings: SessionSettings) -> tuple[dict | None, Outputs, int | None]:
    """The watermark passed the state's timeout: close the open session, or drop the tombstone."""
    out = Outputs([], [])
    state = dict(state)
    if state["open"] is not None:
        _close(state, out, key.startswith("s:"), settings)
    return _finish_batch(state, out, watermark_ms, key.startswith("s:"), settings)


def _must_split(session: dict, ev: Event, explicit: bool, settings: SessionSettings) -> bool:
    runaway = ev.event_ms - session["acc"].start_ms >= settings.max_ms
    # Derived sessions are separated by more than the gap, on either side of the open one.
    idle = not explicit and (ev.event_ms - session["last_ms"] > settings.gap_ms
                             or session["acc"].start_ms - ev.event_ms > settings.gap_ms)
    return runaway or idle


def _open(state: dict, ev: Event, explicit: bool) -> dict:
    state["gen"] += 1
    if explicit:
        # A user_session seen again after its session closed (or hit the 24 h cap) continues
        # as <user_session>#2, #3 ... so the closed document is never overwritten.
        session_id = ev.user_session if state["gen"] == 1 else f"{ev.user_session}#{state['gen']}"
    else:
        session_id = f"{ev.user_id}-{ev.event_ms}"
    state["open"] = {
        "session_id": session_id, "user_session": ev.user_session if explicit else session_id,
        "user_id": ev.user_id, "last_ms": None, "segment": None, "history": [],
        "acc": SessionAccumulator(start_ms=ev.event_ms, end_ms=ev.event_ms),
    }
    return state["open"]


def _add(session: dict, ev: Event, watermark_ms: int, rules: RuleSet) -> tuple:
    acc = session["acc"]
    acc.add(ev.event_ms, ev.event_type, ev.product_id, ev.category_id, ev.price)
    previous = session["last_ms"]
    since_prev = (ev.event_ms - previous) / 1000.0 if previous is not None and ev.event_ms >= previous else None
    session["last_ms"] = ev.event_ms if previous is None else max(previous, ev.event_ms)
    segment = rules.classify(session_metrics(acc)).name
    if segment != session["segment"]:
        session["segment"] = segment
        session["history"].append({"segment": segment, "at": ev.event_ms, "total_events": acc.total_events})
    return (ev.event_id, session["session_id"], since_prev, ev.event_ms < watermark_ms)


def _close(state: dict, out: Outputs, explicit: bool, settings: SessionSettings) -> None:
    session = state["open"]
    _emit(session, "closed", out, settings.rules)
    state["open"] = None
    # Explicit sessions keep a tombstone (the generation counter) for one max-session length,
    # so a late reuse of the id gets a fresh document id. Derived ids are unique by construction.
    state["tomb_until"] = session["acc"].end_ms + settings.max_ms if explicit else None


def _finish_batch(state: dict, out: Outputs, watermark_ms: int, explicit: bool,
                  settings: SessionSettings) -> tuple[dict | None, Outputs, int | None]:
    session = state["open"]
    if session is not None:
        acc = session["acc"]
        timeout = min(acc.end_ms + settings.gap_ms, acc.start_ms + settings.max_ms)
        if timeout >= watermark_ms:
            _emit(session, "active", out, settings.rules)
            return state, out, timeout
        _close(state, out, explicit, settings)
    tomb_until = state.get("tomb_until")
    if tomb_until is not None and tomb_until >= watermark_ms:
        return state, out, tomb_until
    return None, out, None


def _emit(session: dict, status: str, out: Outputs, rules: RuleSet) -> None:
    out.sessions.append(session_document(session, status, rules))
    if not session.get("written"):  # kept in the state, so a replayed batch says the same
        out.first_writes.add(session["session_id"])
        session["written"] = True


def session_document(session: dict, status: str, rules: RuleSet) -> dict:
    acc = session["acc"]
    metrics = session_metrics(acc)
    segment = rules.by_name(session["segment"])
    return {
        "_id": session["session_id"],
        "user_id": session["user_id"],
        "user_session": session["user_session"],
        "behavior_segment": segment.name,
        "segment_color": segment.color,
        "segment_score": segment.score,
        "action_priority": segment.action_priority,
        "status": status,
        "session_start": acc.start_ms,
        "session_end": acc.end_ms,
        **metrics,
        "recommendations": segment.recommend(metrics),
        "segment_history": [dict(h) for h in session["history"]],
        "rule_version": rules.version,
    }


def encode_state(state: dict) -> str:
    """State -> the JSON string kept in Spark's state store."""
    open_session = state["open"]
    if open_session is not None:
        open_session = {**open_session, "acc": open_session["acc"].to_state()}
    return json.dumps({**state, "open": open_session}, separators=(",", ":"))


def decode_state(text: str | None) -> dict | None:
    if text is None:
        return None
    state = json.loads(text)
    if state["open"] is not None:
        state["open"]["acc"] = SessionAccumulator.from_state(state["open"]["acc"])
    return state
