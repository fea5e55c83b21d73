"""Experiments (DESIGN.md §14): A/B tests of the recommendations, as data (app/rules/experiments_v1.yaml).

Assignment is deterministic: the first 8 bytes of sha256("<experiment>:<user_id>") as a number in
[0, 1) fall into one variant's share of the cumulative weights, so a user always sees the same
variant, on every executor, after every restart. A session is *exposed* to an experiment once it
has been in one of the experiment's target segments (its segment history says so; it stays
exposed); while its segment is one the user's variant gives recommendations for, the session's
recommendations are the variant's. At close, an exposed session counts once for its variant, and
as a conversion when it meets the experiment's `success` condition (app/experiments/results.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from app.config import InvalidConfigError
from app.segments.rules import (METRICS, Predicate, condition, content_hash, document_version,
                                read_rules_document)

EXAMPLE_EXPERIMENTS = Path(__file__).resolve().parent.parent / "rules" / "experiments_v1.yaml"


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    recommendations: Mapping[str, tuple[str, ...]]  # segment -> the texts that replace the segment's


@dataclass(frozen=True)
class Experiment:
    name: str
    segments: tuple[str, ...]       # exposure: the session was in one of these
    variants: tuple[Variant, ...]
    control: str
    success: Predicate              # over the closed session's metrics

    def variant_for(self, user_id: str) -> Variant:
        digest = hashlib.sha256(f"{self.name}:{user_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2 ** 64 * sum(v.weight for v in self.variants)
        for variant in self.variants:
            point -= variant.weight
            if point < 0:
                return variant
        return self.variants[-1]  # float rounding at the very top

    def weights(self) -> dict[str, float]:
        total = sum(v.weight for v in self.variants)
        return {v.name: v.weight / total for v in self.variants}


@dataclass(frozen=True)
class Experiments:
    version: str
    experiments: tuple[Experiment, ...]
    content_hash: str

    def by_name(self, name: str) -> Experiment:
        return next(e for e in self.experiments if e.name == name)

    def apply(self, user_id: str, history: Iterable[Mapping], segment: str,
              recommendations: list[str]) -> tuple[dict[str, str], list[str]]:
        """(experiments the session is exposed to: {name: variant}, its recommendations now)."""
        seen = {h["segment"] for h in history} | {segment}
        exposed, replaced = {}, None
        for experiment in self.experiments:
            if seen.isdisjoint(experiment.segments):
                continue
            variant = experiment.variant_for(user_id)
            exposed[experiment.name] = variant.name
            if replaced is None and segment in variant.recommendations:  # the first experiment wins
                replaced = list(variant.recommendations[segment])
        return exposed, recommendations if replaced is None else replaced


def load_experiments(path: str | Path) -> Experiments:
    return parse_experiments(read_rules_document(path, "EXPERIMENTS_FILE"), source=str(path))


def parse_experiments(document: Any, source: str = "experiments", segments: Iterable[str] | None = None) -> Experiments:
    """`segments`: the segment rules' names, to check the targets against (None: not checked)."""
    where = f"EXPERIMENTS_FILE {source}"
    version = document_version(document, where, "experiment_version", "experiments")
    raw = document.get("experiments")
    if not isinstance(raw, list):
        raise InvalidConfigError(f"{where}: experiments must be a list")
    known = None if segments is None else tuple(segments)
    experiments = tuple(_experiment(e, f"{where}: experiments[{i}]", known) for i, e in enumerate(raw))
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"{where}: experiment names must be unique (got {names})")
    return Experiments(version, experiments, content_hash(document))


def _experiment(raw: Any, where: str, known_segments: tuple[str, ...] | None) -> Experiment:
    if not isinstance(raw, dict):
        raise InvalidConfigError(f"{where} must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or "|" in name or ":" in name:
        raise InvalidConfigError(f"{where}.name must be a non-empty string without '|' or ':'")
    where = f"{where} ({name})"
    unknown = sorted(set(map(str, raw)) - {"name", "description", "segments", "variants", "control", "success"})
    if unknown:
        raise InvalidConfigError(f"{where}: unknown field {unknown[0]!r}")
    segments = raw.get("segments")
    if not isinstance(segments, list) or not segments or not all(isinstance(s, str) for s in segments):
        raise InvalidConfigError(f"{where}.segments must be a non-empty list of segment names")
    _check_segments(segments, known_segments, f"{where}.segments")
    if "success" not in raw:
        raise InvalidConfigError(f"{where}.success is missing (e.g. {{metric: purchase_count, op: '>=', value: 1}})")
    success = condition(raw["success"], f"{where}.success", METRICS)
    variants = raw.get("variants")
    if not isinstance(variants, list) or len(variants) < 2:
        raise InvalidConfigError(f"{where}.variants must list at least two variants")
    parsed = tuple(_variant(v, f"{where}.variants[{i}]", known_segments) for i, v in enumerate(variants))
    names = [v.name for v in parsed]
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"{where}.variants: names must be unique (got {names})")
    control = raw.get("control", names[0])
    if control not in names:
        raise InvalidConfigError(f"{where}.control: {control!r} is not one of the variants ({', '.join(names)})")
    return Experiment(name, tuple(segments), parsed, control, success)


def _variant(raw: Any, where: str, known_segments: tuple[str, ...] | None) -> Variant:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"].strip() or \
            "|" in raw["name"]:
        raise InvalidConfigError(f"{where}.name must be a non-empty string without '|'")
    where = f"{where} ({raw['name']})"
    unknown = sorted(set(map(str, raw)) - {"name", "weight", "recommendations", "description"})
    if unknown:
        raise InvalidConfigError(f"{where}: unknown field {unknown[0]!r}")
    weight = raw.get("weight")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
        raise InvalidConfigError(f"{where}.weight must be a number > 0")
    recommendations = raw.get("recommendations", {})
    if not isinstance(recommendations, dict) or not all(
            isinstance(texts, list) and all(isinstance(t, str) and t.strip() for t in texts)
            for texts in recommendations.values()):
        raise InvalidConfigError(f"{where}.recommendations must map a segment to a list of texts")
    _check_segments(list(recommendations), known_segments, f"{where}.recommendations")
    return Variant(raw["name"], float(weight), {s: tuple(t) for s, t in recommendations.items()})


def _check_segments(names: list, known: tuple[str, ...] | None, where: str) -> None:
    if known is None:
        return
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidConfigError(f"{where}: unknown segment {unknown[0]!r} (the rules have: {', '.join(known)})")
