"""Smoke pipeline: Kafka -> Spark Structured Streaming -> MongoDB, then print what it wrote.

    ./deploy/local/submit.sh app/jobs/smoke.py [--collection smoke_events]

Reads every record of KAFKA_TOPIC (availableNow), stores each as one document
(_id = topic:partition:offset, the JSON value parsed) and prints the count.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile

from pyspark.sql import SparkSession, functions as F

from app.config import InvalidConfigError, load_config
from app.services import check_kafka, check_mongodb, ServiceUnavailableError
from app.sinks.mongo import client_for, insert_or_ignore


def _write_partition(uri: str, database: str, collection: str):
    def write(rows) -> None:
        coll = client_for(uri)[database][collection]
        insert_or_ignore(coll, ({"_id": r.kafka_id, **json.loads(r.value)} for r in rows))
    return write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="smoke_events")
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(rest)
        check_kafka(config)
        check_mongodb(config)
    except (InvalidConfigError, ServiceUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    spark = SparkSession.builder.appName("smoke-pipeline").getOrCreate()
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", config.kafka_bootstrap_servers)
        .option("subscribe", config.kafka_topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    records = raw.select(
        F.concat_ws(":", "topic", "partition", "offset").alias("kafka_id"),
        F.col("value").cast("string").alias("value"),
    )
    writer = _write_partition(config.mongodb_uri, config.mongodb_database, args.collection)
    query = (
        records.writeStream.queryName("smoke_to_mongodb")
        .foreachBatch(lambda df, _batch_id: df.foreachPartition(writer))
        .option("checkpointLocation", tempfile.mkdtemp(prefix="smoke-ckpt-"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    coll = client_for(config.mongodb_uri)[config.mongodb_database][args.collection]
    total = coll.count_documents({})
    print(f"smoke: {args.collection} holds {total} documents; first three:")
    for doc in coll.find().sort("_id", 1).limit(3):
        print("  ", json.dumps(doc, default=str))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
