#!/usr/bin/env bash
# mongosh queries over the job's collections. Uses the local mongosh (make setup) or one on PATH.
#   MONGODB_URI (default mongodb://127.0.0.1:27017/), MONGODB_DATABASE (default bigdata)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../local/env.sh"
shell="$MONGOSH_BIN"
[[ -x "$shell" ]] || shell="$(command -v mongosh || true)"
[[ -n "$shell" ]] || die "mongosh not found: run 'make setup' (or install mongosh)"
exec "$shell" --quiet "${MONGODB_URI%/}/${MONGODB_DATABASE:-bigdata}" "$here/query_behavior_segments.js"
