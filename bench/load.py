"""Kafka side of the benchmark: fresh topics, a fast preload, and a paced producer for latency.

librdkafka (confluent-kafka) sends ~10x what kafka-python can on one core (`make bench-stack`
measured kafka-python at 20k records/s), so the load does not measure itself. Kafka's Java
ProducerPerformance would be faster still, but it only repeats random lines of a payload file:
no distinct event ids, no session order.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Iterable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 3
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def fresh_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=10).topics:
        admin.delete_topics([topic])[topic].result(30)
        _wait(lambda: topic not in admin.list_topics(timeout=10).topics, f"topic {topic} deleted")
    for attempt in range(20):  # a just-deleted name can be refused for a moment
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
            return
        except KafkaException as exc:
            if attempt == 19 or "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            time.sleep(0.5)


def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    for future in admin.delete_topics(names).values() if names else ():
        future.result(30)


def _wait(condition, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def first_message_time(bootstrap: str, topic: str, timeout_s: float = 30) -> float | None:
    """The earliest Kafka timestamp (the producer's CreateTime, epoch seconds) of any partition's
    first message on topic, or None when the topic holds none."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-first-{topic}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        if not partitions:
            return None
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        first: dict[int, float] = {}
        deadline = time.monotonic() + timeout_s
        while len(first) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            first.setdefault(msg.partition(), msg.timestamp()[1] / 1000)
            consumer.pause([TopicPartition(topic, msg.partition())])
        return min(first.values(), default=None)
    finally:
        consumer.close()


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 20,
                     "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000,
                     "queue.buffering.max.kbytes": 512_000})


def _send(prod: Producer, topic: str, event: dict) -> None:
    while True:
        try:
            prod.produce(topic, _ENCODE(event).encode(), key=event["user_session"].encode())
            return
        except BufferError:  # the local queue is full: let librdkafka drain it
            prod.poll(0.05)


def preload(bootstrap: str, topic: str, events: Iterable[dict], total: int) -> dict:
    """Sends every event as fast as the broker takes them; prints progress; returns figures."""
    prod, errors = producer(bootstrap), []
    prod.poll(0)
    started = last_report = time.monotonic()
    sent = 0
    for sent, event in enumerate(events, start=1):
        _send(prod, topic, event)
        if sent % 10_000 == 0:
            prod.poll(0)
            now = time.monotonic()
            if now - last_report >= 5:
                last_report = now
                print(f"  preload: {sent:,}/{total:,} events ({sent / (now - started):,.0f}/s)", flush=True)
    remaining = prod.flush(120)
    seconds = time.monotonic() - started
    if remaining or errors:
        raise RuntimeError(f"preload: {remaining} events not delivered to {topic}")
    return {"events": sent, "seconds": round(seconds, 2), "events_per_s": round(sent / seconds)}


def paced(bootstrap: str, topic: str, events: Iterable[dict], rate: float, seconds: float) -> dict:
    """Sends at `rate` events/s for `seconds`, stamping each event's time with the send time.
    Kafka's CreateTime of each record is the producer's timestamp the latency is measured from."""
    prod = producer(bootstrap)
    started = time.time()
    sent, behind_max = 0, 0.0
    for event in events:
        due = started + sent / rate
        if due - started >= seconds:
            break
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            behind_max = max(behind_max, now - due)
        _send(prod, topic, event)
        sent += 1
        if sent % 1000 == 0:
            prod.poll(0)
    prod.flush(60)
    elapsed = time.time() - started
    if behind_max > 1.0:
        print(f"  paced producer fell {behind_max:.1f} s behind schedule", file=sys.stderr)
    return {"events": sent, "seconds": round(elapsed, 2), "events_per_s": round(sent / elapsed),
            "max_behind_s": round(behind_max, 3)}
