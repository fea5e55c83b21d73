"""Wires the job: Kafka source -> parse/validate once -> per-user state -> sinks, as one query. I/O lives here."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, functions as F
from pyspark.sql.streaming import StreamingQuery

from app.actions.triggers import parse_trigger_rules
from app.config import APPLY_IN_PANDAS, AppConfig, InvalidConfigError
from app.events.enrich import with_event_enrichment
from app.events.parse import parse_events
from app.experiments.design import parse_experiments
from app.monitoring.progress import BATCH_METRICS
from app.profiles.rules import parse_profile_rules
from app.segments.rules import parse_rules, read_rules_document
from app.sessions.stateful import sessionize
from app.sinks import collections as out
from app.rollups import HOUR_MS
from app.sinks.exactly_once import closed_session_figures
from app.sinks.mongo import Store
from app.sinks.profiles import StoredProfiles, ensure_profile_indexes
from app.sinks.store_lane import (STORE_QUERY, StoreBatchWriter, aggregate_messages, publish_aggregates, store_messages,
                                  store_source)
from app.sinks.user_activity import ACTIVITY_QUERY, STATUS_ID as ACTIVITY_STATUS_ID, ActivityBatchWriter

log = logging.getLogger("behavior.sink")
QUERY_NAME = "sessions"


def build_spark(config: AppConfig, app_name: str = "behavior-segmentation") -> SparkSession:
    return (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        # one watermark per Kafka partition (event_time_source): the global one is their minimum
        .config("spark.sql.streaming.multipleWatermarkPolicy", "min")
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        # the generated classes every batch uses stay compiled (Spark's default keeps 100, fewer
        # than the job's queries use, so each batch compiled some of them again)
        .config("spark.sql.codegen.cache.maxEntries", str(CODEGEN_CACHE_ENTRIES))
        .getOrCreate()
    )


CODEGEN_CACHE_ENTRIES = 2000


def kafka_source(spark: SparkSession, config: AppConfig, partition: int | None = None) -> DataFrame:
    """The topic (or one partition of it: `assign`); MAX_OFFSETS_PER_TRIGGER applies per source."""
    reader = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", config.kafka_bootstrap_servers)
              .options(**config.kafka_client_options()))
    if partition is None:
        reader = reader.option("subscribe", config.kafka_topic)
    else:
        reader = reader.option("assign", json.dumps({config.kafka_topic: [partition]}))
    return (
        reader.option("startingOffsets", config.starting_offsets)
        .option("maxOffsetsPerTrigger", config.max_offsets_per_trigger)
        .option("failOnDataLoss", str(config.kafka_fail_on_data_loss).lower())
        .load()
    )


def topic_partitions(spark: SparkSession, config: AppConfig) -> list[int]:
    """The topic's partitions, asked of the broker at start-up with the job's own Kafka client
    settings (the Kafka client of Spark's connector, in the driver's JVM)."""
    jvm = spark.sparkContext._jvm
    admin = _admin(jvm, config)
    try:
        topics = jvm.java.util.Collections.singletonList(config.kafka_topic)
        seconds = jvm.java.util.concurrent.TimeUnit.SECONDS
        try:
            described = admin.describeTopics(topics).allTopicNames().get(60, seconds)
        except Exception as exc:  # py4j wraps the broker's answer (unknown topic, unreachable, refused)
            reason = str(exc).splitlines()[0][:300]
            raise InvalidConfigError(f"KAFKA_TOPIC={config.kafka_topic}: cannot list its partitions at "
                                     f"{config.kafka_bootstrap_servers} ({reason}); create the topic first "
                                     "(locally: make up)") from None
        return sorted(int(p.partition()) for p in described.get(config.kafka_topic).partitions())
    finally:
        admin.close()


def _admin(jvm, config: AppConfig):
    """A Kafka admin client in the driver's JVM, with the job's own client settings."""
    props = jvm.java.util.Properties()
    props.put("bootstrap.servers", config.kafka_bootstrap_servers)
    for key, value in config.kafka_client_options().items():
        props.put(key.removeprefix("kafka."), value)
    return jvm.org.apache.kafka.clients.admin.Admin.create(props)


def event_time_source(spark: SparkSession, config: AppConfig) -> DataFrame:
    """Routed records of every partition, each partition with a watermark of its own: Spark's
    global watermark is the minimum of them (spark.sql.streaming.multipleWatermarkPolicy=min), the
    progress of the partition furthest behind. So a capped catch-up that reads one partition
    ahead of another (MAX_OFFSETS_PER_TRIGGER splits offsets by backlog, not by event time) marks
    no event late that a live run would not (DESIGN §5). A partition added to the topic is read
    after a restart with a new checkpoint."""
    delay = f"{int(config.watermark_delay_s * 1000)} milliseconds"
    streams = [kafka_source(spark, config, partition).transform(parse_events()).transform(with_event_enrichment)
               .withWatermark("event_timestamp", delay) for partition in topic_partitions(spark, config)]
    return reduce(DataFrame.unionByName, streams)


@dataclass(frozen=True)
class RuleDocuments:
    """The rules files' documents, checked at start-up (a bad field stops the job, naming it), and
    shipped with the functions that parse them again in the Python workers. None: that part is off."""
    segments: dict
    profiles: dict | None = None
    triggers: dict | None = None
    experiments: dict | None = None


def load_rule_documents(config: AppConfig) -> RuleDocuments:
    """Each rules file read once and parsed: a bad one stops the job here, naming the field."""
    segments = read_rules_document(config.rules_file, "RULES_FILE")
    names = [segment.name for segment in parse_rules(segments, config.rules_file).segments]
    documents = RuleDocuments(segments)
    if config.profiles:
        profiles = read_rules_document(config.profile_rules_file, "PROFILE_RULES_FILE")
        parse_profile_rules(profiles, config.profile_rules_file)
        documents = replace(documents, profiles=profiles)
    if config.triggers:
        triggers = read_rules_document(config.trigger_rules_file, "TRIGGER_RULES_FILE")
        for trigger in parse_trigger_rules(triggers, config.trigger_rules_file).triggers:
            unknown = [name for name in trigger.segments if name not in names]
            if unknown:
                raise InvalidConfigError(f"TRIGGER_RULES_FILE {config.trigger_rules_file}: trigger {trigger.name}: "
                                         f"segments: unknown segment {unknown[0]!r} (RULES_FILE has: {', '.join(names)})")
            if trigger.needs_profile and not config.profiles:
                raise InvalidConfigError(f"TRIGGER_RULES_FILE {config.trigger_rules_file}: trigger {trigger.name} "
                                         "reads profile.* facts, which need PROFILES=true")
        documents = replace(documents, triggers=triggers)
    if config.experiments_file:
        experiments = read_rules_document(config.experiments_file, "EXPERIMENTS_FILE")
        parse_experiments(experiments, config.experiments_file, names)
        documents = replace(documents, experiments=experiments)
    return documents


def act_topics(config: AppConfig) -> dict[str, str]:
    """Output row kind -> the topic of the act lane its messages go to (DESIGN.md §16): every session
    write and retraction on SEGMENTS_TOPIC, alerts (with profiles on) and actions (with triggers on)."""
    topics = {"session": config.segments_topic, "retract": config.segments_topic}
    if config.profiles:
        topics["alert"] = config.alerts_topic
    if config.triggers:
        topics["action"] = config.actions_topic
    return topics


def act_producer_options(config: AppConfig) -> dict[str, str]:
    """The act lane's Kafka producer: at least once, with ids (a replayed batch sends its messages
    again; consumers deduplicate by alert_id / execution_id, and keep a session's latest message):
    acks=all, and the client's idempotence off. Its per-partition sequence state is what the topics
    do not need, and it can wedge: in the e2e suite Spark's cached producer once resent sequence 0
    to a partition at 25, the broker refused it with OutOfOrderSequenceException until the 120 s
    delivery timeout failed the batch. One request in flight per connection: without idempotence,
    a retried request could otherwise land after a later one, and a document's (or a session's)
    later message must stay later (the store lane applies them in partition order). A user's own
    --kafka-option / KAFKA_OPT_* wins."""
    return {"kafka.bootstrap.servers": config.kafka_bootstrap_servers, "kafka.acks": "all",
            "kafka.enable.idempotence": "false", "kafka.max.in.flight.requests.per.connection": "1",
            **config.kafka_client_options()}


def store_for(config: AppConfig) -> Store:
    return Store(config.mongodb_uri, config.mongodb_database, config.write_concern, config.mongodb_retry_timeout_s)


def _count(condition: Column) -> Column:
    return F.coalesce(F.sum(condition.cast("int")), F.lit(0))


def with_batch_metrics(rows: DataFrame) -> DataFrame:
    """Counts per micro-batch into the query's progress (observedMetrics "batch_metrics")."""
    kind, session = F.col("kind"), F.col("kind") == "session"
    return rows.observe(
        BATCH_METRICS,
        _count(kind == "event").alias("events"),
        _count(F.col("is_late")).alias("late_events"),
        _count((kind == "event") & F.col("session_id").isNull()).alias("late_unsessionized"),
        _count(kind == "duplicate").alias("duplicates"),
        _count(kind == "quarantine").alias("quarantined"),
        _count(session & F.col("first_write")).alias("sessions_opened"),
        _count(session & (F.col("status") == "closed")).alias("sessions_closed"),
        # provisional writes the final events changed: an event's session, a session not confirmed
        _count(kind == "event_fix").alias("events_corrected"),
        _count(kind == "retract").alias("sessions_retracted"),
    )


