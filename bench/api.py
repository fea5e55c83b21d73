"""`make bench-api`: the query API (app/api) under load while the job runs, and its analytics
endpoints over a large ingest. Writes bench/results/api.{json,md}.

1. Personalization while the job runs: LIVE_EVENTS events of the benchmark's session mix preloaded
   into a fresh topic, the job live on it (trigger 1 s) while a paced producer (its own process)
   keeps sending PRODUCER_RATE events/s, the API as a subprocess (`python -m app.api`, API_KEY set).
   Once /readyz answers 200 and the job has written user_profiles, real user ids are read from
   user_profiles and GET /v1/users/{id}/personalization is driven open-loop: request i is due at
   t0 + i/RATE whatever happened before it, and its latency runs from that due time to the end of
   the response (queueing in the client counts: no coordinated omission), over a pool of
   keep-alive connections (http.client, one per thread). WARMUP s at the rate are not counted, then
   SECONDS are. All this once per --job-nice value (the job's CPU niceness, JOB_NICE; default 0
   then 10), each on a fresh topic, job and database; then with the job stopped (the API alone),
   to show what the job costs.
2. The analytics endpoints after the job (available-now) has taken in a topic of EVENTS events,
   while the job runs on live from its checkpoint with the paced producer at PRODUCER_RATE events/s
   into the same topic: each endpoint called sequentially, a few warm-up calls then up to CALLS timed calls (within a
   time budget per endpoint: on FerretDB some are scans of the biggest collections), p50/p99, and
   the document count of every collection they read. The live job and the calls run once per
   --job-nice value, the job going on from its checkpoint each time.

    python -m bench.api [--events 1000000] [--live-events 200000] [--rate 200] [--seconds 60]
                        [--warmup 20] [--calls 100] [--job-nice 0,10] [--quick] [--out bench/results]
                        [--only personalization|analytics]  (keeps the other part of OUT/api.json)

--quick: 50,000 events in both parts, 15 s at 50 requests/s after a 5 s warm-up, 10 timed calls.
Everything runs on 127.0.0.1 against the local stack (`make up`); topics and databases are named
bench_api_* and dropped at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
from pymongo import MongoClient

from app.sinks.store_lane import caught_up as caught_up_store
from bench import load, workload
from bench.jobproc import MONGODB_URI, ROOT, WORK, Job, say
from bench.load import BOOTSTRAP
from bench.run import machine, throughput

RESULTS = ROOT / "bench" / "results"
PREFIX = "bench_api_"
LIVE_TOPIC, LIVE_DB = PREFIX + "live", PREFIX + "live"
EVENTS_LABEL = "api_events"  # bench.run.throughput: job "job-api_events", database "bench_api_events"
EVENTS_DB = "bench_" + EVENTS_LABEL
ALERTS_TOPIC, ACTIONS_TOPIC = PREFIX + "alerts", PREFIX + "actions"
JOB_SCRIPT = "app/jobs/streaming/advanced_streaming.py"
# The job's side outputs stay in this benchmark's own topics; experiments as `make demo` runs them,
# so that /v1/experiments and the personalization's variants have something to read.
# USER_ACTIVITY: the job keeps the per-user documents the API reads by _id on FerretDB
JOB_ENV = {"ALERTS_TOPIC": ALERTS_TOPIC, "ACTIONS_TOPIC": ACTIONS_TOPIC, "HEALTH_PORT": "0", "USER_ACTIVITY": "true",
           "EXPERIMENTS_FILE": str(ROOT / "app" / "rules" / "experiments_v1.yaml")}
LIVE_SEED = 11  # the paced producer's sessions: not the preload's (seed 7), whose event ids they would repeat
GOAL_P99_MS = 25.0
CAUGHT_UP_S = 10  # a live job is caught up when a batch leaves at most this many seconds of the producer unread
CATCH_UP_BUDGET_S = 900
QUICK = {"events": 50_000, "live_events": 50_000, "rate": 50, "seconds": 15, "warmup": 5, "calls": 10, "live_warmup": 10}
FULL = {"events": 1_000_000, "live_events": 200_000, "rate": 200, "seconds": 60, "warmup": 20, "calls": 100,
        "live_warmup": 60}
COLLECTIONS = ("enriched_events", "user_behavior_segments", "user_activity", "live_feed", "daily_metrics", "event_counts_hourly",
               "segment_distribution", "session_paths", "retention_cohorts", "behavior_alerts", "trigger_executions",
               "user_profiles", "conversion_funnel", "experiment_results", "stream_progress")
# path -> what it reads (app/api/queries.py). FerretDB 1.24 (SQLite) uses an index only for _id
# equality: any other filter or sort reads the whole collection.
SCAN, WHOLE = "filter/sort: a scan on FerretDB", "reads all of it"
BY_ID = "one document by _id"
BY_IDS = "documents by _id only"
ENDPOINTS = [
    ("/v1/funnel", "conversion_funnel", WHOLE),
    ("/v1/segments/distribution?hours=24", "daily_metrics", "the window day list + the last day or two: " + BY_IDS),
    ("/v1/events/frequency", "daily_metrics", "the day list + each month's hours: " + BY_IDS),
    ("/v1/events/frequency?interval=day", "daily_metrics", "the same: " + BY_IDS),
    ("/v1/events/frequency?event_type=cart&country=unknown", "daily_metrics", "the day list + each day of the country: " + BY_IDS),
    ("/v1/patterns", "session_paths", WHOLE),
    ("/v1/retention", "retention_cohorts", WHOLE),
    ("/v1/anomalies", "daily_metrics", "the two day lists + two documents a month: " + BY_IDS),
    ("/v1/users/segments", "live_feed", "the leaderboard's head (at most 100 users): " + BY_ID),
    ("/v1/users/segments?min_engagement=50&segment=browser", "live_feed", "the segment's head: " + BY_ID),
    ("/v1/experiments", "experiment_results", WHOLE),
    ("/v1/alerts?limit=100", "live_feed", "the hour list + the newest hours' buckets: " + BY_IDS),
    ("/v1/alerts?severity={severity}", "live_feed", "the same, of one severity: " + BY_IDS),
    ("/v1/alerts?user_id={alert_user}", "live_feed", "the same, of a user with alerts: " + BY_IDS),
    ("/v1/trigger-executions?limit=100", "live_feed", "the hour list + the newest hours' buckets: " + BY_IDS),
    ("/v1/trigger-executions?trigger=abandoned_cart_email", "live_feed", "the same, of the trigger: " + BY_IDS),
    ("/v1/act-now", "live_feed", "the open-session heads' summary + the most urgent priorities' heads (each priority's newest 100, with their fields): " + BY_IDS),
    ("/v1/activity?user_id={user}", "user_activity (+ user_profiles by _id)", "the user's newest events: " + BY_ID),
    ("/v1/activity", "live_feed", "the hour list + the newest hour's events: " + BY_IDS),
    ("/v1/activity?event_type=purchase", "live_feed", "the same, of one type: " + BY_IDS),
    ("/v1/activity?event_type=cart&country=unknown&limit=20", "live_feed", "the same, of a type and country: " + BY_IDS),
    ("/v1/sessions/metrics", "daily_metrics", "the window day list + each month's day sums: " + BY_IDS),
    ("/v1/sessions/metrics?segment=browser&limit=12", "daily_metrics",
     "the latest day with the segment's windows + the one or two days the hour cuts: " + BY_IDS),
    ("/v1/anomalies?metric=purchases&recent_days=2&baseline_days=14", "daily_metrics",
     "the two day lists + two documents a month: " + BY_IDS),
    ("/v1/segments/distribution?segment=engaged_shopper&hours=72", "daily_metrics",
     "the window day list + three or four days: " + BY_IDS),
    ("/v1/sessions/metrics?user_id={user}", "user_activity", "the user's newest sessions: " + BY_ID),
    ("/v1/health", "stream_progress", "the latest batch: " + BY_ID),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    return values[min(len(values), max(1, math.ceil(len(values) * p / 100))) - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# ---------------------------------------------------------------------------------------------
# The API as a child process


class Api:
    """`python -m app.api` on a free loopback port, its own process group, API_KEY set."""

    def __init__(self, name: str, database: str):
        self.name, self.database = name, database
        self.port, self.key = free_port(), secrets.token_hex(24)
        self.log_path = WORK / f"{name}-server.log"  # the job's log is WORK/<job name>.log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Api":
        env = {k: v for k, v in os.environ.items() if k not in ("API_PORT", "API_HOST", "JOB_STATUS_URL",
                                                                "API_CORS_ORIGINS")}
        env.update({"MONGODB_URI": MONGODB_URI, "MONGODB_DATABASE": self.database, "API_KEY": self.key})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "app.api", "--host", "127.0.0.1",
                                          "--port", str(self.port)], cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        say(f"api [{self.name}]: pid {self.proc.pid} on 127.0.0.1:{self.port}, database {self.database}")
        return self

    def wait_ready(self, timeout_s: float = 90) -> float:
        started = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited {self.proc.returncode} (log: {self.log_path})")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.time() - started
                conn.close()
            except OSError:
                pass
            if time.time() - started > timeout_s:
                raise RuntimeError(f"the API was not ready within {timeout_s:.0f} s (log: {self.log_path})")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The paced producer, in its own process so that it does not hold the load generator's GIL


def _produce_live(rate: float, seconds: float, stop, topic: str = LIVE_TOPIC) -> None:
    def stamped():
        for event in workload.events(int(rate * seconds) + 1, seed=LIVE_SEED):
            if stop.is_set():
                return
            now = time.time()
            yield {**event, "event_time": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")}
    result = load.paced(BOOTSTRAP, topic, stamped(), rate, seconds)
    print(f"  paced producer: {result['events']:,} events in {result['seconds']} s "
          f"({result['events_per_s']:,}/s, at most {result['max_behind_s']} s behind)", flush=True)


class Producer:
    def __init__(self, rate: float, max_seconds: float, topic: str = LIVE_TOPIC):
        ctx = multiprocessing.get_context("spawn")
        self.stop_event = ctx.Event()
        self.proc = ctx.Process(target=_produce_live, args=(rate, max_seconds, self.stop_event, topic), daemon=True)

    def start(self) -> "Producer":
        self.proc.start()
        return self

    def stop(self) -> None:
        if self.proc.pid is None:  # never started
            return
        self.stop_event.set()
        self.proc.join(timeout=90)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# CPU use of the processes involved, over a window


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def _cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


class CpuWindow:
    """CPU seconds of named process groups between start() and stop(), as % of one core."""

    def __init__(self, groups: dict[str, callable]):
        self.groups = groups

    def start(self) -> None:
        self.t0, self.sys0 = time.monotonic(), psutil.cpu_times()
        self.before = {name: _cpu_seconds(find()) for name, find in self.groups.items()}

    def stop(self) -> dict:
        elapsed = time.monotonic() - self.t0
        sys1 = psutil.cpu_times()
        busy = lambda t: t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        out = {"machine_busy_pct_of_all_cores": round(100 * (busy(sys1) - busy(self.sys0)) /
                                                      (elapsed * psutil.cpu_count()), 1)}
        for name, find in self.groups.items():
            after = _cpu_seconds(find())
            used = sum(max(0.0, s - self.before[name].get(pid, 0.0)) for pid, s in after.items())
            out[f"{name}_pct_of_one_core"] = round(100 * used / elapsed, 1)
        return out


def _ferretdb() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "ferretdb":
            found.append(p)
    return found


# ---------------------------------------------------------------------------------------------
# Open-loop load


def open_loop(api: Api, paths: list[str], rate: float, warmup_s: float, seconds: float, connections: int,
              timeout_s: float, label: str, job_procs=lambda: []) -> dict:
    """Request i is due at t0 + i/rate; `connections` threads, one keep-alive connection each, take
    the next due request, wait for its time, send it. Latency = response end - due time."""
    n_warm, n = int(rate * warmup_s), int(rate * warmup_s) + int(rate * seconds)
    t0 = time.perf_counter() + 0.5
    sent_at, done_at, status = [0.0] * n, [0.0] * n, [0] * n
    lock, counter = threading.Lock(), [0]
    headers = {"X-API-Key": api.key}

    def take() -> int:
        with lock:
            i = counter[0]
            counter[0] += 1
            return i

    def worker() -> None:
        conn = None
        while (i := take()) < n:
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at[i] = time.perf_counter()
            for attempt in (0, 1):  # a kept-alive connection the server has closed: once more on a new one
                fresh = conn is None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=timeout_s)
                    conn.request("GET", paths[i % len(paths)], headers=headers)
                    response = conn.getresponse()
                    response.read()
                    status[i] = response.status
                    if response.will_close:
                        conn.close()
                        conn = None
                    break
                except TimeoutError:
                    status[i] = -2
                    conn.close()
                    conn = None
                    break
                except (OSError, http.client.HTTPException):
                    status[i] = -1
                    if conn is not None:
                        conn.close()
                    conn = None
                    if fresh:
                        break
            done_at[i] = time.perf_counter()
        if conn is not None:
            conn.close()

    say(f"[{label}] open loop: {rate:g} requests/s, {warmup_s:g} s warm-up (not counted) + {seconds:g} s, "
        f"{connections} keep-alive connections, {len(paths):,} users")
    cpu = CpuWindow({"job": job_procs, "api": lambda: _tree(api.proc.pid),
                     "ferretdb": _ferretdb, "load_generator": lambda: [psutil.Process()]})
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t0 + warmup_s - time.perf_counter()))
    cpu.start()
    window_start_wall = time.time()
    say(f"[{label}] warm-up done ({sum(1 for i in range(n_warm) if done_at[i]):,} requests, "
        f"{sum(1 for i in range(n_warm) if done_at[i] and status[i] != 200)} errors); measuring")
    while True:
        deadline = time.perf_counter() + 10
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.perf_counter()))
        if not any(t.is_alive() for t in threads):
            break
        done = sum(1 for i in range(n_warm, n) if done_at[i])
        errors = sum(1 for i in range(n_warm, n) if done_at[i] and status[i] != 200)
        say(f"[{label}] {done:,}/{n - n_warm:,} measured requests done, {errors} errors")
    cpu_use = cpu.stop()
    window_end_wall = time.time()
    measured = range(n_warm, n)
    latencies = sorted(done_at[i] - (t0 + i / rate) for i in measured)
    lags = sorted(sent_at[i] - (t0 + i / rate) for i in measured)
    codes: dict[str, int] = {}
    for i in measured:
        key = {-1: "connection error", -2: "timeout"}.get(status[i], str(status[i]))
        codes[key] = codes.get(key, 0) + 1
    errors = sum(1 for i in measured if status[i] != 200)
    span = max(done_at[i] for i in measured) - (t0 + n_warm / rate)
    result = {"label": label, "rate": rate, "warmup_s": warmup_s, "seconds": seconds, "connections": connections,
              "timeout_s": timeout_s, "users": len(paths), "warmup_requests": n_warm, "requests": n - n_warm,
              "achieved_per_s": round((n - n_warm) / span, 1), "errors": errors,
              "timeouts": codes.get("timeout", 0), "status_counts": codes,
              "p50_ms": _ms(pct(latencies, 50)), "p95_ms": _ms(pct(latencies, 95)),
              "p99_ms": _ms(pct(latencies, 99)), "p999_ms": _ms(pct(latencies, 99.9)),
              "max_ms": _ms(latencies[-1]),
              "send_lag_p50_ms": _ms(pct(lags, 50)), "send_lag_p99_ms": _ms(pct(lags, 99)),
              "send_lag_max_ms": _ms(lags[-1]), "cpu": cpu_use,
              "window": [window_start_wall, window_end_wall]}
    result["goal_met"] = errors == 0 and result["p99_ms"] <= GOAL_P99_MS
    say(f"[{label}] {result['requests']:,} requests at {result['achieved_per_s']}/s: p50 {result['p50_ms']} ms, "
        f"p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms, {errors} errors; "
        f"goal p99 <= {GOAL_P99_MS:g} ms {'met' if result['goal_met'] else 'NOT met'}; CPU {cpu_use}")
    return result


def _sessions_batches(db) -> list[dict]:
    return list(db["stream_progress"].find({"query": "sessions"},
                                           {"batch_id": 1, "timestamp": 1, "input_rows": 1, "batch_duration_ms": 1}))


def _job_batches(db, window: list[float]) -> dict:
    """What the job did during the window: its sessions batches that overlap it (stream_progress is
    written when a batch ends; one still running when the job was stopped is not in it)."""
    overlapping = []
    for p in _sessions_batches(db):
        start = p["timestamp"].replace(tzinfo=timezone.utc).timestamp()
        end = start + p["batch_duration_ms"] / 1000
        if start <= window[1] and end >= window[0]:
            overlapping.append({"batch": p["batch_id"], "rows": p["input_rows"],
                                "seconds": round(p["batch_duration_ms"] / 1000, 1),
                                "started_s_before_window": round(window[0] - start, 1)})
    ends = [p["timestamp"].replace(tzinfo=timezone.utc).timestamp() + p["batch_duration_ms"] / 1000
            for p in _sessions_batches(db)]
    # the job runs on when this is read: the batch after the last recorded one was in progress
    running_since = max(ends, default=None)
    return {"batches_overlapping": len(overlapping), "events_in_them": sum(b["rows"] for b in overlapping),
            "batches": overlapping,
            "batch_in_progress_since_s_before_window_end": None if running_since is None or
            running_since > window[1] else round(window[1] - running_since, 1)}


def _wait_for(job: Job, done, deadline: float, what: str, every_s: float, late_ok: bool = False) -> bool:
    """Polls done() until it holds (True); raises if the job exits first. At `deadline`: raises
    (`what` then), or returns False with `late_ok`."""
    while not done():
        if job.proc.poll() is not None:
            raise RuntimeError(f"the job {job.name} exited {job.proc.returncode} (log: {job.log_path})")
        if time.time() > deadline:
            if late_ok:
                return False
            raise RuntimeError(f"{what} by the deadline (log: {job.log_path})")
        time.sleep(every_s)
    return True


def _wait_caught_up(job: Job, db, after_batch: int, lag_rows: float, deadline: float) -> float | None:
    """Seconds from the job's start until a sessions batch after `after_batch` ended with at most
    `lag_rows` events left unread on Kafka (its kafka_lag); None if none did by `deadline`."""
    def caught_up() -> bool:
        return any(p.get("kafka_lag") is not None and p["kafka_lag"] <= lag_rows
                   for p in db["stream_progress"].find({"query": "sessions", "batch_id": {"$gt": after_batch}},
                                                       {"kafka_lag": 1}))
    if _wait_for(job, caught_up, deadline, "", 2, late_ok=True):
        return round(time.time() - job.started_at, 1)
    return None


def _stored_any(db) -> bool:
    """Whether the store query has stored a sessions batch whole (its `stored:<run>` marker)."""
    return any(str(d["_id"]).startswith("stored:") for d in db["stream_progress"].find({}, {"_id": 1}))


@contextlib.contextmanager
def live_job(events: int, nice: int, producer_rate: float, wait_s: float, budget_s: float):
    """A fresh topic with `events` preloaded, the job live on it (trigger 1 s) at CPU niceness `nice`
    (JOB_NICE) and the paced producer; yields (job, db, preload figures) once the job's first batch
    is stored with its user_profiles (within `wait_s`); stops the producer and the job after, and
    keeps their database. bench.api_probe runs its probes in the same setting."""
    for topic in (LIVE_TOPIC, ALERTS_TOPIC, ACTIONS_TOPIC):
        load.fresh_topic(BOOTSTRAP, topic)
    figures = load.preload(BOOTSTRAP, LIVE_TOPIC, workload.events(events), events)
    say(f"preload: {figures['events']:,} events in {figures['seconds']} s ({figures['events_per_s']:,}/s)")
    job = Job("api-live", LIVE_TOPIC, LIVE_DB, {**JOB_ENV, "TRIGGER_INTERVAL": "1s", "JOB_NICE": str(nice)}, [],
              JOB_SCRIPT)
    producer = Producer(producer_rate, budget_s)
    db = MongoClient(MONGODB_URI)[LIVE_DB]
    try:
        job.start()
        job.wait_running(timeout_s=300)
        say(f"job running (trigger 1 s, JOB_NICE={nice}); paced producer at {producer_rate:,} events/s "
            f"into {LIVE_TOPIC}")
        producer.start()
        say("waiting for the job's first batch (all its user_profiles)")
        # the store query has written profiles (it may never catch up with the sessions query: at
        # this rate with every output on, the job is near its throughput on 2 cores)
        _wait_for(job, lambda: _sessions_batches(db) and _stored_any(db)
                  and db["user_profiles"].find_one({}, {"_id": 1}) is not None, time.time() + wait_s,
                  "no first batch", 2)
        job._sampling = False  # its RSS sampler (psutil over the JVM's tree) would share this process's GIL
        yield job, db, figures
    finally:
        producer.stop()
        if hasattr(job, "proc"):
            job.stop()


def _live_window(args, api: Api, nice: int) -> tuple[dict, list[str]]:
    """The open loop of lookups while the job runs live at CPU niceness `nice` (live_job). Returns
    the window and the paths; the job's database is kept for the API-alone window."""
    label = "with the job" + (f" at nice {nice}" if nice else "")
    budget = args.profile_wait + args.warmup + args.seconds + 600
    with live_job(args.live_events, nice, args.producer_rate, args.profile_wait, budget) as (job, db, figures):
        first_batch_after_s = round(time.time() - job.started_at, 1)
        store_caught_up = caught_up_store(db)
        users = [d["_id"] for d in db["user_profiles"].find({}, {"_id": 1}).limit(args.users)]
        random.Random(3).shuffle(users)
        say(f"first batch written {first_batch_after_s} s after the job's start; {len(users):,} user ids read")
        paths = [f"/v1/users/{u}/personalization" for u in users]
        run = open_loop(api, paths, args.rate, args.warmup, args.seconds, args.connections, args.timeout, label,
                        lambda: _tree(job.proc.pid))
        run.update({"job_nice": nice, "preload": figures, "first_batch_after_s": first_batch_after_s,
                    "store_caught_up_at_start": store_caught_up, "job": _job_batches(db, run["window"])})
        say(f"the job during the window: {run['job']}")
        return run, paths


