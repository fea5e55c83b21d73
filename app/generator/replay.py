"""Replay a REES46-format CSV (DESIGN.md §3) as event dicts in event-time order.

No event_id is added: the job derives it from topic:partition:offset, so replaying the
same file twice gives two sets of events, exactly as a real producer re-sending would.
"""
from __future__ import annotations

import csv
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

REES46_COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code",
                  "brand", "price", "user_id", "user_session")
_ID_COLUMNS = ("product_id", "category_id", "user_id")


def parse_event_time(text: str) -> datetime:
    """'2019-10-01 00:00:00 UTC' (REES46), ISO-8601 or epoch millis; naive means UTC (DESIGN §3)."""
    text = text.strip()
    if text.isdigit():  # epoch millis
        return datetime.fromtimestamp(int(text) / 1000, tz=timezone.utc)
    if text.endswith(" UTC"):
        text = text[:-4]
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _to_event(row: dict) -> dict:
    event = {"event_time": row["event_time"], "event_type": row["event_type"]}
    for column in _ID_COLUMNS:
        value = (row.get(column) or "").strip()
        if value:  # ids stay ints when the file has ints, strings otherwise
            event[column] = int(value) if value.isdigit() else value
    event["category_code"] = row.get("category_code") or ""
    event["brand"] = row.get("brand") or ""
    price = (row.get("price") or "").strip()
    if price:
        event["price"] = _number_or_text(price)
    if row.get("user_session"):  # absent, not "": the job then sessionizes by user_id
        event["user_session"] = row["user_session"]
    return event


def _number_or_text(text: str) -> float | str:
    """A bad price is passed on as text so the job quarantines it, instead of replay dying."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text  # json.dumps would write a bare NaN


def _rows(path: Path) -> Iterator[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("event_time", "event_type", "user_id") if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: not a REES46 CSV, missing column(s) {', '.join(missing)}")
        yield from reader


def _is_time_sorted(path: Path) -> bool:
    previous = None
    for row in _rows(path):
        current = parse_event_time(row["event_time"])
        if previous is not None and current < previous:
            return False
        previous = current
    return True


def read_rees46_events(path: str | Path) -> Iterator[dict]:
    """Events in event-time order (stable for ties). The real REES46 month files are already
    sorted and far larger than memory, so a sorted file is streamed; only an unsorted one
    is loaded and sorted."""
    path = Path(path)
    if _is_time_sorted(path):
        yield from (_to_event(row) for row in _rows(path))
        return
    events = [_to_event(row) for row in _rows(path)]
    events.sort(key=lambda event: parse_event_time(event["event_time"]))
    yield from events


def paced(events: Iterable[dict], speedup: float | None,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[dict]:
    """Yield events with their event-time gaps divided by `speedup` (0/None: no waiting)."""
    if not speedup:
        yield from events
        return
    first_event_time = started = None
    for event in events:
        event_time = parse_event_time(event["event_time"])
        if first_event_time is None:
            first_event_time, started = event_time, clock()
        due = started + (event_time - first_event_time).total_seconds() / speedup
        wait = due - clock()
        if wait > 0:
            sleep(wait)
        yield event
