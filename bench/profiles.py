"""`make bench-profiles`: what profiles and alerts cost, and how fast an alert reaches its topic.

1. Throughput of the job over one preloaded topic, with PROFILES=false and PROFILES=true (both
   TRIGGERS=false), one run each, back to back on this machine: the ratio is the goal's figure
   (>= 85%); then PROFILES=true TRIGGERS=true, what the default triggers add.
2. Alert latency: the job live (trigger 1 s) while a paced producer sends the benchmark's session
   mix at RATE events/s, stamped with the send time, with a bot (one view every 0.2 s, 35 views)
   starting every 2 s. After WARM_UP_S (not counted), each alert message's receive time on the
   alerts topic minus the send time of the event that completed its evidence: p50/p95/p99
   (the job's defaults: profiles and triggers on), except WATERMARK_DELAY: ALERT_WATERMARK_DELAY
   (the producer here sends in order). An alert is decided when the watermark passes the event
   that completes its evidence (DESIGN.md §5), so with the default 10 min no alert of a 3-minute
   run would come at all, and the figure is WATERMARK_DELAY plus what the pipeline adds.

    python -m bench.profiles [--events 200000] [--rate 1000] [--seconds 60] [--alerts-only]
Writes bench/results/profiles.{json,md}; --alerts-only runs step 2 again and keeps step 1's figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from kafka import KafkaConsumer

from bench import load, workload
from bench.jobproc import ROOT, Job, commit, say
from bench.latency import WARM_UP_S, percentile
from bench.load import BOOTSTRAP
from bench.run import machine, preload, throughput

RESULTS = ROOT / "bench" / "results"
ALERT_WATERMARK_DELAY = "5s"
BOT_EVERY_S, BOT_STEP_S, BOT_VIEWS = 2.0, 0.2, 35


def _stamp(event: dict, at: float) -> dict:
    return {**event, "event_time": datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")}


def live_with_bots(rate: int, seconds: float):
    """The session mix stamped with the send time, and a bot starting every BOT_EVERY_S."""
    started, bots, next_bot = time.time(), [], 0.0
    for i, event in enumerate(workload.events(int(rate * seconds) + 1)):
        now = time.time()
        if now - started >= next_bot:  # a new bot: its views are due every BOT_STEP_S from now
            user = 900_000_000 + i
            bots.append([now, 0, user])
            next_bot += BOT_EVERY_S
        for bot in bots:
            if bot[1] < BOT_VIEWS and now >= bot[0] + bot[1] * BOT_STEP_S:
                bot[1] += 1
                yield _stamp({"event_id": f"bot-{bot[2]}-{bot[1]}", "event_type": "view", "product_id": 1004237,
                              "category_id": 2053013555631882655, "category_code": "electronics.smartphone",
                              "price": 1081.98, "user_id": bot[2], "user_session": f"bot-{bot[2]}",
                              "ip_address": "203.0.113.9", "country": "Nowhere"}, now)
        bots = [b for b in bots if b[1] < BOT_VIEWS]
        yield _stamp(event, now)


def alert_latency(rate: int, seconds: float) -> dict:
    topic = f"bench-alerts-live-{rate}"
    alerts_topic = topic + "-out"
    say(f"alert latency: {rate:,} events/s + a bot every {BOT_EVERY_S:g} s, {WARM_UP_S} s warm-up + {seconds:.0f} s")
    load.fresh_topic(BOOTSTRAP, topic)
    load.fresh_topic(BOOTSTRAP, alerts_topic)
    received: list[tuple[float, dict]] = []
    stop = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(alerts_topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                                 consumer_timeout_ms=1000)
        while not stop.is_set():
            for message in consumer:
                received.append((time.time(), json.loads(message.value)))
        consumer.close()
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    job = Job(f"alerts-live-{rate}", topic, f"bench_alerts_{rate}", {"TRIGGER_INTERVAL": "1s",
                                                                      "WATERMARK_DELAY": ALERT_WATERMARK_DELAY,
                                                                      "ALERTS_TOPIC": alerts_topic},
              [], "app/jobs/streaming/advanced_streaming.py").start()
    try:
        job.wait_running()
        measured_from = time.time() + WARM_UP_S
        sent = load.paced(BOOTSTRAP, topic, live_with_bots(rate, WARM_UP_S + seconds), rate, WARM_UP_S + seconds)
        time.sleep(30)  # the last batches
    finally:
        job.stop()
        stop.set()
        reader.join(timeout=10)
    delays = sorted(at - alert["event_ms"] / 1000 for at, alert in received if alert["event_ms"] / 1000 >= measured_from)
    result = {"rate": rate, "warmup_s": WARM_UP_S, "seconds": seconds, "watermark_delay": ALERT_WATERMARK_DELAY,
              "commit": commit(), "sent": sent, "alerts": len(received),
              "samples": len(delays), "p50_s": percentile(delays, 50), "p95_s": percentile(delays, 95),
              "p99_s": percentile(delays, 99), "types": sorted({a["alert_type"] for _, a in received})}
    say(f"alert latency at {rate:,}/s: p50 {result['p50_s']} s, p99 {result['p99_s']} s over {len(delays)} alerts")
    return result


def markdown(r: dict) -> str:
    off, on, actions = r["profiles_off"], r["profiles_on"], r["profiles_triggers_on"]
    lat = r["alert_latency"]
    return "\n".join([
        f"# Profiles and alerts: cost and alert latency ({r['machine']['date']}, commit {r['machine']['commit']}, "
        f"{r['machine']['cores']} cores)", "",
        "| figure | value | goal |", "|---|---|---|",
        f"| the job, PROFILES=false TRIGGERS=false, {off['events']:,} events | {off['events_per_s']:,} events/s | |",
        f"| the job, PROFILES=true (profiles, scores, alerts) TRIGGERS=false | {on['events_per_s']:,} events/s | |",
        f"| with / without | {r['ratio_pct']}% | >= 85% — {'met' if r['ratio_pct'] >= 85 else '**not met**'} |",
        f"| the job, PROFILES=true TRIGGERS=true (+ the default triggers, actions topic) | "
        f"{actions['events_per_s']:,} events/s ({r['triggers_ratio_pct']}% of PROFILES=false) | |",
        f"| alert latency at {lat['rate']:,}/s after {lat['warmup_s']} s live (event sent -> message on the topic), "
        f"WATERMARK_DELAY={lat.get('watermark_delay', '10m')}, commit {lat.get('commit', r['machine']['commit'])} "
        f"| p50 {lat['p50_s']} s, p95 {lat['p95_s']} s, p99 {lat['p99_s']} s over {lat['samples']} alerts | |",
        "", "Step times per batch (the job's step log), first batches:", "",
        "- off: " + "; ".join(off["steps"][:3]), "- on: " + "; ".join(on["steps"][:3]),
        "- on + triggers: " + "; ".join(actions["steps"][:3]), ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--alerts-only", action="store_true", help="run the alert latency again; keep the rest")
    args = parser.parse_args(argv)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    if args.alerts_only:
        results = json.loads((out / "profiles.json").read_text())
        results["alert_latency"] = alert_latency(args.rate, args.seconds)
        (out / "profiles.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "profiles.md").write_text(markdown(results))
        print(markdown(results))
        return 0
    results = {"machine": machine()}
    topic, results["preload"] = preload(args.events)
    results["profiles_off"] = throughput(topic, args.events, "profiles-off", {"PROFILES": "false", "TRIGGERS": "false"})
    results["profiles_on"] = throughput(topic, args.events, "profiles-on", {"PROFILES": "true", "TRIGGERS": "false"})
    results["profiles_triggers_on"] = throughput(topic, args.events, "profiles-triggers-on",
                                                 {"PROFILES": "true", "TRIGGERS": "true"})
    base = results["profiles_off"]["events_per_s"]
    results["ratio_pct"] = round(100 * results["profiles_on"]["events_per_s"] / base)
    results["triggers_ratio_pct"] = round(100 * results["profiles_triggers_on"]["events_per_s"] / base)
    results["alert_latency"] = alert_latency(args.rate, args.seconds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profiles.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "profiles.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
