"""Configuration (DESIGN.md §10): defaults, env vars, CLI flags, and one-line errors naming the setting."""
from __future__ import annotations

import dataclasses

import pytest

from app.config import DEFAULT_RULES_FILE, AppConfig, InvalidConfigError, load_config, parse_duration


def test_defaults():
    config = load_config([], {})
    assert config.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert config.kafka_topic == "ecommerce_events"
    assert config.mongodb_uri == "mongodb://127.0.0.1:27017/"
    assert config.mongodb_database == "bigdata"
    assert config.checkpoint_dir.endswith("checkpoints/advanced_streaming")
    assert config.session_gap_s == 30 * 60
    assert config.watermark_delay_s == 10 * 60
    assert config.session_max_s == 24 * 3600
    assert config.max_offsets_per_trigger == 10_000
    assert config.trigger_interval_s == 1.0
    assert config.rules_file == str(DEFAULT_RULES_FILE)
    assert config.available_now is False
    assert config.lean_arrow is False  # the stock pandas path unless asked for
    assert config.state_operator == "transformWithState"  # bench/results/state_operator.md


def test_load_config_does_not_read_the_process_environment_when_env_is_given(monkeypatch):
    monkeypatch.setenv("KAFKA_TOPIC", "from_process_env")
    assert load_config([], {}).kafka_topic == "ecommerce_events"
    assert load_config([]).kafka_topic == "from_process_env"


def test_env_vars(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rule_version: x\n", encoding="utf-8")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092,kafka-1:9093",
        "KAFKA_TOPIC": "clicks.v2",
        "MONGODB_URI": "mongodb+srv://cluster.example.net/",
        "MONGODB_DATABASE": "analytics",
        "CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "SESSION_GAP": "20 minutes",
        "WATERMARK_DELAY": "2m",
        "TRIGGER_INTERVAL": "500ms",
        "ACTIVITY_INTERVAL": "30s",
        "MAX_OFFSETS_PER_TRIGGER": "5000",
        "RULES_FILE": str(rules),
        "SESSION_MAX": "12h",
        "SESSION_ID_RETENTION": "90 days",
        "MAX_OPEN_SESSIONS": "500",
        "STARTING_OFFSETS": "latest",
        "SHUFFLE_PARTITIONS": "8",
        "LEAN_ARROW": "true",
        "STATE_OPERATOR": "applyInPandasWithState",
        "KAFKA_FAIL_ON_DATA_LOSS": "false",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "job",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "KAFKA_OPT_SSL_TRUSTSTORE_LOCATION": "/etc/kafka/truststore.jks",
        "MONGODB_WRITE_CONCERN": "majority",
        "MONGODB_RETRY_TIMEOUT": "90s",
        "HEALTH_PORT": "0",
        "HEALTH_STALL_AFTER": "10 minutes",
        "PROFILES": "off",
        "USER_ACTIVITY": "on",
        "PROFILE_RULES_FILE": str(rules),
        "ALERTS_TOPIC": "risk.alerts",
        "TRIGGERS": "false",
        "TRIGGER_RULES_FILE": str(rules),
        "ACTIONS_TOPIC": "crm.actions",
        "SEGMENTS_TOPIC": "crm.segments",
        "STORE_TOPIC": "internal.store",
        "EXPERIMENTS_FILE": str(rules),
    }
    config = load_config([], env)
    assert dataclasses.asdict(config) == {
        "kafka_bootstrap_servers": "kafka-0:9092,kafka-1:9093",
        "kafka_topic": "clicks.v2",
        "mongodb_uri": "mongodb+srv://cluster.example.net/",
        "mongodb_database": "analytics",
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "session_gap_s": 1200.0,
        "watermark_delay_s": 120.0,
        "trigger_interval_s": 0.5,
        "activity_interval_s": 30.0,
        "max_offsets_per_trigger": 5000,
        "rules_file": str(rules),
        "session_max_s": 43200.0,
        "session_id_retention_s": 90 * 86400.0,
        "max_open_sessions": 500,
        "starting_offsets": "latest",
        "available_now": False,
        "shuffle_partitions": 8,
        "lean_arrow": True,
        "state_operator": "applyInPandasWithState",
        "kafka_fail_on_data_loss": False,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "job",
        "kafka_sasl_password": "s3cret",
        "kafka_options": (("kafka.ssl.truststore.location", "/etc/kafka/truststore.jks"),),
        "mongodb_write_concern": "majority",
        "mongodb_retry_timeout_s": 90.0,
        "health_port": 0,
        "health_stall_after_s": 600.0,
        "reset_output": False,
        "profiles": False,
        "user_activity": True,
        "profile_rules_file": str(rules),
        "alerts_topic": "risk.alerts",
        "triggers": False,
        "trigger_rules_file": str(rules),
        "actions_topic": "crm.actions",
        "segments_topic": "crm.segments",
        "store_topic": "internal.store",
        "experiments_file": str(rules),
    }


