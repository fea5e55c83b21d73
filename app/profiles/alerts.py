"""Risk alerts over one user's events in event-time order (DESIGN.md §12): pure, so every rule's
edge is a unit test. The state is what the rules must remember between micro-batches; it lives
in the user's entry of the state store, so a replayed batch raises the very same alerts.

Rules (thresholds from the profile rules file, defaults in brackets):
- HIGH_VELOCITY: [30] events of the user less than [60 s] apart from the first to the last.
- RAPID_ACTIONS: [10] consecutive events of one session, each less than [2 s] after the previous.
- MULTIPLE_IPS: [3] distinct ip_address values seen within [10 min].
- LOCATION_JUMP: the country changes between two events of the user less than [30 min] apart.
- HIGH_VALUE_PURCHASE: a purchase with price >= [500].
A type raised for a user is not raised again for that user until [10 min] of event time later
(the cooldown). An alert's id is type:user:first event time of the evidence, so the same window
gives the same id however often it is processed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from app.profiles.rules import ProfileRules


@dataclass(frozen=True)
class AlertEvent:
    event_ms: int
    event_type: str
    session_id: str | None = None
    ip_address: str | None = None
    country: str | None = None
    price: float | None = None
    product_id: str | None = None


@dataclass(frozen=True)
class Alert:
    alert_id: str
    alert_type: str
    severity: str
    user_id: str
    session_id: str | None
    first_event_ms: int
    event_ms: int  # the event that completed the evidence
    evidence: dict
    rule_version: str


@dataclass
class AlertState:
    recent_ms: list[int] = field(default_factory=list)  # HIGH_VELOCITY: the last events' times
    ips: dict[str, int] = field(default_factory=dict)  # MULTIPLE_IPS: ip -> last seen
    last_country: tuple[str, int] | None = None  # LOCATION_JUMP: (country, time)
    runs: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # session -> (first, last, length)
    last_raised: dict[str, int] = field(default_factory=dict)  # alert type -> time raised (cooldown)

    def forget_session(self, session_id: str) -> None:
        self.runs.pop(session_id, None)

    def to_state(self) -> dict:
        return {"recent_ms": self.recent_ms, "ips": self.ips, "last_country": self.last_country,
                "runs": self.runs, "last_raised": self.last_raised}

    @classmethod
    def from_state(cls, raw: dict) -> "AlertState":
        country = raw["last_country"]
        return cls(list(raw["recent_ms"]), dict(raw["ips"]), tuple(country) if country else None,
                   {k: tuple(v) for k, v in raw["runs"].items()}, dict(raw["last_raised"]))


def detect(state: AlertState, user_id: str, events: Iterable[AlertEvent], rules: ProfileRules) -> list[Alert]:
    """Feeds events (in event-time order) through every rule; returns the alerts raised."""
    raised: list[Alert] = []
    for event in events:
        for alert_type, first_ms, evidence in _findings(state, event, rules):
            if _cooling_down(state, alert_type, event.event_ms, rules.cooldown_ms):
                continue
            state.last_raised[alert_type] = event.event_ms
            rule = rules.alerts[alert_type]
            raised.append(Alert(f"{alert_type}:{user_id}:{first_ms}", alert_type, rule.severity, user_id,
                                event.session_id, first_ms, event.event_ms, evidence, rules.version))
    return raised


def _cooling_down(state: AlertState, alert_type: str, event_ms: int, cooldown_ms: int) -> bool:
    last = state.last_raised.get(alert_type)
    return last is not None and event_ms - last < cooldown_ms


def _findings(state: AlertState, event: AlertEvent, rules: ProfileRules):
    """(alert type, first event time of the evidence, evidence) for each rule this event fires."""
    t, a = event.event_ms, rules.alerts
    # HIGH_VELOCITY: keep the last (events - 1) times; fire when the oldest is < window before t.
    need, window = a["HIGH_VELOCITY"].thresholds["events"], a["HIGH_VELOCITY"].thresholds["window"]
    state.recent_ms = (state.recent_ms + [t])[-need:]
    if len(state.recent_ms) >= need and t - state.recent_ms[0] < window:
        yield "HIGH_VELOCITY", state.recent_ms[0], {"events": need, "window_s": window / 1000,
                                                     "seconds": (t - state.recent_ms[0]) / 1000}
    # RAPID_ACTIONS: the current run of quick successive events in this session.
    if event.session_id is not None:
        need, gap = a["RAPID_ACTIONS"].thresholds["consecutive_events"], a["RAPID_ACTIONS"].thresholds["max_gap"]
        first, last, length = state.runs.get(event.session_id, (t, t, 0))
        first, length = (first, length + 1) if length and t - last < gap else (t, 1)
        state.runs[event.session_id] = (first, t, length)
        if length >= need:
            yield "RAPID_ACTIONS", first, {"consecutive_events": length, "max_gap_s": gap / 1000,
                                           "seconds": (t - first) / 1000}
    # MULTIPLE_IPS: distinct addresses seen within the window.
    if event.ip_address:
        need, window = a["MULTIPLE_IPS"].thresholds["distinct_ips"], a["MULTIPLE_IPS"].thresholds["window"]
        state.ips = {ip: seen for ip, seen in state.ips.items() if t - seen < window}
        state.ips[event.ip_address] = t
        state.ips = dict(sorted(state.ips.items(), key=lambda item: item[1])[-need:])
        if len(state.ips) >= need:
            yield "MULTIPLE_IPS", min(state.ips.values()), {"ips": sorted(state.ips), "window_s": window / 1000}
    # LOCATION_JUMP: another country than the user's previous event, soon after it.
    if event.country:
        window = a["LOCATION_JUMP"].thresholds["window"]
        previous = state.last_country
        state.last_country = (event.country, t)
        if previous and previous[0] != event.country and t - previous[1] < window:
            yield "LOCATION_JUMP", previous[1], {"from_country": previous[0], "to_country": event.country,
                                                 "minutes_apart": round((t - previous[1]) / 60000, 2)}
    # HIGH_VALUE_PURCHASE
    if event.event_type == "purchase" and event.price is not None:
        if event.price >= a["HIGH_VALUE_PURCHASE"].thresholds["min_price"]:
            yield "HIGH_VALUE_PURCHASE", t, {"price": event.price, "product_id": event.product_id}
