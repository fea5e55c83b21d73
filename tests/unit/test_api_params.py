"""The API's parameter checks, key and store errors, without a store: a bad request never reaches
MongoDB (the client points at a closed port, so a query that did would fail with 503)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient

from app.api.app import create_app
from app.api.settings import ApiConfig, api_config
from app.config import InvalidConfigError

KEY = "k" * 24
DEAD_URI = "mongodb://127.0.0.1:1/"


@pytest.fixture(scope="module")
def client():
    config = ApiConfig(api_key=KEY, mongodb_uri=DEAD_URI)
    mongo = MongoClient(DEAD_URI, serverSelectionTimeoutMS=200, connect=False, tz_aware=True)
    with TestClient(create_app(config, mongo), headers={"X-API-Key": KEY}) as test_client:
        yield test_client


@pytest.mark.parametrize("path, parameter", [
    ("/v1/activity?limit=0", "limit"),
    ("/v1/activity?limit=1001", "limit"),
    ("/v1/activity?limit=ten", "limit"),
    ("/v1/activity?event_type=click", "event_type"),
    ("/v1/activity?start=yesterday", "start"),
    ("/v1/activity?start=2019-10-02T00:00:00&end=2019-10-01T00:00:00", "start"),
    ("/v1/activity?user=1", "user"),
    ("/v1/users/segments?min_engagement=-1", "min_engagement"),
    ("/v1/users/segments?min_engagement=101", "min_engagement"),
    ("/v1/users/segments?segment=whale", "segment"),
    ("/v1/sessions/metrics?end=not-a-date", "end"),
    ("/v1/sessions/metrics?segment=", "segment"),
    ("/v1/events/frequency?interval=week", "interval"),
    ("/v1/events/frequency?country=", "country"),
    ("/v1/patterns?min_sessions=0", "min_sessions"),
    ("/v1/patterns?limit=5000", "limit"),
    ("/v1/retention?max_weeks=-1", "max_weeks"),
    ("/v1/retention?max_weeks=500", "max_weeks"),
    ("/v1/retention?cohort=2019-40", "cohort"),
    ("/v1/anomalies?z_score_threshold=0", "z_score_threshold"),
    ("/v1/anomalies?z_score_threshold=abc", "z_score_threshold"),
    ("/v1/anomalies?recent_days=0", "recent_days"),
    ("/v1/anomalies?metric=clicks", "metric"),
    ("/v1/segments/distribution?hours=0", "hours"),
    ("/v1/alerts?severity=urgent", "severity"),
    ("/v1/alerts?alert_type=high velocity", "alert_type"),
    ("/v1/trigger-executions?limit=-5", "limit"),
    ("/v1/act-now?hours=1000", "hours"),
    ("/v1/users/u1/personalization?open_alert_hours=0", "open_alert_hours"),
    ("/v1/funnel?segment=browser", "segment"),
])
def test_a_bad_parameter_is_a_422_naming_it(client, path, parameter):
    response = client.get(path)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["parameter"] == parameter
    assert f"'{parameter}'" in body["error"]


def test_a_missing_or_wrong_key_is_a_401_and_the_probes_need_none(client):
    assert client.get("/v1/funnel", headers={"X-API-Key": ""}).status_code == 401
    wrong = client.get("/v1/funnel", headers={"X-API-Key": "x" * 24})
    assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["error"]
    assert client.get("/healthz", headers={"X-API-Key": ""}).status_code == 200


def test_a_dead_store_is_a_503_that_names_no_host(client):
    response = client.get("/v1/funnel")
    assert response.status_code == 503 and "127.0.0.1" not in response.text
    assert response.json()["request_id"] == response.headers["X-Request-ID"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "not ready"}


def test_openapi_lists_every_endpoint(client):
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/v1/users/{user_id}/personalization", "/v1/activity", "/v1/users/segments", "/v1/sessions/metrics",
            "/v1/events/frequency", "/v1/patterns", "/v1/retention", "/v1/anomalies", "/v1/funnel",
            "/v1/segments/distribution", "/v1/alerts", "/v1/trigger-executions", "/v1/experiments",
            "/v1/act-now", "/v1/health"} <= paths
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("env, setting", [
    ({"API_PORT": "eighty"}, "API_PORT"),
    ({"API_PORT": "70000"}, "API_PORT"),
    ({"API_KEY": "short"}, "API_KEY"),
    ({"MONGODB_URI": "localhost:27017"}, "MONGODB_URI"),
    ({"MONGODB_DATABASE": "a.b"}, "MONGODB_DATABASE"),
    ({"JOB_STATUS_URL": "driver:8090"}, "JOB_STATUS_URL"),
])
def test_bad_api_settings_fail_at_start_up_naming_the_setting(env, setting):
    with pytest.raises(InvalidConfigError, match=setting):
        api_config([], env)


def test_the_key_never_shows_in_the_config_repr():
    config = api_config([], {"API_KEY": KEY})
    assert config.api_key == KEY and KEY not in repr(config)
