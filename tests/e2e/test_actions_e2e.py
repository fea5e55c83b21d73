"""Triggers, actions and experiments end to end (DESIGN.md §13, §14): real Kafka, FerretDB, spark-submit."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
import pytest

from app.experiments.design import EXAMPLE_EXPERIMENTS
from tests.conftest import ROOT
from app.generator.replay import parse_event_time
from tests.e2e.jobrun import generate, job_env, read_intent, read_topic, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.full]


def expected_executions(records: list, sessions: list[dict], delay_ms: int, gap_ms: int) -> set[str]:
    """The default triggers (app/rules/triggers_v1.yaml) worked out from what the generator sent
    (the topic's events and its intent file), for an available-now run whose watermark ends at
    the slowest partition's newest event time - the delay, where every session has a user of its own:
    - exit_intent_offer: a session opening with a view is a bouncer at its first (final) event;
    - abandoned_cart_email: a closed browser session with a cart, at its last event;
    - vip_enrolment: a closed power-user session that spent 1,000 or more, at its last event.
    (fraud_review's ids depend on the alert rules' timing: the test checks its users.)"""
    events: dict[str, list[dict]] = {}
    newest: dict[int, int] = {}  # partition -> its newest event time
    for record in records:
        if not record.key.startswith(b"malformed-"):
            event = json.loads(record.value)
            events.setdefault(event["user_session"], []).append(event)
            newest[record.partition] = max(newest.get(record.partition, 0), _event_ms(event))
    for evs in events.values():
        evs.sort(key=lambda e: (_event_ms(e), e["event_id"]))
    times = {s: [_event_ms(e) for e in evs] for s, evs in events.items()}
    watermark = min(newest.values()) - delay_ms  # the slowest partition's (app/pipeline.py event_time_source)
    expected = set()
    for session in sessions:
        sid, user, segment = session["user_session"], session["user_id"], session["segment"]
        first, last = times[sid][0], times[sid][-1]
        if first < watermark and events[sid][0]["event_type"] not in ("cart", "purchase"):  # a bouncer then
            expected.add(f"exit_intent_offer:{user}:{first}")
        closed = last + gap_ms < watermark
        kinds = [e["event_type"] for e in events[sid]]
        spent = sum(e["price"] for e in events[sid] if e["event_type"] == "purchase")
        if closed and segment == "browser" and "cart" in kinds:
            expected.add(f"abandoned_cart_email:{user}:{last}")
        if closed and segment == "power_user" and spent >= 1000:
            expected.add(f"vip_enrolment:{user}:{last}")
    return expected


def _event_ms(event: dict) -> int:
    return round(parse_event_time(event["event_time"]).timestamp() * 1000)


def test_generated_traffic_fires_exactly_the_expected_executions_and_messages(stack, mongo, tmp_path):
    topic = database = "e2e_actions_" + uuid.uuid4().hex[:10]
    actions_topic = topic + "_actions"
    generate(stack["bootstrap"], topic, "--sessions", "300", "--fraud", "0.03", "--bots", "0.02", "--seed", "31",
             "--mix", "bouncer=0.3,browser=0.4,engaged_shopper=0.1,power_user=0.2",
             "--intent-file", str(tmp_path / "intent.jsonl"))
    run_job(job_env(stack, topic, database, tmp_path / "ckpt", ACTIONS_TOPIC=actions_topic, SESSION_GAP="5m"))
    sessions, _ = read_intent(tmp_path / "intent.jsonl")
    db = mongo[database]
    try:
        docs = {d["_id"]: d for d in db.trigger_executions.find()}
        expected = expected_executions(read_topic(stack["bootstrap"], topic), sessions, 10 * 60_000, 5 * 60_000)
        assert {i for i in docs if not i.startswith("fraud_review")} == expected
        fired = {d["trigger"] for d in docs.values()}
        assert fired == {"fraud_review", "exit_intent_offer", "abandoned_cart_email", "vip_enrolment"}, fired
        risky = {str(s["user_id"]) for s in sessions if s["scenario"] != "clean"}
        assert {d["user_id"] for d in docs.values() if d["trigger"] == "fraud_review"} == risky
        cart = next(d for d in docs.values() if d["trigger"] == "abandoned_cart_email")
        assert cart["actions"] == [{"channel": "email", "template": "abandoned_cart",
                                    "parameters": {"send_after_minutes": 60, "discount_pct": 5}}]
        assert cart["facts"]["session"]["cart_count"] >= 1 and 0 <= cart["facts"]["profile"]["intent_score"] <= 100

        messages = read_topic(stack["bootstrap"], actions_topic)
        assert sorted(json.loads(m.value)["execution_id"] for m in messages) == sorted(docs)
        assert all(m.key.decode() == json.loads(m.value)["user_id"] for m in messages)

        # the reference consumer prints one line per action
        result = subprocess.run([sys.executable, "-m", "app.actions.consume", "--bootstrap", stack["bootstrap"],
                                 "--topic", actions_topic, "--from-beginning", "--idle-timeout", "5s"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == len(docs) and f"{len(docs)} actions, 0 redelivered" in result.stderr
        assert any("email/abandoned_cart" in line for line in lines)
    finally:
        mongo.drop_database(database)


def test_a_simulated_effect_is_found_and_a_null_variant_is_not(stack, mongo, tmp_path):
    topic = database = "e2e_experiment_" + uuid.uuid4().hex[:10]
    generate(stack["bootstrap"], topic, "--sessions", "20000", "--mix", "browser=1", "--seed", "41",
             "--effect", "ten_percent_off=+0.05", "--base-conversion", "0.10",
             "--intent-file", str(tmp_path / "intent.jsonl"))
    run_job(job_env(stack, topic, database, tmp_path / "ckpt", EXPERIMENTS_FILE=str(EXAMPLE_EXPERIMENTS),
                    SESSION_GAP="5m", TRIGGERS="false"), timeout=1500)
    sessions, _ = read_intent(tmp_path / "intent.jsonl")
    intended = {s["user_session"]: s for s in sessions}
    db = mongo[database]
    try:
        results = {d["variant"]: d for d in db.experiment_results.find({"experiment": "cart_incentive"})}
        assert set(results) == {"control", "ten_percent_off", "free_shipping"}
        closed = list(db.user_behavior_segments.find({"status": "closed"}))
        assert len(closed) > 15_000
        counted = {name: [0, 0] for name in results}
        for s in closed:
            variant = s["experiments"]["cart_incentive"]
            assert variant == intended[s["user_session"]]["experiments"]["cart_incentive"]  # the generator's assignment
            assert (s["purchase_count"] >= 1) == intended[s["user_session"]]["converted"]
            counted[variant][0] += 1
            counted[variant][1] += s["purchase_count"] >= 1
        assert {v: [d["exposed_sessions"], d["conversions"]] for v, d in results.items()} == counted

        effect, null, control = results["ten_percent_off"], results["free_shipping"], results["control"]
        assert effect["significant"] and effect["p_value"] < 0.001 and 0.03 < effect["lift_abs"] < 0.07, effect
        assert not null["significant"] and null["p_value"] > 0.05, null
        assert control["is_control"] and control["ci95_low"] < control["conversion_rate"] < control["ci95_high"]
        assert not any(d["sample_ratio_mismatch"] for d in results.values())
        # the variant's recommendations reached its users' browser sessions
        shown = db.user_behavior_segments.find_one({"experiments.cart_incentive": "ten_percent_off",
                                                    "behavior_segment": "browser"})
        assert shown["recommendations"][0].startswith("Offer 10% off")
    finally:
        mongo.drop_database(database)
