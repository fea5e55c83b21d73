#!/usr/bin/env bash
# After `make image`: runs the image as the chart does (its non-root uid), checks that no
# CA certificate of the build host is in it, and writes what it holds:
#   .local/image/sbom.txt    Debian packages (dpkg), Python packages (pip freeze of /opt/venv), jars
#   bench/results/image.md   the figures: build time, base and image sizes, counts, checks
# Settings (build.sh passes them): IMAGE, BASE_IMAGE, BASE_HOW, BUILD_SECONDS.
set -euo pipefail
source "$(dirname "$0")/common.sh"
: "${IMAGE:?}" "${BASE_IMAGE:=?}" "${BASE_HOW:=?}" "${BUILD_SECONDS:=?}"
values="$ROOT/helm/values.yaml"
uid=$(sed -n '/^podSecurityContext:/,/^[a-z]/ s/^  runAsUser: *//p' "$values")
gid=$(sed -n '/^podSecurityContext:/,/^[a-z]/ s/^  runAsGroup: *//p' "$values")
[[ -n "$uid" && -n "$gid" ]] || die "image: no podSecurityContext.runAsUser/runAsGroup in $values"
sbom="$IMAGE_DIR/sbom.txt"
figures="$ROOT/bench/results/image.md"
fail=0
check() {  # check DESCRIPTION OK? DETAIL: one line per check, kept for the figures file
  local mark=ok; [[ "$2" == 0 ]] || { mark=FAILED; fail=1; }
  CHECKS+=("- $mark: $1${3:+ ($3)}"); log "image: check $mark: $1${3:+ ($3)}"
}
CHECKS=()
trap container_stop EXIT
container_start "$IMAGE"

log "image: running the chart's commands as uid $uid:$gid"
out=$(container_run "$uid:$gid" spark-submit --version 2>&1) && rc=0 || rc=$?
line=$(grep -o 'version [0-9.]*' <<<"$out" | head -1 || true)
[[ "$line" == "version $SPARK_VERSION" ]] || { rc=1; printf '%s\n' "$out" | tail -5 >&2; }
check "spark-submit --version as $uid" "$rc" "$line"
out=$(container_run "$uid:$gid" python -c 'import app, app.api.app, app.jobs.streaming.advanced_streaming as j, pyspark; print("app, app.api.app, the job module; pyspark", pyspark.__version__)' 2>&1) && rc=0 || rc=$?
check "python imports as $uid" "$rc" "$(tail -1 <<<"$out")"
out=$(container_run "$uid:$gid" python -m app.api --help 2>&1) && rc=0 || rc=$?
check "python -m app.api --help as $uid (the API's command)" "$rc" "$(head -1 <<<"$out")"
out=$(container_run "$uid:$gid" python app/utils/test_behavior_generator.py --help 2>&1) && rc=0 || rc=$?
check "generator --help as $uid" "$rc" "$(head -1 <<<"$out")"
out=$(container_run "$uid:$gid" /usr/bin/tini --version 2>&1) && rc=0 || rc=$?
check "tini, the chart's entrypoint" "$rc" "$out"

log "image: looking for the build host's CA certificates in the image"
# The PEM line after BEGIN holds the serial number: it names one certificate in any PEM file.
pem_line() { sed -n '/BEGIN CERTIFICATE/{n;p;q}'; }
scan() {  # scan LINE -> the files of the image that hold it (as root, the whole tree)
  container_run 0:0 grep -r -l -s -F "$1" / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev || true
}
# The scan must find a certificate the image does hold: the first of its own bundle.
control=$(container_run 0:0 sed -n '/BEGIN CERTIFICATE/{n;p;q}' /etc/ssl/certs/ca-certificates.crt)
control_files=$(scan "$control")
rc=0; grep -q -x /etc/ssl/certs/ca-certificates.crt <<<"$control_files" || rc=1
check "the scan finds a CA the image holds (control)" "$rc" "$(tr '\n' ' ' <<<"$control_files")"
local_dir=$(container_run 0:0 ls -A /usr/local/share/ca-certificates 2>&1 || true)
# Java's trust store, listed once (a JVM start per certificate was seen to fail once).
java_list=$(container_run 0:0 keytool -list -cacerts -storepass changeit 2>&1 || true)
java_cas=$(grep -c trustedCertEntry <<<"$java_list" || true)
check "Java's trust store lists" "$([[ $java_cas -gt 0 ]] && echo 0 || echo 1)" "$java_cas certificates"
mapfile -t host_cas < <(host_extra_cas)
for f in "${host_cas[@]}"; do
  fp=$(openssl x509 -in "$f" -noout -fingerprint -sha256 | cut -d= -f2)
  name=$(openssl x509 -in "$f" -noout -subject | sed 's/^subject= *//')
  line=$(pem_line < "$f")
  in_bundle=$(container_run 0:0 grep -c -F -x "$line" /etc/ssl/certs/ca-certificates.crt || true)
  in_java=$(grep -c -i -F "$fp" <<<"$java_list" || true)
  files=$(scan "$line")
  rc=0; [[ -z "$local_dir" && "$in_bundle" == 0 && "$in_java" == 0 && -z "$files" ]] || rc=1
  check "host CA '$name' absent" "$rc" "/usr/local/share/ca-certificates: '${local_dir:-empty}'; in ca-certificates.crt: $in_bundle; in Java cacerts: $in_java; files with it: ${files:-none}"
