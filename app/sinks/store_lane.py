"""The store lane (DESIGN.md §16 "Acting does not wait for storing"): the job's MongoDB writes as
messages on a Kafka topic (STORE_TOPIC), materialized by a second query of the same application.

    query "sessions": ... state step ──> one Kafka write: act lane (segments, alerts, actions)
                                                        + store lane (every row the store needs)
                                     ──> the batch's aggregate inputs (closed sessions, counted
                                         events), from the driver, as a few more store messages
    query "store":    STORE_TOPIC ──> the run's messages, grouped by the sessions batch that sent
                                      them, each group written as before (app/sinks/collections.py
                                      write_outputs, app/sinks/exactly_once.py), oldest first
    query "activity": STORE_TOPIC ──> each user's newest events and sessions, one document per
                                      user (app/sinks/user_activity.py), on a slower trigger

So the sessions query never waits for MongoDB: a slow or absent store delays the store query
only, and its lag is that query's Kafka lag (in /status, `make status`, stream_progress).

Exactness (app/sinks/exactly_once.py 12): a store message carries the run (the sessions query's
id) and the batch id of the sessions batch that sent it. A replayed sessions batch sends its
messages again, the same, after the first ones and before any later batch's; every write of a
group is idempotent, so a group applied twice leaves what applying it once leaves, as a replayed
batch always did. The messages of one document share a key (its _id), so they stay in order in
one partition. The aggregate inputs are tagged with (sessions batch, chunk) and added once each,
as the per-batch sums always were; their messages share one key, so they come in that order.
A replayed store batch applies its groups again in the same order, and ends where they end.
Messages of another run (an earlier checkpoint on the same topic) are skipped.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession, functions as F

from app import rollups as R
from app.sessions.stateful import OUTPUT_SCHEMA, OutputRow
from app.sinks import collections as out
from app.sinks.exactly_once import apply_closed_sessions, apply_event_counts
from app.sinks.mongo import Store

log = logging.getLogger("behavior.store_lane")
STORE_QUERY = "store"
STORED_KINDS = ("event", "event_fix", "retract", "session", "quarantine", "profile", "alert", "action")
CLOSED, COUNTS = "closed", "counts"  # the aggregate inputs' kinds
END = "end"  # the last message of every sessions batch: the store query records it once stored
CLOSED_CHUNK, COUNTS_CHUNK = 500, 5000  # per message: well under Kafka's 1 MB message limit
CHUNKS_PER_BATCH = 10_000  # the tag of chunk c of sessions batch b: b * CHUNKS_PER_BATCH + c
MESSAGE_SCHEMA = f"src_run string, src_batch long, chunk int, {OUTPUT_SCHEMA}"
AGGREGATES_KEY = "aggregates"


def store_messages(rows: DataFrame, topic: str, run_id: str, batch_id: int) -> DataFrame:
    """The rows the store needs as (topic, key, value) messages: value = the row as JSON with its
    run and batch; key = the row's id (the document's _id), so one document's messages keep their order."""
    # the batch's own fields as a string prefix of the row's JSON, not as a long literal in the
    # struct (a new class compiled each batch: see of_source_batch)
    head = f'{{"src_run":{json.dumps(run_id)},"src_batch":{int(batch_id)},"chunk":null,'
    row = F.to_json(F.struct(*[F.col(name) for name in OutputRow._fields]), {"ignoreNullFields": "false"})
    return (rows.filter(F.col("kind").isin(*STORED_KINDS))
            .select(F.lit(topic).alias("topic"), F.col("id").alias("key"),
                    F.concat(F.lit(head), F.substring(row, 2, _REST)).alias("value")))


_REST = 2 ** 31 - 1  # a substring's length: to the end