def personalization(args) -> dict:
    """Part 1: personalization lookups while the job runs live (once per --job-nice value, each on
    its own fresh topic, job and database), then with the job stopped."""
    say(f"part 1: personalization at {args.rate:g}/s while the job runs (JOB_NICE {args.job_nice}); "
        f"preload {args.live_events:,} events each time")
    result: dict = {"producer_rate": args.producer_rate, "job_nice": args.job_nice}
    api = Api("api-live", LIVE_DB)
    try:
        api.start()
        result["api_ready_s"] = round(api.wait_ready(), 1)
        paths: list[str] = []
        for nice in args.job_nice:
            run, paths = _live_window(args, api, nice)
            result["with_job" if nice == 0 else f"with_job_nice{nice}"] = run
            result.setdefault("preload", run["preload"])
        say("job and producer stopped; the API alone")
        result["api_alone"] = open_loop(api, paths, args.rate, args.warmup, args.seconds, args.connections,
                                        args.timeout, "API alone")
        result["profiles"] = _count(MongoClient(MONGODB_URI)[LIVE_DB], "user_profiles")
    finally:
        api.stop()
    return result


def _live_runs(p: dict) -> list[tuple[str, str]]:
    """(key, name) of the personalization windows in `p`, the job's first, the API alone last."""
    keys = [k for k in p if k == "with_job" or k.startswith("with_job_nice")]
    keys.sort(key=lambda k: p[k].get("job_nice", 0))
    return ([(k, "the job running" + (f" at nice {p[k]['job_nice']}" if p[k].get("job_nice") else ""))
             for k in keys] + [("api_alone", "the job stopped (API alone)")])


