"""Exactly once under replay (DESIGN.md §8): how every write survives a crash and a replayed batch.

Spark's checkpoint makes a micro-batch all-or-nothing for the state store and the offsets, but
not for MongoDB: a crash (even `kill -9`) after some writes and before the batch's commit replays
the whole batch, with the same input, the same state before it and the same batch_id, so the
state step emits the same rows again. Each collection is written so that writing the same rows
twice leaves what writing them once leaves:

1. enriched_events and quarantined_events: insert-or-ignore on a deterministic `_id` (event_id;
   `topic:partition:offset`). A second insert of the same document is a duplicate-key no-op.
   An event's session fields are corrected (`event_fix` rows: a `$set` of session_id and
   seconds_since_prev by `_id`) when an earlier arrival or the event becoming final changes them;
   a `$set` of the same values twice is the same. The correction is never in the batch of the
   insert (an event becomes final in a later batch than the one it arrives in).
2. user_behavior_segments: whole-document writes by `_id` (the session id). The state says
   whether a session's document exists (`first_write`: its id is not among the user's written
   ones); a first write is inserted and, if a replayed batch finds it there, replaced; later
   writes replace. The last write of a batch carries the batch's final figures either way. A
   provisional session that the final events did not confirm is deleted by `_id` where its
   status is still `active` (`retract` rows): deleting twice is deleting once, and a closed
   document is never deleted. A batch never both writes and retracts one id. A first write that
   finds a closed document which ended before it started (its user_session reused after the
   user's entry expired) first copies that one to its archived id (an upsert), then replaces it.
3. conversion_funnel and segment_distribution: additive sums, so each batch's deltas must be
   added exactly once per document. Each document stores the `(run_id, batch_id)` of the last
   batch applied to it (`run_id` = the query id, which lives in the checkpoint); a batch whose
   id is not newer than the stored one was applied before the crash and is skipped.
4. unique_users of both: member collections (`conversion_funnel_users`,
   `segment_distribution_users`) hold one document per (group, user), tagged with the run and
   batch that first inserted it. A marker in stream_progress (`members:<collection>:<run_id>`,
   written before the inserts) tells a replayed batch from a fresh one: in a fresh batch every
   duplicate-key member was counted by an earlier batch; in a replay, a duplicate tagged with
   this very batch was inserted by the failed attempt and is counted again for this batch.
5. Derived figures (rates, averages, share_pct) are recomputed from the stored sums on each
   write, never accumulated.
6. user_profiles: the state step emits the totals of the user's current state epoch plus its
   `base` (the totals of the user's earlier epochs), the same on a replay: both come from the
   state before the batch. An expired entry leaves behind what its last update stored (the
   tracker's `left` entry), and the next epoch takes its totals as the base, so nothing is read
   from the store. (A checkpoint started before `left` existed reads the stored document once
   when a user without an entry comes; a replayed batch that opens the epoch again finds the
   document its failed attempt wrote, with the same epoch id, and takes that document's own
   base: app/profiles/profile.py `base_of`.) The sink inserts a
   user's first document and replaces later ones, reading nothing. The state keeps a digest of
   the last update emitted, so an unchanged profile (a session closing changes nothing stored:
   open sessions are folded in as they stand) is not rewritten; a replay starts from the same
   digest and decides the same. Scores and pattern are derived from the totals; the state step
   puts the scores on the user's session documents itself.
7. behavior_alerts: insert-or-ignore on the alert id (type:user:first event time of the
   evidence), which the state step derives from the state before the batch. The Kafka topic
   `behavior_alerts` is at-least-once: a replayed batch sends its alerts again with the same
   ids, and consumers deduplicate by alert_id. Alerts are raised by final events only (in event-
   time order), so the same events raise the same ids however the batches were cut.

8. trigger_executions: insert-or-ignore on the execution id (trigger:user:event time of what
   fired it), derived, with the cooldowns, from the state before the batch. The Kafka topic
   `behavior_actions` is at-least-once like the alerts topic: consumers deduplicate by
   execution_id.
9. experiment_results: per experiment x variant, the sums (exposed sessions, conversions) are
   added once per batch as in 3, tagged with (run_id, batch_id); the statistics are derived from
   the sums of all the experiment's variants on each write (app/experiments/results.py).
10. event_counts_hourly, daily_metrics, session_paths and retention_cohorts (app/rollups.py; what the API
   reads instead of scanning): additive sums per document, added once per batch as in 3; the
   distinct users of retention_cohorts come from the member collection `retention_users` as in 4.
   daily_metrics' day and month documents hold nested sums (minutes as whole milliseconds, revenue to the
   cent, so the grouping into batches does not show); its two range documents a max, a min and a
   union of days, the same however often a batch is applied.
11. The act lane's session topic (`behavior_segments`, app/pipeline.py `SessionBatchWriter.act_messages`):
   each session write of 2 (and each retraction) is a message keyed by user_id, sent by the
   sessions batch itself (the store query writes the document later). A replayed batch sends the same messages again, so a session's latest
   message is its document, and a retracted session's latest says so; the fault suite and the
   kill -9 test compare each session's latest message with an uninterrupted run's (faults/harness.py
   `latest_session_messages`).

12. The store lane (app/sinks/store_lane.py): every write above is made by the store query from
   messages the sessions batch sent to STORE_TOPIC, grouped by that batch and applied oldest
   first. A replayed sessions batch sends the same messages again (after the first ones, before
   any later batch's), so its group is applied twice, which 1-11 make the same as once. The sums
   are tagged with (sessions batch, chunk) instead of the batch alone (`store_lane.CHUNKS_PER_BATCH`:
   a batch's closed sessions travel in chunks of a bounded size). A replayed store batch applies
   its groups again in order; the member marker of 4 never moves back, so a group re-applied after
   a later one still knows the later one as a replay.
13. user_activity (app/sinks/user_activity.py; what the per-user endpoints read by _id): a third
   query, `activity`, reads the store lane on its own trigger and merges each user's event,
   correction, session and retract rows into the user's document in message order (by Kafka
   partition and offset: one document's messages share a partition), with the rules of 1 and 2:
   an event is inserted once and only its session field is corrected, a session is replaced, a
   retracted active one removed, a reused id's closed one archived. Merging the same rows again
   onto the document they produced leaves it unchanged, so a replayed activity batch is harmless.
   The document keeps only the newest events and closed sessions; what it drops can never climb
   back above what it keeps (events and closed sessions do not change their times), and open
   sessions are never dropped, so the document is what the uncut collections show, however the
   batches of either query are cut (tests/unit/test_user_activity.py). Stored packed (each event
   and session one JSON string, packing.py): the same document gives the same text.
14. live_feed (app/sinks/live_feed.py; what /v1/alerts, /v1/trigger-executions and /v1/activity
   without user_id read by _id):
   the activity query also files each alert and action into hour buckets (all, and per filter
   value), insert-or-ignore by id as behavior_alerts and trigger_executions take them. Alerts and
   executions never change, so a bucket is the newest KEPT distinct items of its hour: an item a
   bucket drops is older than every one it keeps, and the kept ones only get newer, so a
   replayed or redelivered item is ignored or dropped again, and any cut of the batches leaves
   the same buckets and hour lists (tests/unit/test_live_feed.py). Events are filed so too, and
   their one changing field, the session, by each `event_fix` row to the buckets holding the
   event (the row carries its time, type and country), in message order: an event's rows share
   its key, so they keep their order, and a replayed batch's copies come before any later
   batch's; a correction of an event a bucket dropped is dropped with it. So an event bucket is
   its hour's newest events with their latest sessions, for any cut (tests/unit/test_live_feed.py,
   and spark_like's properties in tests/unit/test_event_time.py). The wall-clock field
   (detected_at, executed_at) is the activity query's, from the first copy it saw. The same
   collection holds the open sessions by (action_priority, minute of session_end) for /v1/act-now
   (app/sinks/open_sessions.py): the activity query files each user's open sessions as the
   user's document has them before and after the batch (all of them: 13 never cuts open
   sessions), removing a session from where its old version was and adding it where its new one
   is, and deletes a bucket once empty; so the buckets are a function of the open sessions alone
   (the properties of tests/unit/test_event_time.py compare them too), and so is each priority's
   head (its newest open sessions), rebuilt from its buckets after they are written. A bucket's
   pages are written in an order that loses no session a write cut short had not moved
   (tests/unit/test_open_sessions.py). It holds the users by
   engagement score for /v1/users/segments too (app/sinks/leaderboard.py): each user's rank
   (score, last segment) is its newest profile row's (one key, so one partition: message order,
   and a replayed batch's copies come before any later batch's), kept in the user's document,
   and filed the same way, into pages that are sets of ids: a function of the users' ranks alone
   (tests/unit/test_leaderboard.py; test_user_activity.py for cuts, replays and crashes).

A new checkpoint is a new run_id: its aggregates would add to another run's sums, so a new
checkpoint needs a fresh database (`make reset`).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

from pymongo import ReplaceOne

from app import aggregates as A, rollups as R
from app.experiments.design import Experiments
from app.experiments.results import variant_documents
from app.segments.rules import METRICS
from app.sinks.collections import (DAILY, DISTRIBUTION, DISTRIBUTION_USERS, EVENT_COUNTS, EXPERIMENT_RESULTS, FUNNEL,
                                   FUNNEL_USERS, PATHS, PROGRESS, RETENTION, RETENTION_USERS)
from app.sinks.mongo import insert_returning_duplicates


def _now() -> datetime:
    return datetime.now(timezone.utc)


def closed_session_figures(doc: dict) -> dict:
    """A closed session document (epoch-millis dates) -> the figures the aggregates add up."""
    return {"session_id": doc["_id"], "behavior_segment": doc["behavior_segment"], "user_id": doc["user_id"],
            "session_end_ms": doc["session_end"], "session_duration_minutes": doc["session_duration_minutes"],
            "view_count": doc["view_count"], "cart_count": doc["cart_count"],
            "purchase_count": doc["purchase_count"], "total_amount": doc["total_amount"],
            "experiments": doc.get("experiments") or {}, "event_path": doc.get("event_path"),
            "session_start_ms": doc["session_start"], "user_cohort_week": doc.get("user_cohort_week"),
            "metrics": {name: doc.get(name) for name in METRICS}}


def apply_closed_sessions(db, run_id: str, batch_id: int, closed: list[dict],
                          experiments: Experiments | None = None) -> None:
    """Folds one batch's closed sessions into conversion_funnel, segment_distribution and (with
    experiments) experiment_results, once."""
    if not closed:
        return
    if experiments is not None:
        _apply_experiments(db[EXPERIMENT_RESULTS], experiments, run_id, batch_id, closed)
    funnel_users = _new_members(db[FUNNEL_USERS], run_id, batch_id, {
        f"{s['behavior_segment']}|{s['user_id']}": s["behavior_segment"] for s in closed})
    for segment, delta in A.funnel_deltas(closed).items():
        delta["unique_users"] = funnel_users.get(segment, 0)
        _apply_once(db[FUNNEL], segment, run_id, batch_id, delta, A.FUNNEL_SUMS,
                    lambda sums, seg=segment: A.funnel_document(seg, sums))

    window_users = _new_members(db[DISTRIBUTION_USERS], run_id, batch_id, {
        f"{A.window_start_ms(s['session_end_ms'])}|{s['behavior_segment']}|{s['user_id']}":
            (A.window_start_ms(s["session_end_ms"]), s["behavior_segment"]) for s in closed})
    by_window: dict = defaultdict(dict)
    for (window, segment), delta in A.distribution_deltas(closed).items():
        delta["unique_users"] = window_users.get((window, segment), 0)
        by_window[window][segment] = delta
    for window, deltas in by_window.items():
        _apply_window(db[DISTRIBUTION], window, run_id, batch_id, deltas)

    _apply_sums_once(db[PATHS], run_id, batch_id, R.path_deltas(closed), R.PATH_SUMS, R.path_document)
    _apply_daily_once(db[DAILY], run_id, batch_id, R.daily_window_deltas(by_window), R.WINDOWS)
    hours, days = R.monthly_window_deltas(by_window)
    _apply_daily_once(db[DAILY], run_id, batch_id, hours, "hours")
    _apply_daily_once(db[DAILY], run_id, batch_id, days, "days")
    _widen_range(db[DAILY], R.WINDOWS_RANGE_ID, [w for w in by_window], "last_window")
    members = R.retention_members(closed)
    if members:
        new_users = _new_members(db[RETENTION_USERS], run_id, batch_id, members)
        _apply_sums_once(db[RETENTION], run_id, batch_id, R.retention_deltas(new_users), R.RETENTION_SUMS,
                         R.retention_document)


def apply_event_counts(db, run_id: str, batch_id: int, counts: list[tuple]) -> None:
    """Folds one batch's counted events, (hour_ms, event_type, country, events) rows, into
    event_counts_hourly, once."""
    _apply_sums_once(db[EVENT_COUNTS], run_id, batch_id, R.event_count_deltas(counts), R.EVENT_COUNT_SUMS,
                     R.event_count_document)
    _apply_daily_once(db[DAILY], run_id, batch_id, R.daily_event_deltas(counts), "hours")
    _apply_daily_once(db[DAILY], run_id, batch_id, R.monthly_event_deltas(counts), "hours")
    _widen_range(db[DAILY], R.DAILY_RANGE_ID, [R.hour_start_ms(h) for h, *_ in counts], "last_hour", "first_hour")


def _widen_range(coll, doc_id: str, times_ms: list[int], last: str, first: str | None = None) -> None:
    """daily_metrics' range document: the last (and first) time and the days with any; a max, a
    min and a union, so the same however often applied."""
    if not times_ms:
        return
    previous = coll.find_one({"_id": doc_id}) or {}
    days = {A.to_datetime(t - t % (24 * R.HOUR_MS)) for t in times_ms} | {A.utc(d) for d in previous.get("days", [])}
    doc = {"_id": doc_id, last: max([A.to_datetime(max(times_ms))] + ([A.utc(previous[last])] if previous else [])),
           "days": sorted(days)}
    if first is not None:
        doc[first] = min([A.to_datetime(min(times_ms))] + ([A.utc(previous[first])] if previous else []))
    coll.replace_one({"_id": doc_id}, doc, upsert=True)


def _apply_daily_once(coll, run_id: str, batch_id: int, deltas: dict[str, dict], field: str) -> None:
    """As _apply_sums_once, for daily_metrics' documents of nested sums (`field`)."""
    _add_once(coll, run_id, batch_id, deltas,
              lambda previous, delta: R.added_daily_sums(previous, delta, field),
              lambda doc_id, delta, sums: R.daily_document(doc_id, delta, field, sums))