def aggregate_messages(closed: list[dict], counts: list[tuple], run_id: str, batch_id: int) -> list[str]:
    """A sessions batch's closed-session figures and counted events -> message values, in chunks,
    then its end marker. Both lists are sorted first, so a replayed batch cuts the same chunks
    (a chunk's tag says which rows it added: exactly_once.py 12)."""
    closed = sorted(closed, key=lambda s: s["session_id"])
    counts = sorted((list(c) for c in counts), key=lambda c: (c[0], c[1] is not None, c[1] or "", c[2] is not None,
                                                              c[2] or ""))
    values = []
    for kind, items, size in ((CLOSED, closed, CLOSED_CHUNK), (COUNTS, counts, COUNTS_CHUNK)):
        for chunk, start in enumerate(range(0, len(items), size)):
            if chunk >= CHUNKS_PER_BATCH:
                raise ValueError(f"{len(items)} {kind} rows in one batch: more than {CHUNKS_PER_BATCH} chunks")
            values.append(json.dumps({"src_run": run_id, "src_batch": batch_id, "chunk": chunk, "kind": kind,
                                      "id": f"{batch_id}:{kind}:{chunk}", "doc": json.dumps(items[start:start + size])},
                                     separators=(",", ":")))
    values.append(json.dumps({"src_run": run_id, "src_batch": batch_id, "chunk": 0, "kind": END, "id": f"{batch_id}:end",
                              "doc": None}, separators=(",", ":")))
    return values


def publish_aggregates(spark: SparkSession, values: list[str], topic: str, producer: dict[str, str]) -> None:
    """The chunks in their order: one task (the producer keeps one request in flight, see
    pipeline.act_producer_options): a chunk is added only after the chunks before it (exactly_once.py
    3: a tag not newer than the stored one is skipped)."""
    if values:
        (spark.createDataFrame([(topic, AGGREGATES_KEY, v) for v in values], "topic string, key string, value string")
         .coalesce(1).write.format("kafka").options(**producer).save())


def store_source(spark: SparkSession, bootstrap: str, topic: str, client_options: dict[str, str],
                 max_offsets: int, fail_on_data_loss: bool) -> DataFrame:
    """STORE_TOPIC from its start (the query's checkpoint keeps its place), as MESSAGE_SCHEMA rows
    plus each message's place (kafka_partition, kafka_offset: a document's messages in order)."""
    return (spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", bootstrap).options(**client_options)
            .option("subscribe", topic).option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", max_offsets)
            .option("failOnDataLoss", str(fail_on_data_loss).lower())
            .load()
            .select(F.col("partition").alias("kafka_partition"), F.col("offset").alias("kafka_offset"),
                    F.from_json(F.col("value").cast("string"), MESSAGE_SCHEMA).alias("m"))
            .select("m.*", "kafka_partition", "kafka_offset"))


