"""One user's batch with many open sessions (issue 18, item 9): the pure engine, no Spark.

A bot rotates session ids: N events of one user, each on its own user_session, a second apart.
They are made final (the watermark passes them), then ONE more event of the user arrives: the
time of that step (decode the state, process, encode) and the state's size are what a
micro-batch pays for this user. Run from a checkout of any commit whose engine has
process_events / process_timeout (`git worktree add /tmp/old f51a323` for "before"):

    .venv/bin/python -m bench.user_cost [--sizes 1000,10000,100000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from app.config import DEFAULT_RULES_FILE
from app.segments.rules import load_rules
from app.sessions.tracker import Event, SessionSettings, UserState, process_events, process_timeout

T0 = 1_714_564_800_000
MIN = 60_000


def bot_state(n: int, settings: SessionSettings) -> tuple[str, int]:
    """The state text after n one-event sessions, all final and still open (within the gap)."""
    events = [Event(T0 + i, f"e{i}", "view", "bot", f"s{i}", "p1", "c1", None) for i in range(n)]
    step = process_events(None, events, 0, settings)
    watermark = T0 + n + 1
    step = process_timeout(step.state, watermark, settings)  # no-op on engines that decide at arrival
    return step.state.encode(), watermark


def one_more(text: str, watermark: int, settings: SessionSettings) -> tuple[float, int]:
    started = time.perf_counter()
    state = UserState.decode(text)
    step = process_events(state, [Event(watermark + 1000, "last", "view", "bot", "s0", "p1", "c1", None)],
                          watermark, settings)
    written = step.state.encode()
    return time.perf_counter() - started, len(written)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    settings = SessionSettings(gap_ms=30 * MIN, max_ms=24 * 60 * MIN, rules=load_rules(DEFAULT_RULES_FILE))
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        text, watermark = bot_state(n, settings)
        one_more(text, watermark, settings)  # warm-up
        times, size = [], 0
        for _ in range(args.repeat):
            seconds, size = one_more(text, watermark, settings)
            times.append(seconds)
        open_sessions = len(json.loads(text)["sessions"])
        rows.append({"sessions_opened": n, "open_in_state": open_sessions, "state_bytes_read": len(text),
                     "state_bytes_written": size, "median_ms": round(statistics.median(times) * 1000, 2)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"python": platform.python_version(), "machine": platform.machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
