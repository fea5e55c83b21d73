"""The store lane's pieces that need no Spark (app/sinks/store_lane.py): the aggregate inputs in
chunks, tagged so that a sessions batch's chunks are added once each and in order."""
from __future__ import annotations

import json

import pytest

from app.sinks import store_lane as S


def _closed(n: int) -> list[dict]:
    return [{"session_id": f"s{i:05d}", "behavior_segment": "browser", "total_amount": 0.1 * i} for i in range(n)]


def test_aggregate_inputs_travel_in_bounded_chunks_that_add_up_to_the_batch():
    closed, counts = _closed(1201), [(3_600_000 * h, "view", "PL", h) for h in range(5001)]
    values = [json.loads(v) for v in S.aggregate_messages(closed, counts, "run", 7)]
    kinds = [(v["kind"], v["chunk"]) for v in values]
    assert kinds == [("closed", 0), ("closed", 1), ("closed", 2), ("counts", 0), ("counts", 1), ("end", 0)]
    assert [c for v in values if v["kind"] == "closed" for c in json.loads(v["doc"])] == closed
    assert [tuple(c) for v in values if v["kind"] == "counts" for c in json.loads(v["doc"])] == counts
    assert all(len(v) < 1_000_000 for v in S.aggregate_messages(closed, counts, "run", 7))  # Kafka's default limit
    assert {(v["src_run"], v["src_batch"]) for v in values} == {("run", 7)}
    # the same batch gives the same messages (a replayed sessions batch sends them again, the same)
    assert S.aggregate_messages(closed, counts, "run", 7) == S.aggregate_messages(closed, counts, "run", 7)
    assert [json.loads(v)["kind"] for v in S.aggregate_messages([], [], "run", 7)] == ["end"]  # every batch ends


def test_a_replayed_batch_cuts_the_same_chunks_whatever_order_spark_collected_them_in():
    closed = _closed(1200)
    counts = [(3_600_000 * (h // 4), "view" if h % 2 else "cart", None if (h // 2) % 2 else "PL", h) for h in range(12000)]
    assert len({c[:3] for c in counts}) == len(counts)  # one row per (hour, type, country), as groupBy gives
    first = S.aggregate_messages(closed, counts, "run", 3)
    assert S.aggregate_messages(closed[::-1], counts[::-1], "run", 3) == first


def test_chunk_tags_order_like_the_batches_they_came_from(monkeypatch):
    tags = [b * S.CHUNKS_PER_BATCH + c for b in (5, 6) for c in range(3)]
    assert tags == sorted(tags) and 5 * S.CHUNKS_PER_BATCH + S.CHUNKS_PER_BATCH - 1 < 6 * S.CHUNKS_PER_BATCH
    monkeypatch.setattr(S, "CHUNKS_PER_BATCH", 2)  # more chunks than a tag can tell apart: refused
    with pytest.raises(ValueError, match="chunks"):
        S.aggregate_messages([], [(0, "view", "PL", 1)] * (S.COUNTS_CHUNK * 2 + 1), "run", 1)
