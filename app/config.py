"""The one typed configuration object, built in one place from env vars and CLI flags."""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "rules" / "segments_v1.yaml"
DEFAULT_PROFILE_RULES_FILE = Path(__file__).resolve().parent / "rules" / "profiles_v1.yaml"
DEFAULT_TRIGGER_RULES_FILE = Path(__file__).resolve().parent / "rules" / "triggers_v1.yaml"


# The Spark operators the per-user state can run on (STATE_OPERATOR). transformWithState is the
# default: bench/results/state_operator.md (its timers need no scan of every state entry per batch).
APPLY_IN_PANDAS, TRANSFORM_WITH_STATE = "applyInPandasWithState", "transformWithState"
STATE_OPERATORS = (TRANSFORM_WITH_STATE, APPLY_IN_PANDAS)


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
    # The defaults are what `make bench-defaults` measures (bench/results/defaults.md): a batch as soon
    # as the last one ends (at most 1 s apart), and at most 10,000 records per partition per batch,
    # so a start on a backlog acts within its first small batch instead of after one big one.
    trigger_interval_s: float = 1.0
    max_offsets_per_trigger: int = 10_000
    # the activity query (app/sinks/user_activity.py): each user's document merged at most this often
    activity_interval_s: float = 10.0
    rules_file: str = str(DEFAULT_RULES_FILE)
    session_max_s: float = 24 * 3600
    session_id_retention_s: float = 30 * 24 * 3600
    max_open_sessions: int = 100  # per user: opening one more force-closes the oldest (a bot's)
    starting_offsets: str = "earliest"
    available_now: bool = False
    shuffle_partitions: int = 4
    # The act lane (DESIGN.md §16): one message per session write, before the store is written
    segments_topic: str = "behavior_segments"
    # The store lane (app/sinks/store_lane.py): the job's MongoDB writes, as messages its second
    # query materializes. "" = behavior_store_<MONGODB_DATABASE> (one per database: each run reads it all)
    store_topic: str = ""
    # The lean Arrow path of applyInPandasWithState (app/sessions/lean_arrow.py): private pyspark
    # worker functions replaced, so opt-in and only on the pyspark it was written against.
    lean_arrow: bool = False
    # The Spark operator that keeps the per-user state (app/sessions/stateful.py, app/sessions/tws.py)
    state_operator: str = TRANSFORM_WITH_STATE
    # Profiles, scores and risk alerts (DESIGN.md §11, §12)
    profiles: bool = True
    # the activity query and user_activity (app/sinks/user_activity.py): per-user API reads by _id,
    # for a store that scans any other filter (FerretDB); off: those endpoints use the indexes
    user_activity: bool = False
    profile_rules_file: str = str(DEFAULT_PROFILE_RULES_FILE)
    alerts_topic: str = "behavior_alerts"
    # Triggers and experiments (DESIGN.md §13, §14)
    triggers: bool = True
    trigger_rules_file: str = str(DEFAULT_TRIGGER_RULES_FILE)
    actions_topic: str = "behavior_actions"
    experiments_file: str = ""  # "" = no experiments
    # Data safety and operations (DESIGN.md §16)
    kafka_fail_on_data_loss: bool = True
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_options: tuple[tuple[str, str], ...] = ()  # KAFKA_OPT_<NAME> -> ("kafka.<name>", value)
    mongodb_write_concern: str = ""  # "" = majority when MONGODB_URI names a replicaSet, else 1
    mongodb_retry_timeout_s: float = 120.0
    health_port: int = 8090
    health_stall_after_s: float = 300.0
    reset_output: bool = False

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
        if self.activity_interval_s < 0:
            raise InvalidConfigError(f"ACTIVITY_INTERVAL must not be negative (got {self.activity_interval_s:g} s)")
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
        if not 1 <= self.max_open_sessions <= 100_000:
            raise InvalidConfigError(f"MAX_OPEN_SESSIONS must be between 1 and 100000 (got {self.max_open_sessions})")
        if not Path(self.rules_file).is_file():
            raise InvalidConfigError(f"RULES_FILE={self.rules_file!r} does not exist")
        if self.profiles and not Path(self.profile_rules_file).is_file():
            raise InvalidConfigError(f"PROFILE_RULES_FILE={self.profile_rules_file!r} does not exist")
        if not re.match(r"^[A-Za-z0-9._-]+$", self.alerts_topic) or self.alerts_topic == self.kafka_topic:
            raise InvalidConfigError(f"ALERTS_TOPIC={self.alerts_topic!r} must be a valid topic name, not KAFKA_TOPIC")
        if self.triggers and not Path(self.trigger_rules_file).is_file():
            raise InvalidConfigError(f"TRIGGER_RULES_FILE={self.trigger_rules_file!r} does not exist")
        if not re.match(r"^[A-Za-z0-9._-]+$", self.actions_topic) or self.actions_topic in (self.kafka_topic,
                                                                                             self.alerts_topic):
            raise InvalidConfigError(f"ACTIONS_TOPIC={self.actions_topic!r} must be a valid topic name, "
                                     "not KAFKA_TOPIC or ALERTS_TOPIC")
        if not re.match(r"^[A-Za-z0-9._-]+$", self.segments_topic) or self.segments_topic in (
                self.kafka_topic, self.alerts_topic, self.actions_topic):
            raise InvalidConfigError(f"SEGMENTS_TOPIC={self.segments_topic!r} must be a valid topic name, "
                                     "not KAFKA_TOPIC, ALERTS_TOPIC or ACTIONS_TOPIC")
        if not re.match(r"^[A-Za-z0-9._-]{1,249}$", self.store_lane_topic) or self.store_lane_topic in (
                self.kafka_topic, self.alerts_topic, self.actions_topic, self.segments_topic):
            raise InvalidConfigError(f"STORE_TOPIC={self.store_lane_topic!r} must be a valid topic name (letters, "
                                     "digits, . _ -), not KAFKA_TOPIC, ALERTS_TOPIC, ACTIONS_TOPIC or SEGMENTS_TOPIC"
                                     + ("" if self.store_topic else ": set STORE_TOPIC (its default is named after "
                                        "MONGODB_DATABASE)"))
        if self.state_operator not in STATE_OPERATORS:
            raise InvalidConfigError(f"STATE_OPERATOR={self.state_operator!r} must be one of " + ", ".join(STATE_OPERATORS))
        if self.lean_arrow and self.state_operator != APPLY_IN_PANDAS:
            raise InvalidConfigError(f"LEAN_ARROW=true is a path of STATE_OPERATOR={APPLY_IN_PANDAS} only, and "
                                     f"STATE_OPERATOR is {self.state_operator}: set both, or neither")
        if self.experiments_file and not Path(self.experiments_file).is_file():
            raise InvalidConfigError(f"EXPERIMENTS_FILE={self.experiments_file!r} does not exist")
        self._check_operations()

    def _check_operations(self) -> None:
        if self.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise InvalidConfigError(f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r} must be one of "
                                     + ", ".join(KAFKA_SECURITY_PROTOCOLS))
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism not in SASL_LOGIN_MODULES:
                raise InvalidConfigError(f"KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism!r} must be one of "
                                         + ", ".join(SASL_LOGIN_MODULES))
            if not self.kafka_sasl_username or not self.kafka_sasl_password:
                raise InvalidConfigError(f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                                         "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        for option, _ in self.kafka_options:
            if option in RESERVED_KAFKA_OPTIONS:
                raise InvalidConfigError(f"KAFKA_OPT_{_env_suffix(option)} is set by the job; "
                                         f"use {RESERVED_KAFKA_OPTIONS[option]} instead")
        if self.mongodb_write_concern and not re.match(r"^(majority|\d+)$", self.mongodb_write_concern):
            raise InvalidConfigError(f"MONGODB_WRITE_CONCERN={self.mongodb_write_concern!r} must be 'majority' "
                                     "or a number of members (e.g. 1)")
        if self.mongodb_retry_timeout_s < 0:
            raise InvalidConfigError(f"MONGODB_RETRY_TIMEOUT must not be negative (got {self.mongodb_retry_timeout_s:g} s)")
        if not 0 <= self.health_port <= 65535:
            raise InvalidConfigError(f"HEALTH_PORT must be 0 (off) or a TCP port (got {self.health_port})")
        if self.health_stall_after_s <= self.mongodb_retry_timeout_s:
            raise InvalidConfigError(
                f"HEALTH_STALL_AFTER ({self.health_stall_after_s:g} s) must be longer than MONGODB_RETRY_TIMEOUT "
                f"({self.mongodb_retry_timeout_s:g} s): a batch riding out a store outage is not stalled")

    @property
    def store_lane_topic(self) -> str:
        """The store lane's topic: STORE_TOPIC, or one named after the database."""
        return self.store_topic or f"behavior_store_{self.mongodb_database}"

    @property
    def write_concern(self) -> str | int:
        """MONGODB_WRITE_CONCERN, or majority when the URI names a replica set (else 1)."""
        value = self.mongodb_write_concern or ("majority" if "replicaset=" in self.mongodb_uri.lower() else "1")
        return value if value == "majority" else int(value)

    def kafka_client_options(self) -> dict[str, str]:
        """The `kafka.*` options of Spark's Kafka source: security, then KAFKA_OPT_* pass-through."""
        options = {"kafka.security.protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL_"):
            module = SASL_LOGIN_MODULES[self.kafka_sasl_mechanism]
            options["kafka.sasl.mechanism"] = self.kafka_sasl_mechanism
            options["kafka.sasl.jaas.config"] = (f'{module} required username="{_jaas(self.kafka_sasl_username)}" '
                                                 f'password="{_jaas(self.kafka_sasl_password)}";')
        options.update(self.kafka_options)
        return options


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
KAFKA_OPTION_PREFIX = "KAFKA_OPT_"
RESERVED_KAFKA_OPTIONS = {"kafka.bootstrap.servers": "KAFKA_BOOTSTRAP_SERVERS",
                          "kafka.security.protocol": "KAFKA_SECURITY_PROTOCOL",
                          "kafka.sasl.mechanism": "KAFKA_SASL_MECHANISM",
                          "kafka.sasl.jaas.config": "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD"}


def _env_suffix(option: str) -> str:
    return option.removeprefix("kafka.").replace(".", "_").upper()


def _jaas(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def kafka_options_from(env: Mapping[str, str], flags: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """KAFKA_OPT_SSL_TRUSTSTORE_LOCATION=/x (env) or --kafka-option ssl.truststore.location=/x (flag)
    -> ("kafka.ssl.truststore.location", "/x"); flags override env."""
    options = {}
    for name, value in env.items():
        if name.startswith(KAFKA_OPTION_PREFIX) and len(name) > len(KAFKA_OPTION_PREFIX):
            options["kafka." + name[len(KAFKA_OPTION_PREFIX):].lower().replace("_", ".")] = value
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep or not key.strip():
            raise InvalidConfigError(f"--kafka-option {flag!r} must be key=value (e.g. ssl.truststore.location=/x)")
        key = key.strip()
        options[key if key.startswith("kafka.") else "kafka." + key] = value
    return tuple(sorted(options.items()))


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


_bool.__name__ = "boolean (true/false)"


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
    "ACTIVITY_INTERVAL": ("activity_interval_s", parse_duration),
    "MAX_OFFSETS_PER_TRIGGER": ("max_offsets_per_trigger", int),
    "RULES_FILE": ("rules_file", str),
    "SESSION_MAX": ("session_max_s", parse_duration),
    "SESSION_ID_RETENTION": ("session_id_retention_s", parse_duration),
    "MAX_OPEN_SESSIONS": ("max_open_sessions", int),
    "STARTING_OFFSETS": ("starting_offsets", str),
    "SHUFFLE_PARTITIONS": ("shuffle_partitions", int),
    "SEGMENTS_TOPIC": ("segments_topic", str),
    "STORE_TOPIC": ("store_topic", str),
    "LEAN_ARROW": ("lean_arrow", _bool),
    "STATE_OPERATOR": ("state_operator", str),
    "PROFILES": ("profiles", _bool),
    "USER_ACTIVITY": ("user_activity", _bool),
    "PROFILE_RULES_FILE": ("profile_rules_file", str),
    "ALERTS_TOPIC": ("alerts_topic", str),
    "TRIGGERS": ("triggers", _bool),
    "TRIGGER_RULES_FILE": ("trigger_rules_file", str),
    "ACTIONS_TOPIC": ("actions_topic", str),
    "EXPERIMENTS_FILE": ("experiments_file", str),
    "KAFKA_FAIL_ON_DATA_LOSS": ("kafka_fail_on_data_loss", _bool),
    "KAFKA_SECURITY_PROTOCOL": ("kafka_security_protocol", str),
    "KAFKA_SASL_MECHANISM": ("kafka_sasl_mechanism", str),
    "KAFKA_SASL_USERNAME": ("kafka_sasl_username", str),
    "KAFKA_SASL_PASSWORD": ("kafka_sasl_password", str),
    "MONGODB_WRITE_CONCERN": ("mongodb_write_concern", str),
    "MONGODB_RETRY_TIMEOUT": ("mongodb_retry_timeout_s", parse_duration),
    "HEALTH_PORT": ("health_port", int),
    "HEALTH_STALL_AFTER": ("health_stall_after_s", parse_duration),
}
_SECRET_SETTINGS = {"KAFKA_SASL_PASSWORD"}  # never on the command line (ps shows it): env only


def _convert(setting: str, parser, raw: str):
    if parser is parse_duration:
        return parse_duration(setting, raw)
    if setting in _SECRET_SETTINGS:
        return raw
    try:
        return parser(raw)
    except ValueError:
        raise InvalidConfigError(f"{setting}={raw!r} is not a valid {parser.__name__}") from None


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Env vars first, then CLI flags (--session-gap 30m etc.) override them."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(description="Real-time session segmentation job")
    for setting in _SETTINGS:
        if setting in _SECRET_SETTINGS:
            continue
        parser.add_argument("--" + setting.lower().replace("_", "-"), dest=setting, metavar="VALUE",
                            help=f"overrides ${setting}")
    parser.add_argument("--available-now", action="store_true",
                        help="process what is in the topic, then exit (backfills, tests)")
    parser.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a Kafka client option for the source, e.g. ssl.truststore.location=/x (repeatable; "
                             "env: KAFKA_OPT_SSL_TRUSTSTORE_LOCATION)")
    parser.add_argument("--reset-output", action="store_true",
                        help="drop the job's output collections first (only with a new checkpoint)")
    args = parser.parse_args(list(argv or []))
    values = {}
    for setting, (name, conv) in _SETTINGS.items():
        flag = getattr(args, setting, None)
        raw = flag if flag is not None else env.get(setting)
        if raw is not None and str(raw) != "":
            values[name] = _convert(setting, conv, str(raw))
    values["available_now"] = args.available_now
    values["reset_output"] = args.reset_output
    values["kafka_options"] = kafka_options_from(env, args.kafka_option)
    return AppConfig(**values)


def describe(config: AppConfig) -> str:
    hidden = {"mongodb_uri", "kafka_sasl_password", "kafka_options"}
    shown = [f"{f.name}={getattr(config, f.name)}" for f in fields(config) if f.name not in hidden]
    return ", ".join(shown + [f"kafka_options={[key for key, _ in config.kafka_options]}"])
