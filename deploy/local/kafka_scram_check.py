"""The chart's Kafka SASL/SCRAM and ACLs against a real broker, without a cluster.

Renders the chart with kafka.sasl (helm/ci/kafka-sasl-values.yaml, one broker) and runs, on this
machine with the Kafka jars of `make setup` (.local/kafka/libs) and on loopback ports:
  1. the broker container's own start script (it formats the volume with the brokers' and the
     admin's SCRAM users), with stand-ins for the image's paths: kafka-storage.sh and the image's
     run script become the same Kafka classes on the same KAFKA_* settings;
  2. the kafka-init Job (its topic init container, then its users-and-ACLs script), as admin;
  3. the driver's and the generator's topic init containers, each as its own user;
  4. clients of every principal, expecting what the ACLs allow and nothing more.
Prints one line per expectation and exits 1 when any fails:
    .venv/bin/python deploy/local/kafka_scram_check.py        (about a minute on 2 cores)
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
STACK_DIR = Path(os.environ.get("STACK_DIR", ROOT / ".local"))
LIBS = STACK_DIR / "kafka" / "libs"
HELM = STACK_DIR / "bin" / "helm"
PORT = int(os.environ.get("SCRAM_CHECK_PORT", "19092"))
CONTROLLER_PORT = PORT + 1
BOOTSTRAP = f"127.0.0.1:{PORT}"
JAVA_MAINS = {"kafka-storage.sh": "kafka.tools.StorageTool", "kafka-topics.sh": "org.apache.kafka.tools.TopicCommand",
              "kafka-configs.sh": "kafka.admin.ConfigCommand", "kafka-acls.sh": "org.apache.kafka.tools.AclCommand"}


def render() -> list[dict]:
    out = subprocess.run([str(HELM), "template", "seg", str(ROOT / "helm"), "--namespace", "segmentation",
                          "--kube-version", "1.37.0", "-f", str(ROOT / "helm/ci/kafka-sasl-values.yaml"),
                          "--set", "kafka.replicas=1"], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs, kind, component):
    return next(d for d in docs if d["kind"] == kind
                and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)


def containers(workload):
    spec = workload["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def env_for(c: dict, secrets: dict[str, dict[str, str]], extra: dict[str, str]) -> dict[str, str]:
    """The container's env as the kubelet builds it: secretKeyRefs resolved, $(VAR) expanded."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    for e in c.get("env", []):
        if "valueFrom" in e:
            ref = e["valueFrom"].get("secretKeyRef")
            if ref:
                env[e["name"]] = secrets[ref["name"]][ref["key"]]
            continue
        env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
    env.update(extra)
    return env


