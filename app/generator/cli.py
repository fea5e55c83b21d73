"""Test-data generator CLI (DESIGN.md §9): synthetic sessions or a REES46 replay -> Kafka.

    python3 -m app.generator.cli localhost:9092 ecommerce_events --sessions 500 --bad-ratio 0.02

Exit codes: 0 all sent, 1 some records were not delivered, 2 bad usage or Kafka unreachable.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path

from app.generator.behaviors import RISK_BUILDERS, RISK_SEGMENTS, SESSION_BUILDERS, TIME_FORMAT
from app.generator.malformed import interleave_malformed
from app.generator.replay import paced, parse_event_time, read_rees46_events

DEFAULT_MIX = "bouncer=0.3,browser=0.4,engaged_shopper=0.2,power_user=0.1"
# Sessions end at least this long before "now", so no event can look like it is from the future.
PAST_MARGIN = timedelta(minutes=1)
PROGRESS_EVERY_S = 2.0
CONVERSION_DELAY = timedelta(seconds=30)  # --effect: a converting purchase comes this long after the last event
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # reused: json.dumps builds one per call


@dataclass(frozen=True)
class PlannedSession:
    user_session: str
    user_id: int
    segment: str
    events: list
    scenario: str = "clean"  # clean | bot | fraud
    experiments: dict = field(default_factory=dict)  # with --effect: experiment -> the user's variant
    converted: bool | None = None                    # with --effect: a purchase was added to convert it

    def intent(self) -> dict:
        intent = {"user_session": self.user_session, "user_id": self.user_id, "segment": self.segment,
                  "events": len(self.events), "scenario": self.scenario, "alerts": expected_alerts(self)}
        if self.converted is not None:
            intent.update(experiments=self.experiments, converted=self.converted)
        return intent


# The alert types the default profile rules (app/rules/profiles_v1.yaml) raise for each scenario;
# a clean session raises only HIGH_VALUE_PURCHASE, and only when it buys something that dear.
SCENARIO_ALERTS = {"clean": [], "bot": ["HIGH_VELOCITY", "RAPID_ACTIONS"],
                   "fraud": ["HIGH_VALUE_PURCHASE", "LOCATION_JUMP", "MULTIPLE_IPS"]}
HIGH_VALUE_PRICE = 500


def expected_alerts(session: PlannedSession) -> list[str]:
    alerts = set(SCENARIO_ALERTS[session.scenario])
    if any(e["event_type"] == "purchase" and e["price"] >= HIGH_VALUE_PRICE for e in session.events):
        alerts.add("HIGH_VALUE_PURCHASE")
    return sorted(alerts)


def parse_mix(text: str) -> dict[str, float]:
    """'bouncer=0.3,browser=0.4' -> weights; segments left out get none."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in SESSION_BUILDERS:
            raise argparse.ArgumentTypeError(f"unknown segment {name!r} (known: {', '.join(SESSION_BUILDERS)})")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name} is not a number: {weight!r}") from None
        if mix[name] < 0:
            raise argparse.ArgumentTypeError(f"weight of {name} must not be negative")
    if sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("--mix needs at least one positive weight")
    return mix


def allocate_segments(n_sessions: int, mix: dict[str, float]) -> list[str]:
    """Exactly n_sessions segment names in the mix's proportions (largest remainder), so a test
    can predict the counts instead of hoping a random draw comes close."""
    total = sum(mix.values())
    quotas = {name: n_sessions * weight / total for name, weight in mix.items()}
    counts = {name: int(quota) for name, quota in quotas.items()}
    by_remainder = sorted(quotas, key=lambda name: quotas[name] - counts[name], reverse=True)
    for name in by_remainder[: n_sessions - sum(counts.values())]:
        counts[name] += 1
    return [name for name, count in counts.items() for _ in range(count)]


