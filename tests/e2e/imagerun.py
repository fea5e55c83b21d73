"""Run the chart's containers from the built image against the local stack (tests/e2e/test_image_e2e.py).

The chart is rendered with helm for the test's topic, database and ports; each container then runs
in the image through deploy/image/run.sh with the rendered command line, env and security context,
the way the kubelet would start it: the test provides only what a pod gets from outside the chart
(the Secrets' values, the pod IP) and host directories for the pod's volumes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tests.helm.chart_manifests import helm_template, one

ENSURE = ROOT / "deploy" / "image" / "ensure.sh"
RUN = ROOT / "deploy" / "image" / "run.sh"


def ensure_image() -> str:
    """The image of this checkout (deploy/image/ensure.sh): built with `make image` when missing or
    built from another checkout; the build's progress goes to stderr. Never skipped."""
    print("image: deploy/image/ensure.sh (builds the image when it is missing or stale, ~2-5 min)", flush=True)
    result = subprocess.run([str(ENSURE)], cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=3600)
    assert result.returncode == 0, "deploy/image/ensure.sh failed; its output is in the captured stderr"
    return result.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(values: dict[str, object]) -> list[dict]:
    """The chart's manifests with these values (each passed as --set-json)."""
    flags = [f for key, value in values.items() for f in ("--set-json", f"{key}={json.dumps(value)}")]
    result = helm_template(*flags)
    assert result.returncode == 0, result.stderr[-4000:]
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@dataclass
class ChartContainer:
    """One rendered container, as run.sh runs it."""
    argv: list[str]
    env: dict[str, str]
    user: str
    read_only: bool
    workdir: str | None
    mounts: list[tuple[str, str, bool]]  # (host dir, container path, read-only)

    def run_sh_args(self, image: str) -> list[str]:
        args = [str(RUN), "-u", self.user]
        for name, value in self.env.items():
            args += ["-e", f"{name}={value}"]
        for host, path, ro in self.mounts:
            args += ["-v", f"{host}:{path}" + (":ro" if ro else "")]
        if self.workdir:
            args += ["-w", self.workdir]
        if self.read_only:
            args.append("--read-only")
        return [*args, image, "--", *self.argv]


def chart_container(docs: list[dict], kind: str, component: str, provided: dict[str, str],
                    volumes_dir: Path) -> ChartContainer:
    """The first container of the chart's `component` workload: its env (a valueFrom entry must be
    in `provided`, as the kubelet would fill it from a Secret or the pod's fields), its command and
    args with Kubernetes' $(VAR) expansion, the pod's runAsUser:runAsGroup, readOnlyRootFilesystem,
    and its volumes as directories under volumes_dir (emptyDir and claims empty and owned by the
    uid, as fsGroup makes them; a ConfigMap's keys as files)."""
    workload = one(docs, kind, component)
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            assert entry["name"] in provided, \
                f"{component}: the chart sets {entry['name']} from {entry['valueFrom']}; the test must provide it"
            env[entry["name"]] = provided[entry["name"]]

    def expand(text: str) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)

    argv = [expand(a) for a in container["command"] + container.get("args", [])]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    uid, gid = security["runAsUser"], security["runAsGroup"]
    assert security.get("runAsNonRoot") and uid != 0
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        host = volumes_dir / component / mount["name"]
        shutil.rmtree(host, ignore_errors=True)
        host.mkdir(parents=True)
        if "configMap" in volume:
            config_map = next(d for d in docs if d["kind"] == "ConfigMap"
                              and d["metadata"]["name"] == volume["configMap"]["name"])
            for key, text in config_map["data"].items():
                (host / key).write_text(text)
            host.chmod(0o755)
        else:
            assert "emptyDir" in volume or "persistentVolumeClaim" in volume, volume
            os.chown(host, uid, gid)
            host.chmod(0o770)
        mounts.append((str(host), mount["mountPath"], bool(mount.get("readOnly"))))
    return ChartContainer(argv=argv, env=env, user=f"{uid}:{gid}", workdir=container.get("workingDir"),
                          read_only=bool(security.get("readOnlyRootFilesystem")), mounts=mounts)


def run_in_image(image: str, container: ChartContainer, log_path: Path, timeout: int = 900) -> None:
    """Runs it to its end; its output goes to log_path. Fails with the output's first error and its end."""
    with open(log_path, "w") as log:
        rc = subprocess.run(container.run_sh_args(image), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    if rc != 0:
        lines = log_path.read_text().splitlines()
        first = next((i for i, line in enumerate(lines) if re.search(r"Exception|Error|error:", line)), len(lines))
        raise AssertionError(f"{container.argv[:4]} exited {rc} (log: {log_path}):\n" + "\n".join(
            lines[first:first + 15]) + "\n...\n" + "\n".join(lines[-25:]))


def start_in_image(image: str, container: ChartContainer, log_path: Path) -> subprocess.Popen:
    """In its own process group: stop_in_image ends run.sh, buildah and the command together."""
    log = open(log_path, "w")
    return subprocess.Popen(container.run_sh_args(image), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_in_image(process: subprocess.Popen) -> None:
    """TERM to the group; run.sh then removes the container (it waits for buildah first)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
