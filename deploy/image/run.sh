#!/usr/bin/env bash
# Runs one command in the image the way the chart's pods run it, without a daemon: a throw-away
# buildah container (buildah from, then buildah run --isolation chroot), removed on exit.
#   run.sh [-u UID:GID] [-e NAME[=VALUE]]... [-v HOST:DIR[:ro]]... [-w DIR] [--read-only] IMAGE -- CMD...
#  -u           the uid:gid (default: the chart's podSecurityContext runAsUser:runAsGroup, values.yaml)
#  -e NAME      NAME's value from this script's environment; -e NAME=VALUE as given. The values are on
#               buildah's command line: test settings, not production secrets.
#  -v           a host directory at DIR (the chart's emptyDir and volumes), read-only with :ro
#  -w           the working directory (default: the image's WORKDIR)
#  --read-only  the root file system read-only (the chart's readOnlyRootFilesystem); needs root.
# The network is the host's: chroot isolation makes no network namespace, so 127.0.0.1 in the
# container is this machine's loopback (the local stack). The container's hostname resolves to
# 127.0.0.1 (its /etc/hosts, as a pod's names the pod's own IP): Spark looks it up at start, and
# buildah's own hosts file leaves it out under chroot isolation. TERM or INT to this script stops the
# command (TERM to buildah, which passes it on), then the container goes.
#
# --read-only: buildah run has no such flag, and its chroot isolation bind-mounts the container's
# root directory as it is. So the container's overlay is mounted (buildah mount) and remounted
# read-only on the host before the run; buildah run reuses that mount. Two things buildah itself
# writes into the root at run time are prepared first: the mount points of the -v volumes are
# made while the tree is still writable, and /run is an empty root-owned host directory (0755),
# where buildah creates and removes /run/.containerenv (in the read-only tree its removal fails
# and buildah 1.28 panics, losing the command's exit status). The command's uid cannot write /run.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[[ $BUILDER == buildah ]] || die "image run: buildah only (with docker: docker run --read-only --user ...)"
values="$ROOT/helm/values.yaml"
user="$(sed -n '/^podSecurityContext:/,/^[a-z]/ s/^  runAsUser: *//p' "$values"):$(sed -n '/^podSecurityContext:/,/^[a-z]/ s/^  runAsGroup: *//p' "$values")"
envs=() vols=() targets=() workdir=() read_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -u) user="$2"; shift 2 ;;
    -e) if [[ "$2" == *=* ]]; then envs+=(-e "$2"); else
          [[ -n "${!2+set}" ]] || die "image run: -e $2, but $2 is not set"; envs+=(-e "$2=${!2}"); fi
        shift 2 ;;
    -v) [[ "$2" == /*:/* ]] || die "image run: -v HOST:DIR[:ro], both absolute (got '$2')"
        vols+=(-v "$2"); t="${2#*:}"; targets+=("${t%%:*}"); shift 2 ;;
    -w) workdir=(--workingdir "$2"); shift 2 ;;
    --read-only) read_only=1; shift ;;
    --) die "image run: the image comes before --" ;;
    -*) die "image run: unknown option $1" ;;
    *) break ;;
  esac
done
[[ $# -ge 3 && "$2" == -- ]] || die "usage: run.sh [-u UID:GID] [-e NAME[=VALUE]]... [-v HOST:DIR[:ro]]... [-w DIR] [--read-only] IMAGE -- CMD..."
image="$1"; shift 2
image_exists "$image" || die "image run: no image $image (make image, or deploy/image/ensure.sh)"

ctr="" mnt="" work="" pid=""
cleanup() {
  local rc=$?
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n "$mnt" ]]; then
    mountpoint -q "$mnt/run" && umount "$mnt/run"
    mount -o remount,rw "$mnt" 2>/dev/null || true
    buildah umount "$ctr" >/dev/null || true
  fi
  [[ -n "$work" ]] && rm -rf "$work"
  [[ -n "$ctr" ]] && buildah rm "$ctr" >/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
name="imagerun-$$-$RANDOM"
ctr=$(buildah from --pull-never --name "$name" "$image")
work=$(mktemp -d "$IMAGE_DIR/run.XXXXXX")
printf '127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" > "$work/hosts"
chmod 0644 "$work/hosts"

if [[ $read_only == 1 ]]; then
  [[ $(id -u) -eq 0 ]] || die "image run: --read-only remounts the container's file system, which needs root"
  mnt=$(buildah mount "$ctr")
  for t in "${targets[@]}"; do mkdir -p "$mnt$t"; done
  mkdir -m 0755 "$work/run"
  mount --bind "$work/run" "$mnt/run"
  mount -o remount,ro "$mnt"
fi

# In the background so that a TERM to this script reaches the command (through buildah).
buildah run --isolation chroot --user "$user" --cap-drop ALL --hostname "$name" --no-hosts \
  -v "$work/hosts:/etc/hosts:ro" "${workdir[@]}" "${envs[@]}" "${vols[@]}" "$ctr" -- "$@" &
pid=$!
rc=0; wait "$pid" || rc=$?
pid=""
exit "$rc"
