"""Raw rates of the local stack, the ceiling the job works under (`make bench-stack`).

Prints, on this machine: the MongoDB-compatible server's insert_many and bulk-upsert rates for
~1 KiB documents, and Kafka's produce rate from kafka-python vs Kafka's own Java perf tool.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from kafka import KafkaProducer
from pymongo import MongoClient, ReplaceOne, UpdateOne

ROOT = Path(__file__).resolve().parent.parent
URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/")
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PAYLOAD = "x" * 900


def timed(label: str, count: int, fn) -> float:
    start = time.perf_counter()
    fn()
    rate = count / (time.perf_counter() - start)
    print(f"{label:<62} {rate:>10,.0f} /s", flush=True)
    return rate


def store_rates(n_insert: int = 20_000, n_upsert: int = 2_000) -> dict:
    db = MongoClient(URI)["bench_stack_rates"]
    for name in ("ins", "ups", "rep"):
        db.drop_collection(name)
    docs = [{"_id": f"d{i}", "user_id": str(i % 997), "payload": PAYLOAD} for i in range(n_insert)]
    few = docs[:n_upsert]

    def insert_many():
        for start in range(0, n_insert, 1000):
            db.ins.insert_many(docs[start:start + 1000], ordered=False)

    def bulk(coll: str, batch: int, request):
        def run():
            for start in range(0, n_upsert, batch):
                db[coll].bulk_write([request(d) for d in few[start:start + batch]], ordered=False)
        return run

    set_one = lambda d: UpdateOne({"_id": d["_id"]}, {"$set": {"payload": d["payload"]}}, upsert=True)  # noqa: E731
    replace = lambda d: ReplaceOne({"_id": d["_id"]}, d, upsert=True)  # noqa: E731
    def delete_insert():
        for start in range(0, n_upsert, 1000):
            chunk = few[start:start + 1000]
            db.rep.delete_many({"_id": {"$in": [d["_id"] for d in chunk]}})
            db.rep.insert_many(chunk, ordered=False)

    results = {
        "insert_many_1k_batches": timed("insert_many, 1 KiB docs, unordered batches of 1,000", n_insert, insert_many),
        # Batches of 1,000 UpdateOne on existing documents hang FerretDB 1.24 (see README): 50.
        "upsert_set_new_50": timed("bulk UpdateOne $set upsert, new _id, batches of 50", n_upsert, bulk("ups", 50, set_one)),
        "upsert_set_existing_50": timed("bulk UpdateOne $set upsert, existing _id, batches of 50", n_upsert,
                                        bulk("ups", 50, set_one)),
        "replace_new_50": timed("bulk ReplaceOne upsert, new _id, batches of 50", n_upsert, bulk("rep", 50, replace)),
        "replace_existing_50": timed("bulk ReplaceOne upsert, existing _id, batches of 50", n_upsert,
                                     bulk("rep", 50, replace)),
        "delete_in_insert_existing_1k": timed("delete_many _id $in + insert_many (existing _id), chunks of 1,000",
                                              n_upsert, delete_insert),
    }
    for name in ("ins", "ups", "rep"):
        db.drop_collection(name)
    return results


def kafka_python_rate(n: int = 200_000) -> float:
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20, batch_size=256 * 1024, acks=1)
    value = json.dumps({"payload": PAYLOAD[:450]}).encode()

    def send():
        for i in range(n):
            producer.send("bench_produce_python", key=str(i % 1000).encode(), value=value)
        producer.flush()
    rate = timed("kafka-python KafkaProducer, 500 B records, acks=1", n, send)
    producer.close()
    return rate


def kafka_java_rate(n: int = 1_000_000) -> float:
    libs = os.environ.get("KAFKA_LIBS", str(ROOT / ".local/kafka/libs"))
    out = subprocess.run(
        ["java", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance", "--topic", "bench_produce_java",
         "--num-records", str(n), "--record-size", "500", "--throughput", "-1", "--producer-props",
         f"bootstrap.servers={BOOTSTRAP}", "acks=1", "linger.ms=20", "batch.size=262144"],
        capture_output=True, text=True, check=True).stdout
    rate = float(re.findall(r"([\d.]+) records/sec", out)[-1])
    print(f"{'Kafka ProducerPerformance (Java), 500 B records, acks=1':<62} {rate:>10,.0f} /s", flush=True)
    return rate


if __name__ == "__main__":
    print(f"cores {os.cpu_count()}, MongoDB-compatible server {URI}, Kafka {BOOTSTRAP}")
    figures = {**store_rates(), "kafka_python": kafka_python_rate(), "kafka_java": kafka_java_rate()}
    print(json.dumps({k: round(v) for k, v in figures.items()}))
