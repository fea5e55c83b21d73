"""The chart's HTTP API and dashboard (DESIGN.md §15), on the rendered manifests (chart_manifests.py).

The API Deployment runs `python -m app.api` in the app image; it reads MongoDB as the read-only
api user (MONGODB_API_URI of the MongoDB Secret, never the job's MONGODB_URI), its key from
<release>-api-key or api.existingSecret, the job's rules file, and the driver's /status through
the health Service.
Its probes ask /healthz and /readyz; the Service and the optional Ingress reach its port; with
api.enabled=false nothing of it is rendered. Its NetworkPolicy: test_chart_security.py.
"""
from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import pytest

from chart_manifests import (COMPONENT, VALUE_SETS, container, env_of, helm_template, named, one, pod_spec, rendered,
                             rendered_notes, rendered_with, secret_data, service_port_reaches, values_of,
                             volume_of_mount)

__all__ = ["rendered"]  # the fixture, imported for pytest

INGRESS_SET = "ci-api-ingress"


def api_of(docs: list[dict]) -> dict:
    return container(one(docs, "Deployment", "api"), "api")


def secret_ref(value: object) -> tuple[str, str]:
    assert isinstance(value, dict) and "secretKeyRef" in value, f"not from a Secret: {value!r}"
    return value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]


