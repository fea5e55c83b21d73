# Sourced by every stack script: pinned versions, ports and paths (all overridable).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/deploy/local/versions.env"

STACK_DIR="${STACK_DIR:-$ROOT/.local}"
VENV="${VENV:-$ROOT/.venv}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_TOPIC="${KAFKA_TOPIC:-ecommerce_events}"
KAFKA_PARTITIONS="${KAFKA_PARTITIONS:-3}"
MONGO_PORT="${MONGO_PORT:-27017}"
KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx1g}"
# SQLite pragmas for FerretDB. WAL + synchronous=NORMAL survives a crash of FerretDB or of the
# job (what the replay tests do); only a power loss can lose the last commits. Set
# FERRETDB_SQLITE_PRAGMAS=synchronous(full) for full durability.
FERRETDB_SQLITE_PRAGMAS="${FERRETDB_SQLITE_PRAGMAS:-synchronous(normal)}"

KAFKA_LIBS="$STACK_DIR/kafka/libs"
KAFKA_DATA="$STACK_DIR/kafka/data"
SPARK_JARS_DIR="$STACK_DIR/spark-jars"
FERRETDB_BIN="$STACK_DIR/bin/ferretdb"
FERRETDB_DATA="$STACK_DIR/ferretdb"
MONGOSH_BIN="$STACK_DIR/mongosh/node_modules/.bin/mongosh"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"

export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$KAFKA_PORT}"
export MONGODB_URI="${MONGODB_URI:-mongodb://127.0.0.1:$MONGO_PORT/}"
export KAFKA_TOPIC

mkdir -p "$LOG_DIR" "$RUN_DIR"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open PORT -> 0 when something listens on 127.0.0.1:PORT
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive NAME -> 0 when the pid file of NAME names a live process
pid_alive() {
  local f="$RUN_DIR/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# wait_until SECONDS DESCRIPTION CMD... -> retries CMD every 0.5 s
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  local what="$1"; shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || return 1
    sleep 0.5
  done
}

# stop NAME -> stops the process of RUN_DIR/NAME.pid: TERM, then KILL after 30 s
stop() {
  local f="$RUN_DIR/$1.pid"
  if ! pid_alive "$1"; then rm -f "$f"; log "$1: not running"; return; fi
  local pid; pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  if ! wait_until 30 "$1 stop" bash -c "! kill -0 $pid"; then
    log "$1: did not stop in 30 s, killing"; kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"; log "$1: stopped"
}