def counted_events(rows: DataFrame) -> DataFrame:
    """The batch's counted events (in a session: no duplicate, no late copy of a closed session's
    event) per hour of event time x event_type x country, for event_counts_hourly."""
    event = F.from_json("doc", "event_ms long, event_type string, country string")
    is_counted = (F.col("kind") == "event") & F.col("session_id").isNotNull()
    return (
        rows.filter(is_counted)
        .select(event.alias("e"))
        .groupBy((F.col("e.event_ms") - F.col("e.event_ms") % HOUR_MS).alias("hour_ms"),
                 F.col("e.event_type").alias("event_type"), F.col("e.country").alias("country"))
        .count()
    )


def aggregate_inputs(rows: DataFrame) -> tuple[int, list[dict], list[tuple]]:
    """The batch's row count, its closed-session figures and its counted events (hour x type x
    country), in one Spark job: a job per answer cost each batch a scheduling round of its own.
    Unordered: aggregate_messages sorts both lists, so the float sums come out bit-identical however
    the rows were partitioned."""
    def part(number: int, df: DataFrame) -> DataFrame:  # df's columns of _PART_COLUMNS, null for the others
        return df.select(F.lit(number).alias("part"), *[(F.col(c) if c in df.columns else F.lit(None).cast(t)).alias(c)
                                                        for c, t in _PART_COLUMNS])
    closed = rows.filter((F.col("kind") == "session") & (F.col("status") == "closed"))
    both = (part(0, closed).unionByName(part(1, counted_events(rows)))
            .unionByName(part(2, rows.groupBy().count())))
    total, closed_rows, counts = 0, [], []
    for r in both.collect():
        if r.part == 0:
            closed_rows.append(closed_session_figures(json.loads(r.doc)))
        elif r.part == 1:
            counts.append((r.hour_ms, r.event_type, r.country, r["count"]))
        else:
            total = r["count"]
    return total, closed_rows, counts