def stand_ins(bin_dir: Path, tmp: Path) -> dict[str, str]:
    """Script text replacements: the image's paths -> wrappers running the same Kafka classes."""
    bin_dir.mkdir(parents=True)
    java = f'exec java -Xmx384m -Dlog4j2.configurationFile={ROOT}/deploy/local/log4j2-kafka.properties -cp "{LIBS}/*"'
    for tool, main in JAVA_MAINS.items():
        (bin_dir / tool).write_text(f"#!/bin/bash\n{java} {main} \"$@\"\n")
    # The image's run script: server.properties from KAFKA_* (the image's own rule), its own format
    # step (tolerating a formatted volume), then the broker.
    (bin_dir / "run").write_text(f"""#!/bin/bash
props={tmp}/server.properties; : > "$props"
for name in $(compgen -e | grep '^KAFKA_'); do
  case "$name" in KAFKA_VERSION|*_OPTS) continue ;; esac
  key="${{name#KAFKA_}}"; key="${{key,,}}"; key="${{key//___/-}}"; key="${{key//__/@}}"; key="${{key//_/.}}"
  printf '%s=%s\\n' "${{key//@/_}}" "${{!name}}" >> "$props"
done
out=$({bin_dir}/kafka-storage.sh format --cluster-id "$CLUSTER_ID" -c "$props" 2>&1) || echo "$out" | grep -qi "already formatted" || {{ echo "$out"; exit 1; }}
{java.replace('-Xmx384m', '-Xmx768m')} kafka.Kafka "$props"
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    # /tmp first: the stand-ins themselves live under it.
    return {"/tmp/": f"{tmp}/", "/opt/kafka/bin/": f"{bin_dir}/", "/etc/kafka/docker/run": str(bin_dir / "run")}


def run_script(c: dict, env: dict[str, str], replace: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    script = c["args"][0]
    for old, new in replace.items():
        script = script.replace(old, new)
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, **kwargs)


def wait_port(port: int, seconds: float, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.5)
    return False


def client_checks(users: dict[str, str], topics: dict[str, str], mechanism: str,
                  partitions: int) -> list[tuple[str, bool, str]]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.errors import KafkaError

    def login(user, password=None):
        return dict(bootstrap_servers=BOOTSTRAP, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                    sasl_plain_username=user, sasl_plain_password=password or users[user])

    def produce(user, topic, password=None):
        try:
            producer = KafkaProducer(**login(user, password), max_block_ms=8000, request_timeout_ms=8000, retries=0)
            try:
                producer.send(topic, b'{"x": 1}').get(timeout=10)
                return True, "sent"
            finally:
                producer.close(timeout=5)
        except KafkaError as exc:
            return False, type(exc).__name__

    def read(user, topic, group=None):
        try:
            consumer = KafkaConsumer(**login(user), group_id=group, consumer_timeout_ms=6000,
                                     auto_offset_reset="earliest", request_timeout_ms=8000)
            try:
                if group:
                    consumer.subscribe([topic])
                else:
                    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
                    consumer.seek_to_beginning()
                got = 0
                for _ in range(3):
                    got += sum(len(v) for v in consumer.poll(timeout_ms=3000).values())
                return got > 0, f"{got} records"
            finally:
                consumer.close()
        except KafkaError as exc:
            return False, type(exc).__name__

    job, gen = "segmentation", "segmentation-generator"
    expectations = [  # (what, allowed?, attempt)
        ("generator writes the input topic", True, lambda: produce(gen, topics["input"])),
        ("generator cannot write the alerts topic", False, lambda: produce(gen, topics["alerts"])),
        ("job cannot write the input topic", False, lambda: produce(job, topics["input"])),
        ("job writes the alerts topic", True, lambda: produce(job, topics["alerts"])),
        ("job writes the actions topic", True, lambda: produce(job, topics["actions"])),
        ("job writes the segments topic", True, lambda: produce(job, topics["segments"])),
        ("generator cannot write the segments topic", False, lambda: produce(gen, topics["segments"])),
        ("job reads the input topic", True, lambda: read(job, topics["input"])),
        ("crm-actions reads actions in its group", True, lambda: read("crm-actions", topics["actions"], "crm-actions-1")),
        ("crm-actions cannot read alerts", False, lambda: read("crm-actions", topics["alerts"])),
        ("crm-actions cannot use another group", False, lambda: read("crm-actions", topics["actions"], "risk-x")),
        ("risk-desk reads alerts in group risk-*", True, lambda: read("risk-desk", topics["alerts"], "risk-1")),
        ("risk-desk cannot write actions", False, lambda: produce("risk-desk", topics["actions"])),
        ("a wrong password is refused", False, lambda: produce(job, topics["alerts"], users[job] + "x")),
        ("no topic is auto-created (even for the admin)", False, lambda: produce("admin", "not_a_topic")),
    ]
    results = []
    for what, allowed, attempt in expectations:
        ok, detail = attempt()
        results.append((what, ok == allowed, detail))
    return results


def main() -> int:
    if not (LIBS / "kafka_2.13-4.1.1.jar").is_file() and not list(LIBS.glob("kafka_*.jar")):
        print(f"FAIL kafka-scram: no Kafka jars in {LIBS} (make setup)")
        return 1
    docs = render()
    secrets = {d["metadata"]["name"]: {**{k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()},
                                       **d.get("stringData", {})} for d in docs if d["kind"] == "Secret"}
    tmp = Path(tempfile.mkdtemp(prefix="kafka-scram-check-"))
    replace = stand_ins(tmp / "bin", tmp)
    broker_c = containers(find(docs, "StatefulSet", "kafka"))["kafka"]
    host = re.search(r'KAFKA_ADVERTISED_LISTENERS="CLIENT://(\S+?):9092"', broker_c["args"][0]).group(1)
    broker_env = env_for(broker_c, secrets, {
        "HOSTNAME": "seg-kafka-0", "KAFKA_LISTENERS": f"CLIENT://127.0.0.1:{PORT},CONTROLLER://127.0.0.1:{CONTROLLER_PORT}",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"0@127.0.0.1:{CONTROLLER_PORT}", "KAFKA_LOG_DIRS": str(tmp / "data/logs")})
    broker_replace = {**replace, f"{host}:9092": BOOTSTRAP}
    script = broker_c["args"][0]
    for old, new in broker_replace.items():
        script = script.replace(old, new)
    log = open(tmp / "broker.log", "w")
    broker = subprocess.Popen(["bash", "-c", script], env=broker_env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    results: list[tuple[str, bool, str]] = []
    try:
        up = wait_port(PORT, 120, broker)
        results.append(("broker starts with SCRAM, ACLs and the formatted SCRAM users", up,
                        "" if up else (tmp / "broker.log").read_text()[-1500:]))
        if up:
            local = {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "LOG_DIR": str(tmp), "REPLICATION_FACTOR": "1"}
            init = containers(find(docs, "Job", "kafka-init"))
            for name in ("kafka-topic", "kafka-init"):
                run = run_script(init[name], env_for(init[name], secrets, local), replace, timeout=300)
                results.append((f"kafka-init Job: {name} as admin", run.returncode == 0,
                                (run.stdout + run.stderr)[-800:] if run.returncode else f"{run.stdout.count('acl ')} ACLs"))
            for component, kind in (("streaming", "Deployment"), ("generator", "Job")):
                c = containers(find(docs, kind, component))["kafka-topic"]
                run = run_script(c, env_for(c, secrets, local), {**replace, "sleep 5": "exit 9"}, timeout=120)
                results.append((f"{component}'s topic init container as its own user", run.returncode == 0,
                                (run.stdout + run.stderr)[-800:]))
            sasl = secrets["seg-kafka-sasl"]
            users = {"admin": sasl["admin-password"], "segmentation": sasl["client-password"], "segmentation-generator": sasl["generator-password"],
                     "crm-actions": sasl["consumer-crm-actions-password"], "risk-desk": sasl["consumer-risk-desk-password"]}
            env = containers(find(docs, "Deployment", "streaming"))["driver"]["env"]
            topics = {k: next(e["value"] for e in env if e["name"] == v)
                      for k, v in (("input", "KAFKA_TOPIC"), ("alerts", "ALERTS_TOPIC"), ("actions", "ACTIONS_TOPIC"),
                                   ("segments", "SEGMENTS_TOPIC"))}
            results += client_checks(users, topics, next(e["value"] for e in env if e["name"] == "KAFKA_SASL_MECHANISM"),
                                     partitions=3)
    finally:
        os.killpg(broker.pid, 15)
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(broker.pid, 9)
        log.close()
    for what, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'} kafka-scram: {what}" + (f" ({detail})" if detail and ok else
                                                                   f": {detail}" if detail else ""))
    if all(ok for _, ok, _ in results):
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    print(f"logs and data kept in {tmp}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
