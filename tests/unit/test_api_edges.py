"""The API's exposed surfaces fail closed (DESIGN.md §16, issue 20): the key at start-up and at the
edge, probes and errors that reveal nothing, CORS preflight, the dashboard's key handling, /docs
offline, extreme dates, bounded reads with maxTimeMS on every query, the access log."""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import time
import sys
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from pymongo.errors import ExecutionTimeout

from app.api import bounds, queries as Q
from app.api.app import STATIC, SWAGGER_UI, _job_status, create_app
from app.api.settings import ApiConfig, api_config
from app.config import InvalidConfigError
from app.monitoring.health import Health, HealthServer
from tests.conftest import ROOT

KEY = "k" * 24
SECRET_URI = "mongodb://reader:pw@127.0.0.1:1/?replicaSet=rs0&tlsCertificateKeyFilePassword=hunter2"
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


# ---- a store in memory: enough of pymongo's find for app/api/queries.py, recording maxTimeMS ----
def _matches(doc: dict, query: dict) -> bool:
    for field, want in query.items():
        value = doc.get(field)
        if isinstance(want, dict):
            if "$gte" in want and not (value is not None and value >= want["$gte"]):
                return False
            if "$lt" in want and not (value is not None and value < want["$lt"]):
                return False
        elif value != want:
            return False
    return True


class FakeCursor:
    def __init__(self, docs, query: dict):
        self.docs, self.query = docs, query

    def sort(self, key, direction=None):
        keys = key if isinstance(key, list) else [(key, direction)]
        for name, way in reversed(keys):
            self.docs.sort(key=lambda d: d.get(name), reverse=way < 0)
        return self

    def limit(self, n):
        self.docs = self.docs[:n]
        return self

    def max_time_ms(self, ms):
        self.query["max_time_ms"] = ms
        return self

    def __iter__(self):
        return iter([dict(d) for d in self.docs])


class FakeCollection:
    def __init__(self, docs, calls):
        self.docs, self.calls = docs, calls

    def find(self, query=None, projection=None, sort=None):
        self.calls.append({"max_time_ms": None})
        return self._cursor(query, sort, self.calls[-1])

    def find_one(self, query=None, projection=None, sort=None, max_time_ms=None):
        self.calls.append({"max_time_ms": max_time_ms})
        return next(iter(self._cursor(query, sort, self.calls[-1]).limit(1)), None)

    def _cursor(self, query, sort, record):
        cursor = FakeCursor([d for d in self.docs if _matches(d, query or {})], record)
        return cursor.sort(sort) if sort else cursor


class FakeStore:
    """client[database][collection]; `calls` has one record per find or find_one, with its maxTimeMS."""

    def __init__(self, collections: dict):
        self.collections, self.calls = collections, []

    def __getitem__(self, name):
        return self if name == "bigdata" else FakeCollection(self.collections.setdefault(name, []), self.calls)

    @property
    def admin(self):
        return self

    def command(self, name):
        return {"ok": 1}


def _windows(count: int, segments=("browser", "bouncer")) -> list[dict]:
    """`count` 5-minute windows ending at T0, one document per segment each."""
    return [{"window_start": T0 - (i + 1) * bounds.WINDOW, "window_end": T0 - i * bounds.WINDOW,
             "behavior_segment": s, "session_count": 1, "share_pct": 50.0, "unique_users": 1, "total_revenue": 2.0,
             "avg_session_duration": 3.0} for i in range(count) for s in segments]


def _client(store=None, **config) -> TestClient:
    config = ApiConfig(**{"api_key": KEY, "mongodb_uri": SECRET_URI, **config})
    store = store or MongoClient(SECRET_URI, serverSelectionTimeoutMS=200, connect=False, tz_aware=True)
    return TestClient(create_app(config, store), headers={"X-API-Key": KEY})


@pytest.fixture(scope="module")
def dead():
    """The API over a MongoDB that is not there, its URI full of things not to show."""
    with _client() as client:
        yield client


