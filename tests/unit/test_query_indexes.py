"""Every query the API sends, other than a read by _id, has an index declared for it (issue 21:
on MongoDB each endpoint's read is an index range; DESIGN.md §15). The API's reads are recorded
over an in-memory store, every endpoint with its defaults and with each filter, with the job's
documents marked complete (live_feed, user_activity, daily_metrics) and not (the collection
paths); the indexes are what the job's ensure_indexes / ensure_profile_indexes declare.

A shape needs an index whose first fields are equality fields of the shape (all of them, or some:
the rest are checked on what the range returns, as for one user's events with a type), followed
by its range or sort field; a sort's tie-breaker on _id may follow. Exempt: the collections of one
document per path, cohort week or variant (SMALL), which the API reads whole. On FerretDB (the
local stack) only _id is used whatever is declared."""
from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.settings import ApiConfig
from app.sinks.collections import ensure_indexes
from app.sinks.profiles import ensure_profile_indexes

KEY = "k" * 24
MARKERS = ({"_id": "activity", "complete": True, "feed_complete": True, "rank_complete": True,
            "events_complete": True}, {"_id": "daily_metrics", "complete": True},
           {"_id": "latest:sessions", "batch": {"batch_id": 1}})
START, END = "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"
PATHS = [
    "/v1/users/u1/personalization", "/v1/users/nobody/personalization",
    "/v1/activity", "/v1/activity?user_id=u1", "/v1/activity?event_type=view", "/v1/activity?country=DE",
    "/v1/activity?event_type=view&country=DE", f"/v1/activity?start={START}&end={END}",
    "/v1/activity?user_id=u1&event_type=view&country=DE",
    "/v1/users/segments", "/v1/users/segments?segment=browser", "/v1/users/segments?min_engagement=50",
    "/v1/users/segments?segment=browser&limit=500",
    "/v1/sessions/metrics", "/v1/sessions/metrics?segment=browser", "/v1/sessions/metrics?limit=12",
    "/v1/sessions/metrics?segment=browser&limit=12", f"/v1/sessions/metrics?start={START}&end={END}",
    "/v1/sessions/metrics?user_id=u1", "/v1/sessions/metrics?user_id=u1&segment=browser",
    "/v1/events/frequency", "/v1/events/frequency?event_type=view", "/v1/events/frequency?country=DE",
    "/v1/events/frequency?interval=day", f"/v1/events/frequency?start={START}&end={END}",
    "/v1/patterns", "/v1/patterns?segment=browser", "/v1/retention", "/v1/retention?cohort=2026-W01",
    "/v1/anomalies", "/v1/anomalies?metric=purchases", f"/v1/anomalies?end={END}", "/v1/funnel",
    "/v1/segments/distribution", "/v1/segments/distribution?segment=browser", "/v1/segments/distribution?hours=72",
    f"/v1/segments/distribution?start={START}&end={END}",
    "/v1/alerts", "/v1/alerts?user_id=u1", "/v1/alerts?alert_type=BOT", "/v1/alerts?severity=high",
    "/v1/alerts?alert_type=BOT&severity=high", "/v1/alerts?user_id=u1&severity=high",
    f"/v1/alerts?start={START}&end={END}",
    "/v1/trigger-executions", "/v1/trigger-executions?user_id=u1", "/v1/trigger-executions?trigger=cart_email",
    f"/v1/trigger-executions?start={START}&end={END}", "/v1/experiments", "/v1/experiments?experiment=x",
    "/v1/act-now", "/v1/act-now?hours=24", "/v1/health",
]


class _Cursor:
    def __init__(self, shape: dict):
        self.shape = shape

    def sort(self, key, direction=None):
        self.shape["sort"] = key if isinstance(key, list) else [(key, direction or 1)]
        return self

    def limit(self, n):
        return self

    def max_time_ms(self, ms):
        return self

    def close(self):
        pass

    def __iter__(self):
        return iter(())


class _Collection:
    def __init__(self, name: str, store: "_Store"):
        self.name, self.store = name, store

    def find(self, query=None, projection=None, sort=None, **kwargs):
        shape = {"collection": self.name, "filter": dict(query or {}), "sort": list(sort or [])}
        self.store.shapes.append(shape)
        return _Cursor(shape)

    def find_one(self, query=None, projection=None, sort=None, **kwargs):
        query = dict(query or {})
        self.find(query, projection, sort)
        if self.name == "stream_progress" and self.store.marked:
            return next((dict(m) for m in MARKERS if m["_id"] == query.get("_id")), None)
        return None

    def create_index(self, keys, **kwargs):
        self.store.indexes.setdefault(self.name, []).append([k for k, _ in keys])


