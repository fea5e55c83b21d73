"""The chart's operational safety, on the rendered manifests (chart_manifests.py).

The driver's probes ask its health endpoint; the data-safety settings reach it; credentials
exist only in Secrets and every consumer reads them from there; MongoDB runs with
authentication (a keyFile for a replica set) and its users are created for the job and the
API; Kafka SASL/SCRAM appears exactly when enabled, each principal with its own user, the brokers'
users written when the volume is formatted; the NetworkPolicies admit exactly the intended pods,
computed from the pods' labels. The fail-closed checks (ACLs, Spark auth, digests): chart_checks.py.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from chart_manifests import (CHART, COMPONENT, VALUE_SETS, all_containers, container, env_of, flag, helm_template, one,
                             pod_labels, pod_spec, rendered, secret_data, selects, service_port_reaches, values_of,
                             volume_of_mount, workloads)

__all__ = ["rendered"]  # the fixture, imported for pytest

SASL_ENV = {"KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
AUTH_SETS = ["default", "production", "ci-replicaset-auth", "ci-mongodb-auth-existing-secret"]
ANY = "<any source>"


def seconds(duration: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(second|minute|hour)s?", duration.strip()).groups()
    return float(number) * {"second": 1, "minute": 60, "hour": 3600}[unit]


def driver_of(docs: list[dict]) -> dict:
    return container(one(docs, "Deployment", "streaming"), "driver")


def secret_ref(value: object) -> tuple[str, str]:
    assert isinstance(value, dict) and "secretKeyRef" in value, f"not from a Secret: {value!r}"
    return value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]


# --- health probes and data safety -------------------------------------------------------------

@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_driver_probes_ask_the_health_endpoint(rendered, value_set):
    docs, health = rendered[value_set], values_of(value_set)["job"]["health"]
    job = one(docs, "Deployment", "streaming")
    driver = container(job, "driver")
    port = next(p for p in driver["ports"] if p["name"] == "health")
    assert port["containerPort"] == health["port"] == int(env_of(driver)["HEALTH_PORT"])
    assert env_of(driver)["HEALTH_STALL_AFTER"] == health["stallAfter"]
    startup, ready, live = driver["startupProbe"], driver["readinessProbe"], driver["livenessProbe"]
    assert startup["tcpSocket"]["port"] == "health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # Spark may take minutes to start
    assert ready["httpGet"] == {"path": "/readyz", "port": "health"}
    assert live["httpGet"] == {"path": "/healthz", "port": "health"}
    assert (live["periodSeconds"], live["failureThreshold"]) == (20, 3)
    service_port_reaches(docs, one(docs, "Service", "streaming"), health["port"], job)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_data_safety_settings_reach_the_driver(rendered, value_set):
    values = values_of(value_set)["job"]
    safety, env = values["dataSafety"], env_of(driver_of(rendered[value_set]))
    assert env["KAFKA_FAIL_ON_DATA_LOSS"] == str(safety["kafkaFailOnDataLoss"]).lower()
    assert env["MONGODB_RETRY_TIMEOUT"] == safety["mongodbRetryTimeout"]
    assert env.get("MONGODB_WRITE_CONCERN") == (str(safety["mongodbWriteConcern"]) or None)
    # The job refuses a stall limit that a batch riding out a MongoDB outage would reach.
    assert seconds(env["HEALTH_STALL_AFTER"]) > seconds(env["MONGODB_RETRY_TIMEOUT"])
    if value_set == "default":
        assert (env["KAFKA_FAIL_ON_DATA_LOSS"], env["MONGODB_RETRY_TIMEOUT"]) == ("true", "2 minutes")


# --- credentials only in Secrets -----------------------------------------------------------------

@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_credentials_appear_only_in_secrets(rendered, value_set):
    docs = rendered[value_set]
    secrets = [v for data in secret_data(docs).values() for v in data.values() if len(v) >= 8]
    for d in docs:
        if d["kind"] == "Secret":
            continue
        text = yaml.safe_dump(d)
        assert not [v for v in secrets if v in text], f"{d['kind']} {d['metadata']['name']} holds a Secret value"
        assert not re.search(r"mongodb(\+srv)?://[^/\s\"'@]+:[^/\s\"'@]*@", text), d["metadata"]["name"]
        if d["kind"] == "ConfigMap":
            assert "password" not in text.lower()
    for w in workloads(docs):
        for c in all_containers(w):
            from_secret = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            for e in c.get("env", []):
                if re.search(r"PASSWORD|_URI$|API_KEY", e["name"]):
                    assert e["name"] in from_secret, f"{w['metadata']['name']}/{c['name']}: {e['name']}"
                # A value may name a password only as $(VAR) of a variable taken from a Secret.
                for secret in re.findall(r'(?:password|user_[\w.-]+)="([^"]*)"', e.get("value", "")):
                    assert re.fullmatch(r"\$\((\w+)\)", secret) and secret[2:-1] in from_secret, e["name"]


# --- MongoDB authentication ----------------------------------------------------------------------

@pytest.mark.parametrize("value_set", AUTH_SETS)
def test_chart_mongodb_runs_with_auth_and_creates_the_job_and_api_users(rendered, value_set):
    docs, mongodb = rendered[value_set], values_of(value_set)["mongodb"]
    mongo = one(docs, "StatefulSet", "mongodb")
    server = container(mongo, "mongodb")
    assert "--auth" in server["args"]
    auth_secret, key = secret_ref(env_of(server)["MONGO_INITDB_ROOT_PASSWORD"])
    assert key == "mongodb-root-password"
    assert env_of(server)["MONGO_INITDB_ROOT_USERNAME"] == mongodb["auth"]["rootUsername"]
    init = one(docs, "Job", "mongodb-init")
    assert "helm.sh/hook" not in init["metadata"].get("annotations", {})
    script, env = container(init, "mongodb-init")["args"][0], env_of(container(init, "mongodb-init"))
    for who in ("root", "app", "api"):
        assert env[f"MONGODB_{who.upper()}_USERNAME"] == mongodb["auth"][f"{who}Username"]
        assert secret_ref(env[f"MONGODB_{who.upper()}_PASSWORD"]) == (auth_secret, f"mongodb-{who}-password")
    assert env["MONGODB_DATABASE"] == mongodb["database"]
    assert 'process.env.MONGODB_APP_PASSWORD, "readWrite"' in script
    assert 'process.env.MONGODB_API_PASSWORD, "read"' in script
    assert "admin.auth(process.env.MONGODB_ROOT_USERNAME, process.env.MONGODB_ROOT_PASSWORD)" in script
    if mongodb["replicaSet"]["enabled"]:  # the set is initiated as root, before the users are written
        assert script.index(".auth(process.env.MONGODB_ROOT_USERNAME") < script.index("rs.initiate(")
        assert script.index("rs.initiate(") < script.index("admin.createUser(")


@pytest.mark.parametrize("value_set", ["production", "ci-replicaset-auth"])
def test_replica_set_members_share_a_0400_key_file_and_only_member_0_creates_root(rendered, value_set, tmp_path):
    docs = rendered[value_set]
    mongo = one(docs, "StatefulSet", "mongodb")
    server = container(mongo, "mongodb")
    key_file = Path(flag(server["args"], "--keyFile"))
    _, copy_volume = volume_of_mount(mongo, server, str(key_file.parent))
    assert copy_volume["emptyDir"]["medium"] == "Memory"
    secret_mount, secret_volume = next(
        (m, v) for m in server["volumeMounts"] for v in pod_spec(mongo)["volumes"]
        if v["name"] == m["name"] and "secret" in v)
    item, = secret_volume["secret"]["items"]
    assert item["key"] == "mongodb-replica-set-key" and secret_volume["secret"]["defaultMode"] == 0o400
    assert secret_volume["secret"]["secretName"] == secret_ref(env_of(server)["MONGO_INITDB_ROOT_PASSWORD"])[0]
    # Run the container's start script with a stand-in for the image's entrypoint: the key is
    # copied with mode 0400 (mongod refuses a group-readable one), the args pass through, and
    # only member 0 keeps the root-user variables (rs.initiate refuses members holding data).
    source = tmp_path / "secret" / item["path"]
    source.parent.mkdir()
    source.write_text("k" * 756)
    source.chmod(0o440)  # what fsGroup makes of defaultMode 0400
    copy = tmp_path / "copy" / key_file.name
    copy.parent.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker-entrypoint.sh").write_text('#!/bin/bash\necho "${MONGO_INITDB_ROOT_USERNAME:-none} $*"\n')
    (bin_dir / "docker-entrypoint.sh").chmod(0o755)
    shell, dash_c, script, name = server["command"]
    script = (script.replace(secret_mount["mountPath"], str(source.parent))
              .replace(str(key_file.parent), str(copy.parent)))
    for ordinal, root in ((0, "root"), (1, "none"), (2, "none")):
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOSTNAME": f"{mongo['metadata']['name']}-{ordinal}",
               "MONGO_INITDB_ROOT_USERNAME": "root", "MONGO_INITDB_ROOT_PASSWORD": "x"}
        run = subprocess.run([shell, dash_c, script, name, *server["args"]], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [root, *server["args"]]
        assert stat.S_IMODE(copy.stat().st_mode) == 0o400 and copy.read_text() == source.read_text()


@pytest.mark.parametrize("value_set", ["default", "production", "ci-replicaset-auth"])
def test_generated_secret_carries_uris_with_the_app_and_api_credentials(rendered, value_set):
    docs, mongodb = rendered[value_set], values_of(value_set)["mongodb"]
    driver_ref = secret_ref(env_of(driver_of(docs))["MONGODB_URI"])
    data = secret_data(docs)[driver_ref[0]]
    sts = one(docs, "StatefulSet", "mongodb")
    replicas = sts["spec"]["replicas"]
    for key, who in (("MONGODB_URI", "app"), ("MONGODB_API_URI", "api")):
        uri = urlsplit(data[key])
        query = parse_qs(uri.query)
        assert (unquote(uri.username), unquote(uri.password)) == (mongodb["auth"][f"{who}Username"],
                                                                  data[f"mongodb-{who}-password"])
        assert query["authSource"] == ["admin"]  # where the mongodb-init Job creates the users
        hosts = uri.netloc.rpartition("@")[2].split(",")
        if mongodb["replicaSet"]["enabled"]:
            assert query["replicaSet"] == [mongodb["replicaSet"]["name"]] and len(hosts) == replicas
            assert all(h.startswith(f"{sts['metadata']['name']}-") for h in hosts)
    assert re.fullmatch(r"[A-Za-z0-9+/=]{6,1024}", data["mongodb-replica-set-key"])
    assert len({data[f"mongodb-{w}-password"] for w in ("root", "app", "api")}) == 3


def test_mongodb_credentials_from_an_existing_secret(rendered):
    docs, values = rendered["ci-mongodb-auth-existing-secret"], values_of("ci-mongodb-auth-existing-secret")
    existing = values["mongodb"]["auth"]["existingSecret"]
    # The only Secrets rendered are the API's key and Spark's (their existingSecrets are unset here).
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Secret") == ["seg-api-key", "seg-spark-auth"]
    refs = {secret_ref(e["valueFrom"]) for w in workloads(docs) for c in all_containers(w) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})} - {("seg-api-key", "api-key"), ("seg-spark-auth", "auth-secret")}
    assert {name for name, _ in refs} == {existing}
    # Every key the pods read is documented at mongodb.auth.existingSecret in values.yaml.
    auth = (CHART / "values.yaml").read_text().split("\n  auth:\n", 1)[1]
    doc = auth[:auth.index("    existingSecret:")]
    assert {key for _, key in refs} == {"mongodb-root-password", "mongodb-app-password", "mongodb-api-password",
                                        "MONGODB_URI", "MONGODB_API_URI"}
    for _, key in refs | {("", "mongodb-replica-set-key")}:
        assert key in doc, f"{key} is not documented at mongodb.auth.existingSecret"


@pytest.mark.parametrize("value_set", ["ci-external", "ci-existing-secret"])
def test_external_mongodb_gets_no_server_credentials(rendered, value_set):
    docs = rendered[value_set]
    assert not [w for w in workloads(docs) if w["metadata"]["labels"][COMPONENT] in ("mongodb", "mongodb-init")]
    assert set(env_of(driver_of(docs))) >= {"MONGODB_URI"}
    keys = {k for data in secret_data(docs).values() for k in data}
    assert keys <= {"MONGODB_URI", "MONGODB_API_URI", "api-key", "auth-secret"}


# --- Kafka SASL ----------------------------------------------------------------------------------

def _kafka_clients(docs: list[dict], sasl: dict) -> list[tuple[str, dict, str]]:
    """(where, container, the SASL user it must log in as) of every Kafka client container."""
    users = {"streaming": sasl["username"], "generator": sasl["generatorUsername"], "kafka-init": sasl["adminUsername"]}
    return [(f"{w['metadata']['name']}/{c['name']}", c, users[pod_labels(w)[COMPONENT]])
            for w in workloads(docs) for c in all_containers(w)
            if c["name"] in ("driver", "generator", "kafka-topic", "kafka-init")]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_kafka_sasl_env_exactly_when_enabled(rendered, value_set):
    docs, sasl = rendered[value_set], values_of(value_set)["kafka"]["sasl"]
    clients = _kafka_clients(docs, sasl)
    others = [c for w in workloads(docs) for c in all_containers(w) if c not in [c for _, c, _ in clients]]
    assert not [c["name"] for c in others if SASL_ENV & set(env_of(c))]  # workers, stores: no login
    if not sasl["enabled"]:
        assert not [where for where, c, _ in clients if SASL_ENV & set(env_of(c))]
        return
    secrets = secret_data(docs)
    keys = {sasl["username"]: "client-password", sasl["generatorUsername"]: "generator-password",
            sasl["adminUsername"]: "admin-password"}
    for where, c, user in clients:  # each principal logs in as its own user, with its own password
        env = env_of(c)
        assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"]) == ("SASL_PLAINTEXT", sasl["mechanism"])
        assert env["KAFKA_SASL_USERNAME"] == user, where
        name, key = secret_ref(env["KAFKA_SASL_PASSWORD"])
        assert key == keys[user] and key in secrets[name], where
    assert len({secrets["seg-kafka-sasl"][k] for k in keys.values()}) == 3
    # The topic init container logs in through a file it writes at run time on an emptyDir.
    job = one(docs, "Deployment", "streaming")
    init = next(c for c in pod_spec(job)["initContainers"] if c["name"] == "kafka-topic")
    config = re.search(r"--command-config (\S+)", init["args"][0]).group(1)
    _, volume = volume_of_mount(job, init, str(Path(config).parent))
    assert "emptyDir" in volume


def _broker(docs: list[dict]) -> tuple[dict, dict[str, object]]:
    broker = container(one(docs, "StatefulSet", "kafka"), "kafka")
    return broker, env_of(broker)


def test_kafka_broker_takes_scram_logins_and_its_brokers_plain_on_the_controller_listener(rendered):
    docs, sasl = rendered["ci-kafka-sasl"], values_of("ci-kafka-sasl")["kafka"]["sasl"]
    broker, env = _broker(docs)
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {port: name for name, port in
                 (re.match(r"(\w+)://:(\d+)", item).groups() for item in env["KAFKA_LISTENERS"].split(","))}
    assert protocols[listeners["9092"]] == protocols[listeners["9093"]] == "SASL_PLAINTEXT"
    assert listeners["9093"] == env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == listeners["9092"]
    assert f'KAFKA_ADVERTISED_LISTENERS="{listeners["9092"]}://' in broker["args"][0]
    mech = sasl["mechanism"]
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == mech
    assert env["KAFKA_LISTENER_NAME_CONTROLLER_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
    scram = env[f"KAFKA_LISTENER_NAME_{listeners['9092']}_{mech.replace('-', '___')}_SASL_JAAS_CONFIG"]
    assert scram.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required ")
    own = re.search(r'username="([^"]+)" password="\$\((\w+)\)"', scram).groups()
    assert own[0] == sasl["interBrokerUsername"]
    assert secret_ref(env[own[1]]) == ("seg-kafka-sasl", "inter-broker-password")
    plain = env["KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG"]
    assert dict(re.findall(r'user_([\w.-]+)="\$\((\w+)\)"', plain)) == {own[0]: own[1]}  # brokers only
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == f"User:{sasl['interBrokerUsername']};User:{sasl['adminUsername']}"


def test_kafka_start_script_formats_the_volume_with_the_brokers_and_admins_scram_users(rendered, tmp_path):
    """Run the broker's start script with stand-ins for kafka-storage.sh and the image's run script:
    the format step gets the config the image derives from KAFKA_* and the two SCRAM users."""
    docs, sasl = rendered["ci-kafka-sasl"], values_of("ci-kafka-sasl")["kafka"]["sasl"]
    broker, env = _broker(docs)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kafka-storage.sh").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/args\n'
                                              f'cp "${{@: -5:1}}" {tmp_path}/props 2>/dev/null || true\n')
    (bin_dir / "run").write_text(f"#!/bin/bash\necho ran > {tmp_path}/ran\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    script = (broker["args"][0].replace("/opt/kafka/bin/kafka-storage.sh", str(bin_dir / "kafka-storage.sh"))
              .replace("/etc/kafka/docker/run", str(bin_dir / "run")).replace("/tmp/format.properties",
                                                                               str(tmp_path / "format.properties")))
    values = {"SASL_INTER_BROKER_PASSWORD": "brokerpw", "SASL_ADMIN_PASSWORD": "adminpw"}
    run_env = {"PATH": os.environ["PATH"], "HOSTNAME": "seg-kafka-1", **values}
    for name, value in env.items():
        if isinstance(value, str):
            run_env[name] = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], value)
    run = subprocess.run(["bash", "-c", script], env=run_env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    args = (tmp_path / "args").read_text().splitlines()
    mech = sasl["mechanism"]
    assert args[:4] == ["format", "--ignore-formatted", "--cluster-id", env["CLUSTER_ID"]]
    assert f"{mech}=[name={sasl['interBrokerUsername']},password=brokerpw]" in args
    assert f"{mech}=[name={sasl['adminUsername']},password=adminpw]" in args
    assert (tmp_path / "ran").is_file() and not (tmp_path / "format.properties").exists()  # removed
    props = dict(line.split("=", 1) for line in (tmp_path / "props").read_text().splitlines())
    assert props["node.id"] == "1" and props["process.roles"] == "broker,controller"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props[f"listener.name.client.{mech.lower()}.sasl.jaas.config"].endswith('password="brokerpw";')
    assert props["log.dirs"] == env["KAFKA_LOG_DIRS"] and "heap.opts" not in props


def test_kafka_options_pass_through_job_extra_env(rendered):
    env = env_of(driver_of(rendered["ci-kafka-sasl"]))
    assert env["KAFKA_OPT_CLIENT_DNS_LOOKUP"] == "use_all_dns_ips"
    assert "KAFKA_OPT_SSL_TRUSTSTORE_LOCATION" in (CHART / "values.yaml").read_text()


# --- NetworkPolicies -----------------------------------------------------------------------------

def _pods(docs: list[dict]) -> dict[str, dict[str, str]]:
    """component -> pod labels of every workload (the API's pods included)."""
    pods = {pod_labels(w)[COMPONENT]: pod_labels(w) for w in workloads(docs)}
    assert "api" in pods
    return pods


def _policy_for(docs: list[dict], labels: dict[str, str]) -> dict:
    found = [d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], labels)]
    assert len(found) == 1, f"{len(found)} NetworkPolicies select {labels.get(COMPONENT)}"
    assert found[0]["spec"]["policyTypes"] == ["Ingress"]
    return found[0]


