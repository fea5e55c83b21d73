"""Records the job must quarantine (DESIGN.md §4), each with exactly one problem.

Pure: no I/O. Every JSON-object record carries `event_id` = "malformed-<kind>-<uuid>" so a
test can find its quarantine document; the others are found by Kafka offset.
"""
from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

from app.events import contract as c
from app.generator.behaviors import CATALOGUE, TIME_FORMAT

MALFORMED_KINDS = c.REASON_CODES  # one kind per reason code, named after it

_UNPARSEABLE_TIMES = ("not a timestamp", "yesterday at noon", "2019-10-01T25:61:00", "31/31/2019")
_NOT_NUMBERS = ("abc", "free", "twelve dollars")  # not "": that could read as "no price"


def _valid_event(kind: str, rng: random.Random, now: datetime) -> dict:
    """A record the job would accept: each kind then breaks exactly one thing."""
    product_id, category_id, category_code, brand, price = rng.choice(CATALOGUE)
    event_time = now.astimezone(timezone.utc) - timedelta(seconds=rng.randint(60, 3600))
    return {
        "event_id": f"malformed-{kind}-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
        "event_time": event_time.strftime(TIME_FORMAT), "event_type": "view",
        "product_id": product_id, "category_id": category_id, "category_code": category_code,
        "brand": brand, "price": price, "user_id": rng.randint(500_000_000, 599_999_999),
        "user_session": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    }


def _broken_event(kind: str, event: dict, rng: random.Random, now: datetime) -> object:
    if kind == c.MISSING_EVENT_TIME:
        del event["event_time"]  # absent only: an empty string could read as "unparseable"
    elif kind == c.MISSING_EVENT_TYPE:
        _absent_or_empty(event, "event_type", rng)
    elif kind == c.MISSING_USER_ID:
        _absent_or_empty(event, "user_id", rng)
    elif kind == c.UNPARSEABLE_EVENT_TIME:
        event["event_time"] = rng.choice(_UNPARSEABLE_TIMES)
    elif kind == c.EVENT_TIME_IN_FUTURE:
        ahead = timedelta(minutes=rng.randint(60, 24 * 60))  # far past the 5-min tolerance
        event["event_time"] = (now.astimezone(timezone.utc) + ahead).strftime(TIME_FORMAT)
    elif kind == c.NEGATIVE_PRICE:
        event["price"] = -round(rng.uniform(1, 500), 2)
    elif kind == c.PRICE_TOO_LARGE:
        event["price"] = rng.choice((1e308, 1.7976931348623157e308, c.MAX_PRICE * 10))
    elif kind == c.PRICE_NOT_A_NUMBER:
        event["price"] = rng.choice(_NOT_NUMBERS)
    elif kind == c.PURCHASE_WITHOUT_PRICE:
        event["event_type"] = "purchase"
        del event["price"]
    elif kind == c.VALUE_TOO_LARGE:
        # `properties` is a legal field, so size is the only thing wrong with it.
        event["properties"] = {"padding": "x" * rng.randint(c.MAX_VALUE_BYTES + 1024, 2 * c.MAX_VALUE_BYTES)}
    elif kind == c.NOT_AN_OBJECT:
        return rng.choice(([event], event["event_id"], rng.randint(1, 10**6)))
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {', '.join(MALFORMED_KINDS)}")
    return event


def _absent_or_empty(event: dict, field: str, rng: random.Random) -> None:
    if rng.random() < 0.5:
        del event[field]
    else:
        event[field] = ""


def malformed_record(kind: str, rng: random.Random, now: datetime) -> tuple[bytes, str]:
    """(Kafka value, the reason code the job must give it) for one malformed record."""
    event = _valid_event(kind, rng, now)
    if kind == c.INVALID_JSON:
        text = json.dumps(event, separators=(",", ":"))
        return text[: rng.randint(80, len(text) - 2)].encode(), kind  # cut after the event_id
    return json.dumps(_broken_event(kind, event, rng, now), separators=(",", ":")).encode(), kind


def interleave_malformed(records: Iterable, ratio: float, rng: random.Random,
                         now: datetime) -> Iterator[tuple[object, str | None]]:
    """Yield (record, None) for each input and, evenly between them, (malformed_value, kind)
    for about ratio x inputs, cycling through every kind so each is exercised."""
    credit, sent = 0.5, 0  # starting half-full rounds the count instead of flooring it
    for record in records:
        yield record, None
        credit += ratio
        while credit >= 1:
            kind = MALFORMED_KINDS[sent % len(MALFORMED_KINDS)]
            yield malformed_record(kind, rng, now)[0], kind
            credit -= 1
            sent += 1