# ---------------------------------------------------------------------------------------------
# Analytics endpoints


def _count(db, name: str) -> int | None:
    """collStats' count (FerretDB answers it from its metadata; count_documents would scan)."""
    try:
        return int(db.command("collStats", name).get("count", 0))
    except Exception:  # noqa: BLE001 - a collection the run never created
        return None


def _call(conn_box: list, port: int, key: str, path: str, timeout_s: float) -> tuple[float, int, int]:
    started = time.perf_counter()
    try:
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        conn_box[0].request("GET", path, headers={"X-API-Key": key})
        response = conn_box[0].getresponse()
        body = response.read()
        if response.will_close:
            conn_box[0].close()
            conn_box[0] = None
        return time.perf_counter() - started, response.status, len(body)
    except (OSError, http.client.HTTPException) as exc:
        if conn_box[0] is not None:
            conn_box[0].close()
        conn_box[0] = None
        return time.perf_counter() - started, -2 if isinstance(exc, TimeoutError) else -1, 0


def analytics(args) -> dict:
    """Part 2: the job (available-now) over EVENTS events; then the job again from its checkpoint,
    live on the same topic with the paced producer at PRODUCER_RATE events/s (0: the job stopped),
    and each analytics endpoint in turn while it runs."""
    say(f"part 2: analytics endpoints over {args.events:,} events")
    topic = f"{PREFIX}events_{args.events}"
    for name in (topic, ALERTS_TOPIC, ACTIONS_TOPIC):
        load.fresh_topic(BOOTSTRAP, name)
    figures = load.preload(BOOTSTRAP, topic, workload.events(args.events), args.events)
    say(f"preload: {figures['events']:,} events in {figures['seconds']} s ({figures['events_per_s']:,}/s)")
    result: dict = {"preload": figures}
    run = throughput(topic, args.events, EVENTS_LABEL, dict(JOB_ENV))
    result["ingest"] = {k: run[k] for k in ("events", "events_written", "sessions", "seconds", "events_per_s",
                                            "wall_s", "peak_rss_mb")}
    db = MongoClient(MONGODB_URI)[EVENTS_DB]
    result["documents"] = {name: _count(db, name) for name in COLLECTIONS}
    say(f"documents: {result['documents']}")
    user_doc = db["user_profiles"].find_one({"sessions": {"$gte": 2}}, {"_id": 1}) or \
        db["user_profiles"].find_one({}, {"_id": 1})
    user = user_doc["_id"] if user_doc else "0"
    result["user_id"] = user
    # the filtered alert calls ask for what exists: the user and severity of the newest alert
    alert = db["behavior_alerts"].find_one({}, {"user_id": 1, "severity": 1}, sort=[("first_event_time", -1)]) or {}
    alert_user, severity = alert.get("user_id", user), alert.get("severity", "high")
    api = Api("api-analytics", EVENTS_DB)
    result["producer_rate"] = args.producer_rate
    try:
        api.start()
        result["api_ready_s"] = round(api.wait_ready(), 1)
        # the job goes on from its checkpoint (same store lane), live, once per niceness; or stopped
        for nice in (args.job_nice if args.producer_rate > 0 else [None]):
            run = _endpoints_pass(args, api, db, topic, nice, user, alert_user, severity)
            result.setdefault("runs", []).append(run)
    finally:
        api.stop()
    return result


