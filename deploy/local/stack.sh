#!/usr/bin/env bash
# The local stack: Kafka (KRaft, single node) and FerretDB (SQLite), loopback only.
#   stack.sh up|down|status [kafka|mongo]...
# Starts are idempotent and wait until the service answers; a failure names the
# service, its log file and its port.
set -euo pipefail
source "$(dirname "$0")/env.sh"

kafka_java() {  # kafka_java MAIN_CLASS ARGS...
  java -Dlog4j2.configurationFile="$ROOT/deploy/local/log4j2-kafka.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_config() {
  local cfg="$STACK_DIR/kafka/server.properties"
  cat > "$cfg" <<CFG
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=$KAFKA_PARTITIONS
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
CFG
  echo "$cfg"
}

kafka_up() {
  if pid_alive kafka && port_open "$KAFKA_PORT"; then log "kafka already running on 127.0.0.1:$KAFKA_PORT"; return; fi
  port_open "$KAFKA_PORT" && die "kafka: port $KAFKA_PORT is taken by another process (set KAFKA_PORT)"
  [[ -f "$KAFKA_LIBS/kafka_$SCALA_BINARY-$KAFKA_VERSION.jar" ]] || die "kafka: jars missing in $KAFKA_LIBS; run 'make setup'"
  mkdir -p "$KAFKA_DATA"
  local cfg; cfg=$(kafka_config)
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    log "kafka: formatting storage in $KAFKA_DATA"
    kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$cfg" >> "$LOG_DIR/kafka.log" 2>&1 || die "kafka: storage format failed, see $LOG_DIR/kafka.log"
  fi
  log "kafka $KAFKA_VERSION: starting on 127.0.0.1:$KAFKA_PORT (log: $LOG_DIR/kafka.log)"
  # shellcheck disable=SC2086
  KAFKA_OPTS="" nohup java $KAFKA_HEAP -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$ROOT/deploy/local/log4j2-kafka.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$cfg" >> "$LOG_DIR/kafka.log" 2>&1 &
  echo $! > "$RUN_DIR/kafka.pid"
  wait_until 60 kafka kafka_topic_ready ||
    die "kafka did not answer on 127.0.0.1:$KAFKA_PORT within 60 s; see $LOG_DIR/kafka.log"
  log "kafka: ready, topic $KAFKA_TOPIC has $KAFKA_PARTITIONS partitions"
}

kafka_topic_ready() {  # the input topic, and the job's act-lane topics: risk alerts, actions, session messages
  pid_alive kafka && port_open "$KAFKA_PORT" &&
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --if-not-exists --topic "$KAFKA_TOPIC" --partitions "$KAFKA_PARTITIONS" --replication-factor 1 &&
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --if-not-exists --topic "${ALERTS_TOPIC:-behavior_alerts}" --partitions "$KAFKA_PARTITIONS" \
      --replication-factor 1 &&
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --if-not-exists --topic "${ACTIONS_TOPIC:-behavior_actions}" --partitions "$KAFKA_PARTITIONS" \
      --replication-factor 1 &&
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --if-not-exists --topic "${SEGMENTS_TOPIC:-behavior_segments}" --partitions "$KAFKA_PARTITIONS" \
      --replication-factor 1
}

mongo_up() {
  if pid_alive ferretdb && port_open "$MONGO_PORT"; then log "ferretdb already running on 127.0.0.1:$MONGO_PORT"; return; fi
  port_open "$MONGO_PORT" && die "ferretdb: port $MONGO_PORT is taken by another process (set MONGO_PORT)"
  [[ -x "$FERRETDB_BIN" ]] || die "ferretdb: binary missing at $FERRETDB_BIN; run 'make setup'"
  mkdir -p "$FERRETDB_DATA/data" "$FERRETDB_DATA/state"
  log "ferretdb $FERRETDB_VERSION (sqlite): starting on 127.0.0.1:$MONGO_PORT (log: $LOG_DIR/ferretdb.log)"
  local pragmas="" p
  for p in $FERRETDB_SQLITE_PRAGMAS; do pragmas+="${pragmas:+&}_pragma=$p"; done
  nohup "$FERRETDB_BIN" --handler=sqlite --sqlite-url="file:$FERRETDB_DATA/data/${pragmas:+?$pragmas}" \
    --state-dir="$FERRETDB_DATA/state" --listen-addr="127.0.0.1:$MONGO_PORT" \
    --debug-addr=- --telemetry=disable --log-level=warn >> "$LOG_DIR/ferretdb.log" 2>&1 &
  echo $! > "$RUN_DIR/ferretdb.pid"
  wait_until 30 ferretdb mongo_ping ||
    die "ferretdb did not answer on 127.0.0.1:$MONGO_PORT within 30 s; see $LOG_DIR/ferretdb.log"
  log "ferretdb: ready"
}

mongo_ping() {
  pid_alive ferretdb && port_open "$MONGO_PORT" &&
    "$VENV/bin/python" -c "import pymongo,sys; pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=1000).admin.command('ping')" \
      "mongodb://127.0.0.1:$MONGO_PORT/"
}


status() {  # status NAME PORT
  if pid_alive "$1" && port_open "$2"; then echo "$1: up (pid $(cat "$RUN_DIR/$1.pid"), 127.0.0.1:$2)"
  else echo "$1: down (start: make up; log: $LOG_DIR/$1.log)"; return 1; fi
}

cmd="${1:-status}"; shift || true
services=("$@"); [[ ${#services[@]} -gt 0 ]] || services=(kafka mongo)
rc=0
for s in "${services[@]}"; do
  case "$cmd:$s" in
    up:kafka) kafka_up ;;
    up:mongo) mongo_up ;;
    down:kafka) stop kafka ;;
    down:mongo) stop ferretdb ;;
    status:kafka) status kafka "$KAFKA_PORT" || rc=1 ;;
    status:mongo) status ferretdb "$MONGO_PORT" || rc=1 ;;
    *) die "usage: stack.sh up|down|status [kafka|mongo]..." ;;
  esac
done
exit $rc
