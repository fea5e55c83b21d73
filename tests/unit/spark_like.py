"""Plays Spark's part for the pure engine (app/sessions/tracker.py), and the sinks' part.

`SparkLike` takes micro-batches of many users' events, as applyInPandasWithState would: the
watermark a batch runs with is the largest event time of the batches before it minus the
delay (never moving back); a user's function runs with the user's events of the batch, or,
without events, when the watermark has passed the user's timeout. `idle()` is the no-data
batch Spark runs after the watermark moved. What the steps emit lands in `Store`, kept as the
sinks keep MongoDB: the last write of each session document (retracted ones deleted), each
enriched event with its corrections, alerts and executions by id, each user's last profile.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from app.sessions.stateful import _rows
from app.sessions.tracker import Event, Outputs, SessionSettings, Step, archived_id, process_events, process_timeout
from app.sinks import leaderboard, live_feed, open_sessions, user_activity


@dataclass
class Store:
    sessions: dict = field(default_factory=dict)   # _id -> last document
    events: dict = field(default_factory=dict)     # event_id -> (session_id, seconds_since_prev, is_late)
    alerts: dict = field(default_factory=dict)     # alert_id -> Alert
    actions: dict = field(default_factory=dict)    # execution_id -> message
    profiles: dict = field(default_factory=dict)   # user_id -> last update (without first_write)
    duplicates: Counter = field(default_factory=Counter)
    late: Counter = field(default_factory=Counter)            # event_id -> late arrivals
    closed_writes: Counter = field(default_factory=Counter)  # _id -> closed documents written (1 at most)
    activity: dict = field(default_factory=dict)   # user_id -> user_activity document (app/sinks/user_activity.py)
    open_feed: dict = field(default_factory=dict)  # live_feed's open-session, rank and event documents
    #                                                (open_sessions.py, leaderboard.py, live_feed.py)

    def outputs(self) -> dict:
        """Everything a user of the job sees, to compare two runs with. Of a profile, its figures
        and live pointers: its `epoch` and `base` say which state entry wrote it, and an entry
        that left the store (its last session closed) comes back as a new epoch on the stored base."""
        return {"sessions": self.sessions, "events": self.events, "alerts": self.alerts, "actions": self.actions,
                "activity": self.activity, "open_feed": self.open_feed,
                "profiles": {user: ({k: v for k, v in p["totals"].items() if k != "epoch"}, p["live"])
                             for user, p in self.profiles.items()}}


class SparkLike:
    def __init__(self, settings: SessionSettings, delay_ms: int, lookup: bool = False):
        if lookup and settings.profile_rules is not None:  # a checkpoint from before `left`: the store is read
            settings = dataclasses.replace(settings, stored_profile=lambda user: self.store.profiles.get(user))
        self.settings, self.delay_ms = settings, delay_ms
        self.states: dict = {}
        self.timeouts: dict = {}
        self.watermark_ms = 0
        self.max_seen: int | None = None
        self.store = Store()
        self.batches = 0
        self.docs: dict = {}  # event_id -> its document as the state step gets it (JSON)

    def batch(self, events: list[Event]) -> None:
        by_user: dict = {}
        for ev in events:
            self.docs.setdefault(ev.event_id, event_json(ev))
            by_user.setdefault(ev.user_id, []).append(ev)
        for user in sorted(by_user):
            self._run(user, process_events(self.states.get(user), by_user[user], self.watermark_ms, self.settings))
        for user in sorted(self.timeouts):
            if user not in by_user and self.timeouts[user] < self.watermark_ms:
                self._run(user, process_timeout(self.states[user], self.watermark_ms, self.settings))
        if events:
            self.max_seen = max([e.event_ms for e in events] + ([self.max_seen] if self.max_seen is not None else []))
            self.watermark_ms = max(self.watermark_ms, self.max_seen - self.delay_ms)
        self.batches += 1

    def idle(self) -> None:
        self.batch([])

    def advance(self, watermark_ms: int) -> None:
        """Other users' traffic moved the watermark (to at most `watermark_ms`); then a no-data batch."""
        self.watermark_ms = max(self.watermark_ms, watermark_ms)
        self.idle()

    def run(self, batches: list[list[Event]]) -> "SparkLike":
        for events in batches:
            self.batch(events)
        self.idle()
        return self

    def _run(self, user: str, step) -> None:
        if step.state is None:
            self.states.pop(user, None)
            self.timeouts.pop(user, None)
        else:
            self.states[user] = step.state.decode(step.state.encode())  # every batch goes through the state store
            if step.timeout_ms is None:  # a profile left behind by an expired entry: no timeout
                assert step.state.left is not None and not step.state.pending and not step.state.sessions
                self.timeouts.pop(user, None)
            else:
                assert step.timeout_ms >= self.watermark_ms, step.timeout_ms
                self.timeouts[user] = step.timeout_ms
        out, store = step.out, self.store
        for e in out.events:
            store.late[e.event_id] += e.is_late
            store.events.setdefault(e.event_id, (e.session_id, e.seconds_since_prev, e.is_late))
        for e in out.event_fixes:
            assert e.event_id in store.events, f"a correction of {e.event_id}, never written"
            store.events[e.event_id] = (e.session_id, e.seconds_since_prev, store.events[e.event_id][2])
        store.duplicates.update(out.duplicates)
        for doc in out.sessions:
            before = store.sessions.get(doc["_id"])
            if before is not None and before["status"] == "closed" and before["session_end"] < doc["session_start"]:
                archived = archived_id(doc["_id"], before["session_start"])  # an id reused: as the sink does
                store.sessions[archived] = {**before, "_id": archived}
                store.closed_writes[doc["_id"]] = 0
            else:
                assert (before or {}).get("status") != "closed", f"{doc['_id']} rewritten after close"
            store.sessions[doc["_id"]] = doc
            store.closed_writes[doc["_id"]] += doc["status"] == "closed"
        for session_id in out.retracted:
            assert store.sessions[session_id]["status"] == "active"
            del store.sessions[session_id]
        for alert in out.alerts:
            store.alerts.setdefault(alert.alert_id, alert)
        for action in out.actions:
            store.actions.setdefault(action["execution_id"], action)
        if out.profile is not None:
            store.profiles[user] = {k: v for k, v in out.profile.items() if k != "first_write"}
        # the store query merges each user's rows of a batch into the user's document, in order,
        # and files the events and their corrections into live_feed's event hours
        rows = [r for r in _rows(step, self.docs, user) if r.kind in user_activity.KINDS]
        live_feed.apply_rows([r for r in rows if r.kind in ("event", live_feed.FIX)], store.open_feed.get,
                             lambda docs: store.open_feed.update({d["_id"]: d for d in docs}), _NOW)
        if rows:
            before = store.activity.get(user)
            rules = self.settings.profile_rules
            store.activity[user] = user_activity.merge(before, user, rows, _NOW,
                                                       rules and user_activity.ranker(rules))
            for changes in (open_sessions.Changes(), leaderboard.Changes()):
                changes.user(before, store.activity[user])
                changes.apply(store.open_feed.get, lambda docs: store.open_feed.update({d["_id"]: d for d in docs}),
                              lambda ids: [store.open_feed.pop(i, None) for i in ids],  # as a store: no error if missing
                              *([lambda u: store.activity[u]["rank"]["fields"]] if isinstance(
                                  changes, leaderboard.Changes) else []))


_NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def event_json(ev: Event) -> str:
    """An event as the state step gets its document (app/events/enrich.py), the fields the sinks read."""
    return json.dumps({"event_id": ev.event_id, "event_ms": ev.event_ms, "event_type": ev.event_type,
                       "user_id": ev.user_id, "user_session": ev.user_session, "product_id": ev.product_id,
                       "category_code": ev.category_code, "brand": None, "price": ev.price, "country": ev.country,
                       "device_type": ev.device_type})


def cut(events: list[Event], sizes: list[int]) -> list[list[Event]]:
    """Events in arrival order -> batches of the given sizes (the rest in a last batch)."""
    batches, start = [], 0
    for size in sizes:
        if start >= len(events):
            break
        batches.append(events[start:start + size])
        start += size
    if start < len(events):
        batches.append(events[start:])
    return batches


def arrive_then_final(state, events: list[Event], settings: SessionSettings) -> Step:
    """One user's events arrive (nothing final yet), then the watermark passes the newest of them:
    the state after both steps, with both steps' outputs (the later profile)."""
    arrived = process_events(state, events, 0, settings)
    upto = max(e.event_ms for e in events) + 1
    final = process_timeout(arrived.state, upto, settings) if arrived.state is not None else arrived
    merged = Outputs()
    for name in ("events", "event_fixes", "duplicates", "sessions", "retracted", "alerts", "actions"):
        setattr(merged, name, getattr(arrived.out, name) + getattr(final.out, name))
    merged.first_writes = arrived.out.first_writes | final.out.first_writes
    merged.profile = final.out.profile if final.out.profile is not None else arrived.out.profile
    return Step(final.state, merged, final.timeout_ms)
