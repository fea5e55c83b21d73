"""The one typed configuration object, built in one place from env vars and CLI flags."""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "rules" / "segments_v1.yaml"


class InvalidConfigError(ValueError):
    """A setting is wrong; the message is one line naming the setting."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
                 "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
                 "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}


def parse_duration(setting: str, value: str | float | int) -> float:
    """'30 minutes', '10m', '5s', '1500ms' or a bare number of seconds -> seconds."""
    match = _DURATION.match(str(value))
    if not match:
        raise InvalidConfigError(f"{setting}={value!r} is not a duration (examples: '30 minutes', '10m', '5s')")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


@dataclass(frozen=True)
class AppConfig:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "ecommerce_events"
    mongodb_uri: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = "bigdata"
    checkpoint_dir: str = str(ROOT / ".local" / "checkpoints" / "advanced_streaming")
    session_gap_s: float = 30 * 60
    watermark_delay_s: float = 10 * 60
    trigger_interval_s: float = 5.0
    max_offsets_per_trigger: int = 200_000
    rules_file: str = str(DEFAULT_RULES_FILE)
    session_max_s: float = 24 * 3600
    session_id_retention_s: float = 30 * 24 * 3600
    starting_offsets: str = "earliest"
    available_now: bool = False
    shuffle_partitions: int = 4

    def __post_init__(self) -> None:
        _require(self.kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS")
        if not all(re.match(r"^[^:\s]+:\d+$", s) for s in self.kafka_bootstrap_servers.split(",")):
            raise InvalidConfigError(
                f"KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers!r} must be host:port[,host:port]")
        if not re.match(r"^[A-Za-z0-9._-]+$", self.kafka_topic):
            raise InvalidConfigError(f"KAFKA_TOPIC={self.kafka_topic!r} is not a valid topic name")
        if not self.mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
            raise InvalidConfigError("MONGODB_URI must start with mongodb:// or mongodb+srv://")
        if not re.match(r"^[^/\\. \"$]{1,63}$", self.mongodb_database):
            raise InvalidConfigError(f"MONGODB_DATABASE={self.mongodb_database!r} is not a valid database name")
        _require(self.checkpoint_dir, "CHECKPOINT_DIR")
        if self.session_gap_s < 1:
            raise InvalidConfigError(f"SESSION_GAP must be at least 1 second (got {self.session_gap_s:g} s)")
        if self.watermark_delay_s < 0:
            raise InvalidConfigError(f"WATERMARK_DELAY must not be negative (got {self.watermark_delay_s:g} s)")
        if self.trigger_interval_s < 0:
            raise InvalidConfigError(f"TRIGGER_INTERVAL must not be negative (got {self.trigger_interval_s:g} s)")
        if self.max_offsets_per_trigger < 1:
            raise InvalidConfigError(f"MAX_OFFSETS_PER_TRIGGER must be a positive integer (got {self.max_offsets_per_trigger})")
        if self.session_max_s <= self.session_gap_s:
            raise InvalidConfigError("SESSION_MAX must be longer than SESSION_GAP")
        if self.session_id_retention_s < self.session_max_s:
            raise InvalidConfigError("SESSION_ID_RETENTION must be at least SESSION_MAX "
                                     f"(got {self.session_id_retention_s:g} s < {self.session_max_s:g} s)")
        if self.starting_offsets not in ("earliest", "latest"):
            raise InvalidConfigError(f"STARTING_OFFSETS must be 'earliest' or 'latest' (got {self.starting_offsets!r})")
        if self.shuffle_partitions < 1:
            raise InvalidConfigError(f"SHUFFLE_PARTITIONS must be a positive integer (got {self.shuffle_partitions})")
        if not Path(self.rules_file).is_file():
            raise InvalidConfigError(f"RULES_FILE={self.rules_file!r} does not exist")


def _require(value: str, setting: str) -> None:
    if not str(value).strip():
        raise InvalidConfigError(f"{setting} must not be empty")


# setting name (env var) -> (field, parser)
_SETTINGS = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka_bootstrap_servers", str),
    "KAFKA_TOPIC": ("kafka_topic", str),
    "MONGODB_URI": ("mongodb_uri", str),
    "MONGODB_DATABASE": ("mongodb_database", str),
    "CHECKPOINT_DIR": ("checkpoint_dir", str),
    "SESSION_GAP": ("session_gap_s", parse_duration),
    "WATERMARK_DELAY": ("watermark_delay_s", parse_duration),
    "TRIGGER_INTERVAL": ("trigger_interval_s", parse_duration),
    "MAX_OFFSETS_PER_TRIGGER": ("max_offsets_per_trigger", int),
    "RULES_FILE": ("rules_file", str),
    "SESSION_MAX": ("session_max_s", parse_duration),
    "SESSION_ID_RETENTION": ("session_id_retention_s", parse_duration),
    "STARTING_OFFSETS": ("starting_offsets", str),
    "SHUFFLE_PARTITIONS": ("shuffle_partitions", int),
}


def _convert(setting: str, parser, raw: str):
    if parser is parse_duration:
        return parse_duration(setting, raw)
    try:
        return parser(raw)
    except ValueError:
        raise InvalidConfigError(f"{setting}={raw!r} is not a valid {parser.__name__}") from None


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Env vars first, then CLI flags (--session-gap 30m etc.) override them."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(description="Real-time session segmentation job")
    for setting in _SETTINGS:
        parser.add_argument("--" + setting.lower().replace("_", "-"), dest=setting, metavar="VALUE",
                            help=f"overrides ${setting}")
    parser.add_argument("--available-now", action="store_true",
                        help="process what is in the topic, then exit (backfills, tests)")
    args = parser.parse_args(list(argv or []))
    values = {}
    for setting, (field, conv) in _SETTINGS.items():
        raw = getattr(args, setting) if getattr(args, setting) is not None else env.get(setting)
        if raw is not None and str(raw) != "":
            values[field] = _convert(setting, conv, str(raw))
    values["available_now"] = args.available_now
    return AppConfig(**values)


def describe(config: AppConfig) -> str:
    return ", ".join(f"{f.name}={getattr(config, f.name)}" for f in fields(config) if f.name != "mongodb_uri")
