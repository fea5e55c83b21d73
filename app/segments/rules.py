"""The segment rules engine: the rules are data (a YAML file), this is the small code that runs them."""
from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from app.config import InvalidConfigError

METRICS = (
    "session_duration_minutes", "total_events", "view_count", "cart_count", "remove_cart_count",
    "purchase_count", "other_count", "unique_products", "unique_categories", "total_amount",
    "engagement_rate", "cart_conversion_rate", "purchase_conversion_rate", "overall_conversion_rate",
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Segment:
    name: str
    score: int
    color: str
    action_priority: int
    matches: Predicate
    recommendations: tuple[tuple[str, Predicate], ...]

    def recommend(self, metrics: Mapping[str, Any]) -> list[str]:
        return [text for text, applies in self.recommendations if applies(metrics)]


@dataclass(frozen=True)
class RuleSet:
    version: str
    segments: tuple[Segment, ...]
    content_hash: str = ""  # of the whole rules document: a changed threshold is a change of rules

    def classify(self, metrics: Mapping[str, Any]) -> Segment:
        """First match wins; the last segment is `otherwise`, so this always returns one."""
        for segment in self.segments:
            if segment.matches(metrics):
                return segment
        raise AssertionError("unreachable: the last segment matches everything")

    def by_name(self, name: str) -> Segment:
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise KeyError(f"no segment {name!r} in rules {self.version}")


def read_rules_document(path: str | Path, setting: str) -> Any:
    """A rules file's YAML document; a file that cannot be read fails naming the setting."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidConfigError(f"{setting} {path}: cannot read it ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0]})") from None


def document_version(document: Any, where: str, version_key: str, fields: str) -> str:
    """The version of a rules document, which must be a mapping; fails naming what is wrong."""
    if not isinstance(document, dict):
        raise InvalidConfigError(f"{where}: the top level must be a mapping with {version_key}, {fields}")
    version = document.get(version_key)
    if not isinstance(version, str) or not version.strip():
        raise InvalidConfigError(f"{where}: {version_key} must be a non-empty string")
    return version


def content_hash(document: Any) -> str:
    """Of the whole rules document: a changed threshold is a change of rules."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_rules(path: str | Path) -> RuleSet:
    return parse_rules(read_rules_document(path, "RULES_FILE"), source=str(path))


def parse_rules(document: Any, source: str = "rules") -> RuleSet:
    where = f"RULES_FILE {source}"
    version = document_version(document, where, "rule_version", "segments")
    raw_segments = document.get("segments")
    if not isinstance(raw_segments, list) or not raw_segments:
        raise InvalidConfigError(f"{where}: segments must be a non-empty list")
    segments = tuple(_segment(raw, f"{where}: segments[{i}]") for i, raw in enumerate(raw_segments))
    if raw_segments[-1].get("when") != "otherwise":
        raise InvalidConfigError(f"{where}: the last segment ({segments[-1].name}) must have 'when: otherwise' "
                                 "so every session gets a segment")
    names = [s.name for s in segments]
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"{where}: segment names must be unique (got {names})")
    return RuleSet(version=version, segments=segments, content_hash=content_hash(document))


def _segment(raw: Any, where: str) -> Segment:
    if not isinstance(raw, dict):
        raise InvalidConfigError(f"{where} must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidConfigError(f"{where}.name must be a non-empty string")
    where = f"{where} ({name})"
    for field in ("score", "action_priority"):
        if not isinstance(raw.get(field), int) or isinstance(raw.get(field), bool):
            raise InvalidConfigError(f"{where}.{field} must be an integer")
    if not isinstance(raw.get("color"), str):
        raise InvalidConfigError(f"{where}.color must be a string")
    if "when" not in raw:
        raise InvalidConfigError(f"{where}.when is missing")
    matches = (lambda _m: True) if raw["when"] == "otherwise" else condition(raw["when"], f"{where}.when")
    recs = raw.get("recommendations", [])
    if not isinstance(recs, list):
        raise InvalidConfigError(f"{where}.recommendations must be a list")
    recommendations = tuple(_recommendation(r, f"{where}.recommendations[{i}]") for i, r in enumerate(recs))
    return Segment(name, raw["score"], raw["color"], raw["action_priority"], matches, recommendations)


def _recommendation(raw: Any, where: str) -> tuple[str, Predicate]:
    if not isinstance(raw, dict) or not isinstance(raw.get("text"), str) or not raw["text"].strip():
        raise InvalidConfigError(f"{where}.text must be a non-empty string")
    applies = condition(raw["when"], f"{where}.when") if "when" in raw else (lambda _m: True)
    return raw["text"], applies


def condition(raw: Any, where: str, metrics: tuple[str, ...] = METRICS) -> Predicate:
    """The condition language (DESIGN.md §7) over the given metric names."""
    if isinstance(raw, dict) and set(raw) == {"all"} and isinstance(raw["all"], list) and raw["all"]:
        parts = [condition(c, f"{where}.all[{i}]", metrics) for i, c in enumerate(raw["all"])]
        return lambda m: all(p(m) for p in parts)
    if isinstance(raw, dict) and set(raw) == {"any"} and isinstance(raw["any"], list) and raw["any"]:
        parts = [condition(c, f"{where}.any[{i}]", metrics) for i, c in enumerate(raw["any"])]
        return lambda m: any(p(m) for p in parts)
    if not isinstance(raw, dict) or set(raw) != {"metric", "op", "value"}:
        raise InvalidConfigError(f"{where} must be {{metric, op, value}}, {{all: [...]}} or {{any: [...]}}")
    metric, op, value = raw["metric"], raw["op"], raw["value"]
    if metric not in metrics:
        raise InvalidConfigError(f"{where}.metric: unknown metric {metric!r} (known: {', '.join(metrics)})")
    if op not in _OPS:
        raise InvalidConfigError(f"{where}.op: unknown operator {op!r} (known: {' '.join(_OPS)})")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidConfigError(f"{where}.value must be a number")
    compare = _OPS[op]
    return lambda m: compare(m.get(metric) or 0, value)
