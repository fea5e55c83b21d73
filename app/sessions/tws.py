"""STATE_OPERATOR=transformWithState: the per-user state machine on Spark's transformWithState
(pyspark >= 4.1, the Row API) instead of applyInPandasWithState (app/sessions/stateful.py).

Both run the very same `process(key, columns, state)` of stateful.py; this module only adapts
transformWithState's handle to the few GroupState calls `process` makes. What differs is how
Spark finds the users whose event-time timeout the watermark passed: applyInPandasWithState reads
every state entry each batch to compare its timeout, transformWithState keeps its timers in a
separate index sorted by time and reads only the expired ones. The price is a round trip from the
Python worker to the JVM for each state call (get, update, a timer change).

State: one value per user, the tracker's JSON plus the timer registered for it (so a changed
timeout deletes exactly that timer, with no listTimers round trip). A timer is registered 1 ms
after the tracker's timeout: applyInPandasWithState times a group out once the watermark is past
its timestamp, transformWithState fires a timer once the watermark reaches it.
"""
from __future__ import annotations

from typing import Iterator

from pyspark.sql import Row
from pyspark.sql.streaming.stateful_processor import (ExpiredTimerInfo, StatefulProcessor, StatefulProcessorHandle,
                                                      TimerValues)

from app.sessions.stateful import _READ

STATE_SCHEMA = "user_state string, timer_ms long"


class _Handle:
    """The GroupState calls stateful.py's `process` makes, on a transformWithState value and its timers."""

    def __init__(self, processor: "SessionProcessor", watermark_ms: int, timer_fired: bool):
        self._processor, self._watermark_ms = processor, watermark_ms
        value = processor.value.get()  # one round trip: None when the user has no entry
        self._stored = value
        self._timer = None if value is None or timer_fired else value[1]
        self._pending_value, self._pending_timer, self._removed = None, None, False

    def getCurrentWatermarkMs(self) -> int:
        return self._watermark_ms

    @property
    def exists(self) -> bool:
        return self._stored is not None

    @property
    def get(self) -> tuple:
        return (self._stored[0],)

    def update(self, value: tuple) -> None:
        self._pending_value, self._removed = value[0], False

    def setTimeoutTimestamp(self, timeout_ms: int) -> None:
        self._pending_timer = timeout_ms + 1

    def remove(self) -> None:
        self._removed = True

    def commit(self) -> None:
        """Writes what `process` left: the value and its one timer (none for an entry without a
        timeout, see stateful._save), or the entry's removal."""
        handle = self._processor.handle
        timer = None if self._removed else self._pending_timer
        if self._timer is not None and self._timer != timer:
            handle.deleteTimer(self._timer)
        if timer is not None and self._timer != timer:
            handle.registerTimer(timer)
        if self._removed:
            if self._stored is not None:
                self._processor.value.clear()
        elif self._pending_value is not None:
            self._processor.value.update((self._pending_value, timer))


class SessionProcessor(StatefulProcessor):
    """`process` (stateful.py) as a transformWithState processor; key = (quarantined, state_key)."""

    def __init__(self, process):
        self.process = process

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.value = handle.getValueState("user", STATE_SCHEMA)

    def handleInputRows(self, key, rows: Iterator[Row], timerValues: TimerValues) -> Iterator[Row]:
        rows = list(rows)
        columns = {name: [row[name] for row in rows] for name in _READ}
        if key[0]:  # bad records: passed through, no state read
            return _out(self.process(tuple(key), columns, None))
        return self._run(tuple(key), columns, _Handle(self, timerValues.getCurrentWatermarkInMs(), False))

    def handleExpiredTimer(self, key, timerValues: TimerValues, expiredTimerInfo: ExpiredTimerInfo) -> Iterator[Row]:
        return self._run(tuple(key), None, _Handle(self, timerValues.getCurrentWatermarkInMs(), True))

    def _run(self, key: tuple, columns: dict | None, state: _Handle) -> Iterator[Row]:
        rows = self.process(key, columns, state)
        state.commit()
        return _out(rows)

    def close(self) -> None:
        pass


def _out(rows) -> Iterator[Row]:
    return iter([Row(**row._asdict()) for row in rows])
