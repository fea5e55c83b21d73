#!/usr/bin/env bash
# The image of this checkout, built when it is missing or older than the checkout: an image whose
# behavior-segmentation.context label (build.sh) differs from the digest of the build context
# here (common.sh context_digest) is rebuilt with build.sh (make image; ~3-5 min, more the first
# time). Prints the image name on stdout; the build's progress goes to stderr. For tests that
# run the image (tests/e2e/test_image_e2e.py) and anyone about to run it.
#   IMAGE         the tag (default behavior-segmentation:<pyproject version>, build.sh's)
#   IMAGE_ENSURE  build (default): build when missing or stale | present: build only when missing
set -euo pipefail
source "$(dirname "$0")/common.sh"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml")
IMAGE="${IMAGE:-behavior-segmentation:$version}"
want=$(context_digest)

if ! image_exists "$IMAGE"; then
  log "image: $IMAGE missing; building it (deploy/image/build.sh)"
else
  have=$(image_label "$IMAGE" "$CONTEXT_LABEL")
  if [[ "$have" == "$want" ]]; then
    log "image: $IMAGE is this checkout's (context $want)"; echo "$IMAGE"; exit 0
  fi
  if [[ "${IMAGE_ENSURE:-build}" == present ]]; then
    log "image: $IMAGE is not this checkout's (context ${have:-unlabelled}, here $want); used as it is (IMAGE_ENSURE=present)"
    echo "$IMAGE"; exit 0
  fi
  log "image: $IMAGE was built from another context (${have:-unlabelled}, here $want); rebuilding (deploy/image/build.sh)"
fi
start=$SECONDS
IMAGE="$IMAGE" "$ROOT/deploy/image/build.sh" >&2 || die "image: building $IMAGE failed (above)"
have=$(image_label "$IMAGE" "$CONTEXT_LABEL")
[[ "$have" == "$want" ]] || die "image: $IMAGE built, but its context label is '${have}', not $want (the checkout changed during the build?)"
log "image: $IMAGE built in $((SECONDS - start)) s"
echo "$IMAGE"
