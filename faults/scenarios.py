"""The fault scenarios (DESIGN.md §16, `make faults`). Each returns one row: scenario, events sent,
distinct events in the store, events counted twice, lost, recovered without a human, seconds
to recover, and what the job did (its exits and their one-line causes).

The job consumes a backlog in small batches (MAX_OFFSETS_PER_TRIGGER) while the fault hits, so
batch boundaries are set by offsets and the faulted run can be compared document by document
with an uninterrupted run of the same topic: equality of every collection is the test.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
from pymongo import MongoClient

from app.config import parse_duration
from bench.latency import percentile
from faults.harness import (BOOTSTRAP, MONGODB_URI, WORK, SupervisedJob, Workload, differences, drop, read_records,
                            say, service, snapshot, store_counts, wait_until)

BATCH = {"MAX_OFFSETS_PER_TRIGGER": "200"}


def reference(workload, env: dict = BATCH) -> dict:
    """The uninterrupted run of the workload's topic (--available-now, the job settings `env`):
    what every faulted run must end up equal to."""
    database = workload.topic + "_ref"
    job = SupervisedJob("reference", workload.topic, database, **env)
    shutil.rmtree(job.checkpoint, ignore_errors=True)
    result = job.run_once("--available-now", "--reset-output")
    if result.returncode != 0:
        raise RuntimeError("the reference run failed:\n" + (result.stdout + result.stderr)[-3000:])
    expected = snapshot(database)
    drop(database)
    return expected


def _batches(database: str) -> int:
    client = MongoClient(MONGODB_URI)
    try:
        return client[database].stream_progress.count_documents({"query": "sessions"})
    finally:
        client.close()


def faulted_run(name: str, workload: Workload, expected: dict, inject, timeout_s: float = 900,
                checkpoint_dir: Path | None = None, **env: str) -> dict:
    """Starts the supervised job, lets it finish a few batches, runs `inject(job)` (which returns
    when the fault is over), then waits until every collection equals the reference."""
    database = f"{workload.topic}_{name}".replace("-", "_")[:60]
    drop(database)
    job = SupervisedJob(name, workload.topic, database, checkpoint_dir=checkpoint_dir, **{**BATCH, **env})
    shutil.rmtree(job.checkpoint, ignore_errors=True)
    say(f"{name}: starting the job on {workload.topic} ({workload.records} records)")
    job.start()
    try:
        wait_until(lambda: _batches(database) >= 3, 300, f"{name}: three batches")
        fault_started = time.time()
        note = inject(job) or ""
        fault_ended = time.time()
        recovered = True
        try:
            wait_until(lambda: _caught_up(database, workload) and snapshot(database) == expected, timeout_s,
                       f"{name}: outputs equal to the uninterrupted run", interval_s=3)
        except TimeoutError:
            recovered = False
        recover_s = time.time() - fault_ended
    finally:
        job.stop()
    actual = snapshot(database)
    row = {"scenario": name, **store_counts(database, workload), "recovered": recovered,
           "equal_to_reference": not differences(expected, actual), "differences": differences(expected, actual),
           "fault_s": round(fault_ended - fault_started, 1), "recover_s": round(recover_s, 1),
           "exits": len(job.exits), "causes": sorted({e["error"] or f"exit {e['code']}" for e in job.exits}),
           "note": note}
    say(f"{name}: {row}")
    drop(database)
    return row


def _caught_up(database: str, workload: Workload) -> bool:
    client = MongoClient(MONGODB_URI)
    try:
        db = client[database]
        return (db.enriched_events.count_documents({}) >= workload.events
                and db.quarantined_events.count_documents({}) >= len(workload.malformed))
    finally:
        client.close()


def _service_down(service_name: str, label: str, seconds: float):
    """An inject that stops a local service for `seconds`, then starts it again."""
    def inject(job):
        service("down", service_name)
        time.sleep(seconds)
        service("up", service_name)
        return f"{label} down {seconds:.0f} s"
    return inject


def store_outage(workload: Workload, expected: dict, seconds: float = 60) -> dict:
    """The MongoDB-compatible server stopped for `seconds` while the job is mid-stream."""
    return faulted_run("store-outage", workload, expected, _service_down("mongo", "FerretDB", seconds))


def broker_restart(workload: Workload, expected: dict, seconds: float = 15) -> dict:
    """Kafka stopped and started again while the job is mid-stream (its data survives)."""
    return faulted_run("broker-restart", workload, expected, _service_down("kafka", "Kafka", seconds))


def kill_9(workload: Workload, expected: dict, kills: int = 5, seed: int = 3) -> dict:
    """kill -9 of the driver at random points inside batches; the supervisor restarts it."""
    rng = random.Random(seed)

    def inject(job):
        done = 0
        for i in range(kills):
            batches = _batches(job.database)
            try:
                wait_until(lambda: _batches(job.database) > batches, 120, f"a batch before kill {i + 1}", 0.2)
            except TimeoutError:
                break  # the job finished the topic: no batch left to kill
            time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the next batch
            job.kill_hard()
            done += 1
            wait_until(lambda: len(job.exits) > i, 60, f"the supervisor to see kill {i + 1}", 0.2)
        return f"{done} kills at random points" + ("" if done == kills else f" (of {kills}: the job finished first)")
    return faulted_run("kill-9", workload, expected, inject)


def hung_batch(workload: Workload, expected: dict, stall_after: str = "60s") -> dict:
    """The Python workers frozen (SIGSTOP) mid-stream: a batch that never returns. The job's
    watchdog must notice the stall, exit, and the restart must replay the batch exactly."""
    def inject(job):
        exits = len(job.exits)
        frozen = []
        for process in job.python_workers():
            try:  # a forked worker may end between the listing and the signal
                process.suspend()
                frozen.append(process)
            except psutil.Error:
                pass
        if not frozen:
            raise RuntimeError("no Python worker to freeze")
        try:
            wait_until(lambda: len(job.exits) > exits, 600, "the job to exit on its stalled batch", 1)
        finally:
            for process in frozen:  # orphans of the dead driver's JVM: nothing else would end them
                try:
                    process.kill()
                except psutil.Error:
                    pass
        return f"{len(frozen)} Python workers frozen; HEALTH_STALL_AFTER {stall_after}"
    return faulted_run("hung-batch", workload, expected, inject, MONGODB_RETRY_TIMEOUT="10s",
                       HEALTH_STALL_AFTER=stall_after)


def data_faults(name: str, workload: Workload) -> dict:
    """Duplicates or poison records in the topic: nothing to recover from, everything to count."""
    expected = reference(workload)
    row = faulted_run(name, workload, expected, lambda job: None)
    row["note"] = (f"{workload.copies} copies sent, {row['copies_skipped']} skipped as duplicates; "
                   f"{len(workload.malformed)} malformed records, {row['quarantined']} quarantined")
    return row


def checkpoint_disk_full(workload: Workload, expected: dict, size_mb: int = 256, full_s: float = 30) -> dict:
    """The checkpoint on a small tmpfs, filled up mid-stream for `full_s`, then freed."""
    mount = WORK / "small-checkpoint-fs"
    mount.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"scenario": "checkpoint-disk-full", "skipped": f"mount tmpfs failed: {mounted.stderr.strip()}"}

    def inject(job):
        filler = mount / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
        exits = len(job.exits)
        try:
            wait_until(lambda: len(job.exits) > exits, 120, "the job to stop on the full disk", 1)
            time.sleep(full_s)
        finally:
            filler.unlink()
        return f"checkpoint fs full; job exits while full: {len(job.exits) - exits}"
    try:
        return faulted_run("checkpoint-disk-full", workload, expected, inject, checkpoint_dir=mount / "ckpt")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


LIVE = {"WATERMARK_DELAY": "5s", "SESSION_GAP": "1m"}  # live traffic: events final 5 s after they happen


class LiveWorkload:
    """Events sent live at a fixed rate (event time = send time) into a fresh topic: no copies and
    no malformed records, so every record is a distinct event."""

    def __init__(self, rate: int, seconds: float):
        from bench import load, workload
        self.topic = f"faults_live_{os.getpid()}_{int(time.time())}"
        self.rate, self.seconds = rate, seconds
        WORK.mkdir(parents=True, exist_ok=True)
        load.fresh_topic(BOOTSTRAP, self.topic)
        self.malformed: list = []
        self._events = workload.events(int(rate * seconds) + 1, seed=41)
        self.records = self.events = 0

    def send(self) -> dict:
        """Blocks while sending; event_time is stamped with each event's send time."""
        from bench import load

        def stamped():
            for event in self._events:
                now = datetime.now(timezone.utc)
                yield {**event, "event_time": now.strftime("%Y-%m-%d %H:%M:%S.%f")}
        sent = load.paced(BOOTSTRAP, self.topic, stamped(), self.rate, self.seconds)
        self.records = self.events = sent["events"]
        return sent

    copies = 0


