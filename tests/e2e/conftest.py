"""Fixtures of the end-to-end tests (the stack itself is tests/conftest.py's)."""
from __future__ import annotations

import pytest
from pymongo import MongoClient

from tests.e2e.shared_run import make_shared_run


@pytest.fixture(scope="module")
def mongo(stack):
    client = MongoClient(stack["mongodb_uri"])
    yield client
    client.close()


@pytest.fixture(scope="session")
def shared_run(stack, tmp_path_factory):
    """The quick tier's one job run (tests/e2e/shared_run.py), made on first use, dropped at the end."""
    run = make_shared_run(stack, tmp_path_factory.mktemp("shared"))
    yield run
    client = MongoClient(stack["mongodb_uri"])
    client.drop_database(run.database)
    client.close()
