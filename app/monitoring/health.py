"""The job's health signal (DESIGN.md §16): what the driver knows about its query, kept current by
the progress listener, judged by one pure function, served over HTTP and written to a file.

    GET /healthz  liveness: 200 while the query runs and ticks; 503 naming why not
    GET /readyz   readiness: 200 once the query has completed a batch (or an idle tick)
    GET /status   the whole picture as JSON (also in $CHECKPOINT_DIR/health.json)

A tick is any sign of life from the query: a finished batch or an idle check; a task finished
inside a long batch counts too (the driver's watch loop reports Spark's task progress), so a
first batch of minutes is slow, not stalled, while a batch whose tasks never end is. Kafka lag is the
source's latest offsets minus the offsets the last batch processed, summed over partitions, as
Spark saw them when it planned that batch (an idle tick means no new data: lag 0).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("behavior.health")


def kafka_lag(latest_offset: str | None, end_offset: str | None) -> int | None:
    """Spark's offset JSON ({"topic": {"0": 42, ...}}) -> records not processed yet."""
    if not latest_offset or not end_offset:
        return None
    latest, end = json.loads(latest_offset), json.loads(end_offset)
    return sum(max(0, int(offset) - int(end.get(topic, {}).get(partition, 0)))
               for topic, partitions in latest.items() for partition, offset in partitions.items())


class Health:
    """Thread-safe record of the query's life, updated by the listener, read by probes."""

    def __init__(self, stall_after_s: float, clock=time.time):
        self.stall_after_s, self.clock = stall_after_s, clock
        self._lock = threading.Lock()
        self._started_at = clock()
        self._queries: dict[str, dict] = {}
        self._last_task_at: float | None = None
        self._task_progress = None

    def _update(self, name: str, **fields) -> None:
        with self._lock:
            query = self._queries.setdefault(name, {"name": name, "state": "starting", "batches": 0})
            query.update(fields)

    def started(self, name: str, query_id: str) -> None:
        self._update(name, id=query_id, state="active", last_tick=self.clock())

    def progress(self, name: str, batch_id: int, input_rows: int, duration_ms: int, lag: int | None) -> None:
        now = self.clock()
        with self._lock:
            batches = self._queries.get(name, {}).get("batches", 0)
        self._update(name, state="active", ticked=True, last_tick=now, last_batch_at=now, last_batch_id=batch_id,
                     last_batch_rows=input_rows, last_batch_ms=duration_ms, kafka_lag=lag, batches=batches + 1)

    def idle(self, name: str) -> None:
        self._update(name, state="active", ticked=True, last_tick=self.clock(), kafka_lag=0)

    def terminated(self, name: str, error: str | None) -> None:
        self._update(name, state="failed" if error else "stopped", error=error, last_tick=self.clock())

    def tasks(self, progress) -> None:
        """Spark's task progress (any comparable value); a change is a sign of life."""
        with self._lock:
            if progress != self._task_progress:
                self._task_progress, self._last_task_at = progress, self.clock()

    def snapshot(self) -> dict:
        with self._lock:
            queries = [dict(q) for q in self._queries.values()]
            last_task_at = self._last_task_at
        now = self.clock()
        for query in queries:
            last = max(query.get("last_tick", 0.0), last_task_at or 0.0) if "last_tick" in query else None
            query["seconds_since_tick"] = round(now - last, 1) if last is not None else None
            query["seconds_since_batch"] = (round(now - query["last_batch_at"], 1)
                                            if "last_batch_at" in query else None)
        return {"time": now, "pid": os.getpid(), "started_at": self._started_at,
                "stall_after_s": self.stall_after_s, "queries": queries,
                **verdict(queries, now - self._started_at, self.stall_after_s)}


def verdict(queries: list[dict], uptime_s: float, stall_after_s: float) -> dict:
    """live / ready / reason from a snapshot's queries; pure, so every edge is unit-tested."""
    if not queries:
        if uptime_s > stall_after_s:
            return {"live": False, "ready": False, "reason": f"no query started in {uptime_s:.0f} s"}
        return {"live": True, "ready": False, "reason": "starting"}
    # a failure first; a query that ended without one is fine while another runs (--available-now:
    # the sessions query is done, the store query stores what it sent)
    running = any(q["state"] == "active" for q in queries)
    for query in sorted(queries, key=lambda q: q["state"] != "failed"):
        if query["state"] == "stopped" and running:
            continue
        if query["state"] in ("failed", "stopped"):
            cause = f": {query['error']}" if query.get("error") else ""
            return {"live": False, "ready": False, "reason": f"query {query['name']} {query['state']}{cause}"}
        since = query.get("seconds_since_tick")
        if since is not None and since > stall_after_s:
            return {"live": False, "ready": False,
                    "reason": f"query {query['name']} stalled: no batch, idle tick or finished task for {since:.0f} s "
                              f"(HEALTH_STALL_AFTER {stall_after_s:g} s)"}
    if not all(q.get("ticked") for q in queries):
        return {"live": True, "ready": False, "reason": "first batch running"}
    return {"live": True, "ready": True, "reason": "ok"}


class HealthServer:
    """The HTTP endpoint and the file, both fed from one Health."""

    def __init__(self, health: Health, port: int, path: Path | None, host: str = "0.0.0.0"):
        self.health, self.path = health, path
        self.server: ThreadingHTTPServer | None = None
        if port:
            try:
                self.server = ThreadingHTTPServer((host, port), _handler(health))
            except OSError as exc:  # a second local job, say: the file still tells
                log.warning("health endpoint not started on port %d (%s); set HEALTH_PORT", port, exc)
        self._stop = threading.Event()

    def start(self) -> "HealthServer":
        if self.server is not None:
            threading.Thread(target=self.server.serve_forever, name="health-http", daemon=True).start()
            log.info("health: http://127.0.0.1:%d/healthz /readyz /status", self.server.server_address[1])
        if self.path is not None:
            threading.Thread(target=self._write_loop, name="health-file", daemon=True).start()
        return self

    def write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.health.snapshot(), indent=1))
            temporary.replace(self.path)
        except OSError as exc:  # a full disk must not take the job down with it
            log.warning("could not write %s: %s", self.path, exc)

    def _write_loop(self, every_s: float = 5.0) -> None:
        while not self._stop.wait(every_s):
            self.write()

    def stop(self) -> None:
        self._stop.set()
        self.write()
        if self.server is not None:
            self.server.shutdown()


def _handler(health: Health):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            snapshot = health.snapshot()
            if self.path.startswith("/healthz"):
                self._reply(200 if snapshot["live"] else 503, snapshot["reason"] + "\n", "text/plain")
            elif self.path.startswith("/readyz"):
                self._reply(200 if snapshot["ready"] else 503, snapshot["reason"] + "\n", "text/plain")
            elif self.path.startswith("/status"):
                self._reply(200, json.dumps(snapshot, indent=1) + "\n", "application/json")
            else:
                self._reply(404, "try /healthz, /readyz or /status\n", "text/plain")

        def _reply(self, code: int, body: str, content_type: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args) -> None:  # probes every few seconds: keep the job's log clean
            pass
    return Handler
