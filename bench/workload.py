"""The benchmark's input: N events of the generator's realistic session mix, in event-time order.

Sessions start at a steady pace (SESSIONS_PER_MINUTE of event time), so however large N is,
the number of sessions open at once stays about the same: a long run must keep memory flat.
Events are produced lazily through a heap, so 5M events never sit in memory at once.
"""
from __future__ import annotations

import heapq
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

from app.generator.behaviors import SESSION_BUILDERS, TIME_FORMAT
from app.generator.cli import DEFAULT_MIX, allocate_segments, parse_mix

SESSIONS_PER_MINUTE = 60  # ~10 events per session -> ~600 events per minute of event time
EVENTS_PER_SESSION = 10.0  # the default mix's mean, measured (9.96 over 5,000 sessions)


def session_count(n_events: int) -> int:
    return max(1, round(n_events / EVENTS_PER_SESSION))


def events(n_events: int, seed: int = 7, end: datetime | None = None,
           sessions_per_minute: float = SESSIONS_PER_MINUTE) -> Iterator[dict]:
    """Exactly n_events events (the sessions open at the cut are cut short), sorted by event_time, ending
    before `end` (default now) so that nothing looks like it is from the future."""
    rng = random.Random(seed)
    n_sessions = round(session_count(n_events) * 1.1) + 10  # enough: the stream stops at n_events
    segments = allocate_segments(n_sessions, parse_mix(DEFAULT_MIX))
    rng.shuffle(segments)
    span = timedelta(minutes=n_sessions / sessions_per_minute)
    end = (end or datetime.now(timezone.utc)).replace(microsecond=0)
    begin = end - span - timedelta(hours=3)  # room for the longest session (a power user's hours)
    first_user = rng.randint(500_000_000, 590_000_000)
    pending: list = []  # (event_time text, sequence, event): a heap, smallest time first
    sequence = emitted = 0
    for i, segment in enumerate(segments):
        start = begin + timedelta(seconds=int(span.total_seconds() * i / n_sessions))
        start_text = start.strftime(TIME_FORMAT)
        while pending and pending[0][0] < start_text:  # nothing later can start before this
            yield heapq.heappop(pending)[2]
            emitted += 1
            if emitted == n_events:
                return
        user_session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user_id = first_user + rng.randrange(n_sessions)  # users come back: ~1 session in 3 repeats
        for event in SESSION_BUILDERS[segment](user_id, user_session, start, random.Random(rng.getrandbits(64))):
            heapq.heappush(pending, (event["event_time"], sequence, event))
            sequence += 1
    while pending and emitted < n_events:
        yield heapq.heappop(pending)[2]
        emitted += 1
