"""The sessionization query on a file stream, run batch by batch to known points."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from pyspark.sql import functions as F

from app.config import DEFAULT_PROFILE_RULES_FILE, DEFAULT_RULES_FILE
from app.events.enrich import with_event_enrichment
from app.events.parse import parse_events
from app.pipeline import BATCH_METRICS, with_batch_metrics
from app.sessions import lean_arrow
from app.sessions.stateful import sessionize

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
GAP_S, WATERMARK_S = 30 * 60, 10 * 60
PROFILE_RULES = yaml.safe_load(DEFAULT_PROFILE_RULES_FILE.read_text())

def event(minutes: float, session: str | None, user: int = 1, kind: str = "view", price=None, eid=None) -> dict:
    ts = T0 + timedelta(minutes=minutes)
    doc = {"event_time": ts.strftime("%Y-%m-%d %H:%M:%S UTC"), "event_type": kind, "user_id": user,
           "product_id": 100 + int(minutes) % 7, "category_id": 5, "price": price,
           "event_id": eid or f"{session or user}-{minutes}"}
    if session:
        doc["user_session"] = session
    return doc


class SessionStream:
    """The real parse -> route -> sessionize chain over a directory of JSON-lines files."""

    def __init__(self, spark, tmp_path, max_s: float = 24 * 3600, rules: dict | None = None, name: str = "in",
                 lean: bool = False, profiles: bool = False, operator: str = "applyInPandasWithState"):
        self.dir, self.rows = tmp_path / name, []
        self.dir.mkdir(exist_ok=True)
        self.files = len(list(self.dir.iterdir()))  # a second run on the same input goes on numbering
        rules = rules or yaml.safe_load(DEFAULT_RULES_FILE.read_text())
        raw = (spark.readStream.option("maxFilesPerTrigger", 1).text(str(self.dir))
               .select(F.lit(None).cast("binary").alias("key"), F.col("value").cast("binary").alias("value"),
                       F.lit("t").alias("topic"), F.lit(0).alias("partition"), F.lit(0).cast("long").alias("offset"),
                       F.current_timestamp().alias("timestamp")))
        sessions = (raw.transform(parse_events())
                    .transform(with_event_enrichment)
                    .transform(sessionize(rules, GAP_S, max_s, WATERMARK_S, lean=lean,
                                          profile_rules_document=PROFILE_RULES if profiles else None,
                                          operator=operator))
                    .transform(with_batch_metrics))
        self.query = (sessions.writeStream.outputMode("update")
                      .foreachBatch(lambda df, batch_id: self.rows.extend(
                          dict(r.asDict(), batch_id=batch_id) for r in df.collect()))
                      .option("checkpointLocation", str(tmp_path / f"ckpt_{name}")).start())

    def send(self, *events: dict | str) -> None:
        self.files += 1
        lines = "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events)
        (self.dir / f"{self.files:04d}.json").write_text(lines)
        self.query.processAllAvailable()

    def sessions(self, session_id: str) -> list[dict]:
        return [json.loads(r["doc"]) for r in self.rows if r["kind"] == "session" and r["id"] == session_id]

    def all_sessions(self) -> list[dict]:
        return [json.loads(r["doc"]) for r in self.rows if r["kind"] == "session"]

    def events(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "event"]

    def state_rows(self) -> int:
        """State-store rows (users) after the last batch."""
        return sum(op["numRowsTotal"] for op in self.query.lastProgress["stateOperators"])

    def state_rows_updated(self) -> int:
        """State-store rows written by the last batch that read input (a no-data batch may follow it)."""
        progress = [p for p in self.query.recentProgress if p["numInputRows"] > 0][-1]
        return sum(op["numRowsUpdated"] for op in progress["stateOperators"])

    def metric(self, name: str) -> int:
        return sum(p["observedMetrics"][BATCH_METRICS][name]
                   for p in self.query.recentProgress if BATCH_METRICS in p.get("observedMetrics", {}))


@pytest.fixture
def stream(spark, tmp_path):
    harness = SessionStream(spark, tmp_path)
    try:
        yield harness
    finally:
        harness.query.stop()


def test_provisional_then_final(stream):
    stream.send(event(0, "A"), event(0.5, "A"), event(2, "A", kind="cart"))
    provisional = stream.sessions("A")
    assert [d["status"] for d in provisional] == ["active"]
    assert provisional[0]["behavior_segment"] == "browser" and provisional[0]["total_events"] == 3

    stream.send(event(1.5, "A"), event(75, "B"))  # B pushes the watermark to 65 min > A's end + 30 min
    docs = stream.sessions("A")
    assert docs[-1]["status"] == "closed"
    assert docs[-1]["total_events"] == 4 and docs[-1]["cart_count"] == 1
    assert [d["status"] for d in docs].count("closed") == 1
    assert [h["segment"] for h in docs[-1]["segment_history"]] == ["bouncer", "browser"]


def test_session_without_id_is_split_by_the_gap(stream):
    stream.send(event(0, None, user=7), event(1, None, user=7), event(45, None, user=7), event(46, None, user=7))
    stream.send(event(120, "X", user=99))  # advance the watermark past both sessions
    closed = [d for d in stream.all_sessions() if d["status"] == "closed" and d["user_id"] == "7"]
    assert sorted(d["total_events"] for d in closed) == [2, 2]
    assert len({d["_id"] for d in closed}) == 2
    by_event = {r["id"]: r["session_id"] for r in stream.events()}
    assert by_event["7-0"] == by_event["7-1"] != by_event["7-45"] == by_event["7-46"]


def test_runaway_session_is_force_closed_at_24_hours(stream):
    stream.send(*[event(m, "BOT", user=3) for m in range(0, 25 * 60, 20)])
    closed = [d for d in stream.sessions("BOT") if d["status"] == "closed"]
    assert len(closed) == 1
    assert closed[0]["session_duration_minutes"] < 24 * 60
    continuation = stream.sessions("BOT#2")
    assert continuation and continuation[-1]["user_session"] == "BOT"
    assert closed[0]["total_events"] + continuation[-1]["total_events"] == 75


def test_late_events_are_counted_and_still_emitted(stream):
    stream.send(event(0, "A"), event(60, "B"))       # watermark -> 50 min; A closes
    stream.send(event(1, "A", eid="late-A"), event(2, "C", eid="late-C"), event(61, "B"))
    late = {r["id"]: r for r in stream.events() if r["is_late"]}
    assert set(late) == {"late-A", "late-C"}
    assert late["late-C"]["session_id"] is None   # its session is gone: not sessionized
    assert late["late-C"]["doc"] is not None  # but still written to enriched_events
    assert stream.metric("late_events") == 2
    assert not stream.sessions("C")


def test_state_holds_one_entry_per_user_kept_for_the_retention_once_closed(stream):
    stream.send(event(0, "A", user=1), event(1, "B", user=1), event(2, None, user=5), event(3, None, user=6))
    assert stream.state_rows() == 3  # users 1, 5 and 6; user 1 has two sessions
    stream.send(event(50, "Z", user=9))  # closes A, B and users 5 and 6's sessions
    assert {d["status"] for s in ("A", "B") for d in stream.sessions(s)[-1:]} == {"closed"}
    # Every user keeps its entry SESSION_ID_RETENTION after its last event (generations, event ids,
    # cooldowns, the profile's epoch), with its sessions closed; user 9 has its open session.
    assert stream.state_rows() == 4


def test_a_batch_rewrites_only_the_users_it_touches(spark, tmp_path):
    stream = SessionStream(spark, tmp_path)
    try:
        stream.send(*[event(i % 20 / 10, f"S{i}", user=i) for i in range(10_000)])
        assert stream.state_rows() == 10_000
        stream.send(*[event(3, f"S{i}", user=i) for i in range(0, 100, 10)])  # 10 users of the 10,000
        assert stream.state_rows_updated() == 10
        assert stream.state_rows() == 10_000
        last = max(r["batch_id"] for r in stream.rows)
        assert len([r for r in stream.rows if r["kind"] == "session" and r["batch_id"] == last]) == 10
    finally:
        stream.query.stop()


def test_a_redelivered_event_counts_once_in_the_same_and_a_later_batch(stream):
    first = event(0, "D", eid="d1")
    stream.send(first, event(1, "D", eid="d2"), first)
    stream.send(event(2, "D", eid="d3"), event(1, "D", eid="d2"))
    assert stream.sessions("D")[-1]["total_events"] == 3
    assert stream.metric("duplicates") == 2
    assert sorted(r["id"] for r in stream.events()) == ["d1", "d2", "d3"]


def test_a_record_just_inside_the_future_limit_is_processed_and_never_quarantined(stream):
    now = datetime.now(timezone.utc)
    near = {"event_time": (now + timedelta(minutes=4, seconds=59)).isoformat(), "event_type": "view",
            "user_id": 42, "user_session": "F", "event_id": "near"}
    far = {**near, "event_time": (now + timedelta(minutes=5, seconds=30)).isoformat(), "event_id": "far"}
    stream.send(near, far, "not json")
    by_kind = {(r["kind"], r["id"].split(":")[0]) for r in stream.rows}
    assert ("event", "near") in by_kind and stream.sessions("F")
    quarantined = [json.loads(r["doc"]) for r in stream.rows if r["kind"] == "quarantine"]
    assert sorted(q["reasons"][0] for q in quarantined) == ["event_time_in_future", "invalid_json"]
    assert len(stream.rows) - len(stream.all_sessions()) == 3  # each record exactly once


RENAMED = {"rule_version": "segments-v2-renamed"}


def test_a_rules_file_renaming_a_segment_between_two_runs_on_one_checkpoint(spark, tmp_path):
    rules = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    first = SessionStream(spark, tmp_path, rules=rules)
    try:
        first.send(event(0, "R"), event(0.5, "R"))
        first.send(event(12, "X", user=7))    # the watermark passes R's events (2 min): they become final
        first.send(event(12.5, "X", user=7))  # ... under these rules
        assert first.sessions("R")[-1]["behavior_segment"] == "bouncer"
    finally:
        first.query.stop()
    renamed = {**rules, **RENAMED, "segments": [
        {**seg, "name": "one_pager"} if seg["name"] == "bouncer" else seg for seg in rules["segments"]]}
    second = SessionStream(spark, tmp_path, rules=renamed)
    try:
        second.send(event(90, "OTHER"))  # the watermark closes R, under the new rules
        [closed] = [d for d in second.sessions("R") if d["status"] == "closed"]
        assert closed["behavior_segment"] == "one_pager" and closed["rule_version"] == "segments-v2-renamed"
        assert [(h["segment"], h["rule_version"]) for h in closed["segment_history"]] == [
            ("bouncer", "segments-v1"), ("one_pager", "segments-v2-renamed")]
    finally:
        second.query.stop()


def test_the_lean_arrow_path_and_sparks_pandas_path_give_the_same_rows(spark, tmp_path):
    """app/sessions/lean_arrow.py (LEAN_ARROW=true) replaces pyspark's per-group pandas conversion:
    same input, same output as the stock path. It is written for one pyspark (SUPPORTED_PYSPARK, the
    pinned one): after a pyspark upgrade this fails with the InvalidConfigError the job would give,
    until lean_arrow.py is ported to the new worker (or dropped)."""
    assert lean_arrow.arrow_path(True).lean and not lean_arrow.arrow_path(False).lean
    batches = [
        [event(0, "A"), event(0.5, "A", kind="cart"), event(1, None, user=5), "not json", event(1, "A", eid="A-0")],
        [event(2, "B", user=2, kind="purchase", price=612.5), event(3, None, user=5)],
        [event(90, "C", user=3)],  # the watermark closes A, B and user 5's session: timed-out groups
    ]
    results = {}
    for lean in (True, False):
        harness = SessionStream(spark, tmp_path, name=f"lean_{lean}", lean=lean, profiles=True)
        try:
            for batch in batches:
                harness.send(*batch)
        finally:
            harness.query.stop()
        results[lean] = sorted((r["batch_id"], r["kind"], r["id"], _without_clock(r["doc"]), r["session_id"],
                                r["seconds_since_prev"], r["is_late"], r["status"], r["first_write"])
                               for r in harness.rows)
    assert results[True] == results[False]
    assert {"quarantine", "event", "duplicate", "session", "profile", "alert"} <= {row[1] for row in results[True]}
    [alert] = [json.loads(row[3]) for row in results[True] if row[1] == "alert"]
    assert (alert["alert_type"], alert["user_id"], alert["evidence"]["price"]) == ("HIGH_VALUE_PURCHASE", "2", 612.5)
    assert any(row[1] == "session" and row[7] == "closed" for row in results[True])


def test_transform_with_state_and_apply_in_pandas_with_state_give_the_same_rows(spark, tmp_path):
    """STATE_OPERATOR=transformWithState (app/sessions/tws.py) runs the same per-user step on
    Spark's timers: same input, same rows, batch by batch, including the groups whose timeout the
    watermark passed, a user whose entry leaves the store, and a session reopened after that."""
    bot = [event(4 + i / 1000, f"BOT{i % 50}", user=9, eid=f"bot-{i}") for i in range(3000)]
    batches = [
        [event(0, "A"), event(0.5, "A", kind="cart"), event(1, None, user=5), "not json", event(1, "A", eid="A-0")],
        [event(2, "B", user=2, kind="purchase", price=612.5), event(3, None, user=5), event(1.5, "A"), *bot[:2000]],
        # the bot's entry is read back: 2,000 pending events, 50 open sessions (a state value of
        # ~0.5 MB: pyspark 4.0.0 could read such a value partially, SPARK-53870)
        [*bot[2000:], event(90, "C", user=3)],  # the watermark closes A, B, the bot's and user 5's sessions
        [event(95, "C", user=3), event(96, None, user=5)],  # user 5 again, after its session closed
        [event(300, "D", user=4)],      # closes C and user 5's second session
    ]
    results = {}
    provider = "spark.sql.streaming.stateStore.providerClass"  # transformWithState needs RocksDB, as the job has
    spark.conf.set(provider, "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
    try:
        for operator in ("transformWithState", "applyInPandasWithState"):
            harness = SessionStream(spark, tmp_path, name=operator, profiles=True, operator=operator)
            try:
                for batch in batches:
                    harness.send(*batch)
            finally:
                harness.query.stop()
            results[operator] = sorted((r["batch_id"], r["kind"], r["id"], _without_clock(r["doc"]),
                                        r["session_id"], r["seconds_since_prev"], r["is_late"], r["status"],
                                        r["first_write"]) for r in harness.rows)
    finally:
        spark.conf.unset(provider)
    assert results["transformWithState"] == results["applyInPandasWithState"]
    closed = {row[2] for row in results["transformWithState"] if row[1] == "session" and row[7] == "closed"}
    assert {"A", "B", "C", "BOT0", "BOT49"} <= closed and len([s for s in closed if s.startswith("5-")]) == 2


def _without_clock(doc: str | None) -> str | None:
    """The harness stamps each file's records with the wall clock as their Kafka timestamp."""
    if doc is None:
        return None
    return json.dumps({k: v for k, v in json.loads(doc).items() if k != "kafka_timestamp_ms"}, sort_keys=True)
