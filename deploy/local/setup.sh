#!/usr/bin/env bash
# Fetches everything the project needs from the package registries, once; later runs are offline no-ops.
#   .venv            python deps (pyproject.toml at the versions of constraints.txt, the lock `make lock`
#                    writes; editable install; PYTHON_INSTALL=runtime: plain, no dev extras)
#   .local/kafka     Apache Kafka jars (Maven Central)
#   .local/spark-jars  Spark Kafka connector jars (Maven Central)
#   .local/bin/ferretdb  FerretDB built from the Go module proxy
#   .local/mongosh   mongosh from the npm registry
#   chromium, chromedriver  Debian's packages (apt), for the dashboard's headless-browser test
# Usage: setup.sh [python|kafka|connector|ferretdb|mongosh|browser]...   (default: all)
set -euo pipefail
source "$(dirname "$0")/env.sh"
MAVEN_DIR="$ROOT/deploy/local/maven"
step() { log "setup: $*"; }

setup_python() {
  # PYTHON_INSTALL=editable (default; local and CI: the checkout itself, plus the dev extras)
  # or runtime (the Dockerfile: a plain install of the app, no dev extras).
  local mode="${PYTHON_INSTALL:-editable}" spec tag
  case "$mode" in
    editable) spec=(-e "${ROOT}[dev]"); tag="" ;;
    runtime) spec=("$ROOT"); tag="runtime-" ;;
    *) die "setup: PYTHON_INSTALL must be 'editable' or 'runtime' (got '$mode')" ;;
  esac
  # The lock: every dependency at the version of a fresh resolve (deploy/local/lock.sh).
  local lock="$ROOT/constraints.txt"
  [[ -f "$lock" ]] || die "setup: $lock is missing: run 'make lock' to write it"
  local stamp="$VENV/.installed-$tag$(cat "$ROOT/pyproject.toml" "$lock" | sha1sum | cut -c1-12)"
  if [[ -f "$stamp" ]]; then step "python deps up to date ($VENV)"; return; fi
  step "python deps -> $VENV, pinned by constraints.txt (pyspark $SPARK_VERSION is ~430 MB, takes a minute)"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --progress-bar off -q --upgrade pip -c "$lock"
  "$VENV/bin/pip" install --progress-bar off "${spec[@]}" -c "$lock"
  rm -f "$VENV"/.installed-* && touch "$stamp"
}

mvn_copy() {  # mvn_copy POM OUTDIR [extra -D flags]
  local pom="$1" out="$2"; shift 2
  mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$out" "$@"
}

