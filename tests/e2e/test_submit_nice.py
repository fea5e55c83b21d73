"""deploy/local/submit.sh's JOB_NICE: the driver and the Python workers Spark forks run at that niceness."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT

SUBMIT = str(ROOT / "deploy/local/submit.sh")
PROBE = """
import os
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[1]").getOrCreate()
worker = spark.sparkContext.parallelize([0], 1).map(lambda _: os.nice(0)).collect()[0]
print(f"niceness driver={os.nice(0)} worker={worker}", flush=True)
spark.stop()
"""


@pytest.mark.parametrize("value", ["-1", "20", "ten", "5 "])
def test_a_bad_job_nice_is_refused_naming_the_setting(value):
    result = subprocess.run([SUBMIT, "job.py"], cwd=ROOT, env={**os.environ, "JOB_NICE": value},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "JOB_NICE must be a whole number from 0 to 19" in result.stderr


@pytest.mark.full
def test_job_nice_reaches_the_driver_and_the_python_workers(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    base = os.nice(0)
    result = subprocess.run([SUBMIT, str(script)], cwd=ROOT, env={**os.environ, "JOB_NICE": "7"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"niceness driver={base + 7} worker={base + 7}" in result.stdout
