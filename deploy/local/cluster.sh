#!/usr/bin/env bash
# A real Spark standalone cluster on this machine, from the pinned pyspark in the venv:
# one master and SPARK_WORKER_COUNT workers, loopback only.
#   cluster.sh up|down|status
#   then: SPARK_MASTER=spark://127.0.0.1:7077 ./deploy/local/submit.sh <job.py>
# Ports (all overridable): master 7077, master UI 8080, worker i (1-based) RPC
# SPARK_WORKER_PORT+i-1 (7078, 7079), UI SPARK_WORKER_WEBUI_PORT+i-1 (8081, 8082).
# Starts are idempotent and wait until the master UI lists every worker ALIVE; a
# failure names the component, its log file and its port.
set -euo pipefail
source "$(dirname "$0")/env.sh"

SPARK_MASTER_PORT="${SPARK_MASTER_PORT:-7077}"
SPARK_MASTER_WEBUI_PORT="${SPARK_MASTER_WEBUI_PORT:-8080}"
SPARK_WORKER_COUNT="${SPARK_WORKER_COUNT:-2}"
SPARK_WORKER_CORES="${SPARK_WORKER_CORES:-1}"
SPARK_WORKER_MEMORY="${SPARK_WORKER_MEMORY:-2g}"
SPARK_WORKER_PORT="${SPARK_WORKER_PORT:-7078}"
SPARK_WORKER_WEBUI_PORT="${SPARK_WORKER_WEBUI_PORT:-8081}"
SPARK_WORK_DIR="${SPARK_WORK_DIR:-$STACK_DIR/spark-work}"
MASTER_URL="spark://127.0.0.1:$SPARK_MASTER_PORT"
MASTER_JSON="http://127.0.0.1:$SPARK_MASTER_WEBUI_PORT/json/"

