"""Profiles, scores and risk alerts end to end (DESIGN.md §11, §12): real Kafka, FerretDB, spark-submit."""
from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from tests.e2e.jobrun import CLOCK_USER, advance_watermark, generate, job_env, read_intent, run_job

# alerts on MongoDB and Kafka, and the REES46 profiles: test_shared_run_e2e, on the quick tier's run
pytestmark = [pytest.mark.e2e, pytest.mark.full]


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