_PART_COLUMNS = (("doc", "string"), ("hour_ms", "long"), ("event_type", "string"), ("country", "string"),
                 ("count", "long"))


class SessionBatchWriter:
    """foreachBatch sink of the sessions query: the act lane and the store lane, both on Kafka, so
    the batch never waits for MongoDB (DESIGN.md §16); the store query (app/sinks/store_lane.py)
    materializes the collections from the store lane."""

    def __init__(self, checkpoint: str, topics: dict[str, str], producer: dict[str, str], store_topic: str):
        self.checkpoint = checkpoint
        self.topics = topics  # row kind -> its act-lane topic: see act_topics
        self.producer = producer  # the Kafka writer's options: see act_producer_options
        self.store_topic = store_topic  # the store lane (app/sinks/store_lane.py)

    def run_id(self) -> str:
        return run_id_of(self.checkpoint)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        timer = _StepTimer()
        batch.persist()
        try:
            run_id = self.run_id()
            messages = store_messages(batch, self.store_topic, run_id, batch_id)
            act = self.act_messages(batch)
            if act is not None:  # first in the union: the act lane's tasks run first
                messages = act.unionByName(messages)
            # the batch's first action: runs the read, parse and state steps once (the cache keeps
            # the rows for the steps after), and each state partition's messages go out as soon as
            # that partition is done, not after a separate job over all of them (DESIGN.md §16)
            messages.write.format("kafka").options(**self.producer).save()  # both lanes, one Kafka write
            timer.step("read+parse+state+lanes")
            rows, closed, counts = aggregate_inputs(batch)
            publish_aggregates(batch.sparkSession, aggregate_messages(closed, counts, run_id, batch_id),
                               self.store_topic, self.producer)
            timer.step("aggregate inputs")
            if rows == 0:
                return
            log.info("[%s] batch %d steps: %s (%d output rows)", QUERY_NAME, batch_id, timer, rows)
        finally:
            batch.unpersist()

    def act_messages(self, batch: DataFrame) -> DataFrame | None:
        """The batch's act-lane messages (session writes and retractions, alerts, actions), keyed by
        user_id. A replayed batch sends them again, the same: alerts and actions carry their
        alert_id / execution_id, a session's latest message is its state (README "The act lane")."""
        if not self.topics:
            return None
        kind = F.col("kind")
        topic = F.lit(None).cast("string")
        for name, target in self.topics.items():
            topic = F.when(kind == name, F.lit(target)).otherwise(topic)
        return (batch.filter(kind.isin(*self.topics))
                .select(topic.alias("topic"), F.get_json_object("doc", "$.user_id").alias("key"),
                        F.col("doc").alias("value")))