# Every process binds to loopback: RPC via --host, the web UIs via SPARK_LOCAL_IP,
# and the executors a worker launches inherit SPARK_LOCAL_IP from it.
export SPARK_LOCAL_IP=127.0.0.1 SPARK_MASTER_HOST=127.0.0.1
export SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-512m}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
# Executor scratch space (shuffle files, fetched jars) stays under .local, not /tmp.
export SPARK_LOCAL_DIRS="${SPARK_LOCAL_DIRS:-$SPARK_WORK_DIR/local}"
# The master keeps its state on disk: restarted after a crash (cluster.sh up), it takes the
# running application back; without this it would kill the application's executors.
export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:--Dspark.deploy.recoveryMode=FILESYSTEM -Dspark.deploy.recoveryDirectory=$SPARK_WORK_DIR/recovery}"
# Old application dirs (executor logs, fetched jars) are purged by the worker itself.
export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:--Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400}"
SPARK_CLASS="$VENV/bin/spark-class"
[[ -x "$SPARK_CLASS" ]] || die "spark-class missing in $VENV; run 'make setup'"
# Always the pinned pyspark's own Spark distribution, whatever SPARK_HOME the shell has.
SPARK_HOME=$("$VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("pyspark").submodule_search_locations[0])') ||
  die "pyspark is not installed in $VENV; run 'make setup'"
export SPARK_HOME

# alive_workers -> number of workers the master UI lists as ALIVE (fails when the UI does not answer)
alive_workers() {
  "$VENV/bin/python" - "$MASTER_JSON" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    state = json.load(r)
print(sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE"))
PY
}

# worker_registered N -> 0 when worker N's RPC port is listed ALIVE by the master
worker_registered() {
  "$VENV/bin/python" - "$MASTER_JSON" "$1" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    state = json.load(r)
port = int(sys.argv[2])
sys.exit(0 if any(w.get("state") == "ALIVE" and w.get("port") == port for w in state.get("workers", [])) else 1)
PY
}

# wait_alive NAME SECONDS CMD... -> retries CMD like wait_until, gives up at once if NAME's process exited
wait_alive() {
  local name="$1" deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" && (( SECONDS < deadline )) || return 1
    sleep 0.5
  done
}

# failed NAME WHAT PORT UI_PORT -> dies with one line naming the component, its log and ports
failed() {
  local why="$2"; pid_alive "$1" || why="exited during start-up"
  die "$1 $why (127.0.0.1:$3, UI :$4); see $LOG_DIR/$1.log"
}

start() {  # start NAME PORT UI_PORT MAIN_CLASS ARGS...  (returns 1 when already running)
  local name="$1" port="$2" ui="$3"; shift 3
  if pid_alive "$name" && port_open "$port"; then log "$name already running on 127.0.0.1:$port"; return 1; fi
  local vars=SPARK_MASTER_PORT/SPARK_MASTER_WEBUI_PORT p
  [[ "$name" == spark-master ]] || vars=SPARK_WORKER_PORT/SPARK_WORKER_WEBUI_PORT
  for p in "$port" "$ui"; do
    port_open "$p" && die "$name: port $p is taken by another process (set $vars)"
  done
  log "$name: starting on 127.0.0.1:$port, UI :$ui (log: $LOG_DIR/$name.log)"
  nohup "$SPARK_CLASS" "$@" >> "$LOG_DIR/$name.log" 2>&1 &
  echo $! > "$RUN_DIR/$name.pid"
}

master_up() {
  mkdir -p "$SPARK_WORK_DIR/recovery"
  if start spark-master "$SPARK_MASTER_PORT" "$SPARK_MASTER_WEBUI_PORT" org.apache.spark.deploy.master.Master \
      --host 127.0.0.1 --port "$SPARK_MASTER_PORT" --webui-port "$SPARK_MASTER_WEBUI_PORT"; then
    wait_alive spark-master 60 master_ready ||
      failed spark-master "did not answer within 60 s" "$SPARK_MASTER_PORT" "$SPARK_MASTER_WEBUI_PORT"
  fi
}
master_ready() { port_open "$SPARK_MASTER_PORT" && alive_workers; }

worker_up() {  # worker_up N
  local n="$1" port=$((SPARK_WORKER_PORT + $1 - 1)) ui=$((SPARK_WORKER_WEBUI_PORT + $1 - 1))
  local dir="$SPARK_WORK_DIR/worker-$n"
  mkdir -p "$dir" "$SPARK_LOCAL_DIRS"
  start "spark-worker-$n" "$port" "$ui" org.apache.spark.deploy.worker.Worker \
    --host 127.0.0.1 --port "$port" --webui-port "$ui" --cores "$SPARK_WORKER_CORES" \
    --memory "$SPARK_WORKER_MEMORY" --work-dir "$dir" "$MASTER_URL" || true
}

cluster_up() {
  command -v java >/dev/null || die "java not found on PATH (Spark $SPARK_VERSION needs Java 17)"
  master_up
  local n
  for ((n = 1; n <= SPARK_WORKER_COUNT; n++)); do worker_up "$n"; done
  for ((n = 1; n <= SPARK_WORKER_COUNT; n++)); do
    local port=$((SPARK_WORKER_PORT + n - 1))
    wait_alive "spark-worker-$n" 60 worker_registered "$port" ||
      failed "spark-worker-$n" "did not register with $MASTER_URL within 60 s" "$port" $((SPARK_WORKER_WEBUI_PORT + n - 1))
  done
  log "spark cluster: $MASTER_URL with $(alive_workers) ALIVE workers ($SPARK_WORKER_CORES core, $SPARK_WORKER_MEMORY each); UI http://127.0.0.1:$SPARK_MASTER_WEBUI_PORT"
}


cluster_down() {
  local f name
  # Workers first (they stop their executors), then the master. Pid files of
  # workers beyond SPARK_WORKER_COUNT (an earlier, bigger cluster) are stopped too.
  for f in "$RUN_DIR"/spark-worker-*.pid; do
    [[ -e "$f" ]] || continue
    name=$(basename "$f" .pid); stop "$name"
  done
  stop spark-master
}

cluster_status() {
  local rc=0 n port
  if pid_alive spark-master && port_open "$SPARK_MASTER_PORT"; then
    echo "spark-master: up (pid $(cat "$RUN_DIR/spark-master.pid"), $MASTER_URL, UI http://127.0.0.1:$SPARK_MASTER_WEBUI_PORT, $(alive_workers 2>/dev/null || echo '?') ALIVE workers)"
  else
    echo "spark-master: down (start: ./deploy/local/cluster.sh up; log: $LOG_DIR/spark-master.log)"; rc=1
  fi
  for ((n = 1; n <= SPARK_WORKER_COUNT; n++)); do
    port=$((SPARK_WORKER_PORT + n - 1))
    if pid_alive "spark-worker-$n" && port_open "$port"; then
      echo "spark-worker-$n: up (pid $(cat "$RUN_DIR/spark-worker-$n.pid"), 127.0.0.1:$port, UI :$((SPARK_WORKER_WEBUI_PORT + n - 1)), work dir $SPARK_WORK_DIR/worker-$n)"
    else
      echo "spark-worker-$n: down (log: $LOG_DIR/spark-worker-$n.log)"; rc=1
    fi
  done
  return $rc
}

[[ "$SPARK_WORKER_COUNT" =~ ^[1-9][0-9]*$ ]] || die "SPARK_WORKER_COUNT must be a positive integer (got '$SPARK_WORKER_COUNT')"
case "${1:-status}" in
  up) cluster_up ;;
  down) cluster_down ;;
  status) cluster_status ;;
  *) die "usage: cluster.sh up|down|status" ;;
esac
