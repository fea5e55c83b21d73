"""On a real MongoDB, every query shape the API sends (tests/unit/test_query_indexes.py records
them) is planned as an index scan, never a collection scan, over the indexes the job declares.

Runs only where a MongoDB is given: `make test-mongodb MONGODB_EXPLAIN_URI=mongodb://...` (a
throwaway database `behavior_explain_<random>` is created and dropped). The default test
commands do not collect this directory (tests/conftest.py), since the machines they run on have
FerretDB only, whose planner answers differently (it uses an index for _id equality alone)."""
from __future__ import annotations

import os
import secrets
from datetime import datetime, timedelta, timezone

import pytest
from pymongo import MongoClient

from app.sinks.collections import ensure_indexes
from app.sinks.profiles import ensure_profile_indexes
from tests.unit.test_query_indexes import SHAPES

T0 = datetime(2026, 1, 2, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def db():
    uri = os.environ.get("MONGODB_EXPLAIN_URI")
    assert uri, "set MONGODB_EXPLAIN_URI to a MongoDB (make test-mongodb)"
    client = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    version = client.server_info()["version"]
    assert "ferretdb" not in str(client.admin.command("buildInfo")).lower(), "FerretDB's planner is not MongoDB's"
    database = client[f"behavior_explain_{secrets.token_hex(4)}"]
    ensure_indexes(database)
    ensure_profile_indexes(database)
    for name in {s["collection"] for s in SHAPES.values()}:  # a few documents, so that the planner has work
        database[name].insert_many([_document(i) for i in range(200)])
    print(f"MongoDB {version}: {len(SHAPES)} shapes")
    try:
        yield database
    finally:
        client.drop_database(database.name)
        client.close()


def _document(i: int) -> dict:
    when = T0 + timedelta(minutes=i)
    return {"user_id": f"u{i % 7}", "event_type": ("view", "cart")[i % 2], "country": ("DE", "FR", "PL")[i % 3],
            "event_timestamp": when, "first_event_time": when, "event_time": when, "session_end": when,
            "window_start": when, "hour": when, "timestamp": when, "severity": ("low", "high")[i % 2],
            "alert_type": ("BOT", "FRAUD")[i % 2], "trigger": "cart_email", "status": ("active", "closed")[i % 2],
            "behavior_segment": ("browser", "bouncer")[i % 2], "last_segment": ("browser", "bouncer")[i % 2],
            "engagement_score": i % 100, "query": "sessions"}


def _stages(plan: dict) -> list[str]:
    found = [plan.get("stage")]
    for key in ("inputStage", "inputStages", "queryPlan"):
        value = plan.get(key)
        for child in (value if isinstance(value, list) else [value] if isinstance(value, dict) else []):
            found += _stages(child)
    return [s for s in found if s]


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_each_query_shape_is_an_index_scan_on_mongodb(db, shape):
    cursor = db[shape["collection"]].find(shape["filter"])
    if shape["sort"]:
        cursor = cursor.sort(shape["sort"])
    plan = cursor.limit(100).explain()["queryPlanner"]["winningPlan"]
    stages = _stages(plan)
    assert "COLLSCAN" not in stages and "IXSCAN" in stages, f"{shape}: {stages}"