def run_id_of(checkpoint: str) -> str:
    """The sessions query's id: it lives in its checkpoint, stable across restarts, new for a new
    checkpoint; the aggregates are tagged with it."""
    return json.loads(Path(checkpoint, "metadata").read_text())["id"]


class _StepTimer:
    """Wall time per step of a batch, for the log: where a slow batch spends its time."""

    def __init__(self):
        self.last, self.steps = time.perf_counter(), []

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.steps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.steps)


V1_LAYOUT = "quarantine"  # the v1 job's second query: its checkpoint holds sessions in hash buckets


LAYOUT_FILE = "layout"  # in CHECKPOINT_DIR: which state layout and sources the checkpoint holds
OPERATOR_FILE = "state_operator"  # in CHECKPOINT_DIR: the STATE_OPERATOR its state was written by
# in CHECKPOINT_DIR: its state keeps what an expired user's entry stored of the profile (tracker.py
# `left`) since its first batch, so the state step never reads user_profiles
LEFT_FILE = "profiles_left"
# in CHECKPOINT_DIR: its sessions query has sent its MongoDB writes to the store lane since this
# batch (an earlier one wrote them itself, with its sums tagged by the batch id alone)
STORE_LANE_FILE = "store_lane_from"
# in CHECKPOINT_DIR: the activity query has seen everything the checkpoint's sessions query sent
# (USER_ACTIVITY was on from its first batch; else some users' history is only in the collections)
ACTIVITY_FILE = "activity_complete"
# in CHECKPOINT_DIR: the same for live_feed (the activity query has filed every alert and action:
# a checkpoint from before live_feed has skipped them)
FEED_FILE = "live_feed_complete"
# in CHECKPOINT_DIR: the same for the leaderboard (every profile row's rank filed: a checkpoint
# from before it has filed none)
RANK_FILE = "leaderboard_complete"
# in CHECKPOINT_DIR: the same for live_feed's events (every event and correction filed: a
# checkpoint from before them has filed none)
EVENTS_FILE = "event_feed_complete"
# in CHECKPOINT_DIR: the store query has counted every batch of its run into daily_metrics (a
# checkpoint from before it has counted the earlier ones into event_counts_hourly only)
DAILY_FILE = "daily_metrics_complete"
# in CHECKPOINT_DIR: the same for daily_metrics' month documents (app/rollups.py: a checkpoint from
# before them has added the earlier batches to the day documents only)
MONTHS_FILE = "monthly_metrics_complete"
LAYOUT = "3: per-user state with events pending until final; one Kafka source per partition"


