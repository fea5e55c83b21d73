#!/usr/bin/env bash
# make image: builds the repo's Dockerfile into behavior-segmentation:<version>, the image the
# helm chart runs, then checks it and writes what it holds (deploy/image/report.sh).
#  - builder: docker build where a Docker daemon answers, else buildah (--isolation chroot,
#    no daemon), installed from Debian's packages when missing (common.sh).
#  - base (the Dockerfile's PYTHON_IMAGE): PYTHON_IMAGE if set; python:3.11-slim-bookworm where
#    Docker Hub answers; else one made from Debian's packages (debian-base.sh, cached).
#  - the build host's extra CA certificates (a TLS-inspecting proxy's) reach the build as the
#    secret build_ca, trusted in the build stage only (Dockerfile); BUILD_CA_FILE overrides.
#   IMAGE  the tag (default behavior-segmentation:<pyproject version>)
# The image is labelled behavior-segmentation.context=<digest of the build context> (common.sh).
set -euo pipefail
source "$(dirname "$0")/common.sh"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml")
IMAGE="${IMAGE:-behavior-segmentation:$version}"
start=$SECONDS

if [[ $BUILDER == buildah ]]; then need_tools buildah; fi
log "image: building $IMAGE with $BUILDER"

docker_hub_answers() {  # any HTTP answer from the registry API (401 without a token) counts
  local code; code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null) || return 1
  [[ "$code" == 200 || "$code" == 401 ]]
}
if [[ -n "${PYTHON_IMAGE:-}" ]]; then
  base="$PYTHON_IMAGE"; base_how="given (PYTHON_IMAGE)"
elif docker_hub_answers; then
  base="docker.io/library/python:3.11-slim-bookworm"; base_how="from Docker Hub"
else
  log "image: Docker Hub does not answer; the base is made from Debian's packages"
  base=$("$ROOT/deploy/image/debian-base.sh"); base_how="made here from Debian's packages (deploy/image/debian-base.sh)"
fi
log "image: base $base, $base_how"

# The secret is a PEM file, empty when the host trusts no extra CA (always passed: buildah
# fails a step whose secret mount names a secret it was not given).
ca="$IMAGE_DIR/build-ca.pem"
if [[ -n "${BUILD_CA_FILE:-}" ]]; then
  [[ -r "$BUILD_CA_FILE" ]] || die "image: BUILD_CA_FILE=$BUILD_CA_FILE cannot be read"
  cp "$BUILD_CA_FILE" "$ca"
else
  host_extra_cas | while read -r f; do cat "$f"; echo; done > "$ca"
fi
log "image: $(grep -c 'BEGIN CERTIFICATE' "$ca" || true) extra CA certificate(s) of this host trusted during the build only"

# The label names the build context, so ensure.sh can tell an image of this checkout from an older one.
flags=(--secret "id=build_ca,src=$ca" --build-arg "PYTHON_IMAGE=$base" -t "$IMAGE"
  --label "$CONTEXT_LABEL=$(context_digest)")
# buildah: no --layers by default (one layer per stage); IMAGE_LAYERS=1 caches each step.
[[ $BUILDER == buildah && "${IMAGE_LAYERS:-0}" == 1 ]] && flags+=(--layers)
log "image: build (apt, Maven Central, PyPI; ~5 min the first time), log: $IMAGE_DIR/build.log"
build_start=$SECONDS
# buildah re-runs itself for each RUN step from a sealed in-memory copy of its binary; the kernel
# refuses the seal (EBUSY) while a writable mapping of the copy is still open, now and then: that
# transient error ("sealing memfd copy") is retried twice; any other failure stops the build.
for attempt in 1 2 3; do
  if build_image "$ROOT/Dockerfile" "$ROOT" "${flags[@]}" 2>&1 | tee "$IMAGE_DIR/build.log"; then
    break
  fi
  if (( attempt == 3 )) || ! grep -q "sealing memfd copy" "$IMAGE_DIR/build.log"; then
    die "image: the build failed; the last lines above say where ($IMAGE_DIR/build.log)"
  fi
  log "image: buildah could not seal its own re-exec copy (a transient kernel EBUSY): build attempt $((attempt + 1)) of 3"
done
build_seconds=$((SECONDS - build_start))
rm -f "$ca"
log "image: $IMAGE built in $build_seconds s, $(image_size "$IMAGE")"

IMAGE="$IMAGE" BASE_IMAGE="$base" BASE_HOW="$base_how" BUILD_SECONDS="$build_seconds" \
  "$ROOT/deploy/image/report.sh"
log "image: done in $((SECONDS - start)) s"
