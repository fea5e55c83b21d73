"""MongoDB I/O shared by the jobs: one client per Python worker, bulk writes, idempotent inserts,
and bounded retries that ride out a short store outage (DESIGN.md §16)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, TypeVar

from pymongo import MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, ConnectionFailure

DUPLICATE_KEY = 11000
SERVER_SELECTION_TIMEOUT_MS = 10_000
_clients: dict[tuple[str, str | int, int], MongoClient] = {}
log = logging.getLogger("behavior.mongo")
T = TypeVar("T")


def client_for(uri: str, write_concern: str | int = 1,
               selection_timeout_ms: int = SERVER_SELECTION_TIMEOUT_MS) -> MongoClient:
    """Executors reuse Python workers, so one client per worker process serves every batch."""
    client = _clients.get((uri, write_concern, selection_timeout_ms))
    if client is None:
        client = MongoClient(uri, w=write_concern, retryWrites=True, serverSelectionTimeoutMS=selection_timeout_ms)
        _clients[(uri, write_concern, selection_timeout_ms)] = client
    return client


@dataclass(frozen=True)
class Store:
    """Where the job writes, and how patiently: shipped to the executors with the write function."""
    uri: str
    database: str
    write_concern: str | int = 1
    retry_timeout_s: float = 120.0
    selection_timeout_ms: int = SERVER_SELECTION_TIMEOUT_MS

    def db(self):
        return client_for(self.uri, self.write_concern, self.selection_timeout_ms)[self.database]

    def impatient(self) -> "Store":
        """The same store, given up on within seconds: for writes that hold an executor's task
        slot, which the caller retries itself once the store answers again (app/sinks/store_lane.py)."""
        return replace(self, retry_timeout_s=min(self.retry_timeout_s, 2.0), selection_timeout_ms=2000)

    def wait_until_reachable(self, step: str) -> None:
        """Returns once the server answers a ping, within retry_timeout_s (else raises, naming it)."""
        self.retrying(step, lambda: self.db().command("ping"))

    def retrying(self, step: str, call: Callable[[], T]) -> T:
        """Runs an idempotent step, again and again while the server is unreachable (connection
        refused or reset, no server selectable), with backoff, for at most retry_timeout_s; then
        the last error propagates and fails the batch. Other errors propagate at once."""
        deadline, delay, attempt = time.monotonic() + self.retry_timeout_s, 1.0, 1
        while True:
            try:
                return call()
            except ConnectionFailure as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionFailure(f"MongoDB at {redact(self.uri)} unreachable for "
                                            f"{self.retry_timeout_s:g} s (MONGODB_RETRY_TIMEOUT) during "
                                            f"{step}: {exc}") from exc
                wait = min(delay, left)
                log.warning("MongoDB unreachable during %s (attempt %d: %s); retrying in %.0f s, %.0f s left",
                            step, attempt, type(exc).__name__, wait, left)
                time.sleep(wait)
                delay, attempt = min(delay * 2, 15.0), attempt + 1


def redact(uri: str) -> str:
    """Hide a password in a URI before printing it."""
    if "@" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


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


def replace_documents(coll, docs: list[dict]) -> None:
    """Whole documents by _id, upserted, in one unordered bulk write."""
    if docs:
        coll.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False)


def is_ferretdb(db) -> bool:
    """Whether the store is FerretDB (the local stack), which says so in buildInfo. FerretDB 1.24
    uses an index for _id equality only, yet keeps every declared index up to date on each write."""
    try:
        return "ferretdbVersion" in db.client.admin.command("buildInfo")
    except AttributeError:  # not a pymongo database (a test's store)
        return False
