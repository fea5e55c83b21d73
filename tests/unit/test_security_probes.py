"""`make security`'s probes (security/probes.py) pass on the API as built, and each fails on the
surface it guards when that surface is opened again."""
from __future__ import annotations

import pytest

from security import probes
from tests.unit.test_api_edges import KEY, FakeStore, _client, _windows, dead  # noqa: F401 (a fixture)

ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def api():
    store = FakeStore({"segment_distribution": _windows(20)})
    with _client(store, cors_origins=(ORIGIN,)) as client:
        yield probes.Api(client, KEY, ORIGIN, query_timeout_s=5.0)


@pytest.mark.parametrize("check", probes.CHECKS, ids=lambda c: c.__name__)
def test_every_probe_passes_on_the_api_as_built(api, check, monkeypatch):
    monkeypatch.setenv("API_CORS_ORIGINS", ORIGIN)
    passed, saw = check(api)
    assert passed, saw


def test_a_probe_fails_when_its_surface_is_open():
    with _client(FakeStore({}), api_key="") as client:  # no key: the running API serves anyone
        passed, saw = probes.probe_2_no_key_no_start(probes.Api(client, "", ORIGIN, 5.0))
    assert not passed and "running API without a key: 200" in saw


def test_the_probes_probe_reveals_nothing_of_a_dead_store(dead):  # noqa: F811
    passed, saw = probes.probe_3_probes_status_only(probes.Api(dead, KEY, ORIGIN, 5.0))
    assert passed and "/readyz 503" in saw, saw
