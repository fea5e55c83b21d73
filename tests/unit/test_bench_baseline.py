"""The naive baseline's pure parts: decoding one Kafka value, and the per-event session fold."""
from __future__ import annotations

import json

import pytest

from app.config import DEFAULT_RULES_FILE
from app.segments.rules import load_rules
from app.sessions.tracker import Event, SessionSettings
from bench.baseline import NaiveSessionizer, event_time_ms, parse_value

MIN = 60_000
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@pytest.fixture(scope="module")
def settings():
    return SessionSettings(gap_ms=30 * MIN, max_ms=24 * 60 * MIN, rules=load_rules(DEFAULT_RULES_FILE))


@pytest.mark.parametrize("value", ["2024-05-01 12:00:00 UTC", "2024-05-01T12:00:00Z", "2024-05-01 12:00:00",
                                   "2024-05-01T14:00:00+02:00", T0, str(T0)])
def test_event_time_formats(value):
    assert event_time_ms(value) == T0


def test_parse_value_normalises_like_the_job():
    raw = {"event_id": "e1", "event_type": " Add_To_Cart ", "user_id": 42, "event_time": "2024-05-01 12:00:00 UTC",
           "product_id": 7, "price": "3.5", "brand": "", "properties": '{"a": 1}'}
    fields = parse_value(json.dumps(raw).encode())
    assert (fields["event_type"], fields["raw_event_type"]) == ("cart", "Add_To_Cart")
    assert (fields["user_id"], fields["product_id"], fields["price"]) == ("42", "7", 3.5)
    assert (fields["event_ms"], fields["brand"], fields["properties"]) == (T0, None, {"a": 1})


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'{"event_id": "e1"}',
                                   b'{"event_id": "e", "event_type": "view", "user_id": 1, "event_time": "soon"}'])
def test_unusable_values_are_bad(value):
    assert parse_value(value) is None


def view(at_ms, event_id, session):
    return Event(T0 + at_ms, event_id, "view", "u1", session, "p1", "c1", None)


def test_watermark_waits_for_the_slowest_partition(settings):
    tracker = NaiveSessionizer(settings, partitions=2)
    tracker.add(view(0, "a1", "A"), partition=0)
    tracker.add(view(60 * MIN, "a2", "A"), partition=0)
    assert tracker.watermark_ms() == 0  # partition 1 not read yet
    (_, session_id, _, is_late), _ = tracker.add(view(0, "b1", "B"), partition=1)
    assert (session_id, is_late) == ("B", False)
    assert tracker.watermark_ms() == T0 - 10 * MIN


def test_a_session_closes_once_the_watermark_passes_its_timeout(settings):
    tracker = NaiveSessionizer(settings)
    _, docs = tracker.add(view(0, "a1", "A"))
    assert [(d["_id"], d["status"]) for d in docs] == [("A", "active")]
    _, docs = tracker.add(view(41 * MIN, "b1", "B"))  # watermark 31 min: past A's 30 min gap
    _, docs = tracker.add(view(42 * MIN, "b2", "B"))
    assert [(d["_id"], d["status"], d["behavior_segment"]) for d in docs] == [
        ("A", "closed", "bouncer"), ("B", "active", "browser")]
