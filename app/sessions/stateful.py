"""Spark adapter for the per-user state machine on the RocksDB state store (applyInPandasWithState here).

The state is keyed by user: one state row per user_id holds the user's open sessions and session
id generations (app/sessions/tracker.py, JSON). Spark calls the Python function once per user
that has events in the micro-batch, and once per user whose timeout the watermark passed; no
other user's state is read, decoded or rewritten, so a batch costs in proportion to the users it
touches, whatever the number of open sessions (`numRowsUpdated` of the state operator counts them).

Measured alternatives (tests/stream, bench/): one state row per hash bucket of sessions (v1)
rewrote every open session of a touched bucket, and a batch of ~700 events touched all 128
buckets: the whole state was re-encoded every batch. On Spark 4.2 the same per-user step also runs
on transformWithState (app/sessions/tws.py, STATE_OPERATOR, the job's default): its event-time
timers spare the scan of every state entry that applyInPandasWithState's timeouts make each batch
(bench/results/state_operator.md).

Bad records travel through the same operator under their own key (`quarantined`, Kafka partition):
they are passed through untouched and never read or write state. That keeps validation to one
parse per record with one "now" per batch, and one query whose output holds every record once.

Late events must reach the state function (they are counted and still written), but Spark drops
rows behind the watermark before a stateful operator whenever its input carries the watermarked
column. So the watermark is defined on event_timestamp upstream (in the job, one per Kafka
partition: app/pipeline.py event_time_source; it still drives the event-time timeouts), and the
operator's input carries `watermark_guard` instead: a constant far-future
timestamp with the watermark metadata, which satisfies the analyzer and is never "late".
"""
from __future__ import annotations

import json
import re
from typing import Iterator, NamedTuple

import pandas as pd
from pyspark.sql import DataFrame, functions as F
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout

from app.config import APPLY_IN_PANDAS, STATE_OPERATORS, TRANSFORM_WITH_STATE, InvalidConfigError
from app.events.enrich import SESSION_INPUT_COLUMNS
from app.actions.triggers import parse_trigger_rules
from app.experiments.design import parse_experiments
from app.profiles.alerts import Alert
from app.profiles.rules import parse_profile_rules
from app.segments.rules import parse_rules
from app.sessions.lean_arrow import LeanUdf, arrow_path
from app.sessions.tracker import Event, SessionSettings, Step, UserState, process_events, process_timeout


class OutputRow(NamedTuple):
    """One row of the operator's output; `kind` says which fields are set."""
    kind: str                         # event | event_fix | duplicate | session | retract | quarantine | profile
                                      # | alert | action
    id: str                           # event_id | event_id | event_id | session _id | session _id | quarantine _id
                                      # | user_id | alert id | execution id
    doc: str | None                   # the event, session or quarantine document as JSON; retract: its message
    session_id: str | None = None     # event, event_fix: its session (None when late and unsessionized)
    seconds_since_prev: float | None = None   # event, event_fix
    is_late: bool | None = None       # event
    status: str | None = None         # session: active | closed
    first_write: bool | None = None   # session: never written before (insert, not replace)


_TYPES = {"kind": "string", "id": "string", "doc": "string", "session_id": "string",
          "seconds_since_prev": "double", "is_late": "boolean", "status": "string", "first_write": "boolean"}
OUTPUT_SCHEMA = ", ".join(f"{name} {_TYPES[name]}" for name in OutputRow._fields)
STATE_SCHEMA = "user_state string"
WATERMARK_DELAY_KEY = "spark.watermarkDelayMs"  # Spark's EventTimeWatermark.delayKey
_GUARD_TS = "2200-01-01 00:00:00"  # far future, yet inside pandas' nanosecond range


INPUT_COLUMNS = ("quarantined", "state_key", *SESSION_INPUT_COLUMNS, "doc", "watermark_guard")