# ---- 2: no key, no start (unless loopback or said so) ----
@pytest.mark.parametrize("env", [{"API_HOST": "0.0.0.0"}, {"API_HOST": "0.0.0.0", "API_KEY": ""},
                                 {"API_HOST": "10.0.0.7", "API_KEY": "   "}, {"API_HOST": "api.internal"}])
def test_without_a_key_the_api_refuses_to_start_off_loopback(env):
    with pytest.raises(InvalidConfigError, match="API_KEY is empty or unset and API_HOST=.* is not loopback"):
        api_config([], env)


@pytest.mark.parametrize("env", [{"API_HOST": "127.0.0.1"}, {"API_HOST": "::1"}, {"API_HOST": "localhost"},
                                 {"API_HOST": "0.0.0.0", "API_ALLOW_NO_KEY": "1"},
                                 {"API_HOST": "0.0.0.0", "API_KEY": KEY}])
def test_loopback_an_explicit_allow_or_a_key_starts(env):
    config = api_config([], env)
    assert config.api_key in ("", KEY)


def test_allow_no_key_takes_1_or_0_only():
    with pytest.raises(InvalidConfigError, match="API_ALLOW_NO_KEY"):
        api_config([], {"API_ALLOW_NO_KEY": "maybe"})


def test_the_entry_point_exits_2_with_one_line_when_the_key_is_empty():
    env = {**os.environ, "API_HOST": "0.0.0.0", "API_KEY": "", "API_PORT": "1"}
    env.pop("API_ALLOW_NO_KEY", None)
    done = subprocess.run([sys.executable, "-m", "app.api"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30)  # a server that started would be killed here, failing the test
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: API_KEY is empty or unset and API_HOST=0.0.0.0 is not loopback: set API_KEY (e.g. `openssl rand "
        "-hex 24`), or API_ALLOW_NO_KEY=1 to serve without one"]


# ---- 3, 4: probes answer status only; errors are generic, with a request id; details in the log ----
def test_readyz_answers_status_only(dead, caplog):
    response = dead.get("/readyz", headers={"X-API-Key": ""})
    assert response.status_code == 503 and response.json() == {"status": "not ready"}
    rid = response.headers["X-Request-ID"]
    assert any(rid in r.getMessage() and "ServerSelectionTimeoutError" in r.getMessage() for r in caplog.records)
    assert not any("hunter2" in r.getMessage() or "pw@" in r.getMessage() for r in caplog.records)


def test_a_dead_store_is_a_generic_503_with_the_request_id(dead, caplog):
    response = dead.get("/v1/funnel")
    assert response.status_code == 503
    body = response.json()
    assert body == {"error": "the data store is unavailable: try again later",
                    "request_id": response.headers["X-Request-ID"]}
    assert any(body["request_id"] in r.getMessage() and "127.0.0.1:1" in r.getMessage() for r in caplog.records)


def test_an_unexpected_error_is_a_generic_500_logged_under_its_id(monkeypatch, dead, caplog):
    def broken(*args):
        raise RuntimeError("internals: $clusterTime signature 0xdead")
    monkeypatch.setattr(Q, "funnel", broken)
    response = dead.get("/v1/funnel")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error", "request_id": response.headers["X-Request-ID"]}
    logged = [r for r in caplog.records if response.headers["X-Request-ID"] in r.getMessage() and r.exc_info]
    assert logged and "clusterTime" in str(logged[0].exc_info[1])


def test_job_health_passes_on_status_but_no_error_text(tmp_path):
    health = Health(stall_after_s=300)
    health.started("sessions", "q1")
    health.terminated("sessions", "ServerSelectionTimeoutError: mongo-0.internal:27017: connection refused")
    port = _free_port()
    server = HealthServer(health, port, None, host="127.0.0.1").start()
    try:
        url = f"http://127.0.0.1:{port}/status"
        job = _job_status(url)
    finally:
        server.stop()
    assert job["live"] is False and job["reason"] == "query sessions failed"
    assert job["queries"][0]["state"] == "failed"
    assert "mongo-0" not in str(job) and "27017" not in str(job)
    assert _job_status("http://127.0.0.1:1/status") == {"error": "the job's health endpoint did not answer"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 6: CORS preflight answered without a key ----
def test_cors_preflight_is_answered_without_a_key():
    origin = "https://shop.example"
    with _client(cors_origins=(origin,)) as client:
        preflight = client.options("/v1/funnel", headers={"X-API-Key": "", "Origin": origin,
                                                          "Access-Control-Request-Method": "GET",
                                                          "Access-Control-Request-Headers": "x-api-key"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        refused = client.get("/v1/funnel", headers={"X-API-Key": "", "Origin": origin})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin


# ---- 7: the key in a header or a fragment, never a query string ----
@pytest.mark.parametrize("path", ["/v1/funnel?key=" + KEY, "/?key=" + KEY, "/v1/funnel?api_key=" + KEY,
                                  "/readyz?KEY=" + KEY])
def test_a_key_in_the_query_string_is_refused_and_not_logged(dead, caplog, path):
    response = dead.get(path)
    assert response.status_code == 400
    assert "X-API-Key header" in response.json()["error"] and "#key=" in response.json()["error"]
    assert any("refused a key in the query string" in r.getMessage() for r in caplog.records)
    assert not any(KEY in r.getMessage() for r in caplog.records)


def test_a_wrong_key_is_logged_without_the_key(dead, caplog):
    attempt = "guess-" + "x" * 20
    assert dead.get("/v1/funnel", headers={"X-API-Key": attempt}).status_code == 401
    assert dead.get("/v1/funnel", headers={"X-API-Key": ""}).status_code == 401
    messages = [r.getMessage() for r in caplog.records]
    assert any("wrong API key for GET /v1/funnel" in m for m in messages)
    assert any("missing API key for GET /v1/funnel" in m for m in messages)
    assert not any(attempt in m for m in messages)


def test_the_dashboard_takes_the_key_from_the_fragment_into_session_storage():
    page = (STATIC / "dashboard.html").read_text()
    assert "location.hash" in page and "sessionStorage.setItem(KEY_STORE" in page
    assert "location.search)" not in page and "localStorage.setItem" not in page and "localStorage.getItem" not in page


def test_docs_load_only_the_vendored_swagger_ui(dead):
    html = dead.get("/docs", headers={"X-API-Key": ""}).text
    assert "/docs/static/swagger-ui-bundle.js" in html and "/docs/static/swagger-ui.css" in html
    assert "http://" not in html and "https://" not in html
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert dead.get(f"/docs/static/{name}", headers={"X-API-Key": ""}).status_code == 200
    assert dead.get("/redoc").status_code == 404  # ReDoc would come from a CDN: not served
    assert "X-API-Key" in str(dead.get("/openapi.json").json()["components"]["securitySchemes"])


def test_the_vendored_swagger_ui_matches_its_checksums():
    for line in (SWAGGER_UI / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((SWAGGER_UI / name).read_bytes()).hexdigest() == digest, name


# ---- 8: extreme but valid dates; 1, 5: every read bounded ----
@pytest.mark.parametrize("path, parameter", [
    ("/v1/activity?start=0001-01-01T00:00:00%2B01:00", "start"),
    ("/v1/activity?end=9999-12-31T23:30:00", "end"),
    ("/v1/anomalies?end=9999-12-31T23:30:00", "end"),
    ("/v1/segments/distribution?start=0001-01-01T00:00:00%2B01:00", "start"),
    ("/v1/segments/distribution?end=9999-12-31T23:30:00", "end"),
    ("/v1/events/frequency?start=1969-12-31T23:59:59", "start"),
    ("/v1/alerts?end=2100-01-01T00:00:00", "end"),
    ("/v1/sessions/metrics?start=0001-01-01T00:00:00%2B01:00", "start"),

    # ---- 1, 5: every read bounded ----
    ("/v1/segments/distribution?hours=169", "hours"),
    ("/v1/segments/distribution?start=2000-01-01T00:00:00&end=2026-01-01T00:00:00", "start"),
    ("/v1/segments/distribution?start=2026-01-01T00:00:00&end=2026-01-08T00:00:01", "start"),
    ("/v1/segments/distribution?hours=1&start=2026-01-01T00:00:00&end=2026-01-02T00:00:00", "hours"),
    ("/v1/activity?start=2025-01-01T00:00:00&end=2026-01-01T00:00:00", "start"),
    ("/v1/alerts?start=2025-01-01T00:00:00&end=2026-01-01T00:00:00", "start"),
    ("/v1/sessions/metrics?limit=1001", "limit"),
])
def test_extreme_dates_and_spans_past_their_bound_are_a_422_naming_the_parameter(dead, path, parameter):
    response = dead.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["parameter"] == parameter


def test_distribution_with_start_reads_hours_from_start_not_everything_since():
    store = FakeStore({"segment_distribution": _windows(300)})  # 25 hours of windows before T0
    with _client(store) as client:
        start = (T0 - timedelta(hours=10)).isoformat()
        body = client.get("/v1/segments/distribution", params={"start": start, "hours": 1}).json()
    assert len(body["windows"]) == 12  # 1 hour of 5-minute windows, not the 10 hours up to the latest
    assert body["start"] == start and body["end"] == (T0 - timedelta(hours=9)).isoformat()


def test_session_metrics_honour_limit_without_user_id():
    store = FakeStore({"segment_distribution": _windows(50)})
    with _client(store) as client:
        some = client.get("/v1/sessions/metrics", params={"limit": 3}).json()
        every = client.get("/v1/sessions/metrics").json()
    assert some["total_sessions"] == 3 * 2 and some["start"] == (T0 - 3 * bounds.WINDOW).isoformat()
    assert every["total_sessions"] == 50 * 2


def test_a_rollup_read_past_the_document_cap_is_a_422(monkeypatch):
    monkeypatch.setattr(bounds, "MAX_DOCUMENTS", 40)
    store = FakeStore({"segment_distribution": _windows(30)})  # 60 documents
    with _client(store) as client:
        response = client.get("/v1/sessions/metrics")
        assert response.status_code == 422 and response.json()["parameter"] == "start"
        assert client.get("/v1/sessions/metrics", params={"limit": 20}).status_code == 200


ENDPOINTS = ["/v1/users/u1/personalization", "/v1/activity", "/v1/activity?user_id=u1", "/v1/users/segments",
             "/v1/sessions/metrics", "/v1/sessions/metrics?limit=5", "/v1/sessions/metrics?user_id=u1",
             "/v1/events/frequency", "/v1/patterns", "/v1/retention", "/v1/anomalies", "/v1/funnel",
             "/v1/segments/distribution", "/v1/alerts", "/v1/trigger-executions", "/v1/experiments",
             "/v1/act-now", "/v1/health"]


def test_every_query_of_every_endpoint_carries_max_time_ms():
    store = FakeStore({"segment_distribution": _windows(5),
                       "event_counts_hourly": [{"hour": T0, "event_type": "view", "events": 3}]})
    with _client(store, query_timeout_ms=1234) as client:
        for path in ENDPOINTS:
            before = len(store.calls)
            response = client.get(path)
            assert response.status_code in (200, 404), (path, response.text)
            assert len(store.calls) > before, path  # it read something
        assert {call["max_time_ms"] for call in store.calls} == {1234}


# ---- 10: the access log, without query strings ----
def test_the_access_log_has_method_path_status_duration_and_id_but_no_query(dead, caplog):
    caplog.set_level(logging.INFO, logger="behavior.api.access")
    response = dead.get("/v1/patterns?segment=browser")
    lines = [r.getMessage() for r in caplog.records if r.name == "behavior.api.access"]
    assert len(lines) == 1
    rid, method, path, status, duration = lines[0].split()
    assert (rid, method, path, status) == (response.headers["X-Request-ID"], "GET", "/v1/patterns", "503")
    assert duration.endswith("ms") and float(duration[:-2]) >= 0


def test_the_client_bounds_every_wait():
    from app.api.app import mongo_client
    client = mongo_client(ApiConfig(api_key=KEY, mongodb_uri="mongodb://127.0.0.1:1/", query_timeout_ms=3000))
    try:
        pool = client.options.pool_options
        assert (pool.socket_timeout, pool.connect_timeout) == (5.0, 2.0)  # maxTimeMS + 2 s for the answer
        assert client.options.server_selection_timeout == 2.0
    finally:
        client.close()


class SlowCursor(FakeCursor):
    def close(self):
        self.query["closed"] = True

    def __iter__(self):
        for doc in self.docs:
            time.sleep(0.03)
            yield doc


def test_a_read_past_its_time_stops_even_where_the_server_bounds_only_the_first_batch():
    record = {}
    cursor = bounds.TimedCursor(SlowCursor([{"n": i} for i in range(20)], record), max_time_ms=100)
    read = []
    with pytest.raises(ExecutionTimeout):
        for doc in cursor:
            read.append(doc)
    assert record == {"max_time_ms": 100, "closed": True} and 2 <= len(read) < 6


def test_a_query_past_its_time_is_a_504_that_says_how_to_narrow_it(monkeypatch):
    store = FakeStore({})

    def too_slow(*args, **kwargs):
        raise ExecutionTimeout("operation exceeded time limit", code=50)
    monkeypatch.setattr(FakeCollection, "find", too_slow)
    with _client(store, query_timeout_ms=250) as client:
        response = client.get("/v1/alerts")
    assert response.status_code == 504
    assert response.json() == {"error": "the query took longer than 250 ms: narrow it (start/end, user_id, segment)",
                               "request_id": response.headers["X-Request-ID"]}


# ---- answers rendered by orjson read exactly as FastAPI's jsonable_encoder + json.dumps wrote them ----
from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402
from bson.int64 import Int64  # noqa: E402
from bson.tz_util import utc as bson_utc  # noqa: E402
from fastapi.encoders import jsonable_encoder  # noqa: E402
import json  # noqa: E402

from app.api.edge import Json  # noqa: E402

_times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))  # BSON keeps milliseconds
_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.integers(0, 2**40).map(Int64),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                    _times.map(lambda d: d.replace(tzinfo=bson_utc)), _times.map(lambda d: d.replace(tzinfo=timezone.utc)))
_answers = st.recursive(_leaves, lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                        max_leaves=30)


@hsettings(max_examples=300, deadline=None)
@given(_answers)
def test_an_answer_rendered_by_orjson_reads_as_fastapis_default_rendering(answer):
    """The routes return Json(answer) to skip jsonable_encoder (app/api/edge.py): a client must read
    the same JSON, times included (a store's tz-aware datetimes, bson's utc or datetime's)."""
    fastapi_default = json.dumps(jsonable_encoder(answer), ensure_ascii=False, allow_nan=False)
    assert json.loads(Json(answer).body) == json.loads(fastapi_default)


def test_the_routes_answer_through_json_not_jsonable_encoder(monkeypatch):
    """Every /v1 route, with its defaults and each filter, over documents marked complete and not
    (test_query_indexes' paths and store), returns its answer rendered by Json: jsonable_encoder
    never walks one."""
    import fastapi.routing
    from tests.unit import test_query_indexes as QI

    def refuse(value, *args, **kwargs):
        raise AssertionError(f"jsonable_encoder walked an answer: {str(value)[:80]}")
    monkeypatch.setattr(fastapi.routing, "jsonable_encoder", refuse)
    config = ApiConfig(api_key=KEY, mongodb_uri="mongodb://127.0.0.1:1/")
    for marked in (True, False):
        with TestClient(create_app(config, QI._Client(QI._Store(marked))), headers={"X-API-Key": KEY}) as client:
            for path in QI.PATHS:
                response = client.get(path)
                assert response.status_code in (200, 404), (path, marked, response.text)
                assert response.headers["content-type"] == "application/json"
