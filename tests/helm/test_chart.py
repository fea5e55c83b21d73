"""The helm chart, rendered without a cluster by deploy/local/helm_check.sh.

Reads the manifests `helm_check.sh render` writes to .local/helm-rendered/ (rendering
them first when they are missing or older than the chart), and checks the wiring a
deployment depends on: the driver submits to the chart's master with the baked Kafka
connector, the checkpoint volume sits at CHECKPOINT_DIR, the UIs have Services, the
generator and the job find Kafka, and the check itself fails on a broken chart.
Health probes, credentials, SASL and NetworkPolicies: test_chart_security.py.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from chart_manifests import (CHART, RULES_FILE, ROOT, VALUE_SETS, container, env_of, flag, named, one, pod_spec,
                             rendered, run_helm_check, service_port_reaches, workloads)

__all__ = ["rendered"]  # the fixture, imported for pytest


def dockerfile_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", (ROOT / "Dockerfile").read_text())
    assert match, f"Dockerfile sets no {name}"
    return match.group(1)


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_driver_submits_to_the_chart_master_with_the_baked_kafka_connector(rendered, value_set):
    docs = rendered[value_set]
    driver = container(one(docs, "Deployment", "streaming"), "driver")
    args = driver["args"]
    assert driver["command"][-1].endswith("/bin/spark-submit")
    master_svc = one(docs, "Service", "spark-master")
    assert flag(args, "--master") == f"spark://{master_svc['metadata']['name']}:7077"
    service_port_reaches(docs, master_svc, 7077, one(docs, "Deployment", "spark-master"))
    assert flag(args, "--deploy-mode") == "client"
    # The glob is the directory the Dockerfile fills with `setup.sh connector` output.
    jars_dir = dockerfile_env("SPARK_JARS_DIR")
    assert flag(args, "--jars") == f"{jars_dir}/*.jar"
    assert f"COPY --from=build {jars_dir} {jars_dir}" in (ROOT / "Dockerfile").read_text()
    assert "spark-sql-kafka-0-10" in (ROOT / "deploy/local/setup.sh").read_text()
    assert args[-1].endswith("/app/jobs/streaming/advanced_streaming.py")
    assert "spark.driver.host=$(POD_IP)" in args and "POD_IP" in env_of(driver)


def test_workers_register_with_the_same_master(rendered):
    docs = rendered["default"]
    worker = container(one(docs, "Deployment", "spark-worker"), "spark-worker")
    driver_args = container(one(docs, "Deployment", "streaming"), "driver")["args"]
    assert worker["args"][-1] == flag(driver_args, "--master")
    assert one(docs, "Deployment", "spark-worker")["spec"]["replicas"] == 2
    assert one(rendered["production"], "Deployment", "spark-worker")["spec"]["replicas"] > 2


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_checkpoint_volume_is_mounted_at_checkpoint_dir_on_driver_and_workers(rendered, value_set):
    docs = rendered[value_set]
    job = one(docs, "Deployment", "streaming")
    checkpoint_dir = env_of(container(job, "driver"))["CHECKPOINT_DIR"]
    pvc = one(docs, "PersistentVolumeClaim", "checkpoints")
    for workload, cname in ((job, "driver"), (one(docs, "Deployment", "spark-worker"), "spark-worker")):
        mount = next(m for m in container(workload, cname)["volumeMounts"] if m["mountPath"] == checkpoint_dir)
        volume = next(v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    if value_set == "production":
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_master_keeps_its_state_on_a_volume(rendered):
    master = one(rendered["default"], "Deployment", "spark-master")
    opts = env_of(container(master, "spark-master"))["SPARK_MASTER_OPTS"]
    directory = re.search(r"-Dspark.deploy.recoveryDirectory=(\S+)", opts).group(1)
    assert "-Dspark.deploy.recoveryMode=FILESYSTEM" in opts
    mount = next(m for m in container(master, "spark-master")["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in master["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    named(rendered["default"], "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_ui_and_health_services_expose_4040_8090_and_8080(rendered):
    docs = rendered["default"]
    for port in (4040, 8090):
        service_port_reaches(docs, one(docs, "Service", "streaming"), port, one(docs, "Deployment", "streaming"))
    service_port_reaches(docs, one(docs, "Service", "spark-master"), 8080, one(docs, "Deployment", "spark-master"))


def test_generator_job_writes_to_the_chart_kafka_service(rendered):
    docs = rendered["ci-generator"]
    kafka_svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-kafka"))
    service_port_reaches(docs, kafka_svc, 9092, one(docs, "StatefulSet", "kafka"))
    job = one(docs, "Job", "generator")
    generator = container(job, "generator")
    topic = env_of(container(one(docs, "Deployment", "streaming"), "driver"))["KAFKA_TOPIC"]
    assert generator["command"][-1].endswith("/app/utils/test_behavior_generator.py")
    assert generator["args"][:2] == [f"{kafka_svc['metadata']['name']}:9092", topic]
    init = job["spec"]["template"]["spec"]["initContainers"][0]
    assert env_of(init)["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka_svc['metadata']['name']}:9092"


def test_job_uses_the_chart_kafka_by_default(rendered):
    docs = rendered["default"]
    kafka_svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-kafka"))
    driver = container(one(docs, "Deployment", "streaming"), "driver")
    assert env_of(driver)["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka_svc['metadata']['name']}:9092"


def test_external_kafka_and_mongodb_when_disabled(rendered):
    docs = rendered["ci-external"]
    values = yaml.safe_load((CHART / "ci" / "external-values.yaml").read_text())
    external = values["kafka"]["externalBootstrapServers"]
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    job = one(docs, "Deployment", "streaming")
    assert env_of(container(job, "driver"))["KAFKA_BOOTSTRAP_SERVERS"] == external
    assert env_of(job["spec"]["template"]["spec"]["initContainers"][0])["KAFKA_BOOTSTRAP_SERVERS"] == external
    assert container(one(docs, "Job", "generator"), "generator")["args"][0] == external
    secret = one(docs, "Secret", "mongodb")
    assert secret["stringData"]["MONGODB_URI"] == values["mongodb"]["externalUri"]


def test_existing_secret_and_external_master(rendered):
    docs = rendered["ci-existing-secret"]
    values = yaml.safe_load((CHART / "ci" / "existing-secret-values.yaml").read_text())
    # No MongoDB Secret: the operator's. The API's generated key is the one Secret of the release.
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == ["seg-api-key"]
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    job = one(docs, "Deployment", "streaming")
    driver = container(job, "driver")
    assert env_of(driver)["MONGODB_URI"]["secretKeyRef"]["name"] == values["mongodb"]["existingSecret"]
    assert flag(driver["args"], "--master") == values["job"]["master"]
    assert driver["args"][-1] == "--available-now"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == [values["checkpoint"]["existingClaim"]]


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_mongodb_uri_comes_from_the_secret(rendered, value_set):
    docs = rendered[value_set]
    secret = one(docs, "Secret", "mongodb")
    ref = env_of(container(one(docs, "Deployment", "streaming"), "driver"))["MONGODB_URI"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "MONGODB_URI")
    uri = urlsplit(secret["stringData"]["MONGODB_URI"])
    query = parse_qs(uri.query)
    mongo = one(docs, "StatefulSet", "mongodb")
    members = uri.netloc.rpartition("@")[2].split(",")
    if value_set == "production":
        assert mongo["spec"]["replicas"] == 3 and query["replicaSet"] == ["rs0"] and len(members) == 3
        assert flag(container(mongo, "mongodb")["args"], "--replSet") == "rs0"
        # Initiated by a Job of this revision, not a post-install hook: `helm install --wait`
        # would run such a hook only after the driver is ready, which needs the initiated set.
        init = one(docs, "Job", "mongodb-init")
        assert "helm.sh/hook" not in init["metadata"].get("annotations", {})
        assert "rs.initiate(" in container(init, "mongodb-init")["args"][0]
    else:
        assert mongo["spec"]["replicas"] == 1 and "replicaSet" not in query
        assert members == [f"{named(docs, 'Service', mongo['metadata']['name'])['metadata']['name']}:27017"]


def test_rules_configmap_holds_the_app_rules_file(rendered):
    docs = rendered["default"]
    cm = one(docs, "ConfigMap", "rules")
    (key, content), = cm["data"].items()
    assert yaml.safe_load(content) == yaml.safe_load(RULES_FILE.read_text())
    job = one(docs, "Deployment", "streaming")
    rules_file = env_of(container(job, "driver"))["RULES_FILE"]
    mount = next(m for m in container(job, "driver")["volumeMounts"] if rules_file == f"{m['mountPath']}/{key}")
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_run_non_root_with_limits_and_probes(rendered, value_set):
    app_image = None
    for d in workloads(rendered[value_set]):
        pod = pod_spec(d)
        assert pod["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        for c in pod.get("initContainers", []) + pod["containers"]:
            where = f"{d['metadata']['name']}/{c['name']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"]["limits"]["memory"], where
            # Read-only everywhere but the Kafka broker, whose image writes its config at start.
            is_broker = d["kind"] == "StatefulSet" and c["name"] == "kafka"
            assert c["securityContext"]["readOnlyRootFilesystem"] is not is_broker, where
            if c["securityContext"]["readOnlyRootFilesystem"]:
                assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, where
            if d["kind"] != "Job" and c in pod["containers"]:
                assert "readinessProbe" in c and "livenessProbe" in c, where
        if d["kind"] == "Deployment":
            image = pod["containers"][0]["image"]
            app_image = app_image or image
            assert image == app_image  # master, workers and driver run the one image
            assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in pod["containers"])


def test_kafka_image_matches_the_pinned_kafka_version(rendered):
    pinned = dict(line.split("=", 1) for line in (ROOT / "deploy/local/versions.env").read_text().splitlines()
                  if "=" in line and not line.startswith("#"))
    image = container(one(rendered["default"], "StatefulSet", "kafka"), "kafka")["image"]
    assert image == f"apache/kafka:{pinned['KAFKA_VERSION']}"


def test_production_kafka_quorum_has_three_voters(rendered):
    kafka = one(rendered["production"], "StatefulSet", "kafka")
    env = env_of(container(kafka, "kafka"))
    assert kafka["spec"]["replicas"] == 3
    assert [v.split("@")[0] for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")] == ["0", "1", "2"]
    assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"


def test_rendered_manifests_match_the_kubernetes_schemas(rendered):
    result = run_helm_check("validate")
    assert result.returncode == 0, result.stderr[-4000:]


def _chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)  # follows the rules symlink: the copy is self-contained
    return copy


def test_check_fails_on_a_template_error(tmp_path):
    chart = _chart_copy(tmp_path)
    template = chart / "templates" / "spark-master.yaml"
    template.write_text(template.read_text().replace("{{ $m.port | quote }}", "{{ $m.port | quote }", 1))
    result = run_helm_check("render", chart=chart, out=tmp_path / "out")
    assert result.returncode != 0
    assert "helm-check: helm lint failed" in result.stderr and "spark-master.yaml" in result.stderr


def test_check_fails_on_a_missing_required_value(tmp_path):
    chart = _chart_copy(tmp_path)
    (chart / "ci" / "broken-values.yaml").write_text("kafka:\n  enabled: false\n")
    result = run_helm_check("render", chart=chart, out=tmp_path / "out")
    assert result.returncode != 0
    assert "kafka.externalBootstrapServers is required" in result.stderr


def test_check_fails_on_a_manifest_kubernetes_rejects(tmp_path):
    chart = _chart_copy(tmp_path)
    template = chart / "templates" / "streaming-job.yaml"
    # A typo'd field renders fine and lints fine; only the schema check catches it.
    template.write_text(template.read_text().replace("terminationGracePeriodSeconds:", "terminationGraceSeconds:", 1))
    out = tmp_path / "out"
    assert run_helm_check("render", chart=chart, out=out).returncode == 0
    result = run_helm_check("validate", chart=chart, out=out)
    assert result.returncode != 0
    assert "do not match the Kubernetes" in result.stderr


def _topic_init(workload: dict) -> dict:
    return next(c for c in pod_spec(workload)["initContainers"] if c["name"] == "kafka-topic")


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_the_output_topics_wait_with_the_input_topic_and_are_given_to_the_job(rendered, value_set):
    job = one(rendered[value_set], "Deployment", "streaming")
    env, init = env_of(container(job, "driver")), _topic_init(job)
    assert (env["KAFKA_TOPIC"], env["ALERTS_TOPIC"], env["ACTIONS_TOPIC"], env["SEGMENTS_TOPIC"],
            env["STORE_TOPIC"]) == ("ecommerce_events", "behavior_alerts", "behavior_actions", "behavior_segments",
                                    "behavior_store")
    assert env_of(init)["TOPICS"].split() == [env["KAFKA_TOPIC"], env["ALERTS_TOPIC"], env["ACTIONS_TOPIC"],
                                              env["SEGMENTS_TOPIC"], env["STORE_TOPIC"]]
    assert 'for topic in $TOPICS; do ensure "$topic"' in init["args"][0]


def test_the_generator_waits_for_the_input_topic_only(rendered):
    docs = rendered["ci-generator"]
    assert env_of(_topic_init(one(docs, "Job", "generator")))["TOPICS"] == "ecommerce_events"


def test_topic_init_waits_for_existing_topics_and_creates_only_missing_ones(rendered, tmp_path):
    """Run the init container's script with a stand-in kafka-topics.sh: a topic that exists is only
    listed (a client without CREATE passes), a missing one is created with the partitions and
    replication factor."""
    init = _topic_init(one(rendered["default"], "Deployment", "streaming"))
    tool = tmp_path / "kafka-topics.sh"
    # Topics that "exist" are listed in $EXISTING; every call is logged.
    tool.write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/calls\n'
                    'if [[ " $* " == *" --list "* ]]; then printf "%s\\n" $EXISTING; exit; fi\n'
                    'exit 0\n')
    tool.chmod(0o755)
    script = init["args"][0].replace("/opt/kafka/bin/kafka-topics.sh", str(tool)).replace("sleep 5", "exit 9")
    env = {k: v for k, v in env_of(init).items() if isinstance(v, str)}
    run = subprocess.run(["bash", "-c", script], env={**env, "PATH": "/usr/bin:/bin", "EXISTING": "ecommerce_events"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    created = [c for c in calls if "--create" in c]
    assert len(created) == 4 and all("--partitions 3 --replication-factor 1" in c for c in created)
    assert not [c for c in created if "ecommerce_events" in c]