def check_checkpoint(config: AppConfig) -> None:
    """Called by the job's main() at start-up, before Spark starts: a checkpoint of an earlier
    layout is refused with one line; a new one is marked with this layout."""
    if Path(config.checkpoint_dir, V1_LAYOUT).is_dir():
        raise InvalidConfigError(
            f"CHECKPOINT_DIR={config.checkpoint_dir} holds a v1 checkpoint (sessions in hash buckets); the "
            "per-user state needs a new checkpoint and a fresh database (make reset, or another CHECKPOINT_DIR "
            "and MONGODB_DATABASE)")
    marker, query = Path(config.checkpoint_dir, LAYOUT_FILE), Path(config.checkpoint_dir, QUERY_NAME)
    if query.is_dir() and any(query.iterdir()):
        found = marker.read_text().strip() if marker.is_file() else "2: per-user state, one Kafka source"
        if found != LAYOUT:
            raise InvalidConfigError(
                f"CHECKPOINT_DIR={config.checkpoint_dir} holds a checkpoint of layout {found.split(':')[0]} and this "
                f"job needs layout {LAYOUT.split(':')[0]} (events wait in the state until final, one source per "
                "partition): start with a new CHECKPOINT_DIR and --reset-output (locally: make reset)")
        # the two operators keep their state in different forms: a checkpoint goes on with its own
        # (one from before STATE_OPERATOR existed holds applyInPandasWithState's)
        operator = Path(config.checkpoint_dir, OPERATOR_FILE)
        found = operator.read_text().strip() if operator.is_file() else APPLY_IN_PANDAS
        if found != config.state_operator:
            raise InvalidConfigError(
                f"CHECKPOINT_DIR={config.checkpoint_dir} holds the per-user state of STATE_OPERATOR={found}, not of "
                f"{config.state_operator}: set STATE_OPERATOR={found}, or start with a new CHECKPOINT_DIR and "
                "--reset-output (locally: make reset)")
        _check_store_lane(config, query)
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(LAYOUT + "\n")
    Path(config.checkpoint_dir, OPERATOR_FILE).write_text(config.state_operator + "\n")
    Path(config.checkpoint_dir, LEFT_FILE).write_text("the state keeps an expired user's profile\n")
    Path(config.checkpoint_dir, STORE_LANE_FILE).write_text("0\n")
    Path(config.checkpoint_dir, DAILY_FILE).write_text("daily_metrics holds every counted event and closed session\n")
    Path(config.checkpoint_dir, MONTHS_FILE).write_text("daily_metrics' month documents hold them too\n")
    if config.user_activity:  # turned on later, it starts where the store lane's retention lets it
        Path(config.checkpoint_dir, ACTIVITY_FILE).write_text("user_activity holds every user's newest events\n")
        Path(config.checkpoint_dir, FEED_FILE).write_text("live_feed holds every alert and execution\n")
        Path(config.checkpoint_dir, RANK_FILE).write_text("live_feed ranks every user with a profile\n")
        Path(config.checkpoint_dir, EVENTS_FILE).write_text("live_feed holds every hour's newest events\n")


def _check_store_lane(config: AppConfig, query: Path) -> None:
    """A checkpoint the sessions query wrote MongoDB from itself goes on with the store lane only
    from a committed batch: a batch it would replay may have added its sums under the old tags."""
    lane = Path(config.checkpoint_dir, STORE_LANE_FILE)
    if lane.is_file():
        return
    planned, committed = _last_batch(query / "offsets"), _last_batch(query / "commits")
    if planned is not None and planned != committed:
        raise InvalidConfigError(
            f"CHECKPOINT_DIR={config.checkpoint_dir}: batch {planned} was planned by the previous version of the job and "
            "not committed; run that version once more to finish it (or start with a new CHECKPOINT_DIR and "
            "--reset-output, locally: make reset), then this one")
    lane.write_text(f"{(planned if planned is not None else -1) + 1}\n")