def _act_latencies(database: str, start: float, end: float, gap_s: float) -> dict:
    """Per act-lane topic, for what became known in [start, end]: the first message showing it (a
    session message: the first with that session_end; an alert or action: its first copy) -> its
    Kafka timestamp - the moment it became known, p50/p99 in seconds, and how many; and how many of
    those of the window's second half had their message before the window ended (with the store
    down: nothing waited for it). That moment is the event's time, except for an action on
    `session_closed`: the close, `gap_s` after the session's last event (its event_ms), before
    which no one can know the session ended."""
    figures, middle = {}, (start + end) / 2
    for kind, id_field, field in (("segments", "_id", "session_end"), ("alerts", "alert_id", "event_ms"),
                                  ("actions", "execution_id", "event_ms")):
        first: dict[tuple, float] = {}
        for record in read_records(f"{database}_{kind}"):
            value = json.loads(record.value)
            at = value.get(field)
            if at and kind == "actions" and value.get("on") == "session_closed":
                at += gap_s * 1000
            if at and start <= at / 1000 <= end:
                key = (value.get(id_field), at)
                first[key] = min(first.get(key, float("inf")), record.timestamp / 1000 - at / 1000)
        delays = sorted(first.values())
        before_end = sum(1 for (_, at), delay in first.items() if at / 1000 >= middle and at / 1000 + delay < end)
        figures[kind] = {"messages": len(delays), "p50_s": percentile(delays, 50), "p99_s": percentile(delays, 99),
                         "second_half_sent_before_end": before_end}
    return figures


