"""The one job run of the quick tier (`make test`): real Kafka, FerretDB and spark-submit, shared by
the API, dashboard, job, profile and §8 assertions (tests/e2e/conftest.py `shared_run`), so a
newcomer's run starts Spark once.

The topic holds the REES46 sample (2019), 200 generated sessions over the last five hours (bots,
fraud, returning users, 5% redelivered events, with their intent recorded), a user who comes back a
week later, a user still browsing, and a clock "now" on every partition: everything generated is
final when the run ends, the live user's session is open."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kafka import KafkaProducer

from app.experiments.design import EXAMPLE_EXPERIMENTS
from faults.harness import job_topics
from tests.e2e.jobrun import SAMPLE_CSV, advance_watermark, generate, job_env, read_intent, read_topic, run_job

# what the run's job is given; the API tests' own computation (test_api_e2e.Input) uses the same
SESSION_GAP, WATERMARK_DELAY = "5m", "10m"


@dataclass
class SharedRun:
    database: str        # also the topic
    alerts_topic: str
    actions_topic: str
    segments_topic: str
    intent: list[dict]   # the generator's intent: one line per generated session
    records: list        # the topic's records, in (partition, offset) order
    job_log: str
    started: datetime    # wall clock before the job ran, and after it ended
    ended: datetime


def _json(value: dict) -> bytes:
    return json.dumps(value).encode()


def week_later_user(bootstrap: str, topic: str) -> None:
    """One user with a session an hour ago and one exactly a week before it: week 1 of the user's
    cohort on any day (8 days before made it week 2 when the run fell on a Monday)."""
    later = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for session, start in (("ret-a", later - timedelta(days=7)), ("ret-b", later)):
        for i, event_type in enumerate(("view", "view", "cart")):
            producer.send(topic, key=session.encode(), value=_json({
                "event_id": f"{session}-{i}", "user_id": "returner-1", "user_session": session,
                "event_type": event_type, "event_time": (start + timedelta(seconds=40 * i)).isoformat(),
                "country": "NL", "product_id": 7, "price": 10.0}))
    producer.flush()
    producer.close()


def live_user(bootstrap: str, topic: str) -> None:
    """A user whose session is still open at the end of the run: events 3 and 2 minutes ago."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i, minutes in enumerate((3, 2)):
        producer.send(topic, key=b"live-session", value=_json({
            "event_id": f"live-{i}", "user_id": "live-1", "user_session": "live-session", "event_type": "view",
            "event_time": (now - timedelta(minutes=minutes)).isoformat(), "country": "NL", "product_id": 8,
            "price": 12.0}))
    producer.flush()
    producer.close()


def make_shared_run(stack: dict, tmp: Path) -> SharedRun:
    topic = database = "e2e_shared_" + uuid.uuid4().hex[:10]
    print(f"\nshared run: producing into {topic}, then one spark-submit (~1-2 min)", flush=True)
    generate(stack["bootstrap"], topic, "--replay", str(SAMPLE_CSV))
    generate(stack["bootstrap"], topic, "--sessions", "200", "--bots", "0.05", "--fraud", "0.05", "--returning", "0.3",
             "--duplicate-ratio", "0.05", "--seed", "23", "--start-minutes-ago", "300",
             "--intent-file", str(tmp / "intent.jsonl"))
    week_later_user(stack["bootstrap"], topic)
    live_user(stack["bootstrap"], topic)
    advance_watermark(stack["bootstrap"], topic)
    topics = job_topics(database)
    assert topics["EXPERIMENTS_FILE"] == str(EXAMPLE_EXPERIMENTS)
    started = datetime.now(timezone.utc)
    result = run_job(job_env(stack, topic, database, tmp / "ckpt", SESSION_GAP=SESSION_GAP, USER_ACTIVITY="on",
                             WATERMARK_DELAY=WATERMARK_DELAY, **topics))
    ended = datetime.now(timezone.utc)
    intent, _ = read_intent(tmp / "intent.jsonl")
    return SharedRun(database, topics["ALERTS_TOPIC"], topics["ACTIONS_TOPIC"], topics["SEGMENTS_TOPIC"], intent,
                     read_topic(stack["bootstrap"], topic), result.stdout + result.stderr, started, ended)