setup_kafka() {
  if [[ -f "$KAFKA_LIBS/kafka_$SCALA_BINARY-$KAFKA_VERSION.jar" ]]; then step "kafka $KAFKA_VERSION jars present"; return; fi
  step "kafka $KAFKA_VERSION jars <- Maven Central"
  rm -rf "$KAFKA_LIBS.tmp"
  mvn_copy "$MAVEN_DIR/kafka-pom.xml" "$KAFKA_LIBS.tmp" -Dkafka.version="$KAFKA_VERSION"
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

setup_connector() {
  if [[ -f "$SPARK_JARS_DIR/spark-sql-kafka-0-10_$SCALA_BINARY-$SPARK_VERSION.jar" ]]; then step "spark kafka connector $SPARK_VERSION present"; return; fi
  step "spark-sql-kafka-0-10_$SCALA_BINARY:$SPARK_VERSION <- Maven Central"
  rm -rf "$SPARK_JARS_DIR.tmp"
  # Only what pyspark does not already ship, so no jar appears twice on the classpath.
  mvn_copy "$MAVEN_DIR/spark-kafka-pom.xml" "$SPARK_JARS_DIR.tmp" -Dspark.version="$SPARK_VERSION" \
    -DincludeArtifactIds=spark-sql-kafka-0-10_$SCALA_BINARY,spark-token-provider-kafka-0-10_$SCALA_BINARY,kafka-clients,commons-pool2
  rm -rf "$SPARK_JARS_DIR" && mv "$SPARK_JARS_DIR.tmp" "$SPARK_JARS_DIR"
}

setup_ferretdb() {
  local patches=("$ROOT"/deploy/local/patches/ferretdb-*.patch)
  local stamp="$FERRETDB_BIN.$FERRETDB_VERSION-$(cat "${patches[@]}" | sha1sum | cut -c1-12)"
  if [[ -x "$FERRETDB_BIN" && -f "$stamp" ]]; then step "ferretdb $FERRETDB_VERSION present"; return; fi
  step "ferretdb $FERRETDB_VERSION <- Go module proxy (compiles for ~2 min on 2 cores)"
  # `go install .../cmd/ferretdb@v1.24.x` builds a binary that panics at start-up
  # ("Invalid build/version/version.txt"): the release module does not ship that
  # generated file. So: a throw-away module that vendors the exact release as a
  # tool, writes the version file FerretDB's own build would write, and builds it.
  # Two upstream bugs are patched first (deploy/local/patches): lookups by _id never used the
  # _id index, and an update command of 100+ statements waited forever for a connection.
  local mod="$STACK_DIR/ferretdb-build"
  rm -rf "$mod" && mkdir -p "$mod" "$(dirname "$FERRETDB_BIN")"
  (cd "$mod" && printf 'module ferretdbbuild\n\ngo 1.24\n' > go.mod &&
    go get -tool "github.com/FerretDB/FerretDB/cmd/ferretdb@$FERRETDB_VERSION" &&
    go mod vendor &&
    echo "$FERRETDB_VERSION" > vendor/github.com/FerretDB/FerretDB/build/version/version.txt &&
    for p in "${patches[@]}"; do patch -p1 -d vendor/github.com/FerretDB/FerretDB < "$p" || exit 1; done &&
    go build -mod=vendor -o "$FERRETDB_BIN" github.com/FerretDB/FerretDB/cmd/ferretdb)
  rm -rf "$mod"
  "$FERRETDB_BIN" --version | sed -n 1p   # sed reads it all: head would close the pipe (SIGPIPE under pipefail)
  rm -f "$FERRETDB_BIN".v* && touch "$stamp"
}

setup_mongosh() {
  if [[ -x "$MONGOSH_BIN" ]] && "$MONGOSH_BIN" --version 2>/dev/null | grep -x "$MONGOSH_VERSION" >/dev/null; then step "mongosh $MONGOSH_VERSION present"; return; fi
  step "mongosh $MONGOSH_VERSION <- npm registry"
  mkdir -p "$STACK_DIR/mongosh"
  npm install --prefix "$STACK_DIR/mongosh" --no-audit --no-fund --loglevel=error "mongosh@$MONGOSH_VERSION"
}

browser_present() { chromium --version >/dev/null 2>&1 && chromedriver --version >/dev/null 2>&1; }

setup_browser() {
  if browser_present; then step "$(chromium --version 2>/dev/null | sed -n 1p), chromedriver present"; return; fi
  command -v apt-get >/dev/null 2>&1 || die "setup: chromium + chromedriver (the dashboard's browser test) are missing and this is not a Debian/Ubuntu machine (no apt-get): install them with the system's package manager"
  local apt=(apt-get)
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then apt=(sudo -n apt-get)
    else
      local why="setup: chromium + chromedriver (the dashboard's browser test) are missing and installing them needs root: run 'sudo apt-get install -y chromium chromium-driver' once, or this script as root"
      # By default (make setup, make up) only a warning, so the demo runs without them; asked for
      # by name (setup.sh browser) it fails. The browser test itself fails without them.
      [[ "${BROWSER_REQUIRED:-0}" == 1 ]] && die "$why"
      log "warning: ${why#setup: }"; return
    fi
  fi
  step "chromium + chromedriver <- Debian packages (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  local install=("${apt[@]}" install -y -q --no-install-recommends chromium chromium-driver)
  # The package lists are refreshed only when they are missing or stale (the install fails).
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || ! "${install[@]}"; then
    "${apt[@]}" update -q && "${install[@]}"
  fi
  browser_present || die "setup: chromium or chromedriver still does not run after apt-get install"
  step "$(chromium --version 2>/dev/null | sed -n 1p), $(chromedriver --version 2>/dev/null | sed -n 1p)"
}

parts=("$@"); [[ ${#parts[@]} -gt 0 ]] || parts=(python kafka connector ferretdb mongosh browser)
[[ " $* " == *" browser "* ]] && BROWSER_REQUIRED=1
start=$SECONDS
for p in "${parts[@]}"; do
  case "$p" in
    python|kafka|connector|ferretdb|mongosh|browser) "setup_$p" ;;
    *) die "setup: unknown part '$p' (python|kafka|connector|ferretdb|mongosh|browser)" ;;
  esac
done
step "done in $((SECONDS - start)) s"
