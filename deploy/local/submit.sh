#!/usr/bin/env bash
# spark-submit with the cached Kafka connector jars.
#   submit.sh <job.py> [job args]     SPARK_MASTER (default local[*]) and SPARK_SUBMIT_OPTS_EXTRA override.
#   JOB_NICE=N (0-19, default 0): run the driver, and the executors and Python workers it forks in
#   local mode, at CPU niceness N, so that on a shared machine (a laptop running the job, the store
#   and the API) the API and the store answer first and the job takes the CPU left over.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[[ $# -ge 1 ]] || die "usage: submit.sh <job.py> [args]"
[[ -x "$VENV/bin/spark-submit" ]] || die "spark-submit missing in $VENV; run 'make setup'"
shopt -s nullglob
jars=("$SPARK_JARS_DIR"/*.jar)
[[ ${#jars[@]} -gt 0 ]] || die "spark kafka connector missing in $SPARK_JARS_DIR; run 'make setup'"
jar_list=$(IFS=,; echo "${jars[*]}")
nice_cmd=()
case "${JOB_NICE:-0}" in
  0) ;;
  [1-9]|1[0-9]) nice_cmd=(nice -n "$JOB_NICE") ;;
  *) die "JOB_NICE must be a whole number from 0 to 19 (the job's CPU niceness), not '${JOB_NICE}'" ;;
esac
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
# pyspark 4.0 pandas serializers emit a FutureWarning per group on pandas 2.3
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$VENV/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck disable=SC2086
exec "${nice_cmd[@]}" "$VENV/bin/spark-submit" \
  --master "${SPARK_MASTER:-local[*]}" \
  --jars "$jar_list" \
  --conf spark.driver.bindAddress=127.0.0.1 \
  --conf spark.driver.host=127.0.0.1 \
  --conf spark.ui.showConsoleProgress=false \
  --driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/deploy/local/log4j2-spark.properties" \
  ${SPARK_SUBMIT_OPTS_EXTRA:-} \
  "$@"