done
bundle_cas=$(container_run 0:0 grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt || true)

log "image: SBOM -> $sbom"
dpkg_list=$(container_run 0:0 dpkg-query -W -f '${Package} ${Version} ${Architecture}\n')
pip_list=$(container_run "$uid:$gid" /opt/venv/bin/python -m pip freeze --all)
spark_jars=$(container_run 0:0 sh -c 'ls /opt/spark/jars/')
connector_jars=$(container_run 0:0 sh -c 'ls /opt/stack/spark-jars/')
# The lock reached the image: every package of the venv at its constraints.txt version
# (the app itself aside, and setuptools, which `python3 -m venv` seeds and nothing requires).
norm() { sed -E 's/^[^=]+/\L&/; :a; s/^([^=]*)[_.]/\1-/; ta'; }  # names as PEP 503 compares them
locked=$(grep '==' "$ROOT/constraints.txt" | sed 's/ .*//' | norm | sort)
off_lock=$(grep '==' <<<"$pip_list" | norm | sort | comm -23 - <(echo "$locked") | grep -v -e '^setuptools==' -e '^behavior-segmentation==' || true)
check "Python packages at the lock's versions" "$([[ -z "$off_lock" ]] && echo 0 || echo 1)" \
  "$(grep -c '==' <<<"$pip_list") versioned packages in /opt/venv (setuptools, seeded by venv, is the one not in the lock), plus the app${off_lock:+; not as locked: $(tr '\n' ' ' <<<"$off_lock")}"
python_version=$(container_run "$uid:$gid" python --version 2>&1)
java_version=$(container_run "$uid:$gid" sh -c 'java -version 2>&1 | head -1')
image_size=$(image_size "$IMAGE")
base_size=$(image_size "$BASE_IMAGE" 2>/dev/null || echo "?")
count() { grep -c . <<<"$1" || true; }
{
  echo "# SBOM of $IMAGE ($(date -u +%FT%TZ), commit $(git -C "$ROOT" rev-parse --short HEAD))"
  echo "base: $BASE_IMAGE, $BASE_HOW; $python_version; $java_version; size $image_size"
  echo; echo "## Debian packages ($(count "$dpkg_list"), dpkg-query)"; echo "$dpkg_list"
  echo; echo "## Python packages in /opt/venv ($(count "$pip_list"), pip freeze --all)"; echo "$pip_list"
  echo; echo "## Spark's jars, /opt/spark/jars ($(count "$spark_jars"), from the pyspark wheel)"; echo "$spark_jars"
  echo; echo "## Kafka connector jars, /opt/stack/spark-jars ($(count "$connector_jars"), Maven Central)"; echo "$connector_jars"
} > "$sbom"

# The section "## End to end" (tests/e2e/test_image_e2e.py's figures, written by hand) is kept.
e2e=$(sed -n '/^## End to end/,$p' "$figures" 2>/dev/null || true)
{
  echo "# The image (make image)"
  echo
  echo "Written by deploy/image/report.sh on $(date -u +'%F %H:%M') UTC, commit $(git -C "$ROOT" rev-parse --short HEAD),"
  echo "$(nproc) cores, builder $BUILDER. The full package lists: .local/image/sbom.txt (not committed)."
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| image | \`$IMAGE\`, $image_size |"
  echo "| base | \`$BASE_IMAGE\`, $base_size, $BASE_HOW |"
  echo "| build time (Dockerfile, base excluded) | $BUILD_SECONDS s |"
  echo "| runtimes | $python_version; $java_version |"
  echo "| Debian packages | $(count "$dpkg_list") |"
  echo "| Python packages (/opt/venv) | $(count "$pip_list") |"
  echo "| jars | $(count "$spark_jars") Spark (pyspark wheel) + $(count "$connector_jars") Kafka connector |"
  echo "| CA certificates in the image | $bundle_cas in ca-certificates.crt, $java_cas in Java's cacerts (Debian's own) |"
  echo
  echo "Checks (run in the image as the chart's uid $uid:$gid, not through a stack):"
  printf '%s\n' "${CHECKS[@]}"
  [[ -z "$e2e" ]] || printf '\n%s\n' "$e2e"
} > "$figures"
log "image: figures -> ${figures#$ROOT/}"
cat "$figures" >&2
[[ $fail == 0 ]] || die "image: a check failed (above)"
