"""Helpers for end-to-end tests: produce with the real generator, run the job with spark-submit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from app.generator.cli import main as generator_main
from faults.harness import read_records, snapshot as harness_snapshot
from tests.conftest import ROOT

SAMPLE_CSV = ROOT.parent / "shared" / "data" / "rees46_2019oct_first1000.csv"


def generate(bootstrap: str, topic: str, *args: str) -> None:
    rc = generator_main([bootstrap, topic, *args])
    assert rc == 0, f"generator exited {rc}"


def read_intent(path: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [x for x in lines if "segment" in x], [x for x in lines if "malformed" in x]


CLOCK_USER = "watermark-clock"


def advance_watermark(bootstrap: str, topic: str) -> None:
    """One view "now" on every partition, by a user of its own, after the traffic: the watermark
    (the slowest partition's, see app/pipeline.py event_time_source) of an available-now run then
    ends at now - WATERMARK_DELAY, so everything before that is final (DESIGN §5) and every
    session whose gap it passes is closed. Tests leave CLOCK_USER out of what they count."""
    from datetime import datetime, timezone
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for partition in sorted(producer.partitions_for(topic)):
        producer.send(topic, partition=partition, key=CLOCK_USER.encode(), value=json.dumps({
            "event_id": f"{CLOCK_USER}-{partition}-{now.timestamp():.0f}", "event_time": now.isoformat(),
            "event_type": "view", "user_id": CLOCK_USER, "user_session": f"{CLOCK_USER}-{partition}"}).encode())
    producer.flush()
    producer.close()


def job_env(stack: dict, topic: str, database: str, checkpoint: Path, **extra: str) -> dict:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": stack["bootstrap"], "MONGODB_URI": stack["mongodb_uri"],
            "KAFKA_TOPIC": topic, "MONGODB_DATABASE": database, "CHECKPOINT_DIR": str(checkpoint),
            "TRIGGER_INTERVAL": "0.5s", **extra}


def run_job(env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py",
                             "--available-now", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def start_job(env: dict, log_path: Path) -> subprocess.Popen:
    """The job in continuous mode, in its own process group so a test can kill -9 all of it."""
    log = open(log_path, "w")
    return subprocess.Popen([str(ROOT / "deploy/local/submit.sh"), "app/jobs/streaming/advanced_streaming.py"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_hard(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def snapshot(uri: str, database: str) -> dict[str, list[dict]]:
    return harness_snapshot(database, uri)


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of the topic, read up to its end offsets, in (partition, offset) order."""
    records = read_records(topic, bootstrap)
    assert records, f"topic {topic} does not exist or is empty"
    return records


def rees46_session_count(rows: list[dict], gap_s: float = 30 * 60) -> int:
    """DESIGN §5 on CSV rows: a user_session's events split where two are more than the gap apart."""
    from collections import defaultdict
    from datetime import datetime
    by_session = defaultdict(list)
    for row in rows:
        by_session[row["user_session"]].append(datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S UTC"))
    count = 0
    for times in by_session.values():
        times.sort()
        count += 1 + sum(1 for a, b in zip(times, times[1:]) if (b - a).total_seconds() > gap_s)
    return count
