"""The generator CLI against the local Kafka (make up): what it says it sent is what is there."""
import json
import os
import socket
import uuid
from collections import Counter
from datetime import datetime, timezone

import pytest

from app.generator.cli import main
from app.generator.replay import parse_event_time
from faults.harness import read_records

# Same resolution as conftest's `stack` fixture, which is not used: this test must fail, not
# start anything, when the stack is down.
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:" + os.environ.get("KAFKA_PORT", "9092"))
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def require_kafka():
    """Fail, never skip: an e2e run without its stack must not look green."""
    host, port = BOOTSTRAP.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"Kafka is not reachable at {BOOTSTRAP} ({exc}); start it with: make up")


def consume_all(topic):
    """Every record of the topic, keyed by (partition, offset), read up to the end offsets."""
    return {(r.partition, r.offset): r for r in read_records(topic, BOOTSTRAP)}


def delete_topic(topic):
    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        admin.delete_topics([topic])
    except Exception:  # tidiness only; a left-over uniquely named topic is harmless
        pass
    finally:
        admin.close()


def test_generator_sends_sessions_and_malformed_records_it_reports(tmp_path):
    require_kafka()
    topic, intent_file = f"gen_test_{uuid.uuid4().hex[:12]}", tmp_path / "intent.jsonl"
    try:
        assert main([BOOTSTRAP, topic, "--sessions", "20", "--bad-ratio", "0.1", "--seed", "11",
                     "--intent-file", str(intent_file)]) == 0
        intents = [json.loads(line) for line in intent_file.read_text().splitlines()]
        sessions = [i for i in intents if "user_session" in i]
        malformed = [i for i in intents if "malformed" in i]
        records = consume_all(topic)
    finally:
        delete_topic(topic)

    assert Counter(s["segment"] for s in sessions) == {"bouncer": 6, "browser": 8,
                                                        "engaged_shopper": 4, "power_user": 2}
    n_events = sum(s["events"] for s in sessions)
    assert len(records) == n_events + len(malformed)
    assert abs(len(malformed) - 0.1 * n_events) <= 1
    assert {m["malformed"] for m in malformed} == {m["expected_reason"] for m in malformed} >= {
        "invalid_json", "not_an_object", "missing_event_time", "value_too_large"}

    for m in malformed:  # the intent's offsets point at exactly the malformed records
        record, marker = records[(m["partition"], m["offset"])], f"malformed-{m['malformed']}".encode()
        assert record.key == marker
        if m["malformed"] == "not_an_object":  # a list, a bare string or a number: never an object
            assert not isinstance(json.loads(record.value), dict)
        else:
            assert marker in record.value
        if m["malformed"] == "invalid_json":
            with pytest.raises(ValueError):
                json.loads(record.value)

    malformed_at = {(m["partition"], m["offset"]) for m in malformed}
    valid = {at: r for at, r in records.items() if at not in malformed_at}
    events = {at: json.loads(r.value) for at, r in valid.items()}
    assert Counter(e["user_session"] for e in events.values()) == {s["user_session"]: s["events"] for s in sessions}
    assert all(r.key == events[at]["user_session"].encode() for at, r in valid.items())
    now = datetime.now(timezone.utc)
    for partition in {p for p, _ in events}:  # sent in event-time order, so each partition is too
        times = [parse_event_time(events[at]["event_time"]) for at in sorted(events) if at[0] == partition]
        assert times == sorted(times) and times[-1] <= now