def _admitted(policy: dict, port: str | None, pods: dict[str, dict[str, str]]) -> set[str]:
    """Components whose pods the policy admits on the named port (None: a port-less rule)."""
    admitted = set()
    for rule in policy["spec"].get("ingress", []):
        if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
            continue
        if "from" not in rule:
            return {ANY}
        admitted |= {name for name, labels in pods.items()
                     if any(selects(peer["podSelector"], labels) for peer in rule["from"] if "podSelector" in peer)}
    return admitted


@pytest.mark.parametrize("value_set", ["default", "production", "ci-generator", "ci-kafka-sasl",
                                       "ci-replicaset-auth", "ci-mongodb-auth-existing-secret"])
def test_network_policies_admit_only_the_intended_pods(rendered, value_set):
    docs = rendered[value_set]
    pods = _pods(docs)
    generator = {"generator"} & set(pods)
    expected = {  # component -> {named port: admitted components}
        # Not the API: it reads no Kafka, and it is the pod the internet reaches.
        "kafka": {"kafka": {"streaming", "spark-worker", "kafka"} | generator | ({"kafka-init"} & set(pods)),
                  "controller": {"kafka"}},
        "mongodb": {"mongodb": {"streaming", "spark-worker", "api", "mongodb", "mongodb-init"}},
        "spark-master": {"spark": {"streaming", "spark-worker"}},
        "spark-worker": {None: {"spark-master", "streaming", "spark-worker"}},
        # The health port for the API's JOB_STATUS_URL only; no rule at all for the Spark UI.
        "streaming": {"driver": {"spark-master", "spark-worker"}, "blockmanager": {"spark-master", "spark-worker"},
                      "ui": set(), "health": {"api"}},
        "api": {"http": {ANY}},
    }
    for component, ports in expected.items():
        workload = next(w for w in workloads(docs) if pod_labels(w)[COMPONENT] == component)
        policy = _policy_for(docs, pod_labels(workload))
        declared = {p["name"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
        named_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
        assert named_ports <= declared, f"{component}: {named_ports - declared} is no container port"
        for port, admitted in ports.items():
            assert _admitted(policy, port, pods) == admitted, f"{component}:{port}"
    # Nothing else in the release is refused by accident or left out: every listening pod has one.
    for w in workloads(docs):
        if w["kind"] != "Job":
            _policy_for(docs, pod_labels(w))


def test_network_policies_with_an_external_spark_leave_the_executor_ports_open(rendered):
    docs = rendered["ci-existing-secret"]  # spark.enabled=false, networkPolicy.externalExecutors empty
    pods = _pods(docs)
    driver = _policy_for(docs, pods["streaming"])
    assert _admitted(driver, "driver", pods) == {ANY} and _admitted(driver, "health", pods) == {"api"}
    assert _admitted(driver, "ui", pods) == set()
    kafka = _policy_for(docs, pods["kafka"])
    assert _admitted(kafka, "kafka", pods) == {ANY} and _admitted(kafka, "controller", pods) == {"kafka"}


@pytest.mark.parametrize("value_set", ["default", "production", "ci-api-ingress", "ci-existing-secret"])
def test_api_is_open_on_its_port_and_reaches_mongodb_and_the_drivers_health(rendered, value_set):
    docs = rendered[value_set]
    pods = _pods(docs)
    api = one(docs, "Deployment", "api")
    policy = _policy_for(docs, pods["api"])
    port = next(p for c in pod_spec(api)["containers"] for p in c.get("ports", []) if p["name"] == "http")
    assert port["containerPort"] == values_of(value_set)["api"]["port"]
    assert _admitted(policy, "http", pods) == {ANY}  # the public face: the API key guards it
    assert _admitted(policy, "other", pods) == set()  # nothing else on the API's pods
    driver = _policy_for(docs, pods["streaming"])
    assert _admitted(driver, "health", pods) == {"api"}  # JOB_STATUS_URL, and nobody else
    if values_of(value_set)["mongodb"]["enabled"]:
        assert "api" in _admitted(_policy_for(docs, pods["mongodb"]), "mongodb", pods)
    # The API reads MongoDB only: no Kafka settings, so no Kafka rule is needed for it.
    assert not [name for name in env_of(container(api, "api")) if name.startswith("KAFKA_")]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_secret_key_a_pod_reads_is_in_the_rendered_secret(rendered, value_set):
    """A secretKeyRef to a missing key leaves the pod in CreateContainerConfigError."""
    docs = rendered[value_set]
    secrets = secret_data(docs)
    refs = {(w["metadata"]["name"], secret_ref(e["valueFrom"])) for w in workloads(docs) for c in all_containers(w)
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs
    missing = [(w, name, key) for w, (name, key) in refs if name in secrets and key not in secrets[name]]
    assert not missing


@pytest.mark.parametrize("flags,message", [
    (["--set", "kafka.sasl.mechanism=PLAIN"], "the chart's Kafka offers SCRAM-SHA-512 or SCRAM-SHA-256"),
    (["--set", "kafka.sasl.generatorUsername=segmentation"], "must all differ"),
    (["--set", "kafka.sasl.consumers[0].name=crm", "--set", "kafka.sasl.consumers[0].topics[0]=input"],
     "topics must name alerts, actions and/or segments"),
    (["--set", "kafka.sasl.consumers[0].name=c rm", "--set", "kafka.sasl.consumers[0].topics[0]=alerts"],
     "must be letters, digits"),
])
def test_chart_kafka_sasl_refuses_plain_shared_users_and_other_topics(flags, message):
    result = helm_template("--set", "kafka.sasl.enabled=true", *flags)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-500:]