def _apply_sums_once(coll, run_id: str, batch_id: int, deltas: dict[str, dict], sum_names, render) -> None:
    """Adds each document's delta once (3.): documents read by _id, written in one bulk write."""
    _add_once(coll, run_id, batch_id, deltas, lambda previous, delta: A.add_sums(previous, delta, sum_names), render)


def _add_once(coll, run_id: str, batch_id: int, deltas: dict[str, dict], add, render) -> None:
    """Each document's delta added once: add(stored or None, delta) -> the sums, render(doc_id,
    delta, sums) -> the document; read by _id, written in bulk writes of 500."""
    writes, now = [], _now()
    for doc_id, delta in deltas.items():
        previous = coll.find_one({"_id": doc_id})
        if _already_applied(previous, run_id, batch_id):
            continue  # this batch was applied before the crash
        writes.append(ReplaceOne({"_id": doc_id}, {**render(doc_id, delta, add(previous, delta)), "run_id": run_id,
                                                   "batch_id": batch_id, "processing_time": now}, upsert=True))
    for start in range(0, len(writes), 500):
        coll.bulk_write(writes[start:start + 500], ordered=False)


def _apply_window(coll, window: int, run_id: str, batch_id: int, deltas: dict) -> None:
    """One 5-minute window: add this batch's sums once per segment, then every share_pct."""
    start = A.to_datetime(window)
    docs = {d["behavior_segment"]: d for d in coll.find({"window_start": start})}
    changed = set()
    for segment, delta in deltas.items():
        previous = docs.get(segment)
        if _already_applied(previous, run_id, batch_id):
            continue
        sums = A.add_sums(previous, delta, A.DISTRIBUTION_SUMS)
        docs[segment] = {**A.distribution_document(window, segment, sums), "run_id": run_id, "batch_id": batch_id}
        changed.add(segment)
    shares = A.share_pct({segment: d["session_count"] for segment, d in docs.items()})
    now = _now()
    for segment, doc in docs.items():
        if segment in changed or doc.get("share_pct") != shares[segment]:
            doc.update(share_pct=shares[segment], processing_time=now)
            coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)


