"""Produces N small JSON events to a topic for the smoke pipeline (python -m app.jobs.smoke_produce)."""
from __future__ import annotations

import argparse
import json
import os

from kafka import KafkaProducer


def smoke_events(n: int) -> list[dict]:
    return [{"event_id": f"smoke-{i}", "event_type": "view", "user_id": str(i % 37), "price": round(i * 0.5, 2)}
            for i in range(n)]


def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    for event in events:
        producer.send(topic, json.dumps(event).encode())
    producer.flush()
    producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--topic", default=os.environ.get("KAFKA_TOPIC", "smoke_events"))
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args()
    produce(args.bootstrap, args.topic, smoke_events(args.n))
    print(f"produced {args.n} events to {args.topic}")


if __name__ == "__main__":
    main()
