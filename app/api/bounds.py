"""Every read the API makes is bounded (DESIGN.md §16, "Exposed surfaces fail closed"): the time
span a request may ask for, the documents it may read, and the server time of each MongoDB query.
A request past a bound is a 422 naming the parameter that narrows it; a query past its time is a 504.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

from pymongo.errors import ExecutionTimeout

from app.api.analytics import utc

# Instants outside these are refused: nothing the job stores lies there, and arithmetic on
# 0001-01-01 or 9999-12-31 (a span, a floor to the hour) would overflow into a 500.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
MAX_SPAN = timedelta(days=92)             # start..end given together (activity, alerts, frequency, ...)
MAX_WINDOW_SPAN = timedelta(hours=168)    # segment distribution: 2,016 5-minute windows at most
WINDOW = timedelta(minutes=5)
MAX_DOCUMENTS = 50_000                    # rollup documents one request may read


class ParameterError(Exception):
    """A parameter that passed its type check but not the endpoint's own (422, naming it)."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter, self.message = parameter, message


def instant(parameter: str, value: datetime | None) -> datetime | None:
    """A query's time in UTC (naive = UTC), within [EARLIEST, LATEST)."""
    if value is None:
        return None
    try:
        value = utc(value)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        value = None
    if value is None or not EARLIEST <= value < LATEST:
        raise ParameterError(parameter, f"must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} (UTC)")
    return value


def time_range(start: datetime | None, end: datetime | None,
               max_span: timedelta = MAX_SPAN) -> tuple[datetime | None, datetime | None]:
    """[start, end) in UTC, at most max_span long when both are given. An open side is bounded by
    what the endpoint reads (its limit, or MAX_DOCUMENTS) and by maxTimeMS."""
    start, end = instant("start", start), instant("end", end)
    if start is not None and end is not None:
        if start >= end:
            raise ParameterError("start", f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
        if end - start > max_span:
            raise ParameterError("start", f"start..end spans more than {_span(max_span)}: narrow it")
    return start, end


def window_range(hours: float | None, start: datetime | None, end: datetime | None,
                 default_hours: float = 24.0) -> tuple[float, datetime | None, datetime | None]:
    """The segment distribution's span: the last `hours` up to end (or the latest window), or
    `hours` from start; start with end is a span too. Never more than MAX_WINDOW_SPAN."""
    start, end = instant("start", start), instant("end", end)
    if start is not None and end is not None and hours is not None:
        raise ParameterError("hours", "give start with hours or with end, not both")
    hours = default_hours if hours is None else hours
    if timedelta(hours=hours) > MAX_WINDOW_SPAN:
        raise ParameterError("hours", f"more than {_span(MAX_WINDOW_SPAN)}")
    if start is not None and end is None:
        end = instant("hours", start + timedelta(hours=hours))
    return (hours, *time_range(start, end, MAX_WINDOW_SPAN))


def capped(documents: Iterable[dict], parameter: str, limit: int | None = None) -> Iterator[dict]:
    """The documents of a rollup read, refusing (a 422 naming `parameter`) past `limit` (MAX_DOCUMENTS)."""
    limit = MAX_DOCUMENTS if limit is None else limit
    for i, doc in enumerate(documents):
        if i == limit:
            raise ParameterError(parameter, f"the request reads more than {limit:,} documents: narrow it with "
                                            f"{parameter}")
        yield doc


class TimedCursor:
    """A find's cursor with maxTimeMS, and the same bound on the whole read: a server may apply
    maxTimeMS to the first batch only (FerretDB does: getMore has none), so iterating past the
    deadline raises pymongo's ExecutionTimeout too (a 504)."""

    def __init__(self, cursor, max_time_ms: int):
        self._cursor, self._ms = cursor.max_time_ms(max_time_ms), max_time_ms

    def sort(self, *args, **kwargs) -> "TimedCursor":
        self._cursor.sort(*args, **kwargs)
        return self

    def limit(self, n: int) -> "TimedCursor":
        self._cursor.limit(n)
        return self

    def __iter__(self) -> Iterator[dict]:
        deadline = time.monotonic() + self._ms / 1000
        for doc in self._cursor:
            if time.monotonic() > deadline:
                self._cursor.close()
                raise ExecutionTimeout(f"read past {self._ms} ms", code=50)
            yield doc


class TimedCollection:
    """A collection whose find and find_one carry maxTimeMS: the server stops a query past it."""

    def __init__(self, collection, max_time_ms: int):
        self._collection, self._ms = collection, max_time_ms

    def find(self, *args, **kwargs) -> TimedCursor:
        return TimedCursor(self._collection.find(*args, **kwargs), self._ms)

    def find_one(self, *args, **kwargs):
        return self._collection.find_one(*args, max_time_ms=self._ms, **kwargs)


class TimedDatabase:
    """db[name] -> a TimedCollection: the one way app/api/queries.py reaches MongoDB."""

    def __init__(self, database, max_time_ms: int):
        self._database, self._ms = database, max_time_ms

    def __getitem__(self, name: str) -> TimedCollection:
        return TimedCollection(self._database[name], self._ms)


def _span(span: timedelta) -> str:
    return f"{span.days} days" if span.days >= 10 else f"{span.total_seconds() / 3600:g} hours"
