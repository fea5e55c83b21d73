"""The chart's exposed surfaces fail closed (DESIGN.md §16, issue 20 probe 9): one function per check.

Each check takes the rendered value sets (chart_manifests.render_all) and raises AssertionError
naming what is open; some render the chart once more with a careless setting and expect helm to
refuse it. tests/helm/test_chart_fail_closed.py runs every check (and shows each one can fail);
`make security` runs this file, which prints one line per check:

    .venv/bin/python tests/helm/chart_checks.py      ->  PASS chart: <check> (<what was checked>)
                                                         FAIL chart: <check>: <what is open>
and exits 1 when any check fails.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

from chart_manifests import (CHART, COMPONENT, VALUE_SETS, all_containers, container, env_of, helm_template, one,
                             pod_labels, render_all, secret_data, selects, values_of, workloads)

Rendered = dict[str, list[dict]]
ANY = "<any source>"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


# --- NetworkPolicies -----------------------------------------------------------------------------

def _pods(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {pod_labels(w)[COMPONENT]: pod_labels(w) for w in workloads(docs)}


def _policy_for(docs: list[dict], labels: dict[str, str]) -> dict:
    found = [d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], labels)]
    assert len(found) == 1, f"{len(found)} NetworkPolicies select {labels.get(COMPONENT)}"
    return found[0]


def admitted(policy: dict, port: str, pods: dict[str, dict[str, str]]) -> set[str]:
    """Components the policy admits on the named port; ANY when a rule admits every source."""
    found = set()
    for rule in policy["spec"].get("ingress", []):
        if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
            continue
        peers = rule.get("from")
        if not peers or any(p.get("podSelector") == {} and "namespaceSelector" not in p for p in peers) \
                or any("namespaceSelector" in p or "ipBlock" in p for p in peers):
            found.add(ANY)  # no `from`, every pod of the namespace, or sources outside it
        found |= {name for name, labels in pods.items()
                  if any(selects(p["podSelector"], labels) for p in peers or [] if "podSelector" in p)}
    return found


def _sets_with(rendered: Rendered, *components: str, chart_spark: bool = False) -> list[str]:
    names = []
    for name in VALUE_SETS:
        pods = _pods(rendered[name])
        if set(components) <= set(pods) and (not chart_spark or values_of(name)["spark"]["enabled"]):
            names.append(name)
    assert names, f"no values set renders {components}"
    return names


def check_kafka_admits_no_api(rendered: Rendered) -> str:
    """The API is the internet-facing pod and reads no Kafka: no Kafka port admits it."""
    sets = _sets_with(rendered, "kafka", "api", chart_spark=True)
    for name in sets:
        docs = rendered[name]
        pods = _pods(docs)
        policy = _policy_for(docs, pods["kafka"])
        for port in ("kafka", "controller"):
            wrong = {"api", ANY} & admitted(policy, port, pods)
            assert not wrong, f"{name}: Kafka port {port} admits {sorted(wrong)}"
    return f"{len(sets)} values sets"


def check_driver_health_only_from_the_api(rendered: Rendered) -> str:
    sets = _sets_with(rendered, "streaming", "api")
    for name in sets:
        pods = _pods(rendered[name])
        who = admitted(_policy_for(rendered[name], pods["streaming"]), "health", pods)
        assert who == {"api"}, f"{name}: the driver's health port admits {sorted(who)}"
    return f"{len(sets)} values sets"


def check_no_spark_ui_open(rendered: Rendered) -> str:
    """No rule opens a Spark UI (driver `ui`, master/worker `http`) to every source, nor to the API."""
    checked = 0
    for name in VALUE_SETS:
        docs = rendered[name]
        pods = _pods(docs)
        for component, port in (("streaming", "ui"), ("spark-master", "http"), ("spark-worker", "http")):
            if component in pods:
                wrong = {ANY, "api"} & admitted(_policy_for(docs, pods[component]), port, pods)
                assert not wrong, f"{name}: {component} port {port} admits {sorted(wrong)}"
                checked += 1
    return f"{checked} UI ports"


# --- Spark ---------------------------------------------------------------------------------------

def _driver(docs: list[dict]) -> dict:
    return container(one(docs, "Deployment", "streaming"), "driver")


def _daemon_opts(docs: list[dict]) -> dict[str, tuple[str, dict]]:
    """spark-master/spark-worker -> (their SPARK_*_OPTS, env)."""
    out = {}
    for component, var in (("spark-master", "SPARK_MASTER_OPTS"), ("spark-worker", "SPARK_WORKER_OPTS")):
        env = env_of(container(one(docs, "Deployment", component), component))
        out[component] = (env[var], env)
    return out


def check_spark_ui_kill_disabled(rendered: Rendered) -> str:
    for name in VALUE_SETS:
        docs = rendered[name]
        assert "spark.ui.killEnabled=false" in _driver(docs)["args"], f"{name}: the driver's UI can kill the job"
        if values_of(name)["spark"]["enabled"]:
            for component, (opts, _) in _daemon_opts(docs).items():
                assert "-Dspark.ui.killEnabled=false" in opts.split(), f"{name}: {component} UI can kill"
    return f"driver, master and workers, {len(VALUE_SETS)} values sets"


def _secret_ref(value: object) -> tuple[str, str]:
    assert isinstance(value, dict) and "secretKeyRef" in value, f"not from a Secret: {value!r}"
    assert not value["secretKeyRef"].get("optional"), f"optional Secret key: {value!r}"
    return value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]


def check_spark_authenticate(rendered: Rendered) -> str:
    """The driver, the master and the workers share one secret from a Secret: a pod that reaches 7077
    without it cannot submit code or register a worker."""
    for name in VALUE_SETS:
        docs = rendered[name]
        driver = _driver(docs)
        args = driver["args"]
        assert "spark.authenticate=true" in args, f"{name}: the driver runs without spark.authenticate"
        secret_arg = next((a for a in args if a.startswith("spark.authenticate.secret=")), "")
        var = re.fullmatch(r"spark\.authenticate\.secret=\$\((\w+)\)", secret_arg)
        assert var, f"{name}: spark.authenticate.secret is not taken from the env: {secret_arg!r}"
        ref = _secret_ref(env_of(driver).get(var.group(1)))
        assert ref[1] == "auth-secret", ref
        if values_of(name)["spark"]["enabled"]:
            for component, (opts, env) in _daemon_opts(docs).items():
                assert "-Dspark.authenticate=true" in opts.split(), f"{name}: {component} without spark.authenticate"
                assert "_SPARK_AUTH_SECRET" in env, f"{name}: {component} has no _SPARK_AUTH_SECRET"
                assert _secret_ref(env["_SPARK_AUTH_SECRET"]) == ref, f"{name}: {component} has another secret"
        generated = secret_data(docs).get(ref[0])
        if generated is not None:
            assert re.fullmatch(r"[A-Za-z0-9]{64}", generated["auth-secret"]), f"{name}: weak generated secret"
        else:
            assert ref[0] == values_of(name)["spark"]["authenticate"]["existingSecret"], ref
    return f"driver, master, workers share one Secret, {len(VALUE_SETS)} values sets"


# --- Kafka ---------------------------------------------------------------------------------------

def _chart_kafka_sets(rendered: Rendered) -> list[str]:
    return [name for name in VALUE_SETS if any(w["kind"] == "StatefulSet" and pod_labels(w)[COMPONENT] == "kafka"
                                                 for w in workloads(rendered[name]))]


def check_kafka_topic_autocreation_off(rendered: Rendered) -> str:
    sets = _chart_kafka_sets(rendered)
    for name in sets:
        env = env_of(container(one(rendered[name], "StatefulSet", "kafka"), "kafka"))
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", f"{name}: topic auto-creation is on"
    return f"{len(sets)} values sets"


def kafka_grants(docs: list[dict]) -> tuple[set[str], set[tuple[str, str, str, str]]]:
    """(users the kafka-init Job writes, {(user, operation, resource, pattern)}) from its script."""
    init = container(one(docs, "Job", "kafka-init"), "kafka-init")
    script, env = init["args"][0], env_of(init)
    users = set()
    for user, variable in re.findall(r'^\s*user "([^"]+)" (\w+)$', script, re.M):
        assert _secret_ref(env.get(variable))[1].endswith("-password"), f"{user}: password not from the Secret"
        users.add(user)
    grants = set()
    for user, ops, rest in re.findall(r'^\s*allow "([^"]+)" "([^"]+)" (.+)$', script, re.M):
        kind, resource = re.match(r'--(topic|group) "?([^" ]+)"?', rest).groups()
        pattern = "prefixed" if "--resource-pattern-type prefixed" in rest else "literal"
        grants |= {(user, op, f"{kind}:{resource}", pattern) for op in ops.split()}
    return users, grants


def expected_kafka_grants(values: dict) -> set[tuple[str, str, str, str]]:
    """The least each principal needs (DESIGN.md §16): the job reads the input topic and writes the
    output topics and reads and writes its store lane, the generator writes the input topic, each
    consumer reads the topics it names."""
    k, s = values["kafka"], values["kafka"]["sasl"]
    topic = {"alerts": k["alertsTopic"], "actions": k["actionsTopic"], "segments": k["segmentsTopic"]}
    grants = {(s["username"], op, f"topic:{k['topic']}", "literal") for op in ("Read", "Describe")}
    grants |= {(s["username"], op, f"topic:{t}", "literal") for op in ("Write", "Describe")
               for t in (k["alertsTopic"], k["actionsTopic"], k["segmentsTopic"])}
    grants |= {(s["username"], op, f"topic:{k['storeTopic']}", "literal") for op in ("Read", "Write", "Describe")}
    grants.add((s["username"], "Read", "group:spark-kafka-source-", "prefixed"))
    if values["generator"]["enabled"]:
        grants |= {(s["generatorUsername"], op, f"topic:{k['topic']}", "literal") for op in ("Write", "Describe")}
    for c in s["consumers"]:
        grants |= {(c["name"], op, f"topic:{topic[t]}", "literal") for op in ("Read", "Describe") for t in c["topics"]}
        grants.add((c["name"], "Read", f"group:{c.get('groupPrefix') or c['name']}", "prefixed"))
    return grants


def check_kafka_scram_with_acls(rendered: Rendered) -> str:
    """values-production.yaml: SCRAM on both listeners' clients, deny by default, one user per
    principal with exactly the ACLs it needs, only the brokers and the admin as super users."""
    sets = [n for n in _chart_kafka_sets(rendered) if values_of(n)["kafka"]["sasl"]["enabled"]]
    assert "production" in sets, "values-production.yaml runs the chart's Kafka without SASL"
    for name in sets:
        docs, values = rendered[name], values_of(name)
        s = values["kafka"]["sasl"]
        env = env_of(container(one(docs, "StatefulSet", "kafka"), "kafka"))
        protocols = set(p.split(":")[1] for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert protocols == {"SASL_PLAINTEXT"}, f"{name}: listeners {protocols}"
        assert env["KAFKA_SASL_ENABLED_MECHANISMS"] in ("SCRAM-SHA-256", "SCRAM-SHA-512"), name
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith(".StandardAuthorizer"), f"{name}: no authorizer"
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false", name
        assert env["KAFKA_SUPER_USERS"].split(";") == [f"User:{s['interBrokerUsername']}", f"User:{s['adminUsername']}"]
        users, grants = kafka_grants(docs)
        expected = expected_kafka_grants(values)
        assert grants == expected, f"{name}: ACLs beyond the least needed {sorted(grants - expected)}, missing {sorted(expected - grants)}"
        assert users == {g[0] for g in expected}, f"{name}: users {sorted(users)}"
        clients = {}
        for w in workloads(docs):
            for c in all_containers(w):
                user = env_of(c).get("KAFKA_SASL_USERNAME")
                if user:
                    clients.setdefault(pod_labels(w)[COMPONENT], set()).add(user)
        assert all(len(u) == 1 for u in clients.values()) and len({next(iter(u)) for u in clients.values()}) == len(clients), \
            f"{name}: principals share a user: {clients}"
    return f"{len(sets)} values sets incl. production, {len(grants)} ACLs in the last"


# --- the API's key and Ingress -------------------------------------------------------------------

def _refused(flags: list[str], message: str) -> None:
    result = helm_template(*flags)
    assert result.returncode != 0, f"helm rendered {' '.join(flags)}"
    assert message in result.stderr, result.stderr[-600:]


def check_ingress_without_tls_is_refused(rendered: Rendered) -> str:
    _refused(["--set", "api.ingress.enabled=true"], "api.ingress.tls.enabled=false would send the API key")
    allowed = helm_template("--set", "api.ingress.enabled=true", "--set", "api.ingress.allowInsecure=true")
    assert allowed.returncode == 0, allowed.stderr[-600:]
    return "refused unless api.ingress.allowInsecure=true"


def check_api_key_never_empty(rendered: Rendered) -> str:
    """API_KEY only from a Secret key (never extraEnv, never optional), and the container stops on an
    empty one before the API starts."""
    for variable in ("API_KEY", "API_ALLOW_NO_KEY"):
        _refused(["--set", f"api.extraEnv[0].name={variable}", "--set", "api.extraEnv[0].value="],
                 f"api.extraEnv must not set {variable}")
    for name in _sets_with(rendered, "api"):
        api = container(one(rendered[name], "Deployment", "api"), "api")
        assert [e["name"] for e in api["env"]].count("API_KEY") == 1, f"{name}: API_KEY set twice"
        assert _secret_ref(env_of(api)["API_KEY"])[1] == "api-key"
        assert "API_ALLOW_NO_KEY" not in env_of(api), name
    # The start command, run with a stand-in for the API: an empty key exits 64, a key execs it.
    command = container(one(rendered["default"], "Deployment", "api"), "api")["command"]
    tini, shell, dash_c, script, *api_argv = command[1:]
    assert (tini, dash_c) == ("--", "-c") and api_argv[-2:] == ["-m", "app.api"], command
    for key, code, out in (("", 64, ""), ("k3y", 0, "-m app.api")):
        run = subprocess.run([shell, dash_c, script, "echo", *api_argv[1:]], env={"API_KEY": key, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=10)
        assert (run.returncode, run.stdout.strip()) == (code, out), (key, run.returncode, run.stdout, run.stderr)
    return "extraEnv API_KEY/API_ALLOW_NO_KEY refused, empty key stops the container"


# --- images --------------------------------------------------------------------------------------

def check_production_images_by_digest(rendered: Rendered) -> str:
    images = {c["image"] for w in workloads(rendered["production"]) for c in all_containers(w)}
    assert images and all(DIGEST.search(i) for i in images), f"not by digest: {sorted(i for i in images if not DIGEST.search(i))}"
    # values-production.yaml alone (no digests filled in) does not render.
    result = helm_template("-f", str(CHART / "values-production.yaml"))
    assert result.returncode != 0, "values-production.yaml renders without image digests"
    assert ".digest must be the image's sha256 digest" in result.stderr, result.stderr[-600:]
    return f"{len(images)} images; values-production.yaml without digests is refused"


CHECKS: dict[str, Callable[[Rendered], str]] = {
    "kafka admits no api pod": check_kafka_admits_no_api,
    "driver health port only from the api": check_driver_health_only_from_the_api,
    "no spark ui open": check_no_spark_ui_open,
    "kafka topic auto-creation off": check_kafka_topic_autocreation_off,
    "kafka scram with per-principal acls": check_kafka_scram_with_acls,
    "spark ui kill disabled": check_spark_ui_kill_disabled,
    "spark.authenticate with a secret": check_spark_authenticate,
    "ingress without tls refused": check_ingress_without_tls_is_refused,
    "api key never empty": check_api_key_never_empty,
    "production images by digest": check_production_images_by_digest,
}


def run_checks(rendered: Rendered | None = None) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for every check; a chart that does not render fails them all."""
    try:
        rendered = rendered if rendered is not None else render_all()
    except AssertionError as exc:
        return [(name, False, f"the chart does not render: {str(exc).splitlines()[-1]}") for name in CHECKS]
    results = []
    for name, check in CHECKS.items():
        try:
            results.append((name, True, check(rendered)))
        except AssertionError as exc:
            results.append((name, False, (str(exc) or "assertion failed").splitlines()[0][:300]))
    return results


def main() -> int:
    results = run_checks()
    for name, passed, detail in results:
        print(f"PASS chart: {name} ({detail})" if passed else f"FAIL chart: {name}: {detail}")
    return 0 if all(passed for _, passed, _ in results) else 1


if __name__ == "__main__":  # python tests/helm/chart_checks.py: this directory is on sys.path
    sys.exit(main())