def experiment_deltas(experiments: Experiments, closed: list[dict]) -> dict[str, dict[str, dict]]:
    """experiment -> variant -> {exposed_sessions, conversions} of these closed sessions."""
    deltas: dict = defaultdict(lambda: defaultdict(lambda: {"exposed_sessions": 0, "conversions": 0}))
    for session in closed:
        for name, variant in session["experiments"].items():
            try:
                experiment = experiments.by_name(name)
            except StopIteration:  # an experiment since removed from the file: not counted
                continue
            delta = deltas[name][variant]
            delta["exposed_sessions"] += 1
            delta["conversions"] += int(experiment.success(session["metrics"]))
    return deltas


def _apply_experiments(coll, experiments: Experiments, run_id: str, batch_id: int, closed: list[dict]) -> None:
    for name, by_variant in experiment_deltas(experiments, closed).items():
        experiment = experiments.by_name(name)
        stored = {d["variant"]: d for d in coll.find({"experiment": name})}
        sums, changed = {}, False
        for variant in experiment.variants:
            previous, delta = stored.get(variant.name), by_variant.get(variant.name)
            sums[variant.name] = {k: (previous or {}).get(k, 0) for k in ("exposed_sessions", "conversions")}
            if delta and not _already_applied(previous, run_id, batch_id):
                sums[variant.name] = {k: sums[variant.name][k] + delta[k] for k in delta}
                stored[variant.name] = {"run_id": run_id, "batch_id": batch_id}  # tagged with this batch
                changed = True
        if not changed:
            continue  # this batch was applied before the crash
        now = _now()
        for variant, doc in variant_documents(experiment, sums).items():
            tag = stored.get(variant) or {}
            doc.update(run_id=tag.get("run_id", run_id), batch_id=tag.get("batch_id", -1), processing_time=now)
            coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)