def _endpoints_pass(args, api: Api, db, topic: str, nice: int | None, user: str, alert_user: str,
                    severity: str) -> dict:
    """Each endpoint in turn (warm-up calls, then timed calls), with the job live from its checkpoint
    at CPU niceness `nice` and the paced producer running (None: the job stopped)."""
    rows, live, producer, run = [], None, None, {"job_nice": nice}
    try:
        if nice is not None:
            env = {"SEGMENTS_TOPIC": f"{topic}-segments-{EVENTS_LABEL}", "STORE_TOPIC": f"{topic}-store-{EVENTS_LABEL}",
                   **JOB_ENV, "TRIGGER_INTERVAL": "1s", "JOB_NICE": str(nice)}
            before = max((p["batch_id"] for p in _sessions_batches(db)), default=-1)
            live = Job(f"job-{EVENTS_LABEL}", topic, EVENTS_DB, env, [], JOB_SCRIPT, fresh=False,
                       log_name=f"job-{EVENTS_LABEL}-live-nice{nice}").start()
            live._sampling = False  # its sampler would share this process's GIL with the timed calls
            producer = Producer(args.producer_rate, args.profile_wait + args.live_warmup + 3600, topic).start()
            say(f"the job live again on {topic} (trigger 1 s, JOB_NICE={nice}), the paced producer at "
                f"{args.producer_rate:,} events/s; waiting for its first batch, then {args.live_warmup:g} s before "
                "the first call")
            _wait_for(live, lambda: max((p["batch_id"] for p in _sessions_batches(db)), default=-1) > before,
                      time.time() + args.profile_wait, "the live job wrote no batch", 1)
            run["live_first_batch_after_s"] = round(time.time() - live.started_at, 1)
            say(f"the live job's first batch ended {run['live_first_batch_after_s']} s after its start")
            # what the producer sent while the job started is a backlog: the calls wait for it to be read
            run["live_caught_up_after_s"] = _wait_caught_up(live, db, before, args.producer_rate * CAUGHT_UP_S,
                                                            time.time() + CATCH_UP_BUDGET_S)
            say(f"the live job caught up (Kafka lag <= {CAUGHT_UP_S} s of the producer) "
                f"{run['live_caught_up_after_s']} s after its start" if run["live_caught_up_after_s"] is not None
                else f"the live job had not caught up after {CATCH_UP_BUDGET_S} s: the calls start anyway")
            time.sleep(args.live_warmup)
            if live.proc.poll() is not None:
                raise RuntimeError(f"the live job exited {live.proc.returncode} (log: {live.log_path})")
        window_start = time.time()
        conn = [None]
        for template, reads, how in ENDPOINTS:
            path = template.format(user=user, alert_user=alert_user, severity=severity)
            warm = []
            for _ in range(args.warmup_calls):
                seconds, status, size = _call(conn, api.port, api.key, path, args.analytics_timeout)
                warm.append(seconds)
                if seconds > args.slow_call:  # a call this slow is a scan: one warm-up is enough
                    break
            times, statuses, size = [], {}, 0
            started = time.perf_counter()
            while len(times) < args.calls and (len(times) < args.min_calls
                                                or time.perf_counter() - started < args.endpoint_budget):
                seconds, status, size = _call(conn, api.port, api.key, path, args.analytics_timeout)
                times.append(seconds)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            times.sort()
            row = {"path": path, "reads": reads, "access": how, "warmup_calls": len(warm), "calls": len(times),
                   "p50_ms": _ms(pct(times, 50)), "p99_ms": _ms(pct(times, 99)), "max_ms": _ms(times[-1]),
                   "statuses": statuses, "errors": sum(v for k, v in statuses.items() if k != "200"),
                   "response_bytes": size}
            rows.append(row)
            say(f"  {path}: {row['calls']} calls, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                f"statuses {statuses}, {size:,} bytes")
        if conn[0] is not None:
            conn[0].close()
        if live is not None:
            if live.proc.poll() is not None:
                raise RuntimeError(f"the live job exited {live.proc.returncode} during the calls (log: {live.log_path})")
            run["job_during_calls"] = _job_batches(db, [window_start, time.time()])
            say(f"the job during the calls: {run['job_during_calls']}")
    finally:
        if producer is not None:
            producer.stop()
        if live is not None:
            live.stop()
    run["endpoints"] = rows
    heaviest = max(rows, key=lambda r: r["p99_ms"] or 0)
    run["heaviest"] = {"path": heaviest["path"], "p99_ms": heaviest["p99_ms"], "calls": heaviest["calls"]}
    say(f"heaviest{'' if nice is None else f' (job at nice {nice})'}: {heaviest['path']}, "
        f"p99 {heaviest['p99_ms']} ms over {heaviest['calls']} calls")
    return run


# ---------------------------------------------------------------------------------------------
# Report


def _n(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _analytics_runs(a: dict) -> list[dict]:
    """The endpoint passes of the analytics part (a run from before --job-nice had one, inline)."""
    if "runs" in a:
        return a["runs"]
    return [{"job_nice": 0 if a.get("producer_rate") else None, "endpoints": a["endpoints"],
             "heaviest": a["heaviest"], "job_during_calls": a.get("job_during_calls")}]


def _live_batches(a: dict) -> str:
    j = a.get("job_during_calls") or {}
    caught_up = ("" if "live_caught_up_after_s" not in a else
                 f" (caught up {a['live_caught_up_after_s']} s after its start, before the calls)"
                 if a["live_caught_up_after_s"] is not None else " (not caught up when the calls began)")
    return (f"{_n(j.get('batches_overlapping'))} sessions batches of {_n(j.get('events_in_them'))} events during the "
            f"calls{caught_up}")


def _measured(part: dict, top: dict) -> list[str]:
    """The part's own run when it is not the file's (bench.api --only keeps the other part)."""
    own = part.get("machine") or top
    if own["commit"] == top["commit"] and own["date"] == top["date"]:
        return []
    return [f"(This part: {own['date']}, commit {own['commit']}, kept from that run by `--only`.)", ""]


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Query API benchmark ({'quick' if r['quick'] else 'full'}, {m['date']}, commit {m['commit']}, "
             f"{m['cores']} cores, load average {r['load_average_start']} at the start)", ""]
    p = r.get("personalization")
    if p:
        lines += [f"## GET /v1/users/{{id}}/personalization, open loop (goal p99 <= {GOAL_P99_MS:g} ms)", "",
                  *_measured(p, m),
                  f"{p['preload']['events']:,} events preloaded, the job live on them (trigger 1 s) with a paced "
                  f"producer at {p['producer_rate']:,} events/s; {p['api_alone']['users']:,} real user ids from "
                  f"user_profiles; {p['api_alone']['connections']} keep-alive connections; latency from each "
                  "request's scheduled send time (queueing counts); "
                  f"{p['api_alone']['warmup_s']:g} s warm-up not counted."
                  + (" Each job run (JOB_NICE " + ", ".join(str(n) for n in p["job_nice"]) + ": the job's CPU "
                     "niceness, deploy/local/submit.sh) has its own fresh topic, preload, checkpoint and database; "
                     "the API alone reads the last one's." if len(p.get("job_nice") or []) > 1 else ""), "",
                  "| run | requests | achieved/s | p50 ms | p95 ms | p99 ms | max ms | errors | goal |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, name in _live_runs(p):
            x = p.get(key)
            if x:
                lines.append(f"| {name} | {x['requests']:,} at {x['rate']:g}/s | {x['achieved_per_s']} | "
                             f"{x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | {x['max_ms']} | {x['errors']} | "
                             f"{'met' if x['goal_met'] else '**NOT met**'} |")
        lines += ["", "| run | CPU: machine (all cores) | job | API | FerretDB | load generator | "
                  "generator send lag p99 ms | job batches during the window (events) |", "|---|---|---|---|---|---|---|---|"]
        for key, name in _live_runs(p):
            x = p.get(key)
            if x:
                c, j = x["cpu"], x.get("job") or {}
                lines.append(f"| {name} | {c['machine_busy_pct_of_all_cores']}% | {c['job_pct_of_one_core']}% | "
                             f"{c['api_pct_of_one_core']}% | {c['ferretdb_pct_of_one_core']}% | "
                             f"{c['load_generator_pct_of_one_core']}% | {x['send_lag_p99_ms']} | "
                             f"{_n(j.get('batches_overlapping'))} ({_n(j.get('events_in_them'))})"
                             + (f" + one in progress since {j['batch_in_progress_since_s_before_window_end']} s before "
                                "the window's end" if j.get("batch_in_progress_since_s_before_window_end") is not None
                                else "") + " |")
        lines += ["", "(process CPU in % of one core; send lag = scheduled -> sent: waiting for a free connection "
                  "or the generator's own lateness, included in the latencies)", ""]
    a = r.get("analytics")
    if a:
        runs = _analytics_runs(a)
        live = [x for x in runs if x.get("job_nice") is not None]
        lines += [f"## Analytics endpoints over {a['ingest']['events']:,} events", "", *_measured(a, m),
                  f"The job (available-now) took them in at {a['ingest']['events_per_s']:,} events/s "
                  f"({a['ingest']['seconds']} s); then each endpoint alone, one call at a time, "
                  + (f"with the job live again from its checkpoint on the same topic (trigger 1 s) and a paced "
                     f"producer sending {a['producer_rate']:,} events/s into it; "
                     + "; then ".join(f"at nice {x['job_nice']}: {_live_batches(x)}" for x in live)
                     if live else "the job stopped")
                  + f". User for the per-user calls: {a['user_id']}.", "",
                  "| collection | documents |", "|---|---|"]
        lines += [f"| {name} | {_n(count)} |" for name, count in a["documents"].items()]
        heads = [("the job stopped" if x.get("job_nice") is None else f"job at nice {x['job_nice']}") for x in runs]
        lines += ["", "| endpoint | reads | how (FerretDB 1.24, SQLite) | "
                  + " | ".join(f"calls, p50 / p99 ms ({h})" for h in heads) + " | errors | bytes |",
                  "|---|---|---|" + "---|" * len(runs) + "---|---|"]
        for i, e in enumerate(runs[0]["endpoints"]):
            cells = [x["endpoints"][i] for x in runs]
            lines.append(f"| `{e['path']}` | {e['reads']} | {e['access']} | "
                         + " | ".join(f"{c['calls']}, {c['p50_ms']} / {c['p99_ms']}" for c in cells)
                         + f" | {sum(c['errors'] for c in cells)} | {e['response_bytes']:,} |")
        lines.append("")
        for h, x in zip(heads, runs):
            k = x["heaviest"]
            lines.append(f"Heaviest ({h}): `{k['path']}`, p99 {k['p99_ms']:,} ms ({k['calls']} calls; with fewer "
                         "than 100 calls the p99 is the slowest call).")
        lines += ["",
                  "FerretDB 1.24's SQLite backend uses an index only for `_id` equality: every other filter or "
                  "sort reads the whole collection, so the endpoints that filter or sort by user_id or time on "
                  "enriched_events, user_behavior_segments, user_profiles, behavior_alerts or trigger_executions "
                  "grow with that collection. On MongoDB those reads are index ranges (app/sinks/collections.py "
                  "creates the indexes); not measured here.", ""]
    lines.append(f"Run time: {r['bench_seconds']:,} s.")
    return "\n".join(lines) + "\n"


def _nice_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if not values or any(not 0 <= v <= 19 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"each niceness once, from 0 to 19: {text!r}")
    return values


def _kept_part(out: Path, only: str | None) -> dict:
    """With --only, the other part of the results already in out/api.json, stamped with its run."""
    other = {"personalization": "analytics", "analytics": "personalization"}.get(only or "")
    path = out / "api.json"
    if other is None or not path.exists():
        return {}
    previous = json.loads(path.read_text())
    part = previous.get(other)
    return {other: {"machine": previous["machine"], **part}} if part else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small and fast: " + json.dumps(QUICK))
    parser.add_argument("--events", type=int, help="events for the analytics part (default 1,000,000)")
    parser.add_argument("--live-events", type=int, help="events preloaded for the live part (default 200,000)")
    parser.add_argument("--rate", type=float, help="personalization requests/s (default 200)")
    parser.add_argument("--seconds", type=float, help="measured seconds (default 60)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds at the rate, not counted (default 20)")
    parser.add_argument("--calls", type=int, help="timed calls per analytics endpoint (default 100: a p99 that is not the slowest call)")
    parser.add_argument("--warmup-calls", type=int, default=5)
    parser.add_argument("--min-calls", type=int, default=3, help="timed calls per endpoint whatever the budget")
    parser.add_argument("--endpoint-budget", type=float, default=60,
                        help="seconds of timed calls per endpoint after --min-calls (a scan of 1M events is slow)")
    parser.add_argument("--slow-call", type=float, default=2.0, help="a warm-up call slower than this ends warm-up")
    parser.add_argument("--producer-rate", type=int, default=500,
                        help="events/s sent while the job runs live (both parts; 0 in part 2: the job stopped)")
    parser.add_argument("--live-warmup", type=float,
                        help="part 2: seconds of the live job and producer before the first call (default 60)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--users", type=int, default=5000, help="user ids read from user_profiles")
    parser.add_argument("--timeout", type=float, default=10, help="personalization request timeout (s)")
    parser.add_argument("--analytics-timeout", type=float, default=900)
    parser.add_argument("--profile-wait", type=float, default=900, help="longest wait for the first profiles (s)")
    parser.add_argument("--only", choices=("personalization", "analytics"),
                        help="run one part; the other part of OUT/api.json is kept, marked with its own commit")
    parser.add_argument("--job-nice", type=_nice_list, default=[0, 10],
                        help="the job's CPU niceness (JOB_NICE) in each personalization run with the job, comma "
                             "separated (default 0,10: as is, then behind the API and the store)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    out = Path(args.out) if args.out.startswith("/") else ROOT / args.out
    started = time.time()
    results: dict = {"quick": args.quick, "machine": machine(),
                     "load_average_start": [round(x, 2) for x in os.getloadavg()],
                     "options": {k: v for k, v in vars(args).items() if k != "out"}}
    say(f"bench.api: {results['options']}; load average {results['load_average_start']}")
    kept = _kept_part(out, args.only)
    if kept:
        results.update(kept)
        say(f"--only {args.only}: the {', '.join(kept)} part of {out / 'api.json'} is kept as it is")
    try:
        if args.only != "analytics":
            results["personalization"] = {**personalization(args), "machine": results["machine"]}
            MongoClient(MONGODB_URI).drop_database(LIVE_DB)
        if args.only != "personalization":
            results["analytics"] = {**analytics(args), "machine": results["machine"]}
    finally:
        client = MongoClient(MONGODB_URI)
        for name in (LIVE_DB, EVENTS_DB):
            client.drop_database(name)
        load.delete_topics(BOOTSTRAP, PREFIX)
        for name in ("api-live", f"job-{EVENTS_LABEL}"):
            shutil.rmtree(WORK / "checkpoints" / name, ignore_errors=True)
        say(f"dropped databases {LIVE_DB}, {EVENTS_DB} and topics {PREFIX}*")
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["bench_seconds"] = round(time.time() - started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "api.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "api.md").write_text(markdown(results))
    say(f"done in {results['bench_seconds']} s: {out / 'api.json'}, {out / 'api.md'}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
