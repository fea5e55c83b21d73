"""The sessionization query on a file stream, run batch by batch to known points."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from pyspark.sql import functions as F

from app.config import DEFAULT_RULES_FILE
from app.events.enrich import with_event_enrichment
from app.events.parse import parse_events, valid_events
from app.pipeline import with_late_event_metrics
from app.sessions.stateful import sessionize

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
GAP_S, WATERMARK_S = 30 * 60, 10 * 60


def event(minutes: float, session: str | None, user: int = 1, kind: str = "view", price=None, eid=None) -> dict:
    ts = T0 + timedelta(minutes=minutes)
    doc = {"event_time": ts.strftime("%Y-%m-%d %H:%M:%S UTC"), "event_type": kind, "user_id": user,
           "product_id": 100 + int(minutes) % 7, "category_id": 5, "price": price,
           "event_id": eid or f"{session or user}-{minutes}"}
    if session:
        doc["user_session"] = session
    return doc


class SessionStream:
    """The real parse -> enrich -> sessionize chain over a directory of JSON-lines files."""

    def __init__(self, spark, tmp_path, max_s: float = 24 * 3600):
        self.dir, self.files, self.rows = tmp_path / "in", 0, []
        self.dir.mkdir()
        rules = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
        raw = (spark.readStream.option("maxFilesPerTrigger", 1).text(str(self.dir))
               .select(F.lit(None).cast("binary").alias("key"), F.col("value").cast("binary").alias("value"),
                       F.lit("t").alias("topic"), F.lit(0).alias("partition"), F.lit(0).cast("long").alias("offset"),
                       F.current_timestamp().alias("timestamp")))
        sessions = (valid_events(raw.transform(parse_events()))
                    .transform(with_event_enrichment)
                    .transform(sessionize(rules, GAP_S, max_s, WATERMARK_S))
                    .transform(with_late_event_metrics))
        self.query = (sessions.writeStream.outputMode("update")
                      .foreachBatch(lambda df, batch_id: self.rows.extend(
                          dict(r.asDict(), batch_id=batch_id) for r in df.collect()))
                      .option("checkpointLocation", str(tmp_path / "ckpt")).start())

    def send(self, *events: dict) -> None:
        self.files += 1
        (self.dir / f"{self.files:04d}.json").write_text("".join(json.dumps(e) + "\n" for e in events))
        self.query.processAllAvailable()

    def sessions(self, session_id: str) -> list[dict]:
        return [json.loads(r["session_doc"]) for r in self.rows if r["kind"] == "session" and r["session_id"] == session_id]

    def events(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "event"]

    def state_rows(self) -> int:
        return sum(op["numRowsTotal"] for op in self.query.lastProgress["stateOperators"])

    def late_metric(self) -> int:
        return sum(p["observedMetrics"]["late_events"]["late_events"]
                   for p in self.query.recentProgress if "late_events" in p.get("observedMetrics", {}))


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
    closed = [r for r in stream.rows if r["kind"] == "session" and r["status"] == "closed" and r["user_id"] == "7"]
    assert sorted(r["total_events"] for r in closed) == [2, 2]
    assert len({r["session_id"] for r in closed}) == 2
    by_event = {r["event_id"]: r["session_id"] for r in stream.events()}
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
    late = {r["event_id"]: r for r in stream.events() if r["is_late"]}
    assert set(late) == {"late-A", "late-C"}
    assert late["late-C"]["session_id"] is None   # its session is gone: not sessionized
    assert late["late-C"]["event_doc"] is not None  # but still written to enriched_events
    assert stream.late_metric() == 2
    assert not stream.sessions("C")


def test_state_shrinks_to_zero_after_every_session_closes(stream):
    stream.send(event(0, "A"), event(1, "B"), event(2, None, user=5))
    assert stream.state_rows() == 3  # state rows are hash buckets of sessions: these three differ
    stream.send(event(50, "Z"))  # closes A, B and user 5's session; tombstones remain for A and B
    assert {d["status"] for s in ("A", "B") for d in stream.sessions(s)[-1:]} == {"closed"}
    stream.send(event(60 * 26, "LAST"))  # past every tombstone (end + 24 h)
    stream.send(event(60 * 52, "LATER"))  # and past LAST's own
    assert stream.state_rows() == 1  # only LATER's open session is left
