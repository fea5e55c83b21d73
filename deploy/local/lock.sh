#!/usr/bin/env bash
# make lock: writes constraints.txt, the Python lock, from a fresh resolve of pyproject.toml's
# dependencies and dev extras (plus pip itself, lock.in) on Python 3.11, the version of CI
# and the image. setup.sh installs .venv with it (`make setup`, CI) and the Dockerfile the
# image's venv, both with `pip install -c constraints.txt`: a constraints file pins the
# version of whatever is installed and installs nothing by itself, so one file serves the
# runtime install (the image) and the editable dev install.
#
# pip-compile (pip-tools) rather than `pip freeze` of a fresh venv: it resolves without
# installing anything into a venv (pyspark, an sdist, is still fetched and built once for its
# metadata: ~2 min cold), it writes why each package is there (`# via`), and with LOCK_KEEP=1
# it keeps the current pins and only adds what pyproject.toml gained. A freeze would lock
# exactly what one pip install did, but cost a full install (~1.5 GB), list the project
# itself, and lose the reasons. pip-tools runs in its own venv (.local/lock-tools), pinned here.
#   LOCK_PYTHON  the interpreter to resolve for (default python3; must be 3.11)
#   LOCK_KEEP=1  keep the current pins (default: upgrade everything, a fresh resolve)
set -euo pipefail
source "$(dirname "$0")/env.sh"
PIP_TOOLS_VERSION=7.6.2
python="${LOCK_PYTHON:-python3}"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  || die "lock: $python does not run; set LOCK_PYTHON to a Python 3.11"
[[ "$version" == 3.11 ]] || die "lock: $python is Python $version; the lock is resolved on 3.11, the version of CI and the image (LOCK_PYTHON=python3.11)"

tools="$STACK_DIR/lock-tools"
if [[ ! -x "$tools/bin/pip-compile" ]] || ! "$tools/bin/pip-compile" --version 2>/dev/null | grep -q "$PIP_TOOLS_VERSION"; then
  log "lock: pip-tools $PIP_TOOLS_VERSION -> $tools"
  rm -rf "$tools" && "$python" -m venv "$tools"
  "$tools/bin/pip" install --progress-bar off -q "pip-tools==$PIP_TOOLS_VERSION"
fi

upgrade=(--upgrade); [[ "${LOCK_KEEP:-0}" == 1 ]] && upgrade=()
log "lock: resolving pyproject.toml [dev] + deploy/local/lock.in on Python $version; pyspark's metadata comes from its ~430 MB sdist: 1-2 min"
start=$SECONDS
cd "$ROOT"
# --strip-extras: pip refuses extras in a constraints file. --allow-unsafe: pins pip too.
CUSTOM_COMPILE_COMMAND="make lock" "$tools/bin/pip-compile" --quiet --strip-extras --allow-unsafe \
  --extra dev "${upgrade[@]}" --no-emit-index-url --no-emit-find-links --output-file constraints.txt pyproject.toml deploy/local/lock.in
log "lock: constraints.txt, $(grep -c '==' constraints.txt) packages pinned, in $((SECONDS - start)) s"