def plan_sessions(n_sessions: int, mix: dict[str, float], rng: random.Random, now: datetime,
                  start_minutes_ago: float = 240, spread_minutes: float = 180,
                  user_pool: int | None = None, bots: float = 0.0, fraud: float = 0.0,
                  returning: float = 0.0) -> list[PlannedSession]:
    """Sessions starting evenly over [now - start_minutes_ago, + spread_minutes]; one that
    would run past now - PAST_MARGIN is moved earlier (rebuilt from its own seed) instead.
    `bots` and `fraud` add that share of risky sessions; `returning` is the share of sessions whose
    user is the user of an earlier session."""
    segments = allocate_segments(n_sessions, mix) + ["bot"] * round(n_sessions * bots) \
        + ["fraud"] * round(n_sessions * fraud)
    rng.shuffle(segments)
    n_sessions = len(segments)
    first_user = rng.randint(500_000_000, 590_000_000)
    users = list(range(first_user, first_user + (user_pool or n_sessions)))
    rng.shuffle(users)
    now = now.replace(microsecond=0)  # whole seconds, like event_time, so the shift below is exact
    begin, latest_end = now - timedelta(minutes=start_minutes_ago), now - PAST_MARGIN
    sessions, clean_users = [], []
    for i, segment in enumerate(segments):
        user_session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user_id, seed = users[i % len(users)], rng.getrandbits(64)
        if returning and clean_users and segment in SESSION_BUILDERS and rng.random() < returning:
            user_id = rng.choice(clean_users)  # risky sessions keep users of their own
        build = SESSION_BUILDERS.get(segment) or RISK_BUILDERS[segment]
        start = (begin + timedelta(minutes=spread_minutes * i / n_sessions)).replace(microsecond=0)
        events = build(user_id, user_session, start, random.Random(seed))
        overrun = parse_event_time(events[-1]["event_time"]) - latest_end
        if overrun > timedelta(0):
            events = build(user_id, user_session, start - overrun, random.Random(seed))
        scenario = segment if segment in RISK_BUILDERS else "clean"
        if scenario == "clean":
            clean_users.append(user_id)
        sessions.append(PlannedSession(user_session, user_id, RISK_SEGMENTS.get(segment, segment), events, scenario))
    return sessions


def parse_effect(text: str) -> tuple[str, float]:
    """'ten_percent_off=+0.05' -> (variant, 0.05)."""
    name, _, value = text.partition("=")
    try:
        delta = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--effect wants VARIANT=+0.05, got {text!r}") from None
    if not name or not -1 <= delta <= 1:
        raise argparse.ArgumentTypeError(f"--effect wants VARIANT=+0.05 with a change between -1 and 1, got {text!r}")
    return name, delta