def _last_batch(log_dir: Path) -> int | None:
    ids = [int(p.name) for p in log_dir.iterdir() if p.name.isdigit()] if log_dir.is_dir() else []
    return max(ids, default=None)


def reads_stored_profiles(config: AppConfig) -> bool:
    """Whether the state step must read user_profiles when a user without an entry comes: only for
    a checkpoint started before expired entries left their profile in the state (users who left
    then have only the stored document)."""
    return config.profiles and not Path(config.checkpoint_dir, LEFT_FILE).is_file()


def check_outputs(config: AppConfig, store: Store) -> None:
    """Called by main() at start-up: a new checkpoint would add its sums to another run's
    aggregates, so it is refused against a database that holds them, unless --reset-output."""
    metadata = Path(config.checkpoint_dir, QUERY_NAME, "metadata")
    run_id = json.loads(metadata.read_text())["id"] if metadata.is_file() else None
    db = store.db()
    if config.reset_output:
        if run_id is not None:
            raise InvalidConfigError(
                f"--reset-output drops what the checkpoint in CHECKPOINT_DIR={config.checkpoint_dir} says is "
                "written: delete that checkpoint too (make reset), or run without --reset-output")
        for name in out.OUTPUTS:
            db.drop_collection(name)
        log.info("--reset-output: dropped %s in %s", ", ".join(out.OUTPUTS), config.mongodb_database)
        return
    others = {r for name in out.AGGREGATES for r in db[name].distinct("run_id")} - {run_id, None}
    if others:
        owner = "a new checkpoint" if run_id is None else f"the checkpoint's run {run_id}"
        raise InvalidConfigError(
            f"MONGODB_DATABASE={config.mongodb_database} holds the aggregates of another run "
            f"({', '.join(sorted(others))}) and {owner} would add to them: pass --reset-output to drop "
            "the job's outputs, or use another MONGODB_DATABASE (or that run's CHECKPOINT_DIR)")


def start_queries(spark: SparkSession, config: AppConfig) -> list[StreamingQuery]:
    rules = load_rule_documents(config)  # fails at start-up, naming the field, before anything runs
    store = store_for(config)
    store.retrying("indexes", lambda: out.ensure_indexes(store.db()))
    if config.profiles:
        store.retrying("indexes", lambda: ensure_profile_indexes(store.db()))

    rows = (
        event_time_source(spark, config)
        .transform(sessionize(rules.segments, config.session_gap_s, config.session_max_s,
                              config.watermark_delay_s, config.session_id_retention_s,
                              profile_rules_document=rules.profiles,
                              stored_profile=StoredProfiles(store) if reads_stored_profiles(config) else None,
                              trigger_rules_document=rules.triggers, experiments_document=rules.experiments,
                              max_open_sessions=config.max_open_sessions, watermarked=True,
                              lean=config.lean_arrow, operator=config.state_operator))
        .transform(with_batch_metrics)
    )
    checkpoint = str(Path(config.checkpoint_dir, QUERY_NAME))
    writer = (rows.writeStream.queryName(QUERY_NAME).outputMode("update")
              .foreachBatch(SessionBatchWriter(checkpoint, act_topics(config), act_producer_options(config),
                                               config.store_lane_topic)))
    ensure_store_topic(spark, config)  # before the sessions query's first write could auto-create it
    sessions = _start(writer, checkpoint, config)
    store_query = start_store_query(spark, config, store, rules, checkpoint)
    if not config.user_activity:  # the API must not read documents nobody keeps now (user_activity.STATUS_ID)
        store.retrying(out.PROGRESS, lambda: store.db()[out.PROGRESS].delete_one({"_id": ACTIVITY_STATUS_ID}))
        return [sessions, store_query]
    activity_query = start_activity_query(spark, config, store, checkpoint, rules.profiles)
    return [sessions, store_query, activity_query]


STORE_MAX_OFFSETS = 100_000  # store-lane messages per store batch: a catch-up after an outage in steps


