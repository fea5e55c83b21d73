"""Profiles, scores and risk alerts end to end (DESIGN.md §11, §12): real Kafka, FerretDB, spark-submit."""
from __future__ import annotations

import csv
import json
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from tests.e2e.jobrun import (CLOCK_USER, SAMPLE_CSV, advance_watermark, generate, job_env, read_intent, read_topic,
                              rees46_session_count, run_job)

pytestmark = pytest.mark.e2e


def test_bots_and_fraud_raise_exactly_the_intended_alerts_in_mongodb_and_on_kafka(stack, mongo, tmp_path):
    topic = database = "e2e_risk_" + uuid.uuid4().hex[:10]
    alerts_topic = topic + "_alerts"
    generate(stack["bootstrap"], topic, "--sessions", "200", "--bots", "0.05", "--fraud", "0.05",
             "--returning", "0.3", "--seed", "17", "--intent-file", str(tmp_path / "intent.jsonl"))
    advance_watermark(stack["bootstrap"], topic)  # alerts are decided by final events: make them all final
    run_job(job_env(stack, topic, database, tmp_path / "ckpt", ALERTS_TOPIC=alerts_topic))
    sessions, _ = read_intent(tmp_path / "intent.jsonl")
    try:
        docs = list(mongo[database].behavior_alerts.find())
        raised = {(d["user_id"], d["alert_type"]) for d in docs}
        intended = {(str(s["user_id"]), alert) for s in sessions for alert in s["alerts"]}
        assert raised == intended
        clean_users = {str(s["user_id"]) for s in sessions if s["scenario"] == "clean"}
        assert {t for u, t in raised if u in clean_users} <= {"HIGH_VALUE_PURCHASE"}  # clean traffic: no others
        assert sum(s["scenario"] == "bot" for s in sessions) == 10 and len(intended) > 20
        bot = next(d for d in docs if d["alert_type"] == "HIGH_VELOCITY")
        assert bot["severity"] == "high" and bot["evidence"]["events"] == 30 and bot["_id"].startswith("HIGH_VELOCITY:")
        messages = read_topic(stack["bootstrap"], alerts_topic)
        assert sorted(json.loads(m.value)["alert_id"] for m in messages) == sorted(d["_id"] for d in docs)
        assert all(m.key.decode() == json.loads(m.value)["user_id"] for m in messages)
        # a closed session's document carries its user's scores
        session = mongo[database].user_behavior_segments.find_one({"user_scores": {"$exists": True},
                                                                    "status": "closed", "user_id": {"$ne": CLOCK_USER}})
        profile = mongo[database].user_profiles.find_one({"_id": session["user_id"]})
        assert 0 <= session["user_scores"]["intent_score"] <= 100
        assert session["user_scores"]["behavior_pattern"] == profile["behavior_pattern"]
    finally:
        mongo.drop_database(database)


def test_profiles_of_the_rees46_sample_equal_a_direct_computation(stack, mongo, tmp_path):
    topic = database = "e2e_prof_" + uuid.uuid4().hex[:10]
    generate(stack["bootstrap"], topic, "--replay", str(SAMPLE_CSV))
    advance_watermark(stack["bootstrap"], topic)  # profiles are decided by final events: make them all final
    run_job(job_env(stack, topic, database, tmp_path / "ckpt"))
    rows = list(csv.DictReader(SAMPLE_CSV.open()))
    by_user = defaultdict(list)
    for row in rows:
        by_user[row["user_id"]].append(row)
    try:
        profiles = {d["_id"]: d for d in mongo[database].user_profiles.find({"_id": {"$ne": CLOCK_USER}})}
        assert set(profiles) == set(by_user)
        for user, events in by_user.items():
            doc = profiles[user]
            times = [datetime.strptime(e["event_time"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
                     for e in events]
            types = Counter(e["event_type"] for e in events)
            categories = Counter(e["category_code"].split(".")[0] for e in events if e["category_code"])
            top = min(categories.items(), key=lambda kv: (-kv[1], kv[0]))[0] if categories else None
            expected = {"sessions": rees46_session_count(events), "total_events": len(events),
                        "view_count": types["view"], "cart_count": types["cart"], "purchase_count": types["purchase"],
                        "first_seen": min(times), "last_seen": max(times), "top_category": top}
            actual = {k: doc[k] for k in expected}
            actual["first_seen"] = actual["first_seen"].replace(tzinfo=timezone.utc)
            actual["last_seen"] = actual["last_seen"].replace(tzinfo=timezone.utc)
            assert actual == expected, user
            revenue = sum(float(e["price"]) for e in events if e["event_type"] == "purchase")
            assert doc["total_revenue"] == pytest.approx(revenue, abs=0.01), user
            assert all(0 <= doc[s] <= 100 for s in ("engagement_score", "interest_score", "intent_score",
                                                    "conversion_probability"))
    finally:
        mongo.drop_database(database)


def test_a_user_whose_entry_left_the_state_continues_from_the_stored_profile(stack, mongo, tmp_path):
    """Short gap and retention, small batches over four hours of events: a returning user's state
    entry expires between sessions, so the profile is carried by the stored document (a new epoch
    on top of its base)."""
    topic = database = "e2e_epoch_" + uuid.uuid4().hex[:10]
    # one partition: the small batches then follow event time (with three, a partition read ahead
    # of the others pushes the watermark past theirs, and their events arrive late)
    admin = KafkaAdminClient(bootstrap_servers=stack["bootstrap"])
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    generate(stack["bootstrap"], topic, "--sessions", "80", "--returning", "0.5", "--seed", "23",
             "--mix", "bouncer=0.3,browser=0.5,engaged_shopper=0.2", "--spread-minutes", "600",
             "--start-minutes-ago", "730", "--intent-file", str(tmp_path / "intent.jsonl"))
    advance_watermark(stack["bootstrap"], topic)  # now - 60 min: every generated event is final
    # a watermark an hour behind keeps every event on time; an entry expires 30 min after its last event
    run_job(job_env(stack, topic, database, tmp_path / "ckpt", SESSION_GAP="5m", SESSION_MAX="25m",
                    SESSION_ID_RETENTION="30m", WATERMARK_DELAY="60m", MAX_OFFSETS_PER_TRIGGER="30"))
    sessions, _ = read_intent(tmp_path / "intent.jsonl")
    expected = defaultdict(lambda: [0, 0])
    for s in sessions:
        expected[str(s["user_id"])][0] += 1
        expected[str(s["user_id"])][1] += s["events"]
    try:
        profiles = {d["_id"]: d for d in mongo[database].user_profiles.find({"_id": {"$ne": CLOCK_USER}})}
        assert {u: [d["sessions"], d["total_events"]] for u, d in profiles.items()} == dict(expected)
        carried = [d for d in profiles.values() if d["base"] is not None]
        assert carried, "no user came back after its state entry expired"
        assert all(d["base"]["sessions"] >= 1 and d["first_seen"].timestamp() * 1000 <= d["base"]["first_seen"]
                   for d in carried)
    finally:
        mongo.drop_database(database)