def sessionize(rules_document: dict, gap_s: float, max_s: float, watermark_delay_s: float,
               id_retention_s: float = 30 * 24 * 3600, lean: bool = False, profile_rules_document: dict | None = None,
               stored_profile=None, trigger_rules_document: dict | None = None,
               experiments_document: dict | None = None, max_open_sessions: int = 100, watermarked: bool = False,
               operator: str = APPLY_IN_PANDAS):
    """Routed records (app/events/enrich.py) -> OutputRow rows: every event, duplicate and bad record
    once, every session the batch changed, and with profile rules each changed user's profile
    totals and the alerts raised, with trigger rules the trigger executions, with experiments the
    sessions' variants. `stored_profile`: user_id -> stored profile document or None (a
    picklable callable, run in the Python workers; see SessionSettings). `lean`: use
    app/sessions/lean_arrow.py (LEAN_ARROW; InvalidConfigError on a pyspark it was not written
    for). `watermarked`: the input already carries its watermark(s) on event_timestamp (one per
    Kafka partition, see app/pipeline.py). `operator`: STATE_OPERATOR, the Spark operator that keeps
    the state: applyInPandasWithState (here: it needs no RocksDB state store) or transformWithState
    (app/sessions/tws.py, the job's default); both run the same `process` below."""
    if operator not in STATE_OPERATORS:
        raise InvalidConfigError(f"STATE_OPERATOR={operator!r}: one of {', '.join(STATE_OPERATORS)}")
    if lean and operator != APPLY_IN_PANDAS:
        raise InvalidConfigError(f"LEAN_ARROW=true is a path of {APPLY_IN_PANDAS} only, not of "
                                 f"STATE_OPERATOR={operator}: set one of them")
    lean = arrow_path(lean).lean
    state_function, process = _state_function(rules_document, int(gap_s * 1000), int(max_s * 1000),
                                              int(id_retention_s * 1000), lean, profile_rules_document,
                                              stored_profile, trigger_rules_document, experiments_document,
                                              max_open_sessions)
    delay_ms = int(watermark_delay_s * 1000)

    def transform(records: DataFrame) -> DataFrame:
        guard = F.lit(_GUARD_TS).cast("timestamp").alias("watermark_guard", metadata={WATERMARK_DELAY_KEY: delay_ms})
        if not watermarked:
            records = records.withWatermark("event_timestamp", f"{delay_ms} milliseconds")
        grouped = records.select(*INPUT_COLUMNS[:-1], guard).groupBy("quarantined", "state_key")
        if operator == TRANSFORM_WITH_STATE:
            from app.sessions.tws import SessionProcessor  # pyspark >= 4.1
            return grouped.transformWithState(SessionProcessor(process), OUTPUT_SCHEMA, "Update", "EventTime")
        return grouped.applyInPandasWithState(state_function, OUTPUT_SCHEMA, STATE_SCHEMA, "update",
                                              GroupStateTimeout.EventTimeTimeout)

    return transform