@pytest.mark.parametrize("value_set", ["default", "production", INGRESS_SET])
def test_api_runs_the_app_image_with_python_m_app_api(rendered, value_set):
    docs, values = rendered[value_set], values_of(value_set)
    deployment = one(docs, "Deployment", "api")
    api = api_of(docs)
    assert deployment["metadata"]["name"] == "seg-api"
    assert deployment["spec"]["replicas"] == values["api"]["replicas"] == (1 if value_set == "default" else 2)
    assert api["image"] == container(one(docs, "Deployment", "streaming"), "driver")["image"]
    assert api["command"][-3:] == [f"{values['image']['venv']}/bin/python", "-m", "app.api"]
    assert api["command"][:2] == ["/usr/bin/tini", "--"]  # the image's ENTRYPOINT, which `command` replaces
    assert api["workingDir"] == values["image"]["appDir"]  # where the image's app/ package lives
    env = env_of(api)
    assert (env["API_HOST"], env["API_PORT"]) == ("0.0.0.0", "8000")
    assert env["MONGODB_DATABASE"] == values["mongodb"]["database"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_api_reads_mongodb_with_the_api_uri_of_the_jobs_secret(rendered, value_set):
    docs, mongodb = rendered[value_set], values_of(value_set)["mongodb"]
    api_ref = secret_ref(env_of(api_of(docs))["MONGODB_URI"])
    driver_ref = secret_ref(env_of(container(one(docs, "Deployment", "streaming"), "driver"))["MONGODB_URI"])
    assert api_ref == (driver_ref[0], "MONGODB_API_URI")  # the same Secret, the read-only user's key
    data = secret_data(docs).get(api_ref[0])
    if data is None:  # a Secret the operator manages
        assert api_ref[0] in (mongodb["existingSecret"], mongodb["auth"]["existingSecret"])
        return
    uri = urlsplit(data["MONGODB_API_URI"])
    if mongodb["enabled"] and mongodb["auth"]["enabled"]:
        assert unquote(uri.username) == mongodb["auth"]["apiUsername"] != mongodb["auth"]["appUsername"]
        assert unquote(uri.password) == data["mongodb-api-password"]
        assert data["MONGODB_API_URI"] != data["MONGODB_URI"]
    else:  # no users to choose from: the job's URI, or mongodb.externalApiUri
        assert data["MONGODB_API_URI"] == (mongodb.get("externalApiUri") or data["MONGODB_URI"])


def test_external_mongodb_gives_the_api_its_own_uri():
    external, api = "mongodb://mongo-0.data:27017/", "mongodb://mongo-0.data:27017/?readPreference=secondary"
    docs = rendered_with("--set", "kafka.enabled=false", "--set", "kafka.externalBootstrapServers=kafka.data:9092",
                         "--set", "mongodb.enabled=false", "--set", f"mongodb.externalUri={external}",
                         "--set", f"mongodb.externalApiUri={api}")
    name, key = secret_ref(env_of(api_of(docs))["MONGODB_URI"])
    assert secret_data(docs)[name] == {"MONGODB_URI": external, "MONGODB_API_URI": api}
    assert key == "MONGODB_API_URI"


@pytest.mark.parametrize("value_set", ["default", "production", "ci-existing-secret"])
def test_job_status_url_is_the_drivers_health_service(rendered, value_set):
    docs, values = rendered[value_set], values_of(value_set)
    url = urlsplit(env_of(api_of(docs))["JOB_STATUS_URL"])
    assert (url.scheme, url.path, url.port) == ("http", "/status", values["job"]["health"]["port"])
    service = named(docs, "Service", url.hostname)
    job = one(docs, "Deployment", "streaming")
    service_port_reaches(docs, service, url.port, job)
    target = next(p["targetPort"] for p in service["spec"]["ports"] if p["port"] == url.port)
    assert int(env_of(container(job, "driver"))["HEALTH_PORT"]) == url.port and target == "health"


def test_job_status_url_is_unset_without_the_job_unless_given():
    assert "JOB_STATUS_URL" not in env_of(api_of(rendered_with("--set", "job.enabled=false")))
    given = "http://seg-streaming-ui.other:8090/status"
    docs = rendered_with("--set", "job.enabled=false", "--set", f"api.jobStatusUrl={given}")
    assert env_of(api_of(docs))["JOB_STATUS_URL"] == given


def test_cors_origins_only_when_set(rendered):
    assert "API_CORS_ORIGINS" not in env_of(api_of(rendered["default"]))
    origins = values_of(INGRESS_SET)["api"]["corsOrigins"]
    assert origins and env_of(api_of(rendered[INGRESS_SET]))["API_CORS_ORIGINS"] == origins


@pytest.mark.parametrize("value_set", ["default", "production", INGRESS_SET])
def test_api_probes_ask_healthz_and_readyz_on_the_service_port(rendered, value_set):
    docs = rendered[value_set]
    deployment, api = one(docs, "Deployment", "api"), api_of(docs)
    assert api["ports"] == [{"name": "http", "containerPort": 8000}]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["startupProbe"]["tcpSocket"] == {"port": "http"}
    # Probes send no header: the API key cannot be on them.
    assert not [p for p in ("livenessProbe", "readinessProbe") if api[p]["httpGet"].get("httpHeaders")]
    service = one(docs, "Service", "api")
    assert service["metadata"]["name"] == "seg-api"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    service_port_reaches(docs, service, 8000, deployment)


def test_api_port_follows_the_value():
    docs = rendered_with("--set", "api.port=9000")
    api, service = api_of(docs), one(docs, "Service", "api")
    assert env_of(api)["API_PORT"] == "9000" and api["ports"][0]["containerPort"] == 9000
    service_port_reaches(docs, service, 9000, one(docs, "Deployment", "api"))


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_api_pod_is_locked_down_like_the_others(rendered, value_set):
    deployment = one(rendered[value_set], "Deployment", "api")
    pod, api = pod_spec(deployment), api_of(rendered[value_set])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = api["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]) == (
        True, False, {"drop": ["ALL"]})
    tmp = next(m for m in api["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert api["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def test_generated_api_key_secret(rendered):
    docs = rendered["default"]
    name, key = secret_ref(env_of(api_of(docs))["API_KEY"])
    assert (name, key) == ("seg-api-key", "api-key")
    secret = named(docs, "Secret", name)
    assert secret["metadata"]["labels"][COMPONENT] == "api"
    assert re.fullmatch(r"[A-Za-z0-9]{40}", secret_data(docs)[name]["api-key"])


def test_existing_api_key_secret_is_used_and_none_generated(rendered):
    docs = rendered[INGRESS_SET]
    existing = values_of(INGRESS_SET)["api"]["existingSecret"]
    assert secret_ref(env_of(api_of(docs))["API_KEY"]) == (existing, "api-key")
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["labels"].get(COMPONENT) == "api"]


def test_no_ingress_by_default(rendered):
    assert not [d for name in ("default", "production") for d in rendered[name] if d["kind"] == "Ingress"]


def test_ingress_with_tls_routes_the_host_to_the_api_service(rendered):
    docs, ingress_values = rendered[INGRESS_SET], values_of(INGRESS_SET)["api"]["ingress"]
    ingress = one(docs, "Ingress", "api")
    service = one(docs, "Service", "api")
    assert ingress["spec"]["ingressClassName"] == ingress_values["className"]
    assert ingress["metadata"]["annotations"] == ingress_values["annotations"]
    assert ingress["spec"]["tls"] == [{"hosts": [ingress_values["host"]], "secretName": ingress_values["tls"]["secretName"]}]
    rule, = ingress["spec"]["rules"]
    assert rule["host"] == ingress_values["host"]
    path, = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_ingress_without_host_or_tls():
    ingress = one(rendered_with("--set", "api.ingress.enabled=true", "--set", "api.ingress.allowInsecure=true"),
                  "Ingress", "api")
    assert "tls" not in ingress["spec"] and "ingressClassName" not in ingress["spec"]
    rule, = ingress["spec"]["rules"]
    assert "host" not in rule and rule["http"]["paths"][0]["backend"]["service"]["name"] == "seg-api"
    tls = one(rendered_with("--set", "api.ingress.enabled=true", "--set", "api.ingress.host=a.example.com",
                            "--set", "api.ingress.tls.enabled=true"), "Ingress", "api")
    assert tls["spec"]["tls"] == [{"hosts": ["a.example.com"], "secretName": "seg-api-tls"}]


def test_ingress_tls_without_a_host_is_refused():
    result = helm_template("--set", "api.ingress.enabled=true", "--set", "api.ingress.tls.enabled=true")
    assert result.returncode != 0
    assert "api.ingress.host is required with api.ingress.tls.enabled" in result.stderr


def test_api_disabled_renders_none_of_it(rendered):
    enabled = [d for d in rendered["default"] if d["metadata"].get("labels", {}).get(COMPONENT) == "api"]
    assert {d["kind"] for d in enabled} == {"Deployment", "Service", "Secret", "NetworkPolicy"}
    docs = rendered_with("--set", "api.enabled=false", "--set", "api.ingress.enabled=true")
    assert not [(d["kind"], d["metadata"]["name"]) for d in docs
                if d["metadata"].get("labels", {}).get(COMPONENT) == "api" or "-api" in d["metadata"]["name"]]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "NetworkPolicy"}  # the rest is still there


def test_notes_show_how_to_reach_the_api_and_read_its_key(tmp_path):
    notes = rendered_notes(tmp_path)
    assert "kubectl -n segmentation port-forward svc/seg-api 8000" in notes
    assert "http://localhost:8000/docs" in notes and "http://localhost:8000/ " in notes
    assert "kubectl -n segmentation get secret seg-api-key -o jsonpath='{.data.api-key}' | base64 -d" in notes
    existing = rendered_notes(tmp_path / "existing", "--set", "api.existingSecret=my-key", "--set", "api.port=9000",
                              "--set", "api.ingress.enabled=true", "--set", "api.ingress.host=a.example.com",
                              "--set", "api.ingress.tls.enabled=true")
    assert "get secret my-key -o jsonpath='{.data.api-key}'" in existing and "svc/seg-api 9000" in existing
    assert "https://a.example.com/" in existing
    assert "seg-api" not in rendered_notes(tmp_path / "off", "--set", "api.enabled=false")


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_api_reads_the_jobs_rules(rendered, value_set):
    """The API accepts the segment names of the job's rules: the same file, from the same ConfigMap."""
    docs = rendered[value_set]
    job, deployment = one(docs, "Deployment", "streaming"), one(docs, "Deployment", "api")
    rules_file = env_of(api_of(docs))["RULES_FILE"]
    assert rules_file == env_of(container(job, "driver"))["RULES_FILE"]
    mount, volume = volume_of_mount(deployment, api_of(docs), rules_file.rsplit("/", 1)[0])
    assert mount["readOnly"] is True
    assert volume["configMap"]["name"] == one(docs, "ConfigMap", "rules")["metadata"]["name"]
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/rules"]
    assert checksum == job["spec"]["template"]["metadata"]["annotations"]["checksum/rules"]  # new rules: new pods
