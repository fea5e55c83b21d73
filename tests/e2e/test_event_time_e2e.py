"""Results depend on event time only (DESIGN.md §5), on the real stack: one topic read by the job
twice, once in one micro-batch and once in batches of 20 offsets per partition
(MAX_OFFSETS_PER_TRIGGER=20: 60 records a batch), gives identical collections and identical
alerts and actions topics, and marks no event late.

The topic holds traffic the way shop apps send it: events out of order by up to 3 minutes
(within the 10-minute watermark delay), users without user_session (derived sessions), users
coming back after an hour, a bot, a fraud pattern (four addresses, two countries, a dear
purchase) and producer retries. Profiles, triggers and an experiment are on, so every output
is compared: sessions, events, funnel, distribution, profiles, alerts, executions, experiment
results and the rollups.
"""
from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from app.experiments.design import EXAMPLE_EXPERIMENTS
from faults.harness import differences
from tests.e2e.jobrun import job_env, read_topic, run_job, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.full]

TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def shop_traffic(seed: int, now: datetime) -> list[dict]:
    """~1,500 events over 3 hours, in arrival order."""
    rng = random.Random(seed)
    start = now - timedelta(hours=4)
    events: list[dict] = []

    def add(user: str, session: str | None, at: datetime, kind: str = "view", price: float = 25.0,
            ip: str = "10.0.0.1", country: str = "PL") -> None:
        events.append({"event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                       "event_time": at.strftime(TIME_FORMAT), "event_type": kind, "user_id": user,
                       "user_session": session, "product_id": str(rng.randint(1, 40)),
                       "category_id": "2053013555631882655", "category_code": "electronics.smartphone",
                       "brand": "acme", "price": price, "ip_address": ip, "country": country})

    for u in range(200):
        user, at = f"u{u}", start + timedelta(seconds=rng.randint(0, 3 * 3600 - 1800))
        explicit = u % 3 != 0  # a third of the users send no user_session
        visits = 2 if u % 5 == 0 else 1  # some come back an hour later
        for visit in range(visits):
            session = f"s-{u}-{visit}" if explicit else None
            for _ in range(rng.choice([1, 1, 3, 6, 12])):
                kind = rng.choice(["view", "view", "view", "cart", "purchase"])
                add(user, session, at, kind, price=rng.choice([25.0, 80.0, 1200.0]) if kind == "purchase" else 25.0)
                at += timedelta(seconds=rng.choice([5, 40, 90, 200]))
            at += timedelta(minutes=65)
    bot_at = start + timedelta(minutes=30)
    for i in range(60):  # 60 clicks a second apart: HIGH_VELOCITY, RAPID_ACTIONS
        add("bot-1", "bot-session", bot_at + timedelta(seconds=i))
    fraud_at = start + timedelta(minutes=90)
    for i, (ip, country) in enumerate([("1.1.1.1", "PL"), ("2.2.2.2", "DE"), ("3.3.3.3", "PL"), ("4.4.4.4", "DE")]):
        add("fraud-1", "fraud-session", fraud_at + timedelta(minutes=i), ip=ip, country=country)
    add("fraud-1", "fraud-session", fraud_at + timedelta(minutes=5), "purchase", price=950.0)
    # arrival: event time plus 0-3 minutes on the device (half the events arrive at once)
    def arrives(event: dict) -> datetime:
        late = rng.randint(0, 180) if rng.random() < 0.5 else 0
        return datetime.strptime(event["event_time"], TIME_FORMAT) + timedelta(seconds=late)
    arrival = [e for _, _, e in sorted((arrives(e), i, e) for i, e in enumerate(events))]
    for _ in range(30):
        i = rng.randrange(len(arrival))
        arrival.insert(min(len(arrival), i + rng.randint(1, 20)), arrival[i])
    return arrival


def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for event in events:
        key = (event["user_session"] or event["user_id"]).encode()
        producer.send(topic, key=key, value=json.dumps(event).encode())
    producer.flush()
    producer.close()


def test_one_batch_and_batches_of_20_offsets_per_partition_give_identical_outputs(stack, mongo, tmp_path):
    topic = "e2e_event_time_" + uuid.uuid4().hex[:10]
    events = shop_traffic(7, datetime.now(timezone.utc).replace(microsecond=0))
    produce(stack["bootstrap"], topic, events)
    runs = {}
    try:
        for name, cap in (("one", "1000000"), ("small", "20")):
            env = job_env(stack, topic, f"{topic}_{name}", tmp_path / name, MAX_OFFSETS_PER_TRIGGER=cap,
                          EXPERIMENTS_FILE=str(EXAMPLE_EXPERIMENTS), ALERTS_TOPIC=f"{topic}_{name}_alerts",
                          ACTIONS_TOPIC=f"{topic}_{name}_actions", TRIGGER_INTERVAL="0")
            run_job(env, timeout=1200)
            runs[name] = snapshot(stack["mongodb_uri"], f"{topic}_{name}")
            runs[name]["topic:alerts"] = sorted(r.value for r in read_topic(stack["bootstrap"], f"{topic}_{name}_alerts"))
            runs[name]["topic:actions"] = sorted(r.value for r in read_topic(stack["bootstrap"],
                                                                             f"{topic}_{name}_actions"))
        one, small = runs["one"], runs["small"]
        progress = {name: list(mongo[f"{topic}_{name}"].stream_progress.find({"query": "sessions"}))
                    for name in runs}
        assert len([p for p in progress["small"] if p.get("events")]) >= 15  # it really was read in small batches
        assert sum(p.get("late_events", 0) for p in progress["small"]) == 0
        assert not differences(one, small), differences(one, small)
        assert one == small
        closed = [s for s in one["user_behavior_segments"] if s["status"] == "closed"]
        assert len(closed) > 100 and any(s["_id"].startswith("u0-") for s in one["user_behavior_segments"])
        assert {a["alert_type"] for a in one["behavior_alerts"]} >= {"HIGH_VELOCITY", "MULTIPLE_IPS",
                                                                    "LOCATION_JUMP", "HIGH_VALUE_PURCHASE"}
        assert any(json.loads(m)["trigger"] == "fraud_review" for m in one["topic:actions"])
        assert one["experiment_results"] and one["event_counts_hourly"] and one["user_profiles"]
        assert len(one["enriched_events"]) == len({e["event_id"] for e in events})
    finally:
        for name in ("one", "small"):
            mongo.drop_database(f"{topic}_{name}")
