"""The MongoDB-compatible server's own rate for the job's write pattern, with the job's documents.

Copies enriched events and session documents the main run wrote, and writes them again the way
the job does (app/sinks/collections.py): unordered insert_many of events in chunks of 1,000, a
first insert of each session, then replaces by _id in chunks of SESSION_REPLACE_CHUNK; two
writers at once, as two Spark tasks on two cores do.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from pymongo import MongoClient

from app.sinks.collections import EVENTS, SEGMENTS, SESSION_REPLACE_CHUNK, ensure_indexes, replace_documents

WRITERS = 2
SAMPLE = 20_000


def _in_parallel(docs: list[dict], write) -> float:
    """Splits docs over WRITERS threads; returns documents per second."""
    shares = [docs[i::WRITERS] for i in range(WRITERS)]
    threads = [threading.Thread(target=write, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(docs) / (time.perf_counter() - started)


def _chunks(docs: list[dict], size: int):
    return (docs[start:start + size] for start in range(0, len(docs), size))


def _closed(sessions: list[dict]) -> list[dict]:
    now = datetime.now(timezone.utc)
    return [{**doc, "status": "closed" if doc.get("status") == "active" else "active", "processing_time": now}
            for doc in sessions]


def measure(uri: str, source_database: str, n_events: int, n_sessions: int, say=print) -> dict:
    client = MongoClient(uri)
    source, target = client[source_database], client["bench_sink"]
    events = list(source[EVENTS].find().limit(SAMPLE))
    sessions = list(source[SEGMENTS].find().limit(SAMPLE))
    client.drop_database(target.name)
    ensure_indexes(target)
    say(f"sink ceiling: rewriting {len(events):,} events and {len(sessions):,} sessions of the main run")
    rates = {
        "event_inserts_per_s": _in_parallel(events, lambda share: [
            target[EVENTS].insert_many(chunk, ordered=False) for chunk in _chunks(share, 1000)]),
        "session_inserts_per_s": _in_parallel(sessions, lambda share: [
            target[SEGMENTS].insert_many(chunk, ordered=False) for chunk in _chunks(share, 1000)]),
        # changed documents, as a closing batch writes them (an identical rewrite could be skipped)
        "session_replaces_per_s": _in_parallel(_closed(sessions), lambda share: [
            replace_documents(target[SEGMENTS], chunk) for chunk in _chunks(share, SESSION_REPLACE_CHUNK)]),
    }
    # Per event: one insert, plus its share of one first insert and one final replace per session.
    per_event_s = (1 / rates["event_inserts_per_s"]
                   + n_sessions / max(n_events, 1) * (1 / rates["session_inserts_per_s"]
                                                      + 1 / rates["session_replaces_per_s"]))
    result = {k: round(v) for k, v in rates.items()}
    result.update(sessions_per_event=round(n_sessions / max(n_events, 1), 3),
                  job_pattern_events_per_s=round(1 / per_event_s), writers=WRITERS)
    client.drop_database(target.name)
    say(f"sink ceiling: events {result['event_inserts_per_s']:,}/s, session inserts "
        f"{result['session_inserts_per_s']:,}/s, replaces {result['session_replaces_per_s']:,}/s "
        f"-> the job's write pattern tops out at {result['job_pattern_events_per_s']:,} events/s")
    return result
