"""The profile rules (app/rules/profiles_v1.yaml): score weights and caps, behaviour patterns and
alert thresholds are data; this is the small code that checks and runs them (DESIGN.md §11, §12).

Every score is round(100 * sum(weight * min(input / cap, 1))) with weights >= 0 adding up to 1
and caps > 0: bounded by 0 and 100, and monotone (no input growing ever lowers it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from app.config import InvalidConfigError, parse_duration
from app.segments.rules import Predicate, condition, content_hash, document_version, read_rules_document

DEFAULT_PROFILE_RULES = Path(__file__).resolve().parent.parent / "rules" / "profiles_v1.yaml"
SCORES = ("engagement_score", "interest_score", "intent_score", "conversion_probability")
SCORE_INPUTS = ("sessions", "total_events", "view_count", "cart_count", "purchase_count", "total_revenue",
                "avg_session_duration", "avg_events_per_session", "unique_categories")
PATTERN_METRICS = SCORE_INPUTS + SCORES + ("last_session_bounced",)
SEVERITIES = ("low", "medium", "high")
# alert type -> its thresholds: name -> "count" (a positive integer), "duration" or "amount" (>= 0)
ALERT_THRESHOLDS = {
    "HIGH_VELOCITY": {"events": "count", "window": "duration"},
    "RAPID_ACTIONS": {"consecutive_events": "count", "max_gap": "duration"},
    "MULTIPLE_IPS": {"distinct_ips": "count", "window": "duration"},
    "LOCATION_JUMP": {"window": "duration"},
    "HIGH_VALUE_PURCHASE": {"min_price": "amount"},
}


@dataclass(frozen=True)
class Score:
    name: str
    terms: tuple[tuple[str, float, float], ...]  # (input, weight, cap)

    def __call__(self, figures: Mapping[str, Any]) -> int:
        total = sum(weight * min(max(float(figures.get(name) or 0), 0.0) / cap, 1.0) for name, weight, cap in self.terms)
        return max(0, min(100, round(100 * total)))


@dataclass(frozen=True)
class AlertRule:
    alert_type: str
    severity: str
    thresholds: Mapping[str, float]  # durations in milliseconds


@dataclass(frozen=True)
class ProfileRules:
    version: str
    scores: tuple[Score, ...]
    patterns: tuple[tuple[str, Predicate], ...]
    alerts: Mapping[str, AlertRule]
    cooldown_ms: int
    content_hash: str

    def score(self, figures: Mapping[str, Any]) -> dict[str, int]:
        return {score.name: score(figures) for score in self.scores}

    def pattern(self, figures: Mapping[str, Any]) -> str:
        """First match wins; the last pattern is `otherwise`."""
        return next(name for name, matches in self.patterns if matches(figures))


def load_profile_rules(path: str | Path) -> ProfileRules:
    return parse_profile_rules(read_rules_document(path, "PROFILE_RULES_FILE"), source=str(path))


def parse_profile_rules(document: Any, source: str = "profile rules") -> ProfileRules:
    where = f"PROFILE_RULES_FILE {source}"
    version = document_version(document, where, "rule_version", "scores, patterns, alerts")
    scores = _scores(document.get("scores"), f"{where}: scores")
    patterns = _patterns(document.get("patterns"), f"{where}: patterns")
    alerts, cooldown_ms = _alerts(document.get("alerts"), f"{where}: alerts")
    return ProfileRules(version, scores, patterns, alerts, cooldown_ms, content_hash(document))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scores(raw: Any, where: str) -> tuple[Score, ...]:
    if not isinstance(raw, dict) or set(raw) != set(SCORES):
        raise InvalidConfigError(f"{where} must define exactly {', '.join(SCORES)}")
    scores = []
    for name in SCORES:
        terms = raw[name]
        if not isinstance(terms, dict) or not terms:
            raise InvalidConfigError(f"{where}.{name} must map inputs to {{weight, cap}}")
        parsed = []
        for term, spec in terms.items():
            at = f"{where}.{name}.{term}"
            if term not in SCORE_INPUTS:
                raise InvalidConfigError(f"{at}: unknown input (known: {', '.join(SCORE_INPUTS)})")
            if not isinstance(spec, dict) or set(spec) != {"weight", "cap"}:
                raise InvalidConfigError(f"{at} must be {{weight, cap}}")
            if not _number(spec["weight"]) or spec["weight"] < 0:
                raise InvalidConfigError(f"{at}.weight must be a number >= 0 (a negative weight breaks monotonicity)")
            if not _number(spec["cap"]) or spec["cap"] <= 0:
                raise InvalidConfigError(f"{at}.cap must be a number > 0")
            parsed.append((term, float(spec["weight"]), float(spec["cap"])))
        total = sum(weight for _, weight, _ in parsed)
        if abs(total - 1.0) > 1e-6:
            raise InvalidConfigError(f"{where}.{name}: the weights must add up to 1 (got {total:g}), so the score "
                                     "stays within 0-100")
        scores.append(Score(name, tuple(parsed)))
    return tuple(scores)


def _patterns(raw: Any, where: str) -> tuple[tuple[str, Predicate], ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidConfigError(f"{where} must be a non-empty list")
    patterns = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidConfigError(f"{at}.name must be a non-empty string")
        if "when" not in item:
            raise InvalidConfigError(f"{at} ({item['name']}).when is missing")
        matches = (lambda _f: True) if item["when"] == "otherwise" else \
            condition(item["when"], f"{at} ({item['name']}).when", PATTERN_METRICS)
        patterns.append((item["name"], matches))
    if raw[-1].get("when") != "otherwise":
        raise InvalidConfigError(f"{where}: the last pattern ({patterns[-1][0]}) must have 'when: otherwise'")
    return tuple(patterns)


def _alerts(raw: Any, where: str) -> tuple[dict[str, AlertRule], int]:
    if not isinstance(raw, dict):
        raise InvalidConfigError(f"{where} must be a mapping of cooldown and the alert types")
    unknown = set(raw) - set(ALERT_THRESHOLDS) - {"cooldown"}
    if unknown:
        raise InvalidConfigError(f"{where}: unknown alert type(s) {sorted(unknown)} "
                                 f"(known: {', '.join(ALERT_THRESHOLDS)})")
    cooldown_ms = round(parse_duration(f"{where}.cooldown", raw.get("cooldown", "10 minutes")) * 1000)
    rules = {}
    for alert_type, kinds in ALERT_THRESHOLDS.items():
        at = f"{where}.{alert_type}"
        spec = raw.get(alert_type)
        if not isinstance(spec, dict):
            raise InvalidConfigError(f"{at} is missing (every rule needs its thresholds and severity)")
        if spec.get("severity") not in SEVERITIES:
            raise InvalidConfigError(f"{at}.severity must be one of {', '.join(SEVERITIES)}")
        extra = set(spec) - set(kinds) - {"severity"}
        if extra:
            raise InvalidConfigError(f"{at}: unknown field(s) {sorted(extra)} (known: severity, {', '.join(kinds)})")
        thresholds = {}
        for name, kind in kinds.items():
            if name not in spec:
                raise InvalidConfigError(f"{at}.{name} is missing")
            value = spec[name]
            if kind == "duration":
                thresholds[name] = round(parse_duration(f"{at}.{name}", value) * 1000)
            elif kind == "count" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise InvalidConfigError(f"{at}.{name} must be a positive integer")
            elif kind == "amount" and not (_number(value) and value >= 0):
                raise InvalidConfigError(f"{at}.{name} must be a number >= 0")
            else:
                thresholds.setdefault(name, value)
        rules[alert_type] = AlertRule(alert_type, spec["severity"], thresholds)
    return rules, cooldown_ms