def store_outage_live(rate: int = 200, before_s: float = 60, outage_s: float = 60, after_s: float = 30) -> dict:
    """FerretDB down for outage_s under live traffic at `rate` events/s (issue 19): what reached
    the act lane meanwhile (event -> message latency on the segments, alerts and actions topics,
    for the events that happened during the outage), then every collection and topic against an
    uninterrupted run of the same topic (--available-now, after the traffic)."""
    work = LiveWorkload(rate, before_s + outage_s + after_s)
    name = "store-outage-live"
    database = work.topic
    drop(database)
    job = SupervisedJob(name, work.topic, database, **LIVE)
    shutil.rmtree(job.checkpoint, ignore_errors=True)
    say(f"{name}: the job live on {work.topic}; {rate}/s for {before_s:.0f} s, FerretDB down {outage_s:.0f} s, "
        f"{after_s:.0f} s more")
    job.start()
    try:
        wait_until(lambda: job.status() is not None, 300, f"{name}: the job's health endpoint", 1)
        sender = threading.Thread(target=work.send, daemon=True)
        sender.start()
        time.sleep(before_s)
        down_at = time.time()
        service("down", "mongo")
        time.sleep(outage_s)
        service("up", "mongo")
        up_at = time.time()
        sender.join()
        wait_until(lambda: _caught_up(database, work), 600, f"{name}: every event stored", 3)
        recover_s = time.time() - up_at  # every event stored; equality is checked after the reference run
        expected = reference(work, LIVE)
        recovered = True
        try:
            wait_until(lambda: snapshot(database) == expected, 300, f"{name}: outputs equal to the uninterrupted run", 3)
        except TimeoutError:
            recovered = False
    finally:
        job.stop()
    actual = snapshot(database)
    acts = _act_latencies(database, down_at, up_at, parse_duration("SESSION_GAP", LIVE["SESSION_GAP"]))
    shown = "; ".join(f"{kind} {f['messages']} msgs p50 {f['p50_s']} s p99 {f['p99_s']} s" for kind, f in acts.items())
    row = {"scenario": name, **store_counts(database, work), "recovered": recovered,
           "equal_to_reference": not differences(expected, actual), "differences": differences(expected, actual),
           "fault_s": round(up_at - down_at, 1), "recover_s": round(recover_s, 1), "exits": len(job.exits),
           "causes": sorted({e["error"] or f"exit {e['code']}" for e in job.exits}), "act_latency": acts,
           "note": f"FerretDB down {up_at - down_at:.0f} s at {rate} events/s; event -> act lane for events during "
                   f"the outage (a session_closed action: from the close, SESSION_GAP {LIVE['SESSION_GAP']} after "
                   f"the session's last event): {shown} (goal: alerts and actions p99 <= 3 s)"}
    say(f"{name}: {row}")
    drop(database)
    return row