def _already_applied(previous: dict | None, run_id: str, batch_id: int) -> bool:
    return bool(previous) and previous.get("run_id") == run_id and previous.get("batch_id", -1) >= batch_id


def _new_members(coll, run_id: str, batch_id: int, groups_by_id: dict) -> dict:
    """Inserts member ids; counts, per group, those first seen in this batch (stable on replay).

    A marker written before the inserts tells a replayed batch from a fresh one. Fresh: every
    duplicate was seen by an earlier batch. Replayed: a duplicate may come from this batch's
    first attempt, so its batch tag is read back (by _id, which FerretDB looks up by index)."""
    marker = {"_id": f"members:{coll.name}:{run_id}"}
    marked = (coll.database[PROGRESS].find_one(marker) or {}).get("batch_id", -1)
    replay = marked >= batch_id
    if not replay:  # never moved back: a store batch replayed applies older groups again first (12.)
        coll.database[PROGRESS].replace_one(marker, {**marker, "batch_id": batch_id}, upsert=True)
    ids, counts = list(groups_by_id), defaultdict(int)
    for start in range(0, len(ids), 1000):
        chunk = [{"_id": i, "run_id": run_id, "batch_id": batch_id} for i in ids[start:start + 1000]]
        seen_before = {d["_id"] for d in insert_returning_duplicates(coll, chunk)}
        if replay:
            seen_before = {i for i in seen_before if not _tagged(coll.find_one({"_id": i}), run_id, batch_id)}
        for doc in chunk:
            if doc["_id"] not in seen_before:
                counts[groups_by_id[doc["_id"]]] += 1
    return counts


def _tagged(doc: dict | None, run_id: str, batch_id: int) -> bool:
    return bool(doc) and doc.get("run_id") == run_id and doc.get("batch_id") == batch_id


def _apply_once(coll, doc_id, run_id: str, batch_id: int, delta: dict, sum_names, render) -> None:
    previous = coll.find_one({"_id": doc_id})
    if _already_applied(previous, run_id, batch_id):
        return  # this batch was applied before the crash
    sums = A.add_sums(previous, delta, sum_names)
    doc = {**render(sums), "sum_duration_minutes": sums["sum_duration_minutes"],
           "run_id": run_id, "batch_id": batch_id, "processing_time": _now()}
    coll.replace_one({"_id": doc_id}, doc, upsert=True)


