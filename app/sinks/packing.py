"""Items of a list stored as one JSON string each, for FerretDB 1.24 (the local store), which reads
and writes a document value by value (its SQLite JSON is decoded value by value): a user_activity
document of 100 events and 30 sessions is ~2,000 values nested and 130 packed, and a live_feed
bucket of 1,000 trigger executions ~30,000 and 1,000. A date is stored as {"$date": epoch
millis} (BSON keeps dates to the millisecond too, so nothing is lost) and read back as an aware
UTC datetime; in mongosh, `JSON.parse(doc.items[0])`. A list an earlier version stored nested
reads as it is, so a document is packed at its next write."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def pack_items(items: list) -> list[str]:
    return [json.dumps(item, separators=(",", ":"), default=_date, allow_nan=True) for item in items]


def unpack_items(items: list) -> list:
    return [unpack_item(item) for item in items]


def unpack_item(item):
    """One stored item: decoded if packed, as it is if stored nested (before packing)."""
    return json.loads(item, object_hook=_dated) if isinstance(item, str) else item


def packed(doc: dict, names: tuple) -> dict:
    """`doc` with its lists `names` packed (the others as they are)."""
    return {**doc, **{n: pack_items(doc[n]) for n in names if n in doc}}


def unpacked(doc: dict | None, names: tuple) -> dict | None:
    if doc is None:
        return None
    return {**doc, **{n: unpack_items(doc[n]) for n in names if n in doc}}


def to_millis(value: datetime) -> int:
    """A datetime (naive: UTC) -> epoch milliseconds, as a packed date stores it."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return (aware - _EPOCH) // _MS


def from_millis(millis: int) -> datetime:
    return _EPOCH + millis * _MS


def _date(value):
    if isinstance(value, datetime):
        return {"$date": to_millis(value)}
    raise TypeError(f"not storable packed: {type(value).__name__}")


def _dated(obj: dict):
    if len(obj) == 1 and "$date" in obj:
        return from_millis(obj["$date"])
    return obj
