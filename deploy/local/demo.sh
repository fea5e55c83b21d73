#!/usr/bin/env bash
# make demo: the streaming job on the local stack with generated traffic; prints the results.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m app.demo