def test_cli_flags_override_env():
    env = {"SESSION_GAP": "10m", "KAFKA_TOPIC": "from_env", "MAX_OFFSETS_PER_TRIGGER": "100",
           "MONGODB_DATABASE": "env_db"}
    config = load_config(["--session-gap", "5m", "--kafka-topic", "from_cli", "--max-offsets-per-trigger", "7",
                          "--available-now"], env)
    assert (config.session_gap_s, config.kafka_topic, config.max_offsets_per_trigger) == (300.0, "from_cli", 7)
    assert config.mongodb_database == "env_db"  # not overridden: env still applies
    assert config.available_now is True


def test_empty_env_value_means_default():
    assert load_config([], {"KAFKA_TOPIC": "", "SESSION_GAP": ""}) == load_config([], {})


@pytest.mark.parametrize("text, seconds", [
    ("30 minutes", 1800.0), ("30 minute", 1800.0), ("30min", 1800.0), ("10m", 600.0), ("5s", 5.0),
    ("5 seconds", 5.0), ("1500ms", 1.5), ("2h", 7200.0), ("1 hour", 3600.0), ("90", 90.0), (45, 45.0),
    ("0.5s", 0.5), (" 10m ", 600.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration("SESSION_GAP", text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10 fortnights", "-5m", "5 m s", "m10"])
def test_parse_duration_rejects_garbage_naming_the_setting(text):
    with pytest.raises(InvalidConfigError) as caught:
        parse_duration("WATERMARK_DELAY", text)
    assert str(caught.value).startswith("WATERMARK_DELAY")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("setting, value", [
    ("KAFKA_BOOTSTRAP_SERVERS", "   "),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,,b:9092"),
    ("KAFKA_TOPIC", "bad topic"),
    ("KAFKA_TOPIC", "topic/with/slashes"),
    ("MONGODB_URI", "http://127.0.0.1:27017/"),
    ("MONGODB_URI", "127.0.0.1:27017"),
    ("MONGODB_DATABASE", "big.data"),
    ("MONGODB_DATABASE", "x" * 64),
    ("CHECKPOINT_DIR", "   "),
    ("SESSION_GAP", "soon"),
    ("SESSION_GAP", "0s"),
    ("SESSION_GAP", "500ms"),
    ("WATERMARK_DELAY", "-1m"),
    ("WATERMARK_DELAY", "a while"),
    ("TRIGGER_INTERVAL", "fast"),
    ("MAX_OFFSETS_PER_TRIGGER", "lots"),
    ("MAX_OFFSETS_PER_TRIGGER", "1.5"),
    ("MAX_OFFSETS_PER_TRIGGER", "0"),
    ("MAX_OFFSETS_PER_TRIGGER", "-10"),
    ("RULES_FILE", "/nonexistent/rules.yaml"),
    ("SESSION_MAX", "10m"),       # not longer than the 30 min default gap
    ("SESSION_MAX", "forever"),
    ("SESSION_ID_RETENTION", "1h"),   # shorter than SESSION_MAX (24 h)
    ("STARTING_OFFSETS", "middle"),
    ("SHUFFLE_PARTITIONS", "0"),
    ("MAX_OPEN_SESSIONS", "0"),
    ("SHUFFLE_PARTITIONS", "four"),
    ("LEAN_ARROW", "maybe"),
    ("STATE_OPERATOR", "flatMapGroupsWithState"),
])
def test_bad_setting_fails_with_a_one_line_message_naming_it(setting, value):
    with pytest.raises(InvalidConfigError) as caught:
        load_config([], {setting: value})
    message = str(caught.value)
    assert "\n" not in message
    assert setting in message


@pytest.mark.parametrize("flag, value, setting", [
    ("--kafka-bootstrap-servers", "nohostport", "KAFKA_BOOTSTRAP_SERVERS"),
    ("--mongodb-uri", "postgres://x", "MONGODB_URI"),
    ("--session-gap", "x", "SESSION_GAP"),
    ("--max-offsets-per-trigger", "0", "MAX_OFFSETS_PER_TRIGGER"),
])
def test_bad_cli_flag_value_names_the_setting(flag, value, setting):
    with pytest.raises(InvalidConfigError, match=setting):
        load_config([flag, value], {})


def test_the_lean_arrow_path_is_refused_on_transform_with_state():
    assert load_config([], {"STATE_OPERATOR": "transformWithState"}).state_operator == "transformWithState"
    with pytest.raises(InvalidConfigError, match="LEAN_ARROW=true is a path of STATE_OPERATOR=applyInPandasWithState"):
        load_config([], {"STATE_OPERATOR": "transformWithState", "LEAN_ARROW": "true"})


def test_bad_cli_flag_beats_a_good_env_value():
    with pytest.raises(InvalidConfigError, match="SESSION_GAP"):
        load_config(["--session-gap", "nope"], {"SESSION_GAP": "10m"})


def test_good_cli_flag_beats_a_bad_env_value():
    assert load_config(["--session-gap", "10m"], {"SESSION_GAP": "nope"}).session_gap_s == 600.0


def test_rules_file_that_is_a_directory_is_rejected(tmp_path):
    with pytest.raises(InvalidConfigError, match="RULES_FILE"):
        load_config([], {"RULES_FILE": str(tmp_path)})


def test_session_max_must_exceed_the_gap():
    with pytest.raises(InvalidConfigError, match="SESSION_MAX"):
        load_config([], {"SESSION_GAP": "2h", "SESSION_MAX": "1h"})
    assert load_config([], {"SESSION_GAP": "2h", "SESSION_MAX": "3h"}).session_max_s == 3 * 3600


def test_config_is_frozen_and_checks_itself():
    config = load_config([], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.kafka_topic = "other"  # type: ignore[misc]
    with pytest.raises(InvalidConfigError, match="MAX_OFFSETS_PER_TRIGGER"):
        AppConfig(max_offsets_per_trigger=0)


def test_kafka_client_options_carry_sasl_and_pass_through_options():
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "job",
           "KAFKA_SASL_PASSWORD": 'p"w', "KAFKA_OPT_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https"}
    options = load_config(["--kafka-option", "request.timeout.ms=60000"], env).kafka_client_options()
    assert options == {
        "kafka.security.protocol": "SASL_PLAINTEXT",
        "kafka.sasl.mechanism": "PLAIN",
        "kafka.sasl.jaas.config": 'org.apache.kafka.common.security.plain.PlainLoginModule required '
                                  'username="job" password="p\\"w";',
        "kafka.ssl.endpoint.identification.algorithm": "https",
        "kafka.request.timeout.ms": "60000",
    }
    assert load_config([], {}).kafka_client_options() == {"kafka.security.protocol": "PLAINTEXT"}


def test_secrets_are_env_only_and_never_described():
    config = load_config([], {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "job",
                              "KAFKA_SASL_PASSWORD": "hunter2", "KAFKA_OPT_SSL_KEY_PASSWORD": "hunter3"})
    from app.config import describe
    assert "hunter2" not in describe(config) and "hunter3" not in describe(config)
    assert "hunter2" not in repr(config)
    with pytest.raises(SystemExit):
        load_config(["--kafka-sasl-password", "x"], {})


def test_write_concern_is_majority_on_a_replica_set_unless_set():
    assert load_config([], {}).write_concern == 1
    assert load_config([], {"MONGODB_URI": "mongodb://a,b,c/?replicaSet=rs0"}).write_concern == "majority"
    assert load_config([], {"MONGODB_URI": "mongodb://a/?replicaSet=rs0",
                            "MONGODB_WRITE_CONCERN": "1"}).write_concern == 1
    assert load_config([], {"MONGODB_WRITE_CONCERN": "2"}).write_concern == 2


@pytest.mark.parametrize("env, setting", [
    ({"KAFKA_FAIL_ON_DATA_LOSS": "maybe"}, "KAFKA_FAIL_ON_DATA_LOSS"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "u",
      "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM"),
    ({"KAFKA_OPT_BOOTSTRAP_SERVERS": "x:1"}, "KAFKA_BOOTSTRAP_SERVERS"),
    ({"KAFKA_OPT_SASL_JAAS_CONFIG": "x"}, "KAFKA_SASL_USERNAME"),
    ({"MONGODB_WRITE_CONCERN": "all"}, "MONGODB_WRITE_CONCERN"),
    ({"MONGODB_RETRY_TIMEOUT": "soon"}, "MONGODB_RETRY_TIMEOUT"),
    ({"HEALTH_PORT": "70000"}, "HEALTH_PORT"),
    ({"HEALTH_STALL_AFTER": "1m"}, "HEALTH_STALL_AFTER"),
    ({"PROFILES": "sometimes"}, "PROFILES"),
    ({"PROFILE_RULES_FILE": "/nope.yaml"}, "PROFILE_RULES_FILE"),
    ({"ALERTS_TOPIC": "ecommerce_events"}, "ALERTS_TOPIC"),
    ({"ACTIONS_TOPIC": "behavior_alerts"}, "ACTIONS_TOPIC"),
    ({"ACTIONS_TOPIC": "bad topic"}, "ACTIONS_TOPIC"),
    ({"SEGMENTS_TOPIC": "behavior_alerts"}, "SEGMENTS_TOPIC"),
    ({"SEGMENTS_TOPIC": "a/b"}, "SEGMENTS_TOPIC"),
    ({"STORE_TOPIC": "behavior_segments"}, "STORE_TOPIC"),
    ({"STORE_TOPIC": "a b"}, "STORE_TOPIC"),
    ({"MONGODB_DATABASE": "shop-ü"}, "STORE_TOPIC"),  # its default is named after the database
    ({"TRIGGER_RULES_FILE": "/nonexistent.yaml"}, "TRIGGER_RULES_FILE"),
    ({"EXPERIMENTS_FILE": "/nonexistent.yaml"}, "EXPERIMENTS_FILE"),
])
def test_operations_settings_fail_naming_the_setting(env, setting):
    with pytest.raises(InvalidConfigError, match=setting):
        load_config([], env)


def test_kafka_option_flag_must_be_key_value():
    with pytest.raises(InvalidConfigError, match="--kafka-option"):
        load_config(["--kafka-option", "novalue"], {})


def test_the_act_lane_writes_every_session_alert_and_action_at_least_once_with_acks_all():
    from app.pipeline import act_producer_options, act_topics
    config = load_config([], {})
    assert act_topics(config) == {"session": "behavior_segments", "retract": "behavior_segments",
                                  "alert": "behavior_alerts", "action": "behavior_actions"}
    assert act_topics(load_config([], {"PROFILES": "false", "TRIGGERS": "false", "SEGMENTS_TOPIC": "s"})) == {
        "session": "s", "retract": "s"}
    options = act_producer_options(config)
    assert options["kafka.acks"] == "all" and options["kafka.enable.idempotence"] == "false"
    assert options["kafka.max.in.flight.requests.per.connection"] == "1"  # a retry never reorders a key's messages
    # a user's own --kafka-option wins
    mine = act_producer_options(load_config(["--kafka-option", "enable.idempotence=true"], {}))
    assert mine["kafka.enable.idempotence"] == "true"


def test_the_store_lane_has_a_topic_per_database_unless_named():
    assert load_config([], {"MONGODB_DATABASE": "shop_eu"}).store_lane_topic == "behavior_store_shop_eu"
    assert load_config([], {"STORE_TOPIC": "internal.store"}).store_lane_topic == "internal.store"