class _Store:
    def __init__(self, marked: bool = False):
        self.marked, self.shapes, self.indexes = marked, [], {}

    def __getitem__(self, name):
        return _Collection(name, self)

    @property
    def admin(self):
        return self

    def command(self, *args, **kwargs):
        return {"ok": 1}


def _declared() -> dict:
    store = _Store()
    ensure_indexes(store)
    ensure_profile_indexes(store)
    return store.indexes


def _recorded(marked: bool) -> list[tuple[str, dict]]:
    """(path, shape) of every read the API sends for PATHS, the job's documents marked complete or not."""
    store, recorded = _Store(marked), []
    config = ApiConfig(api_key=KEY, mongodb_uri="mongodb://127.0.0.1:1/")
    with TestClient(create_app(config, _Client(store)), headers={"X-API-Key": KEY}) as client:
        for path in PATHS:
            response = client.get(path)
            assert response.status_code in (200, 404), (path, marked, response.text)
            recorded += [(path, shape) for shape in store.shapes[len(recorded):]]
    return recorded


def _shapes() -> list[dict]:
    return [shape for marked in (True, False) for _, shape in _recorded(marked)]


class _Client:
    """What create_app takes for a MongoClient: client[database] and admin.command."""

    def __init__(self, store: _Store):
        self.store = store

    def __getitem__(self, name):
        return self.store

    @property
    def admin(self):
        return self.store


SMALL = {"session_paths", "retention_cohorts", "experiment_results", "conversion_funnel"}


def _needs_index(shape: dict) -> bool:
    return shape["collection"] not in SMALL and bool(
        set(shape["filter"]) - {"_id"} or any(field != "_id" for field, _ in shape["sort"]))


def _covered(shape: dict, index: list[str]) -> bool:
    equal = {f for f, v in shape["filter"].items() if not isinstance(v, dict)}
    ranged = [f for f, v in shape["filter"].items() if isinstance(v, dict)]
    ordered = [f for f, _ in shape["sort"]]
    rest = list(dict.fromkeys(ranged + ordered))  # one range/sort field, then maybe _id
    if rest and rest[-1] == "_id" and len(rest) > 1:
        rest = rest[:-1]
    if len(rest) > 1:
        return False
    prefix = 0  # the index's leading equality fields
    while prefix < len(index) and index[prefix] in equal:
        prefix += 1
    if equal and prefix == 0:
        return False  # a range over every document, filtered after: what an index is for is missing
    return not rest or (prefix < len(index) and index[prefix] == rest[0])


def _key(shape: dict) -> str:
    kind = lambda v: "range" if isinstance(v, dict) else "eq"  # noqa: E731
    return f"{shape['collection']}: {sorted((f, kind(v)) for f, v in shape['filter'].items())} sort {shape['sort']}"


SHAPES = {_key(s): s for s in _shapes() if _needs_index(s)}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_every_query_shape_the_api_sends_has_an_index_declared_for_it(shape):
    declared = _declared().get(shape["collection"], [])
    assert any(_covered(shape, index) for index in declared), \
        f"no index on {shape['collection']} covers {_key(shape)}; declared: {declared}"


def test_the_recorded_shapes_cover_the_collection_paths():
    """The recording reaches the collection paths (the check above is not vacuous)."""
    collections = {s["collection"] for s in SHAPES.values()}
    assert {"enriched_events", "user_behavior_segments", "behavior_alerts", "trigger_executions",
            "user_profiles"} <= collections, collections


def test_while_the_job_keeps_its_documents_every_endpoint_reads_by_id_only():
    """FerretDB 1.24 (the local store) uses an index for _id equality alone: while the job keeps its
    _id-keyed documents (the markers), no endpoint sends another read, whatever the parameters:
    a new user's or an unknown id's personalization included, which read user_behavior_segments
    by user_id (a scan of it) before."""
    others = [(path, _key(shape)) for path, shape in _recorded(True) if _needs_index(shape)]
    assert others == []
