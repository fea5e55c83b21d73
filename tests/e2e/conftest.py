"""Fixtures of the end-to-end tests (the stack itself is tests/conftest.py's)."""
from __future__ import annotations

import pytest
from pymongo import MongoClient


@pytest.fixture(scope="module")
def mongo(stack):
    client = MongoClient(stack["mongodb_uri"])
    yield client
    client.close()
