"""The streaming job end to end: real Kafka, real FerretDB, spark-submit, the real generator."""
from __future__ import annotations

import csv
import uuid
from collections import Counter

import pytest

from tests.conftest import eventually
from faults.harness import job_topics
from tests.e2e.jobrun import (SAMPLE_CSV, generate, job_env, kill_hard, read_intent, rees46_session_count, run_job,
                              snapshot, start_job)

pytestmark = [pytest.mark.e2e, pytest.mark.full]


@pytest.fixture(scope="module")
def generated_run(stack, mongo, tmp_path_factory):
    """60 generated sessions with recorded intent plus 5% malformed records, processed once (their
    segments and aggregates: test_shared_run_e2e, on the quick tier's run)."""
    tmp = tmp_path_factory.mktemp("generated")
    topic = database = "e2e_gen_" + uuid.uuid4().hex[:10]
    generate(stack["bootstrap"], topic, "--sessions", "60", "--bad-ratio", "0.05", "--seed", "11",
             "--intent-file", str(tmp / "intent.jsonl"))
    # as a run with USER_ACTIVITY on would have left it: this run (off) must take it back
    mongo[database].stream_progress.insert_one({"_id": "activity", "complete": True})
    result = run_job(job_env(stack, topic, database, tmp / "ckpt"))
    sessions, malformed = read_intent(tmp / "intent.jsonl")
    yield {"db": mongo[database], "topic": topic, "sessions": sessions, "malformed": malformed, "log": result.stdout}
    mongo.drop_database(database)


def test_malformed_records_are_quarantined_with_their_reason_and_good_ones_processed(generated_run):
    db, topic = generated_run["db"], generated_run["topic"]
    malformed = generated_run["malformed"]
    assert malformed, "the generator produced no malformed records"
    assert len({m["expected_reason"] for m in malformed}) >= 5
    for m in malformed:
        doc = db.quarantined_events.find_one({"_id": f"{topic}:{m['partition']}:{m['offset']}"})
        assert doc is not None, m
        assert m["expected_reason"] in doc["reasons"], (m, doc["reasons"])
        assert doc["raw_size"] > 0 and doc["kafka_topic"] == topic
    assert db.quarantined_events.count_documents({}) == len(malformed)
    assert db.enriched_events.count_documents({}) == sum(s["events"] for s in generated_run["sessions"])


def test_a_job_without_user_activity_withdraws_its_complete_marker(generated_run):
    """USER_ACTIVITY turned off: user_activity is no longer kept, so the API must read the
    collections (it trusts the documents only under stream_progress `activity`: complete)."""
    db = generated_run["db"]
    assert db.stream_progress.find_one({"_id": "activity"}) is None
    assert db.user_activity.count_documents({}) == 0


def test_the_real_rees46_sample_matches_a_direct_computation(stack, mongo, tmp_path):
    topic = database = "e2e_csv_" + uuid.uuid4().hex[:10]
    generate(stack["bootstrap"], topic, "--replay", str(SAMPLE_CSV))
    run_job(job_env(stack, topic, database, tmp_path / "ckpt"))
    rows = list(csv.DictReader(SAMPLE_CSV.open()))
    expected_types = Counter(r["event_type"] for r in rows)
    expected_revenue = sum(float(r["price"]) for r in rows if r["event_type"] == "purchase")
    try:
        docs = list(mongo[database].user_behavior_segments.find())
        assert len(docs) == rees46_session_count(rows)  # split where a user_session pauses > 30 min
        assert sum(d["view_count"] for d in docs) == expected_types["view"]
        assert sum(d["cart_count"] for d in docs) == expected_types["cart"]
        assert sum(d["purchase_count"] for d in docs) == expected_types["purchase"]
        assert sum(d["total_events"] for d in docs) == len(rows)
        assert sum(d["total_amount"] or 0 for d in docs) == pytest.approx(expected_revenue, abs=0.01)
        assert mongo[database].enriched_events.count_documents({}) == len(rows)
        assert mongo[database].quarantined_events.count_documents({}) == 0
    finally:
        mongo.drop_database(database)


def _store_lane_writing(db) -> bool:
    """True while the store query is writing what sessions batches sent: the records stored differ
    from what the recorded sessions batches account for (a sessions batch's progress is recorded
    after it, and the store query may have written its records by then, or not yet)."""
    recorded = sum(p["events"] + p["quarantined"]
                   for p in db.stream_progress.find({"query": "sessions"}, {"events": 1, "quarantined": 1}))
    stored = db.enriched_events.count_documents({}) + db.quarantined_events.count_documents({})
    return stored > 0 and stored != recorded


KILL_POINTS = ("while the store lane writes", "right after a batch", "while the store lane writes")


def test_kill_9_at_several_points_then_restart_equals_an_uninterrupted_run(stack, mongo, tmp_path):
    topic = "e2e_kill_" + uuid.uuid4().hex[:10]
    generate(stack["bootstrap"], topic, "--sessions", "400", "--bad-ratio", "0.02", "--seed", "5",
             "--spread-minutes", "240", "--start-minutes-ago", "300", "--duplicate-ratio", "0.05",
             "--fraud", "0.03", "--bots", "0.02")
    small_batches = {"MAX_OFFSETS_PER_TRIGGER": "100",  # per partition: 300 records a batch
                     "USER_ACTIVITY": "on", "ACTIVITY_INTERVAL": "2s"}  # user_activity compared too
    reference, crashed = topic + "_ref", topic + "_crash"
    try:  # each run with an experiment, sending its alerts and actions to topics of its own
        run_job(job_env(stack, topic, reference, tmp_path / "ckpt_ref", **small_batches, **job_topics(reference)))
        total = mongo[reference].enriched_events.count_documents({})

        env = job_env(stack, topic, crashed, tmp_path / "ckpt_crash", **small_batches, **job_topics(crashed))
        db = mongo[crashed]
        for i, point in enumerate(KILL_POINTS):
            job = start_job(env, tmp_path / f"crashed_job_{i}.log")
            try:
                batches = db.stream_progress.count_documents({"query": "sessions"})
                eventually(lambda: db.stream_progress.count_documents({"query": "sessions"}) > batches,
                           timeout_s=300, interval_s=0.2, what=f"a batch after restart {i}")
                if point == "while the store lane writes":
                    eventually(lambda: _store_lane_writing(db), timeout_s=120, interval_s=0.02, what=point)
            finally:
                kill_hard(job)
            assert db.enriched_events.count_documents({}) < total, f"the job finished before kill {i}"

        run_job(env)  # restart from the checkpoint and finish

        expected, actual = snapshot(stack["mongodb_uri"], reference), snapshot(stack["mongodb_uri"], crashed)
        assert expected["experiment_results"] and expected["topic:alerts"] and expected["topic:actions"]
        assert expected["user_activity"] and expected["live_feed"]
        for name in expected:  # collections, and the distinct alert and execution ids on the topics
            assert len(actual[name]) == len(expected[name]), name
            assert actual[name] == expected[name], name
    finally:
        mongo.drop_database(reference)
        mongo.drop_database(crashed)
