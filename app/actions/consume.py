"""A reference consumer of the actions topic (DESIGN.md §13): what an email/CRM/storefront
integration does with the job's trigger executions, reduced to printing them.

    python -m app.actions.consume [--bootstrap localhost:9092] [--topic behavior_actions]
                                  [--from-beginning] [--max-messages N] [--idle-timeout 30s] [--json]

One line per action (or the raw JSON with --json). The topic is at-least-once (a batch replayed
after a crash sends its actions again, with the same execution_id), so the consumer skips an
execution_id it has already handled, as a real integration must (here: the last 100,000 ids in
memory; a real one keeps them with what it did). Ctrl-C stops it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from datetime import datetime, timezone

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from app.config import InvalidConfigError, parse_duration
from app.generator.cli import kafka_security

REMEMBERED_IDS = 100_000


class Deduplicator:
    """execution_id -> seen before? Bounded: the oldest ids are forgotten first."""

    def __init__(self, capacity: int = REMEMBERED_IDS):
        self.capacity, self.seen = capacity, OrderedDict()

    def first_time(self, execution_id: str) -> bool:
        if execution_id in self.seen:
            return False
        self.seen[execution_id] = None
        if len(self.seen) > self.capacity:
            self.seen.popitem(last=False)
        return True


def describe(action: dict) -> str:
    """One line: when, which trigger, what to do, for whom, and why."""
    when = datetime.fromtimestamp(action["event_ms"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    todo = "; ".join(f"{a['channel']}/{a['template']}" + (f" {json.dumps(a['parameters'], sort_keys=True)}"
                                                          if a.get("parameters") else "")
                     for a in action["actions"])
    facts = action.get("facts", {})
    why = []
    if "session" in facts:
        s = facts["session"]
        why.append(f"session {action['session_id']} {s.get('status')} {s.get('behavior_segment')}, "
                   f"{s.get('total_events')} events, cart {s.get('cart_count')}, spent {s.get('total_amount') or 0}")
    if "alert" in facts:
        why.append(f"alert {facts['alert']['alert_type']} ({facts['alert']['severity']})")
    if "profile" in facts:
        why.append(f"intent {facts['profile'].get('intent_score')}, pattern {facts['profile'].get('behavior_pattern')}")
    return f"{when}  {action['trigger']:<22} user {action['user_id']:<12} -> {todo}  [{'; '.join(why)}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the job's trigger actions (the behavior_actions topic)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"))
    parser.add_argument("--topic", default=os.environ.get("ACTIONS_TOPIC", "behavior_actions"))
    parser.add_argument("--group", default=None, help="consumer group (commits offsets; default: none)")
    parser.add_argument("--from-beginning", action="store_true", help="read the topic from its start")
    parser.add_argument("--max-messages", type=int, default=0, help="stop after N distinct actions (0: never)")
    parser.add_argument("--idle-timeout", default="", help="stop after this long without a message (e.g. 30s)")
    parser.add_argument("--json", action="store_true", help="print each action's JSON as received")
    args = parser.parse_args(argv)
    try:
        idle_ms = int(parse_duration("--idle-timeout", args.idle_timeout) * 1000) if args.idle_timeout else None
    except InvalidConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = {"bootstrap_timeout_ms": 10_000} if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG else {}
    try:
        consumer = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                                 auto_offset_reset="earliest" if args.from_beginning else "latest",
                                 consumer_timeout_ms=idle_ms if idle_ms else float("inf"),
                                 **options, **kafka_security(os.environ))
    except KafkaError:
        print(f"error: Kafka at {args.bootstrap} is not reachable (start the local stack: make up; "
              "or set KAFKA_BOOTSTRAP_SERVERS)", file=sys.stderr)
        return 1
    print(f"actions from {args.topic} at {args.bootstrap}"
          f"{' (from the beginning)' if args.from_beginning else ''}; Ctrl-C stops", file=sys.stderr)
    seen, handled, skipped = Deduplicator(), 0, 0
    try:
        for message in consumer:
            try:
                action = json.loads(message.value)
                execution_id = action["execution_id"]
            except (ValueError, KeyError, TypeError):
                print(f"warning: not an action message at offset {message.offset}: {message.value[:80]!r}",
                      file=sys.stderr)
                continue
            if not seen.first_time(execution_id):
                skipped += 1
                continue
            handled += 1
            print(json.dumps(action, sort_keys=True) if args.json else describe(action), flush=True)
            if args.max_messages and handled >= args.max_messages:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"{handled} actions, {skipped} redelivered copies skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
