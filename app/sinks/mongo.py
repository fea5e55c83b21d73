"""MongoDB I/O shared by the jobs: one client per Python worker, bulk writes, idempotent inserts."""
from __future__ import annotations

from typing import Iterable

from pymongo import MongoClient
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000
_clients: dict[str, MongoClient] = {}


def client_for(uri: str) -> MongoClient:
    """Executors reuse Python workers, so one client per worker process serves every batch."""
    client = _clients.get(uri)
    if client is None:
        client = MongoClient(uri, w=1, retryWrites=True, serverSelectionTimeoutMS=10_000)
        _clients[uri] = client
    return client


def insert_or_ignore(collection, docs: Iterable[dict], chunk: int = 1000) -> int:
    """Unordered inserts keyed by _id; a duplicate _id (a replayed batch) is not an error."""
    inserted, batch = 0, []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= chunk:
            inserted += len(batch) - len(insert_returning_duplicates(collection, batch))
            batch = []
    if batch:
        inserted += len(batch) - len(insert_returning_duplicates(collection, batch))
    return inserted


def insert_returning_duplicates(collection, docs: list[dict]) -> list[dict]:
    """One unordered insert_many; returns the documents whose _id was already there."""
    try:
        collection.insert_many(docs, ordered=False)
        return []
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return [docs[e["index"]] for e in errors]