class StoreBatchWriter:
    """foreachBatch sink of the store query: the run's messages, one sessions batch at a time."""

    def __init__(self, store: Store, run_id, profile_rules_document: dict | None, experiments=None,
                 daily_complete: bool = False, months_complete: bool = False):
        self.store = store
        self.run_id = run_id  # () -> the sessions query's id (its checkpoint exists once it has run)
        self.profile_rules_document = profile_rules_document
        self.experiments = experiments
        self.daily_complete = daily_complete  # daily_metrics holds the run's every count (pipeline.DAILY_FILE)
        self.months_complete = months_complete  # and its month documents too (pipeline.MONTHS_FILE)
        self.marked = False

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if not self.marked:  # for the query API, which reads event_counts_hourly while it is not
            progress = self.store.db()[out.PROGRESS]
            self.store.retrying("stream_progress", lambda: progress.replace_one(
                {"_id": R.DAILY_STATUS_ID}, {"_id": R.DAILY_STATUS_ID, "complete": self.daily_complete,
                                          "months": self.months_complete}, upsert=True))
            self.marked = True
        run_id = self.run_id()
        mine = batch.filter(F.col("src_run") == run_id)
        mine.persist()
        try:
            sources = [r.src_batch for r in mine.select("src_batch").distinct().orderBy("src_batch").collect()]
            # every source batch's aggregates in one job (a job per source batch, and its sort, cost
            # each store batch a scheduling round per sessions batch it held); applied in the loop,
            # each after its source batch's documents, in (kind, chunk) order as before
            aggregates: dict = {}
            for a in mine.filter(F.col("kind").isin(CLOSED, COUNTS, END)).select("src_batch", "kind", "chunk",
                                                                                   "doc").collect():
                aggregates.setdefault(a.src_batch, []).append(a)
            writer = out.write_outputs(self.store.impatient(), self.profile_rules_document)
            for source in sources:
                self.write_documents(of_source_batch(mine, source).filter(F.col("kind").isin(*STORED_KINDS)), writer)
                for a in sorted(aggregates.get(source, []), key=lambda a: (a.kind, a.chunk)):
                    if a.kind == END:
                        self.stored(run_id, source)
                    else:
                        self.apply(run_id, source * CHUNKS_PER_BATCH + a.chunk, a.kind, json.loads(a.doc))
            if sources:
                log.info("[%s] batch %d: sessions batches %s..%s stored", STORE_QUERY, batch_id, sources[0], sources[-1])
        finally:
            mine.unpersist()

    def write_documents(self, rows: DataFrame, writer) -> None:
        """One group's documents, one task per partition. A task gives up on an unreachable store
        within seconds (Store.impatient): its executor slot is the sessions query's too, and the
        act lane must not wait for the store (DESIGN.md §16). The driver then waits for the store
        (MONGODB_RETRY_TIMEOUT, holding no slot) and writes the group again: every write is idempotent."""
        while True:
            try:
                rows.foreachPartition(writer)
                return
            except Exception as exc:  # noqa: BLE001 (Py4J/PySpark wrap the task's ConnectionFailure)
                if "ConnectionFailure" not in str(exc) and "unreachable" not in str(exc):
                    raise
                log.warning("[%s] the store went away during a write; waiting for it, then writing again", STORE_QUERY)
                self.store.wait_until_reachable("the store lane's writes")

    def apply(self, run_id: str, tag: int, kind: str, items: list) -> None:
        db = self.store.db
        if kind == CLOSED:
            self.store.retrying("aggregates", lambda: apply_closed_sessions(db(), run_id, tag, items, self.experiments))
        else:
            counts = [tuple(c) for c in items]
            self.store.retrying("event counts", lambda: apply_event_counts(db(), run_id, tag, counts))

    def stored(self, run_id: str, source: int) -> None:
        """Everything sessions batch `source` sent is in MongoDB (its end marker comes last)."""
        progress = self.store.db()[out.PROGRESS]
        self.store.retrying("stream_progress", lambda: progress.update_one(
            {"_id": f"stored:{run_id}"}, {"$max": {"src_batch": source}, "$set": {"stored_at": datetime.now(timezone.utc)}},
            upsert=True))


def of_source_batch(messages: DataFrame, source: int) -> DataFrame:
    """The messages sessions batch `source` sent. Compared as text: Spark writes a long literal
    into the generated code, so each source batch would compile a filter of its own (and churn
    the code cache, 100 classes, out of the classes every batch uses)."""
    return messages.filter(F.col("src_batch").cast("string") == str(source))


def caught_up(db) -> bool:
    """Whether the store query has stored everything the sessions query sent up to its latest
    recorded batch (stream_progress: the sessions batch's own record, and the store query's
    `stored:<run>` marker of the newest batch whose end marker it stored)."""
    progress = db[out.PROGRESS]
    last = (progress.find_one({"_id": out.latest_progress_id("sessions")}) or {}).get("batch") \
        or progress.find_one({"query": "sessions"}, sort=[("timestamp", -1)])
    if last is None:
        return False
    stored = progress.find_one({"_id": f"stored:{last['query_id']}"}) or {}
    return stored.get("src_batch", -1) >= last["batch_id"]