def with_experiment_effects(sessions: list[PlannedSession], experiments, effects: dict[str, float],
                            base_rate: float, rng: random.Random) -> list[PlannedSession]:
    """Simulates a treatment effect: a clean session planned in one of an experiment's target
    segments, by a user assigned (as the job assigns) to variant V, converts (a purchase of a
    product it viewed is added 30 s after its last event, when the session has been in the target
    segment and seen the variant's recommendations) with probability base_rate + effects[V]."""
    out = []
    for session in sessions:
        assigned = {e.name: e.variant_for(str(session.user_id)).name for e in experiments.experiments
                    if session.segment in e.segments}
        if session.scenario != "clean" or not assigned:
            out.append(session)
            continue
        chance = base_rate + sum(effects.get(variant, 0.0) for variant in assigned.values())
        converted = rng.random() < chance
        events = session.events
        if converted:
            last, bought = events[-1], rng.choice(events)
            bought_at = parse_event_time(last["event_time"]) + CONVERSION_DELAY  # after it became exposed
            product = {key: bought[key] for key in ("product_id", "category_id", "category_code", "brand", "price",
                                                    "page_url")}
            events = events + [{**last, **product, "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                                "event_time": bought_at.strftime(TIME_FORMAT), "event_type": "purchase"}]
        out.append(replace(session, events=events, experiments=assigned, converted=converted))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="test_behavior_generator",
                                     description="Send e-commerce test events to Kafka.")
    parser.add_argument("bootstrap", help="Kafka bootstrap servers, e.g. localhost:9092")
    parser.add_argument("topic", help="topic to write to, e.g. ecommerce_events")
    parser.add_argument("--sessions", type=_non_negative(int), default=200, help="sessions to generate (200)")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX),
                        help=f"segment weights ({DEFAULT_MIX})")
    parser.add_argument("--rate", type=_non_negative(float), default=0.0,
                        help="records per second, 0 = as fast as possible (0)")
    parser.add_argument("--bad-ratio", type=_non_negative(float), default=0.0,
                        help="extra malformed records per valid event, cycling through every kind (0)")
    parser.add_argument("--duplicate-ratio", type=_non_negative(float), default=0.0,
                        help="fraction of events sent twice, like a producer retry (same event_id; 0)")
    parser.add_argument("--replay", type=Path, metavar="FILE.csv", help="send a REES46 CSV instead")
    parser.add_argument("--speedup", type=_non_negative(float), default=0.0,
                        help="with --replay: X times real time by event-time gaps, 0 = no pacing (0)")
    parser.add_argument("--intent-file", type=Path, metavar="PATH",
                        help="write JSONL: one line per session and per malformed record")
    parser.add_argument("--seed", type=int, help="make the generated data repeatable")
    parser.add_argument("--start-minutes-ago", type=_non_negative(float), default=240.0,
                        help="first session starts this long before now (240); a session that "
                             "would end in the future starts earlier instead")
    parser.add_argument("--spread-minutes", type=_non_negative(float), default=180.0,
                        help="session starts are spread evenly over this span (180)")
    parser.add_argument("--user-pool", type=_non_negative(int), help="distinct user ids (default: --sessions)")
    parser.add_argument("--bots", type=_non_negative(float), default=0.0,
                        help="add this share of bot sessions: 35-50 views one second apart (0)")
    parser.add_argument("--fraud", type=_non_negative(float), default=0.0,
                        help="add this share of fraud sessions: address hopping, a country jump, a purchase "
                             "over 500 (0)")
    parser.add_argument("--returning", type=_non_negative(float), default=0.0,
                        help="share of sessions by the user of an earlier session (0)")
    parser.add_argument("--experiments", type=Path, metavar="FILE.yaml", default=None,
                        help="the job's EXPERIMENTS_FILE, for --effect (default: app/rules/experiments_v1.yaml)")
    parser.add_argument("--effect", type=parse_effect, action="append", default=[], metavar="VARIANT=+0.05",
                        help="simulate a treatment effect: the variant's exposed sessions convert this much more "
                             "often (repeatable; the intent file records each session's variant and outcome)")
    parser.add_argument("--base-conversion", type=_non_negative(float), default=None,
                        help="with --effect: the conversion chance of an exposed session in any variant (0.1)")
    parser.add_argument("--connect-timeout", type=_non_negative(float), default=10.0,
                        help="seconds to wait for Kafka before giving up (10)")
    args = parser.parse_args(argv)
    if args.replay and not args.replay.is_file():
        parser.error(f"--replay: no such file {args.replay}")
    if args.user_pool == 0:
        parser.error("--user-pool must be at least 1")
    if args.effect or args.base_conversion is not None or args.experiments:
        from app.config import InvalidConfigError
        from app.experiments.design import EXAMPLE_EXPERIMENTS, load_experiments
        try:
            args.experiment_design = load_experiments(args.experiments or EXAMPLE_EXPERIMENTS)
        except InvalidConfigError as exc:
            parser.error(str(exc))
        variants = {v.name for e in args.experiment_design.experiments for v in e.variants}
        unknown = [name for name, _ in args.effect if name not in variants]
        if unknown:
            parser.error(f"--effect: no variant {unknown[0]!r} in the experiments (have: {', '.join(sorted(variants))})")
        args.base_conversion = 0.1 if args.base_conversion is None else args.base_conversion
    else:
        args.experiment_design = None
    return args


def _non_negative(kind):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return value
    return convert


def _compression() -> str | None:
    """kafka-python checksums every batch with CRC32C, in pure Python (~0.3 s/MB) unless the
    `crc32c` package is installed; gzip first shrinks what it checksums, which is ~1.5x faster."""
    try:
        import crc32c  # noqa: F401
    except ImportError:
        return "gzip"
    return None


def open_producer(bootstrap: str, connect_timeout_s: float):
    from kafka import KafkaProducer
    config = {"bootstrap_servers": bootstrap.split(","), "acks": 1, "linger_ms": 50,
              "batch_size": 1024 * 1024, "compression_type": _compression(),
              "max_block_ms": int(max(connect_timeout_s, 10) * 1000)}
    if "bootstrap_timeout_ms" in KafkaProducer.DEFAULT_CONFIG:  # kafka-python >= 3 waits 30 s otherwise
        config["bootstrap_timeout_ms"] = int(connect_timeout_s * 1000)
    return KafkaProducer(**config, **kafka_security(os.environ))


def kafka_security(env) -> dict:
    """The job's Kafka security settings (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*) in kafka-python's
    terms, so the generator reaches the same secured broker as the job."""
    protocol = env.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT"
    options = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=env.get("KAFKA_SASL_MECHANISM") or "PLAIN",
                       sasl_plain_username=env.get("KAFKA_SASL_USERNAME", ""),
                       sasl_plain_password=env.get("KAFKA_SASL_PASSWORD", ""))
    return options


class _Progress:
    """A line on stderr every couple of seconds; lines, not \\r, so `kubectl logs` reads well."""

    def __init__(self, total: int | None):
        self.total, self.started = total, time.monotonic()
        self.next_report = self.started + PROGRESS_EVERY_S

    def tick(self, sent: int) -> None:
        now = time.monotonic()
        if now >= self.next_report:
            self.next_report = now + PROGRESS_EVERY_S
            of_total = f"/{self.total}" if self.total else ""
            print(f"  {sent}{of_total} records sent ({sent / (now - self.started):.0f}/s)", file=sys.stderr)


