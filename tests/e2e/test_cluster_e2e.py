"""The job on a real Spark standalone cluster (master + 2 workers): same input, same documents."""
from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid

import pytest
from pymongo import MongoClient

from tests.conftest import ROOT
from tests.e2e.jobrun import generate, job_env, run_job, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.full]
MASTER = "spark://127.0.0.1:7077"


@pytest.fixture(scope="module")
def cluster(stack):
    subprocess.run([str(ROOT / "deploy/local/cluster.sh"), "up"], cwd=ROOT, check=True)
    try:
        yield MASTER
    finally:
        subprocess.run([str(ROOT / "deploy/local/cluster.sh"), "down"], cwd=ROOT, check=False)


def completed_apps() -> list[dict]:
    with urllib.request.urlopen("http://127.0.0.1:8080/json/", timeout=10) as response:
        return json.load(response)["completedapps"]


def test_cluster_run_gives_the_same_documents_as_local_mode(stack, cluster, tmp_path):
    topic = "e2e_cluster_" + uuid.uuid4().hex[:10]
    generate(stack["bootstrap"], topic, "--sessions", "60", "--bad-ratio", "0.03", "--seed", "21")
    local_db, cluster_db = topic + "_local", topic + "_cluster"
    mongo = MongoClient(stack["mongodb_uri"])
    try:
        run_job(job_env(stack, topic, local_db, tmp_path / "ckpt_local"))
        apps_before = len(completed_apps())
        run_job(job_env(stack, topic, cluster_db, tmp_path / "ckpt_cluster", SPARK_MASTER=cluster))

        apps = completed_apps()
        assert len(apps) == apps_before + 1, "the job did not run as an application of the cluster"
        executors = list((ROOT / ".local/spark-work").glob(f"worker-*/{apps[-1]['id']}/*/stderr"))
        assert len({p.parent.parent.parent.name for p in executors}) == 2, "executors did not run on both workers"

        expected, actual = snapshot(stack["mongodb_uri"], local_db), snapshot(stack["mongodb_uri"], cluster_db)
        assert expected["user_behavior_segments"], "the local run wrote no sessions"
        for name in expected:
            assert actual[name] == expected[name], name
    finally:
        mongo.drop_database(local_db)
        mongo.drop_database(cluster_db)
        mongo.close()
