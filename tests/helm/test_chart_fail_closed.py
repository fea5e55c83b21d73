"""The chart's exposed surfaces fail closed (DESIGN.md §16): every check of chart_checks.py passes on
the rendered chart, and each one fails on a manifest that opens what it guards (so a check that
stopped looking would be caught here)."""
from __future__ import annotations

import copy
import shutil

import pytest

from chart_checks import CHECKS, run_checks
from chart_manifests import CHART, COMPONENT, container, env_of, helm_template, one, rendered, rendered_with

__all__ = ["rendered"]  # the fixture, imported for pytest


@pytest.mark.parametrize("name", CHECKS)
def test_check_passes_on_the_chart(rendered, name):
    assert CHECKS[name](rendered)


def _policy(docs: list[dict], component: str) -> dict:
    return next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["labels"][COMPONENT] == component)


def _api_peer(docs: list[dict]) -> dict:
    return {"podSelector": {"matchLabels": {COMPONENT: "api", "app.kubernetes.io/instance": "seg",
                                            "app.kubernetes.io/name": "behavior-segmentation"}}}


def _admit_api_on_kafka(docs):
    _policy(docs, "kafka")["spec"]["ingress"][0]["from"].append(_api_peer(docs))


def _open_driver_health(docs):
    rule = next(r for r in _policy(docs, "streaming")["spec"]["ingress"] if r["ports"][0]["port"] == "health")
    del rule["from"]


def _open_driver_ui(docs):
    _policy(docs, "streaming")["spec"]["ingress"].append({"ports": [{"port": "ui", "protocol": "TCP"}]})


def _drop_kill_setting(docs):
    driver = container(one(docs, "Deployment", "streaming"), "driver")
    driver["args"] = [a for a in driver["args"] if a != "spark.ui.killEnabled=false"]


def _worker_without_auth(docs):
    worker = container(one(docs, "Deployment", "spark-worker"), "spark-worker")
    worker["env"] = [e for e in worker["env"] if e["name"] != "_SPARK_AUTH_SECRET"]


def _literal_api_key(docs):
    api = container(one(docs, "Deployment", "api"), "api")
    api["env"] = [e for e in api["env"] if e["name"] != "API_KEY"] + [{"name": "API_KEY", "value": ""}]


def _tag_only_image(docs):
    c = container(one(docs, "Deployment", "api"), "api")
    c["image"] = c["image"].split("@")[0]


def _broker_env(docs) -> list[dict]:
    return container(one(docs, "StatefulSet", "kafka"), "kafka")["env"]


def _auto_create_topics(docs):
    next(e for e in _broker_env(docs) if e["name"] == "KAFKA_AUTO_CREATE_TOPICS_ENABLE")["value"] = "true"


def _job_may_do_anything(docs):
    init = container(one(docs, "Job", "kafka-init"), "kafka-init")
    init["args"][0] += '\nallow "segmentation" "All" --topic "*"\n'


def _job_is_a_super_user(docs):
    next(e for e in _broker_env(docs) if e["name"] == "KAFKA_SUPER_USERS")["value"] += ";User:segmentation"


def _no_authorizer(docs):
    container(one(docs, "StatefulSet", "kafka"), "kafka")["env"] = [
        e for e in _broker_env(docs) if e["name"] != "KAFKA_AUTHORIZER_CLASS_NAME"] + [
        {"name": "KAFKA_AUTHORIZER_CLASS_NAME", "value": ""}]


MUTATIONS = [  # (check, value set, what opens it)
    ("kafka topic auto-creation off", "default", _auto_create_topics),
    ("kafka scram with per-principal acls", "production", _job_may_do_anything),
    ("kafka scram with per-principal acls", "production", _job_is_a_super_user),
    ("kafka scram with per-principal acls", "production", _no_authorizer),
    ("kafka admits no api pod", "default", _admit_api_on_kafka),
    ("driver health port only from the api", "default", _open_driver_health),
    ("no spark ui open", "default", _open_driver_ui),
    ("spark ui kill disabled", "default", _drop_kill_setting),
    ("spark.authenticate with a secret", "default", _worker_without_auth),
    ("api key never empty", "default", _literal_api_key),
    ("production images by digest", "production", _tag_only_image),
]


@pytest.mark.parametrize("name,value_set,mutate", MUTATIONS, ids=[m[2].__name__.lstrip("_") for m in MUTATIONS])
def test_check_fails_on_a_chart_that_opens_it(rendered, name, value_set, mutate):
    opened = copy.deepcopy(rendered)
    mutate(opened[value_set])
    with pytest.raises(AssertionError):
        CHECKS[name](opened)


def test_run_checks_reports_one_line_per_check_and_the_failure(rendered):
    opened = copy.deepcopy(rendered)
    _admit_api_on_kafka(opened["default"])
    results = {name: (passed, detail) for name, passed, detail in run_checks(opened)}
    assert set(results) == set(CHECKS)
    assert results["kafka admits no api pod"] == (False, "default: Kafka port kafka admits ['api']")
    assert all(passed for name, (passed, _) in results.items() if name != "kafka admits no api pod")
    assert env_of(container(one(rendered["default"], "Deployment", "api"), "api"))["API_KEY"]  # untouched


def test_a_malformed_digest_is_refused_even_without_require_image_digests():
    result = helm_template("--set", "image.digest=sha256:abc")
    assert result.returncode != 0 and "image.digest must be the image's sha256 digest" in result.stderr
    pinned = rendered_with("--set", "mongodb.image.digest=sha256:" + "a" * 64)
    assert container(one(pinned, "StatefulSet", "mongodb"), "mongodb")["image"] == "mongo:7.0@sha256:" + "a" * 64


@pytest.mark.parametrize("found,refused", [
    ('(dict "data" (dict "api-key" ""))', True),            # the key is empty
    ('(dict "data" (dict "other" "eA=="))', True),          # no api-key at all
    ('(dict "metadata" (dict "name" "k"))', True),          # a Secret without data
    ('(dict "data" (dict "api-key" "azNZLWszeS1rM3kta2V5"))', False),
    ("(dict)", False),                                       # not there yet (or helm template): the pod's own guard
])
def test_an_existing_api_key_secret_that_is_empty_fails_the_install(tmp_path, found, refused):
    """`lookup` answers only against a cluster, so a copy of the chart answers it with a Secret."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    api = chart / "templates" / "api.yaml"
    text = api.read_text()
    call = 'lookup "v1" "Secret" .Release.Namespace $a.existingSecret'
    assert call in text
    api.write_text(text.replace(call, f"{found} | default dict"))
    result = helm_template("--set", "api.existingSecret=k", chart=chart)
    assert (result.returncode != 0) == refused, result.stderr[-400:]
    if refused:
        assert "api.existingSecret k has no key api-key, or an empty one" in result.stderr
