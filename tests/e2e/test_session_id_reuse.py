"""A user_session that comes back after the user's state entry expired (SESSION_ID_RETENTION)
starts again at generation 1, so its first write meets the closed document of the old session:
the sink keeps that one under `archived_id`, on the real store (app/sinks/collections.py)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from app.sessions.tracker import archived_id
from app.sinks.collections import _write_session_rows

pytestmark = [pytest.mark.e2e, pytest.mark.full]

T0, DAY = 1_714_564_800_000, 86_400_000


def row(status: str, start_ms: int, events: int) -> SimpleNamespace:
    doc = {"_id": "S", "user_id": "u1", "user_session": "S", "status": status, "session_start": start_ms,
           "session_end": start_ms + 60_000, "total_events": events, "segment_history": []}
    return SimpleNamespace(doc=json.dumps(doc))


def test_a_reused_session_id_keeps_the_closed_document_under_its_archived_id(mongo, unique_name):
    coll = mongo[unique_name]["user_behavior_segments"]
    try:
        _write_session_rows(coll, [row("closed", T0, 3)], insert=True)
        _write_session_rows(coll, [row("closed", T0, 3)], insert=True)  # a replayed first write: its own
        assert coll.count_documents({}) == 1
        for _ in range(2):  # the reuse, and a replay of it
            _write_session_rows(coll, [row("active", T0 + 40 * DAY, 1)], insert=True)
            docs = {d["_id"]: d for d in coll.find()}
            assert set(docs) == {"S", archived_id("S", T0)}
            assert docs[archived_id("S", T0)]["total_events"] == 3 and docs[archived_id("S", T0)]["status"] == "closed"
            assert docs["S"]["total_events"] == 1 and docs["S"]["status"] == "active"
    finally:
        mongo.drop_database(unique_name)
