"""`make status`: the running job's health, from its endpoint (HEALTH_PORT) or, when nothing
answers there, from the health files the local jobs leave in their checkpoint directories."""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from app.config import ROOT


def describe(status: dict, where: str, now: float | None = None) -> list[str]:
    """A health snapshot -> lines for a terminal."""
    now = now if now is not None else time.time()
    verdict = "live" if status["live"] else "NOT LIVE"
    verdict += ", ready" if status["ready"] else ", not ready"
    lines = [f"job (pid {status['pid']}, {where}): {verdict}: {status['reason']}"]
    age = now - status["time"]  # a file is as old as its last write
    for q in status["queries"]:
        since = q.get("seconds_since_batch")
        last = "no batch yet" if since is None else (
            f"last batch {since + age:.0f} s ago (batch {q['last_batch_id']}, {q['last_batch_rows']} rows, "
            f"{q['last_batch_ms'] / 1000:.1f} s)")
        lag = q.get("kafka_lag")
        error = f", {q['error']}" if q.get("error") else ""
        lines.append(f"  query {q['name']}: {q['state']}, {q['batches']} batches, {last}, "
                     f"Kafka lag {'-' if lag is None else f'{lag:,}'}{error}")
    return lines


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def main() -> int:
    port = int(os.environ.get("HEALTH_PORT", "8090"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            print("\n".join(describe(json.loads(response.read()), f"http://127.0.0.1:{port}")))
            return 0
    except (urllib.error.URLError, OSError):
        pass
    roots = {Path(os.environ["CHECKPOINT_DIR"])} if os.environ.get("CHECKPOINT_DIR") else set()
    files = sorted({*roots, *(ROOT / ".local" / "checkpoints").glob("*")}, key=str)
    found = [(d / "health.json") for d in files if (d / "health.json").is_file()]
    if not found:
        print(f"job: not running (nothing on 127.0.0.1:{port}; no health file under .local/checkpoints); "
              "start it with: make demo")
        return 1
    for path in found:
        status = json.loads(path.read_text())
        if _pid_alive(status["pid"]):
            print("\n".join(describe(status, str(path))))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["time"]))
            print(f"job ({path.parent.name}): not running; last seen {when}: {status['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