def send_all(producer, topic: str, records, rate: float, total: int | None) -> tuple[int, list, list]:
    """Send (record, kind) pairs; returns (events sent, [(kind, future)] of malformed, errors)."""
    malformed, errors, events, progress = [], [], 0, _Progress(total)
    started = time.monotonic()
    for sent, (record, kind) in enumerate(records, start=1):
        if kind is None:
            key = str(record.get("user_session") or record.get("user_id", "")).encode()
            future = producer.send(topic, key=key, value=_COMPACT_JSON.encode(record).encode())
            events += 1
        else:
            future = producer.send(topic, key=f"malformed-{kind}".encode(), value=record)
            malformed.append((kind, future))
        future.add_errback(errors.append)
        if rate:
            wait = started + sent / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        progress.tick(sent)
    producer.flush(timeout=120)
    return events, malformed, errors


def _write_jsonl(handle, lines) -> None:
    if handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)


def _source_events(args, rng: random.Random, now: datetime, intent):
    """(sessions, events in event-time order, expected record count or None) for this run."""
    if args.replay:
        return [], paced(read_rees46_events(args.replay), args.speedup), None
    print(f"generating {args.sessions} sessions ...", file=sys.stderr)
    sessions = plan_sessions(args.sessions, args.mix, rng, now, args.start_minutes_ago,
                             args.spread_minutes, args.user_pool, args.bots, args.fraud, args.returning)
    if args.experiment_design is not None:
        sessions = with_experiment_effects(sessions, args.experiment_design, dict(args.effect), args.base_conversion,
                                           rng)
    _write_jsonl(intent, (session.intent() for session in sessions))
    # A stable sort of per-session runs: ties keep each session's own order.
    events = sorted((e for s in sessions for e in s.events), key=itemgetter("event_time"))
    events = with_redeliveries(events, args.duplicate_ratio, rng)
    return sessions, events, len(events) + round(len(events) * args.bad_ratio)


def with_redeliveries(events: list[dict], ratio: float, rng: random.Random, within: int = 20) -> list[dict]:
    """A copy of about `ratio` of the events (same event_id) a few records after the original, as a
    producer that retries after a lost acknowledgement delivers it."""
    out: list[dict] = []
    pending: list[tuple[int, dict]] = []  # (position to send the copy at, event)
    for i, event in enumerate(events):
        out.extend(copy for due, copy in pending if due <= i)
        pending = [(due, copy) for due, copy in pending if due > i]
        out.append(event)
        if ratio and rng.random() < ratio:
            pending.append((i + rng.randint(1, within), event))
    out.extend(copy for _, copy in pending)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    rng, now, started = random.Random(args.seed), datetime.now(timezone.utc), time.monotonic()
    from kafka.errors import KafkaError
    try:
        producer = open_producer(args.bootstrap, args.connect_timeout)
    except KafkaError:
        print(f"error: cannot reach Kafka at {args.bootstrap} (start it with: make up)", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        stack.callback(producer.close, timeout=10)  # also on Ctrl-C: what was queued still goes out
        intent = stack.enter_context(args.intent_file.open("w")) if args.intent_file else None
        sessions, events, total = _source_events(args, rng, now, intent)
        print(f"sending to {args.topic} at {args.bootstrap} ...", file=sys.stderr)
        records = interleave_malformed(events, args.bad_ratio, rng, now)
        try:
            n_events, malformed, errors = send_all(producer, args.topic, records, args.rate, total)
        except KafkaError as exc:
            print(f"error: sending to Kafka at {args.bootstrap} failed: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:  # only a replayed file can be malformed here
            print(f"error: cannot replay {args.replay}: {exc}", file=sys.stderr)
            return 2
        # Each malformed kind is named after the one reason code it must get (malformed.py).
        _write_jsonl(intent, ({"malformed": kind, "expected_reason": kind,
                               "partition": future.value.partition, "offset": future.value.offset}
                              for kind, future in malformed if future.succeeded()))
    seconds = time.monotonic() - started
    print(f"done: {len(sessions)} sessions, {n_events} events, {len(malformed)} malformed "
          f"in {seconds:.2f} s ({n_events / max(seconds, 1e-9):.0f} events/s)", file=sys.stderr)
    if errors:
        print(f"error: {len(errors)} records were not delivered, first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
