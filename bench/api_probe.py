"""Where the personalization tail comes from while the job runs: three closed-loop probes, each in
its own process, one call every 50 ms for SECONDS, against the job live on a 200,000-event backlog
plus a paced producer at 500 events/s (the setting of bench.api's personalization part):
  - the API's /healthz (no store read): the API process's own responsiveness;
  - the API's GET /v1/users/{id}/personalization (two reads by _id);
  - pymongo find_one by _id on user_profiles, straight to the store.
A closed loop at ~20 calls/s adds almost no load, so a slow call here is the service's, not a
queue's (bench.api's open loop at 200 requests/s measures the queue too).

    python -m bench.api_probe [--seconds 60] [--job-nice 0] [--out bench/results]
Writes OUT/api_probe_nice<N>.md; needs the local stack (make up)."""
from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import random
import time
from pathlib import Path

from pymongo import MongoClient

from bench import api as B
from bench.jobproc import MONGODB_URI, ROOT, say
from bench.run import machine

PROBES = ("healthz", "personalization", "store")
SLOW_S = 0.2


def _probe(kind: str, port: int, key: str, users: list, seconds: float, out) -> None:
    rows, conn = [], None
    coll = MongoClient(MONGODB_URI)[B.LIVE_DB]["user_profiles"]
    rnd, end = random.Random(kind), time.time() + seconds
    while time.time() < end:
        user, wall, started = rnd.choice(users), time.time(), time.perf_counter()
        if kind == "store":
            coll.find_one({"_id": user})
        else:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            path = "/healthz" if kind == "healthz" else f"/v1/users/{user}/personalization"
            conn.request("GET", path, headers={"X-API-Key": key})
            conn.getresponse().read()
        rows.append((wall, time.perf_counter() - started))
        time.sleep(0.05)
    out.put((kind, rows))


def run(seconds: float, nice: int, events: int = 200_000) -> dict:
    api = B.Api("probe", B.LIVE_DB)
    spawn = mp.get_context("spawn")
    try:
        api.start()
        api.wait_ready()
        with B.live_job(events, nice, 500, 900, seconds + 1200) as (job, db, _):
            users = [d["_id"] for d in db["user_profiles"].find({}, {"_id": 1}).limit(2000)]
            say(f"probing for {seconds:g} s: {', '.join(PROBES)}; {len(users):,} users; JOB_NICE={nice}")
            queue = spawn.Queue()
            procs = [spawn.Process(target=_probe, args=(k, api.port, api.key, users, seconds, queue)) for k in PROBES]
            start = time.time()
            for p in procs:
                p.start()
            rows = dict(queue.get() for _ in procs)
            for p in procs:
                p.join()
            batches = B._job_batches(db, [start, time.time()])
    finally:
        api.stop()
        MongoClient(MONGODB_URI).drop_database(B.LIVE_DB)
    result = {"machine": machine(), "seconds": seconds, "job_nice": nice, "preload": events, "job": batches,
              "probes": {}}
    for kind, calls in rows.items():
        lat = sorted(c[1] for c in calls)
        result["probes"][kind] = {"calls": len(lat), **{f"p{p}_ms": B._ms(B.pct(lat, p)) for p in (50, 95, 99)},
                                  "max_ms": B._ms(lat[-1]), "over_200_ms": sum(1 for v in lat if v > SLOW_S)}
    return result


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Personalization probe ({m['date']}, commit {m['commit']}, {m['cores']} cores)", "",
             f"The job live (JOB_NICE={r['job_nice']}, trigger 1 s, every output on) on a {r['preload']:,}-event "
             f"backlog plus 500 events/s; three closed-loop probes, one call every 50 ms each, {r['seconds']:g} s "
             f"(`python -m bench.api_probe`). The job's sessions batches during it: "
             f"{r['job']['batches_overlapping']} ({r['job']['events_in_them']:,} events).", "",
             "| probe | calls | p50 ms | p95 ms | p99 ms | max ms | calls over 200 ms |", "|---|---|---|---|---|---|---|"]
    for kind, p in r["probes"].items():
        lines.append(f"| {kind} | {p['calls']:,} | {p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p['max_ms']} | "
                     f"{p['over_200_ms']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--job-nice", type=int, choices=range(20), default=0, metavar="0-19")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.job_nice)
    out = Path(args.out) if args.out.startswith("/") else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"api_probe_nice{args.job_nice}.md"
    path.write_text(markdown(result))
    print(markdown(result))
    say(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