def _state_function(rules_document: dict, gap_ms: int, max_ms: int, id_retention_ms: int, lean: bool,
                    profile_rules_document: dict | None = None, stored_profile=None,
                    trigger_rules_document: dict | None = None, experiments_document: dict | None = None,
                    max_open_sessions: int = 100):
    settings_cache: list[SessionSettings] = []

    def settings() -> SessionSettings:
        if not settings_cache:  # parsed once per Python worker, not per group
            profile_rules = None if profile_rules_document is None else parse_profile_rules(profile_rules_document)
            triggers = None if trigger_rules_document is None else parse_trigger_rules(trigger_rules_document)
            experiments = None if experiments_document is None else parse_experiments(experiments_document)
            settings_cache.append(SessionSettings(gap_ms, max_ms, parse_rules(rules_document), id_retention_ms,
                                                  profile_rules, stored_profile, triggers, experiments,
                                                  max_open_sessions))
        return settings_cache[0]

    def process(key: tuple, columns: dict | None, state: GroupState) -> list[OutputRow]:
        """One group: a user's events (columns by name; None when the group timed out), or bad records."""
        quarantined, _ = key
        if quarantined:  # bad records: passed through, no state
            return [OutputRow("quarantine", json.loads(doc)["_id"], doc) for doc in columns["doc"]]
        watermark_ms = state.getCurrentWatermarkMs()
        previous = UserState.decode(state.get[0]) if state.exists else None
        if columns is None:
            step, docs = process_timeout(previous, watermark_ms, settings()), {}
        else:
            events, docs = _events(columns)
            step = process_events(previous, events, watermark_ms, settings())
        _save(state, step)
        return _rows(step, docs, key[1])

    def new_users(keys: list | None) -> None:
        """The lean path names each Arrow batch's users without a state entry: their stored
        profiles are read ahead, on threads, while the users before them are processed."""
        if profile_rules_document is None or not hasattr(stored_profile, "prefetch"):
            return
        if keys is None:
            stored_profile.forget()
        else:
            stored_profile.prefetch([user for quarantined, user in keys if not quarantined])

    lean_udf = LeanUdf(process, [c if c in _READ + ("quarantined", "state_key") else None
                                 for c in INPUT_COLUMNS], new_users) if lean else None

    def run(key: tuple, batches: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        """Spark's own pandas path (LEAN_ARROW=false, the default)."""
        assert lean_udf is None or lean_udf.core is process  # travels with the function: installs the lean path
        frame = None if state.hasTimedOut else pd.concat(list(batches), ignore_index=True)
        columns = None if frame is None else {name: frame[name].tolist() for name in _READ}
        yield pd.DataFrame.from_records(process(key, columns, state), columns=OutputRow._fields)

    return run, process


_READ = ("doc", *SESSION_INPUT_COLUMNS)


def _save(state: GroupState, step: Step) -> None:
    if step.state is None:
        state.remove()
    else:
        state.update((step.state.encode(),))
        if step.timeout_ms is not None:  # None: a profile kept after the user's entry expired, no timeout
            state.setTimeoutTimestamp(step.timeout_ms)


def _events(columns: dict) -> tuple[list[Event], dict]:
    """The group's rows as tracker Events, and event_id -> event document."""
    names = ("event_ms", "event_id", "event_type", "user_id", "user_session", "product_id", "category_id", "price",
             "category_code", "device_type", "country", "ip_address")
    events = [Event(int(ms), event_id, event_type, user_id, *map(_none_if_nan, rest))
              for ms, event_id, event_type, user_id, *rest in zip(*(columns[name] for name in names))]
    ids = columns["event_id"]
    if len(set(ids)) == len(ids):
        return events, dict(zip(ids, columns["doc"]))
    # A redelivered event's copies in one batch: put in Kafka order (partition, offset), so the
    # earliest copy is kept, as it is when the copies come in different batches (a row's order in
    # a group is not Kafka's).
    positions = [_kafka_position(doc) for doc in columns["doc"]]
    order = sorted(range(len(events)), key=positions.__getitem__)
    docs: dict = {}
    for i in order:
        docs.setdefault(ids[i], columns["doc"][i])
    return [events[i] for i in order], docs


_POSITION = re.compile(r'"kafka_partition":(-?\d+),"kafka_offset":(-?\d+)')


def _kafka_position(doc: str) -> tuple[int, int]:
    """(partition, offset) of an enriched event document (app/events/enrich.py EVENT_DOC_FIELDS)."""
    found = _POSITION.search(doc)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _none_if_nan(value):
    return None if value is None or value != value else value


def _retracted(session_id: str, user_id: str) -> str:
    """A retracted session's message on the segments topic (the store only deletes it by id)."""
    return json.dumps({"_id": session_id, "user_id": user_id, "status": "retracted"}, separators=(",", ":"))


def _fix_doc(e, user_id: str) -> str:
    """A correction's message: whose event (app/sinks/user_activity.py), and its time, type and
    country, the hour and keys of live_feed's event buckets that may hold it (app/sinks/live_feed.py)."""
    ev = e.event
    return json.dumps({"user_id": user_id, "event_ms": ev.event_ms, "event_type": ev.event_type,
                       "country": ev.country}, separators=(",", ":"))


def _rows(step: Step, docs: dict, user_id: str) -> list[OutputRow]:
    out = step.out
    rows = [OutputRow("event", e.event_id, docs.get(e.event_id), e.session_id, e.seconds_since_prev, e.is_late)
            for e in out.events]
    rows += [OutputRow("event_fix", e.event_id, _fix_doc(e, user_id), e.session_id, e.seconds_since_prev, False)
             for e in out.event_fixes]
    rows += [OutputRow("duplicate", event_id, None) for event_id in out.duplicates]
    rows += [OutputRow("retract", session_id, _retracted(session_id, user_id), session_id)
             for session_id in out.retracted]
    rows += [OutputRow("session", doc["_id"], json.dumps(doc, separators=(",", ":")), doc["_id"],
                       status=doc["status"], first_write=doc["_id"] in out.first_writes)
             for doc in out.sessions]
    if out.profile is not None:
        rows.append(OutputRow("profile", out.profile["user_id"], json.dumps(out.profile, separators=(",", ":"))))
    rows += [OutputRow("alert", alert.alert_id, json.dumps(alert_message(alert), separators=(",", ":")),
                       alert.session_id) for alert in out.alerts]
    rows += [OutputRow("action", action["execution_id"], json.dumps(action, separators=(",", ":")),
                       action["session_id"]) for action in out.actions]
    return rows


def alert_message(alert: Alert) -> dict:
    """The alert as its behavior_alerts document and Kafka message (dates as epoch millis)."""
    return {"alert_id": alert.alert_id, "alert_type": alert.alert_type, "severity": alert.severity,
            "user_id": alert.user_id, "session_id": alert.session_id, "first_event_ms": alert.first_event_ms,
            "event_ms": alert.event_ms, "evidence": alert.evidence, "rule_version": alert.rule_version}
