"""The helm chart's rendered manifests, for the tests in this directory.

deploy/local/helm_check.sh `render` writes one file per values set into .local/helm-rendered/
(default, production, ci-<name> for each helm/ci/<name>-values.yaml); the `rendered` fixture
re-renders when they are missing or older than the chart, and the helpers below look things up
in them the way Kubernetes would (labels, selectors, named ports). rendered_with(--set ...) renders
the chart once more for a setting no values set covers.
"""
from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm"
HELM_CHECK = ROOT / "deploy" / "local" / "helm_check.sh"
STACK_DIR = Path(os.environ.get("STACK_DIR", ROOT / ".local"))
RENDER_DIR = STACK_DIR / "helm-rendered"
HELM = STACK_DIR / "bin" / "helm"
RULES_FILE = ROOT / "app" / "rules" / "segments_v1.yaml"
# values-production.yaml fails to render without image digests; the production set adds these.
PLACEHOLDER_DIGESTS = CHART / "ci" / "production-placeholder-digests.yaml"
VALUE_SETS = ["default", "production"] + sorted(
    "ci-" + p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
COMPONENT = "app.kubernetes.io/component"


def run_helm_check(*parts: str, chart: Path = CHART, out: Path = RENDER_DIR) -> subprocess.CompletedProcess:
    env = dict(os.environ, HELM_CHART_DIR=str(chart), HELM_RENDER_DIR=str(out))
    return subprocess.run(["bash", str(HELM_CHECK), *parts], env=env, capture_output=True, text=True, timeout=1800)


def helm_template(*flags: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    """`helm template` of the chart with extra flags (e.g. --set api.enabled=false), for settings no
    values set covers; same release, namespace and Kubernetes version as helm_check.sh."""
    if not HELM.is_file():
        result = run_helm_check("tools")
        assert result.returncode == 0, f"helm_check.sh tools failed:\n{result.stderr[-4000:]}"
    kube_version = re.search(r'KUBE_VERSION="\$\{KUBE_VERSION:-([^}]+)\}"', HELM_CHECK.read_text()).group(1)
    return subprocess.run([str(HELM), "template", "seg", str(chart), "--namespace", "segmentation",
                           "--kube-version", kube_version, *flags], capture_output=True, text=True, timeout=300)


def rendered_with(*flags: str, chart: Path = CHART) -> list[dict]:
    """The manifests of helm_template(*flags); fails the test when helm does."""
    result = helm_template(*flags, chart=chart)
    assert result.returncode == 0, result.stderr[-4000:]
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def rendered_notes(tmp_path: Path, *flags: str) -> str:
    """NOTES.txt as `helm install` prints it. `helm template` skips NOTES.txt (and a client-side
    dry-run install needs a cluster), so a copy of the chart renders it into a ConfigMap."""
    chart = tmp_path / "notes-chart"
    shutil.copytree(CHART, chart)  # follows the rules symlink
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-notes.yaml").write_text(
        '{{- define "test.notes" -}}' + notes + '{{- end -}}\n'
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rendered-notes\n"
        'data:\n  notes: {{ include "test.notes" . | toJson }}\n')
    docs = rendered_with(*flags, chart=chart)
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rendered-notes")["data"]["notes"]


def _newest_input_mtime() -> float:
    inputs = [p for p in CHART.rglob("*") if p.is_file()] + [RULES_FILE, HELM_CHECK]
    return max(p.stat().st_mtime for p in inputs)


def render_all() -> dict[str, list[dict]]:
    """value set -> its manifests, rendered by helm_check.sh when missing or older than the chart."""
    outputs = [RENDER_DIR / f"{name}.yaml" for name in VALUE_SETS]
    if not all(p.is_file() for p in outputs) or min(p.stat().st_mtime for p in outputs) < _newest_input_mtime():
        result = run_helm_check("render")
        assert result.returncode == 0, f"helm_check.sh render failed:\n{result.stderr[-4000:]}"
    return {name: [d for d in yaml.safe_load_all((RENDER_DIR / f"{name}.yaml").read_text()) if d]
            for name in VALUE_SETS}


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return render_all()


def values_of(value_set: str) -> dict:
    """values.yaml with the set's override file merged in, as helm merges them."""
    def merge(base: dict, override: dict) -> dict:
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if value_set == "production":
        values = merge(values, yaml.safe_load((CHART / "values-production.yaml").read_text()))
        return merge(values, yaml.safe_load(PLACEHOLDER_DIGESTS.read_text()))
    if value_set.startswith("ci-"):
        return merge(values, yaml.safe_load((CHART / "ci" / f"{value_set[3:]}-values.yaml").read_text()))
    return values


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"].get("labels", {}).get(COMPONENT) == component]
    assert len(found) == 1, f"expected one {kind} of component {component}, found {len(found)}"
    return found[0]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def container(workload: dict, name: str) -> dict:
    return next(c for c in pod_spec(workload)["containers"] if c["name"] == name)


def all_containers(workload: dict) -> list[dict]:
    pod = pod_spec(workload)
    return pod.get("initContainers", []) + pod["containers"]


def env_of(c: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def volume_of_mount(workload: dict, c: dict, mount_path: str) -> tuple[dict, dict]:
    """(volumeMount, volume) of the container's mount at mount_path."""
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == mount_path)
    return mount, next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def secret_data(docs: list[dict]) -> dict[str, dict[str, str]]:
    """name -> {key: value} of every rendered Secret (stringData; data is base64)."""
    return {d["metadata"]["name"]: {**{k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()},
                                    **d.get("stringData", {})}
            for d in docs if d["kind"] == "Secret"}


def service_port_reaches(docs: list[dict], service: dict, port: int, workload: dict) -> None:
    """The Service exposes `port`, selects the workload's pods, and targets a port they declare."""
    assert service["spec"]["selector"].items() <= pod_labels(workload).items()
    sp = next((p for p in service["spec"]["ports"] if p["port"] == port), None)
    assert sp is not None, f"{service['metadata']['name']} does not expose {port}"
    declared = {(p["name"], p["containerPort"]) for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
    assert (sp["targetPort"], port) in declared or sp["targetPort"] == port


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in vals, "NotIn": labels.get(key) not in vals,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True
