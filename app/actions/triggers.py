"""Triggers (DESIGN.md §13): what happened to a user in a micro-batch -> the actions to take.

The triggers are data (app/rules/triggers_v1.yaml); this is the small pure code that checks and
runs them, inside the user's state step, so a replayed batch fires the very same executions.

A *happening* is one thing the batch did to the user: a session written while active
(`session_updated`), a session closed (`session_closed`), a session whose segment changed
(`segment_changed`) or an alert raised (`alert`). Each trigger names one kind, optional targets
(`segments` for session happenings; `alert_types`, `severities` for alerts) and an optional
`when` in the segment rules' condition language over the session's metrics and, prefixed
`profile.`, the user's profile figures and scores.

Firing: the candidates of one batch (happening x matching trigger) are taken in priority order
(1 first; then event time, then trigger name). A trigger fires unless it fired for this user less
than its `cooldown` of event time before; an `exclusive` trigger that fires suppresses the lower-
priority candidates of the same user in the same batch (the others are not suppressed). An
execution's id is trigger:user:event time of the happening: the cooldown leaves one execution
per trigger, user and cooldown window, and the same state and events give the same id.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from app.config import InvalidConfigError, parse_duration
from app.profiles.rules import PATTERN_METRICS
from app.segments.rules import (METRICS, Predicate, condition, content_hash, document_version,
                                read_rules_document)

DEFAULT_TRIGGER_RULES = Path(__file__).resolve().parent.parent / "rules" / "triggers_v1.yaml"
KINDS = ("session_updated", "session_closed", "segment_changed", "alert")
SESSION_FACTS = METRICS + ("segment_score",)
PROFILE_FACTS = tuple(f"profile.{name}" for name in PATTERN_METRICS)
SEVERITIES = ("low", "medium", "high")
# what an action message carries of the session that fired it
SESSION_SUMMARY = ("behavior_segment", "status", "session_start", "session_end", "session_duration_minutes",
                   "total_events", "view_count", "cart_count", "purchase_count", "total_amount", "recommendations")


@dataclass(frozen=True)
class Trigger:
    name: str
    on: str
    actions: tuple[dict, ...]           # {channel, template, parameters}
    cooldown_ms: int
    priority: int                       # 1 fires first
    segments: tuple[str, ...] = ()      # session happenings: the session's segment (empty: any)
    alert_types: tuple[str, ...] = ()   # alert happenings (empty: any)
    severities: tuple[str, ...] = ()    # alert happenings (empty: any)
    when: Predicate | None = None
    needs_profile: bool = False         # `when` reads profile.* facts
    exclusive: bool = False


@dataclass(frozen=True)
class TriggerRules:
    version: str
    triggers: tuple[Trigger, ...]       # in priority order
    content_hash: str

    @property
    def needs_profile(self) -> bool:
        return any(t.needs_profile for t in self.triggers)


@dataclass(frozen=True)
class Happening:
    kind: str                           # one of KINDS
    at_ms: int                          # event time: the session's last event, or the alert's event
    session: Mapping | None = None      # the session document (session kinds)
    alert: Mapping | None = None        # the alert message (alert kind)
    previous_segment: str | None = None  # segment_changed: the segment before


@dataclass
class TriggerState:
    last_fired: dict[str, int] = field(default_factory=dict)  # trigger -> event time it last fired

    def to_state(self) -> dict:
        return dict(self.last_fired)

    @classmethod
    def from_state(cls, raw: Mapping | None) -> "TriggerState":
        return cls(dict(raw or {}))


def fire(state: TriggerState, user_id: str, happenings: list[Happening], rules: TriggerRules,
         profile: Callable[[], Mapping | None] = lambda: None) -> list[dict]:
    """The executions this batch's happenings fire (action messages, in firing order); updates the
    cooldowns in `state`. `profile()` gives the user's profile figures and scores (or None), and
    is called at most once, only when a trigger needs it."""
    profile_cache: list = []

    def profile_facts() -> Mapping:
        if not profile_cache:
            profile_cache.append(profile() or {})
        return profile_cache[0]

    candidates = sorted(((t, h) for h in happenings for t in rules.triggers if _targets(t, h)),
                        key=lambda th: (th[0].priority, th[1].at_ms, th[0].name))
    executions, suppress_below = [], None
    for trigger, happening in candidates:
        if suppress_below is not None and trigger.priority > suppress_below:
            break
        if trigger.when is not None and not trigger.when(_facts(happening, profile_facts() if trigger.needs_profile
                                                                 else {})):
            continue
        last = state.last_fired.get(trigger.name)
        if last is not None and happening.at_ms - last < trigger.cooldown_ms:
            continue
        state.last_fired[trigger.name] = happening.at_ms
        executions.append(execution(trigger, user_id, happening, rules.version, profile_facts()))
        if trigger.exclusive:
            suppress_below = trigger.priority
    return executions


def _targets(trigger: Trigger, happening: Happening) -> bool:
    if trigger.on != happening.kind:
        return False
    if happening.alert is not None:
        return ((not trigger.alert_types or happening.alert["alert_type"] in trigger.alert_types)
                and (not trigger.severities or happening.alert["severity"] in trigger.severities))
    return not trigger.segments or happening.session["behavior_segment"] in trigger.segments


def _facts(happening: Happening, profile: Mapping) -> dict:
    facts = {f"profile.{name}": value for name, value in profile.items()}
    if happening.session is not None:
        facts.update({name: happening.session.get(name) for name in SESSION_FACTS})
    return facts


def execution(trigger: Trigger, user_id: str, happening: Happening, version: str, profile: Mapping) -> dict:
    """The action message (and, with its dates, the trigger_executions document)."""
    session, alert = happening.session, happening.alert
    facts: dict[str, Any] = {}
    if session is not None:
        facts["session"] = {name: session.get(name) for name in SESSION_SUMMARY}
        if happening.previous_segment is not None:
            facts["session"]["previous_segment"] = happening.previous_segment
    if alert is not None:
        facts["alert"] = {name: alert[name] for name in ("alert_id", "alert_type", "severity", "evidence")}
    if profile:
        facts["profile"] = {name: profile[name] for name in profile if not name.startswith("_")}
    return {"execution_id": f"{trigger.name}:{user_id}:{happening.at_ms}", "trigger": trigger.name,
            "trigger_version": version, "on": happening.kind, "priority": trigger.priority, "user_id": user_id,
            "session_id": session["_id"] if session is not None else alert.get("session_id"),
            "event_ms": happening.at_ms, "actions": [dict(a) for a in trigger.actions], "facts": facts}


# ---- the rules file ------------------------------------------------------------------------------

def load_trigger_rules(path: str | Path) -> TriggerRules:
    return parse_trigger_rules(read_rules_document(path, "TRIGGER_RULES_FILE"), source=str(path))


def parse_trigger_rules(document: Any, source: str = "trigger rules") -> TriggerRules:
    where = f"TRIGGER_RULES_FILE {source}"
    version = document_version(document, where, "trigger_version", "triggers")
    raw = document.get("triggers")
    if not isinstance(raw, list):
        raise InvalidConfigError(f"{where}: triggers must be a list")
    raw = [_on_key(t) for t in raw]
    document = {**document, "triggers": raw}
    triggers = [_trigger(t, f"{where}: triggers[{i}]") for i, t in enumerate(raw)]
    names = [t.name for t in triggers]
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"{where}: trigger names must be unique (got {names})")
    return TriggerRules(version, tuple(sorted(triggers, key=lambda t: (t.priority, t.name))),
                        content_hash(document))


def _on_key(raw: Any) -> Any:
    """YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true: give it its name back."""
    if isinstance(raw, dict) and True in raw and "on" not in raw:
        return {("on" if key is True else key): value for key, value in raw.items()}
    return raw


_FIELDS = {"name", "on", "when", "actions", "cooldown", "priority", "segments", "alert_types", "severities",
           "exclusive", "description"}


def _trigger(raw: Any, where: str) -> Trigger:
    if not isinstance(raw, dict):
        raise InvalidConfigError(f"{where} must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise InvalidConfigError(f"{where}.name must be a non-empty string without ':'")
    where = f"{where} ({name})"
    unknown = sorted(map(str, set(raw) - _FIELDS))
    if unknown:
        raise InvalidConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    on = raw.get("on")
    if on not in KINDS:
        raise InvalidConfigError(f"{where}.on must be one of {', '.join(KINDS)} (got {on!r})")
    priority = raw.get("priority")
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 1:
        raise InvalidConfigError(f"{where}.priority must be an integer >= 1 (1 fires first)")
    if "cooldown" not in raw:
        raise InvalidConfigError(f"{where}.cooldown is missing (e.g. '30 minutes')")
    cooldown_s = parse_duration(f"{where}.cooldown", raw["cooldown"])
    if cooldown_s < 1:
        raise InvalidConfigError(f"{where}.cooldown must be at least 1 second")
    segments = _names(raw, "segments", where)
    alert_types, severities = _names(raw, "alert_types", where), _names(raw, "severities", where)
    if on == "alert" and segments:
        raise InvalidConfigError(f"{where}.segments: an alert trigger targets alert_types or severities")
    if on != "alert" and (alert_types or severities):
        raise InvalidConfigError(f"{where}: alert_types and severities apply to `on: alert` triggers only")
    bad = sorted(set(severities) - set(SEVERITIES))
    if bad:
        raise InvalidConfigError(f"{where}.severities: unknown severity {bad[0]!r} (known: {', '.join(SEVERITIES)})")
    when, needs_profile = None, False
    if "when" in raw:
        known = PROFILE_FACTS if on == "alert" else SESSION_FACTS + PROFILE_FACTS
        when = condition(raw["when"], f"{where}.when", known)
        needs_profile = "profile." in json.dumps(raw["when"])
    actions = raw.get("actions")
    if not isinstance(actions, list) or not actions:
        raise InvalidConfigError(f"{where}.actions must be a non-empty list of {{channel, template, parameters}}")
    exclusive = raw.get("exclusive", False)
    if not isinstance(exclusive, bool):
        raise InvalidConfigError(f"{where}.exclusive must be true or false")
    return Trigger(name, on, tuple(_action(a, f"{where}.actions[{i}]") for i, a in enumerate(actions)),
                   int(cooldown_s * 1000), priority, segments, alert_types, severities, when, needs_profile,
                   exclusive)


def _names(raw: Mapping, key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidConfigError(f"{where}.{key} must be a list of names")
    return tuple(value)


def _action(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise InvalidConfigError(f"{where} must be a mapping with channel, template and parameters")
    for key in ("channel", "template"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise InvalidConfigError(f"{where}.{key} must be a non-empty string")
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidConfigError(f"{where}.parameters must be a mapping")
    unknown = sorted(set(raw) - {"channel", "template", "parameters"})
    if unknown:
        raise InvalidConfigError(f"{where}: unknown field {unknown[0]!r} (known: channel, template, parameters)")
    return {"channel": raw["channel"], "template": raw["template"], "parameters": parameters}