def start_store_query(spark: SparkSession, config: AppConfig, store: Store, rules: RuleDocuments,
                      sessions_checkpoint: str) -> StreamingQuery:
    """The store query: STORE_TOPIC into MongoDB (app/sinks/store_lane.py). It runs on a processing-
    time trigger even with --available-now: main() drains it once the sessions query has ended."""
    experiments = None if rules.experiments is None else parse_experiments(rules.experiments)
    messages = store_source(spark, config.kafka_bootstrap_servers, config.store_lane_topic,
                            config.kafka_client_options(), STORE_MAX_OFFSETS, config.kafka_fail_on_data_loss)
    checkpoint = str(Path(config.checkpoint_dir, STORE_QUERY))
    writer = (messages.writeStream.queryName(STORE_QUERY)
              .foreachBatch(StoreBatchWriter(store, lambda: run_id_of(sessions_checkpoint), rules.profiles,
                                             experiments, Path(config.checkpoint_dir, DAILY_FILE).is_file(),
                                             Path(config.checkpoint_dir, MONTHS_FILE).is_file()))
              .option("checkpointLocation", checkpoint)
              .trigger(processingTime=f"{int(config.trigger_interval_s * 1000)} milliseconds"))
    return writer.start()


ACTIVITY_MAX_OFFSETS = 50_000  # store-lane messages per activity batch: its rows are merged in the driver


def start_activity_query(spark: SparkSession, config: AppConfig, store: Store,
                         sessions_checkpoint: str, profile_rules: dict | None = None) -> StreamingQuery:
    """The activity query: STORE_TOPIC into user_activity (app/sinks/user_activity.py), every
    ACTIVITY_INTERVAL; main() drains it after the store query with --available-now."""
    messages = store_source(spark, config.kafka_bootstrap_servers, config.store_lane_topic,
                            config.kafka_client_options(), ACTIVITY_MAX_OFFSETS, config.kafka_fail_on_data_loss)
    checkpoint = str(Path(config.checkpoint_dir, ACTIVITY_QUERY))
    writer = (messages.writeStream.queryName(ACTIVITY_QUERY)
              .foreachBatch(ActivityBatchWriter(store, lambda: run_id_of(sessions_checkpoint),
                                                complete=Path(config.checkpoint_dir, ACTIVITY_FILE).is_file(),
                                                feed_complete=Path(config.checkpoint_dir, FEED_FILE).is_file(),
                                                rank_complete=Path(config.checkpoint_dir, RANK_FILE).is_file(),
                                                events_complete=Path(config.checkpoint_dir, EVENTS_FILE).is_file(),
                                                profile_rules=profile_rules))
              .option("checkpointLocation", checkpoint)
              .trigger(processingTime=f"{int(config.activity_interval_s * 1000)} milliseconds"))
    return writer.start()


def ensure_store_topic(spark: SparkSession, config: AppConfig) -> None:
    """Creates STORE_TOPIC with the input topic's partitions when it does not exist (the chart
    creates it beforehand; a broker that refuses is named in one line)."""
    jvm = spark.sparkContext._jvm
    admin = _admin(jvm, config)
    try:
        seconds = jvm.java.util.concurrent.TimeUnit.SECONDS
        names = admin.listTopics().names().get(60, seconds)
        if names.contains(config.store_lane_topic):
            return
        partitions = len(topic_partitions(spark, config))
        optional = jvm.java.util.Optional
        topic = jvm.org.apache.kafka.clients.admin.NewTopic(config.store_lane_topic, optional.of(partitions),
                                                            optional.empty())
        try:
            admin.createTopics(jvm.java.util.Collections.singletonList(topic)).all().get(60, seconds)
        except Exception as exc:  # noqa: BLE001 (py4j wraps the broker's answer)
            if "TopicExistsException" in str(exc):
                return
            reason = str(exc).splitlines()[0][:300]
            raise InvalidConfigError(f"STORE_TOPIC={config.store_lane_topic}: does not exist and cannot be created "
                                     f"at {config.kafka_bootstrap_servers} ({reason}); create it (the chart's "
                                     "kafka-init does) or set STORE_TOPIC") from None
    finally:
        admin.close()


def _start(writer, checkpoint: str, config: AppConfig) -> StreamingQuery:
    writer = writer.option("checkpointLocation", checkpoint)
    if config.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{int(config.trigger_interval_s * 1000)} milliseconds")
    return writer.start()
