"""The job's own outputs of the quick tier's shared run (tests/e2e/shared_run.py), read from MongoDB
and Kafka: segments against the generator's intent, the aggregates against the sessions, alerts and
profiles against a direct computation, every §8 field of enriched_events against the topic; then the
entry points a user of the original system types (DESIGN §9) and the real job refusing a bad setting
(DESIGN §10)."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pytest

from tests.conftest import ROOT
from faults.harness import latest_session_messages
from tests.e2e.jobrun import SAMPLE_CSV, read_topic, rees46_session_count

pytestmark = pytest.mark.e2e

GAP_S = 5 * 60  # the shared run's SESSION_GAP


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


@pytest.fixture(scope="module")
def db(shared_run, mongo):
    return mongo[shared_run.database]


def test_every_generated_session_lands_in_its_intended_segment(shared_run, db):
    docs = {d["_id"]: d for d in db.user_behavior_segments.find()}
    assert len(shared_run.intent) >= 200  # 200 sessions, and those the bots and fraudsters add
    assert {s["user_session"]: s["segment"] for s in shared_run.intent} == \
        {s["user_session"]: docs[s["user_session"]]["behavior_segment"] for s in shared_run.intent}
    # redelivered copies (5% of the events) count once
    assert all(docs[s["user_session"]]["total_events"] == s["events"] for s in shared_run.intent)


def test_aggregates_agree_with_the_closed_sessions(db):
    closed = list(db.user_behavior_segments.find({"status": "closed"}))
    assert closed, "no session closed: the watermark did not advance"
    by_segment = Counter(d["behavior_segment"] for d in closed)
    funnel = {d["_id"]: d for d in db.conversion_funnel.find()}
    assert {seg: funnel[seg]["total_sessions"] for seg in by_segment} == dict(by_segment)
    for seg, doc in funnel.items():
        mine = [d for d in closed if d["behavior_segment"] == seg]
        assert doc["total_revenue"] == pytest.approx(sum(d["total_amount"] or 0 for d in mine), abs=0.01)
        assert doc["unique_users"] == len({d["user_id"] for d in mine})
    distribution = list(db.segment_distribution.find())
    assert sum(d["session_count"] for d in distribution) == len(closed)
    for window in {d["window_start"] for d in distribution}:
        shares = [d["share_pct"] for d in distribution if d["window_start"] == window]
        assert sum(shares) == pytest.approx(100, abs=0.05)


def test_bots_and_fraud_raise_exactly_the_intended_alerts_in_mongodb_and_on_kafka(shared_run, db, stack):
    generated = {str(s["user_id"]) for s in shared_run.intent}
    docs = list(db.behavior_alerts.find())
    raised = {(d["user_id"], d["alert_type"]) for d in docs if d["user_id"] in generated}
    intended = {(str(s["user_id"]), alert) for s in shared_run.intent for alert in s["alerts"]}
    assert raised == intended
    clean_users = {str(s["user_id"]) for s in shared_run.intent if s["scenario"] == "clean"}
    assert {t for u, t in raised if u in clean_users} <= {"HIGH_VALUE_PURCHASE"}  # clean traffic: no others
    assert sum(s["scenario"] == "bot" for s in shared_run.intent) == 10 and len(intended) > 20
    bot = next(d for d in docs if d["alert_type"] == "HIGH_VELOCITY")
    assert bot["severity"] == "high" and bot["evidence"]["events"] == 30 and bot["_id"].startswith("HIGH_VELOCITY:")
    messages = read_topic(stack["bootstrap"], shared_run.alerts_topic)
    assert sorted(json.loads(m.value)["alert_id"] for m in messages) == sorted(d["_id"] for d in docs)
    assert all(m.key.decode() == json.loads(m.value)["user_id"] for m in messages)
    actions = read_topic(stack["bootstrap"], shared_run.actions_topic)
    assert {json.loads(m.value)["execution_id"] for m in actions} == set(db.trigger_executions.distinct("_id"))
    # a closed session's document carries its user's scores
    session = db.user_behavior_segments.find_one({"user_scores": {"$exists": True}, "status": "closed",
                                                  "user_id": {"$in": sorted(generated)}})
    profile = db.user_profiles.find_one({"_id": session["user_id"]})
    assert 0 <= session["user_scores"]["intent_score"] <= 100
    assert session["user_scores"]["behavior_pattern"] == profile["behavior_pattern"]


def test_every_session_write_reaches_the_segments_topic_and_its_latest_message_is_the_stored_session(
        shared_run, db, stack):
    """The act lane (DESIGN.md §16): one message per session write, keyed by user_id, sent before the
    batch's MongoDB writes; a session's latest message is its stored document."""
    records = read_topic(stack["bootstrap"], shared_run.segments_topic)
    messages = [json.loads(r.value) for r in records]
    assert all(r.key.decode() == m["user_id"] for r, m in zip(records, messages))
    stored = {d["_id"]: d for d in db.user_behavior_segments.find()}
    latest = {m["_id"]: m for m in latest_session_messages([r.value for r in records])}
    assert set(latest) == set(stored)
    fields = ("user_id", "behavior_segment", "status", "total_events", "cart_count", "purchase_count",
              "recommendations", "action_priority", "event_path")
    for session_id, doc in stored.items():
        assert {f: latest[session_id][f] for f in fields} == {f: doc[f] for f in fields}, session_id
        assert latest[session_id]["session_end"] == int(utc(doc["session_end"]).timestamp() * 1000)
    # more messages than sessions: an active session is sent again each batch it changes
    assert len(messages) >= len(stored) and {m["status"] for m in messages} <= {"active", "closed", "retracted"}


def test_profiles_of_the_rees46_sample_equal_a_direct_computation(shared_run, db):
    rows = list(csv.DictReader(SAMPLE_CSV.open()))
    by_user = defaultdict(list)
    for row in rows:
        by_user[row["user_id"]].append(row)
    assert not set(by_user) & {str(s["user_id"]) for s in shared_run.intent}, "a generated user is a REES46 user"
    profiles = {d["_id"]: d for d in db.user_profiles.find({"_id": {"$in": sorted(by_user)}})}
    assert set(profiles) == set(by_user)
    for user, events in by_user.items():
        doc = profiles[user]
        times = [datetime.strptime(e["event_time"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
                 for e in events]
        types = Counter(e["event_type"] for e in events)
        categories = Counter(e["category_code"].split(".")[0] for e in events if e["category_code"])
        top = min(categories.items(), key=lambda kv: (-kv[1], kv[0]))[0] if categories else None
        expected = {"sessions": rees46_session_count(events, gap_s=GAP_S), "total_events": len(events),
                    "view_count": types["view"], "cart_count": types["cart"], "purchase_count": types["purchase"],
                    "first_seen": min(times), "last_seen": max(times), "top_category": top}
        actual = {k: doc[k] for k in expected}
        actual["first_seen"], actual["last_seen"] = utc(actual["first_seen"]), utc(actual["last_seen"])
        assert actual == expected, user
        revenue = sum(float(e["price"]) for e in events if e["event_type"] == "purchase")
        assert doc["total_revenue"] == pytest.approx(revenue, abs=0.01), user
        assert all(0 <= doc[s] <= 100 for s in ("engagement_score", "interest_score", "intent_score",
                                                "conversion_probability"))


def _expected_enriched(records) -> dict[str, dict]:
    """DESIGN §8's enriched fields, computed from the topic: an event_id once (its first copy), the
    previous event of its session in (event time, event_id) order, the category split at the dot.
    Sessions split at the gap only: no session of the shared run lasts SESSION_MAX (24 h)."""
    from app.sessions.tracker import session_id_of
    events = {}
    for r in records:
        value = json.loads(r.value)
        event_id = value.get("event_id") or f"{r.topic}:{r.partition}:{r.offset}"
        if event_id in events:
            continue
        when = value["event_time"]
        ts = (datetime.strptime(when, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc) if when.endswith(" UTC")
              else datetime.fromisoformat(when).astimezone(timezone.utc))
        code = value.get("category_code") or None
        levels = code.split(".") if code else []
        events[event_id] = {"event_timestamp": ts, "event_date": ts.strftime("%Y-%m-%d"), "event_hour": ts.hour,
                            "category_main": levels[0] if levels else None,
                            "category_sub": levels[1] if len(levels) > 1 else None,
                            "kafka_topic": r.topic, "kafka_partition": r.partition, "kafka_offset": r.offset,
                            "_key": (str(value["user_id"]), value["user_session"])}
    by_session = defaultdict(list)
    for event_id, e in events.items():
        by_session[e.pop("_key")].append((e["event_timestamp"], event_id))
    for (_, key), members in by_session.items():
        generation, previous = 0, None
        for ts, event_id in sorted(members):
            since = None if previous is None else (ts - previous).total_seconds()
            if since is None or since > GAP_S:
                generation, since = generation + 1, None
            events[event_id].update(session_id=session_id_of(key, generation), seconds_since_prev_in_session=since,
                                    is_rapid_action=since is not None and since < 2)
            previous = ts
    return events


def test_every_enriched_event_carries_the_section_8_fields(shared_run, db):
    expected = _expected_enriched(shared_run.records)
    stored = {d["_id"]: d for d in db.enriched_events.find()}
    assert set(stored) == set(expected)
    fields = ("event_timestamp", "event_date", "event_hour", "category_main", "category_sub", "kafka_topic",
              "kafka_partition", "kafka_offset", "session_id", "seconds_since_prev_in_session", "is_rapid_action")
    for event_id, want in expected.items():
        doc = stored[event_id]
        got = {f: doc.get(f) if f.startswith("category_") else doc[f] for f in fields}  # null: left out
        got["event_timestamp"] = utc(got["event_timestamp"])  # a BSON date: pymongo gives a datetime
        assert isinstance(doc["event_timestamp"], datetime), event_id
        since = got["seconds_since_prev_in_session"]
        got["seconds_since_prev_in_session"] = None if since is None else round(since, 3)
        want = {**want, "seconds_since_prev_in_session": None if want["seconds_since_prev_in_session"] is None
                else round(want["seconds_since_prev_in_session"], 3)}
        assert got == {f: want[f] for f in fields}, event_id
        assert shared_run.started <= utc(doc["ingest_time"]) <= shared_run.ended, event_id
    assert sum(e["is_rapid_action"] for e in expected.values()) > 100  # the bots' clicks, and more
    assert {e["category_sub"] is None for e in expected.values()} == {True, False}


def test_the_seed_generator_entry_point_sends_what_it_says(stack, tmp_path):
    """`python3 app/utils/test_behavior_generator.py <bootstrap> <topic>` from a checkout (DESIGN §9)."""
    topic = "e2e_seed_gen_" + uuid.uuid4().hex[:10]
    result = subprocess.run([sys.executable, "app/utils/test_behavior_generator.py", stack["bootstrap"], topic,
                             "--sessions", "12", "--seed", "3", "--intent-file", str(tmp_path / "intent.jsonl")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    intent = [json.loads(line) for line in (tmp_path / "intent.jsonl").read_text().splitlines()]
    records = read_topic(stack["bootstrap"], topic)
    assert len(intent) == 12 and len(records) == sum(s["events"] for s in intent)
    assert Counter(json.loads(r.value)["user_session"] for r in records) == {s["user_session"]: s["events"]
                                                                            for s in intent}
    importable = subprocess.run([sys.executable, "-c", (
        "import sys; sys.path.insert(0, 'app/utils'); from datetime import datetime, timezone;"
        "from test_behavior_generator import generate_power_user_session as g;"
        "e = g(7, 's-7', datetime(2026, 1, 1, tzinfo=timezone.utc)); print(len(e), e[0]['user_session'])")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert importable.returncode == 0, importable.stderr
    count, session = importable.stdout.split()
    assert 35 <= int(count) <= 60 and session == "s-7"  # DESIGN §9: "35-60 events" of a power user


def test_the_seed_query_script_answers_from_the_jobs_collections(shared_run, db, stack):
    """`./deploy/scripts/query_behavior_segments.sh` (mongosh) over the shared run's database."""
    env = {**os.environ, "MONGODB_URI": stack["mongodb_uri"], "MONGODB_DATABASE": shared_run.database}
    result = subprocess.run(["./deploy/scripts/query_behavior_segments.sh"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = Counter((d["behavior_segment"], d["status"]) for d in db.user_behavior_segments.find())
    section = result.stdout.split("== sessions per segment ==")[1].split("\n\n")[0]
    shown = {tuple(line.split()[:2]): int(line.split()[2]) for line in section.strip().splitlines()}
    assert shown == dict(counts)
    fired = Counter(d["trigger"] for d in db.trigger_executions.find())
    for trigger, n in fired.items():
        assert f"{trigger.ljust(22)} {n}" in result.stdout
    assert "Error" not in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("setting, value", [
    ("SESSION_GAP", "banana"), ("MONGODB_URI", "http://127.0.0.1:27017/"), ("KAFKA_TOPIC", "no spaces allowed"),
    ("KAFKA_BOOTSTRAP_SERVERS", None),  # nothing listens there: refused before Spark starts
])
def test_the_real_job_refuses_a_bad_setting_with_exit_2_and_one_line_naming_it(stack, tmp_path, setting, value):
    value = value if value is not None else f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": stack["bootstrap"], "MONGODB_URI": stack["mongodb_uri"],
           "CHECKPOINT_DIR": str(tmp_path / "ckpt"), setting: value}
    result = subprocess.run([str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py",
                             "--available-now"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and setting in errors[0], output[-3000:]
    assert "Traceback" not in output
