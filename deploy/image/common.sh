# Sourced by deploy/image/*.sh: the builder (buildah or docker) behind a few verbs.
#   IMAGE_BUILDER  buildah | docker | auto (default: docker where a Docker daemon answers, else buildah)
#   IMAGE_DIR      where the SBOM, the build log and the base's files go (default .local/image)
source "$(dirname "${BASH_SOURCE[0]}")/../local/env.sh"
IMAGE_DIR="${IMAGE_DIR:-$STACK_DIR/image}"
mkdir -p "$IMAGE_DIR"

if [[ -z "${BUILDER:-}" ]]; then
  case "${IMAGE_BUILDER:-auto}" in
    docker|buildah) BUILDER="$IMAGE_BUILDER" ;;
    auto) if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then BUILDER=docker; else BUILDER=buildah; fi ;;
    *) die "image: IMAGE_BUILDER must be buildah, docker or auto (got '$IMAGE_BUILDER')" ;;
  esac
  export BUILDER
fi

# need_tools CMD...: installs the Debian packages of the same names where they are missing.
need_tools() {
  local missing=() t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  [[ ${#missing[@]} -eq 0 ]] && return
  local why="image: ${missing[*]} missing"
  command -v apt-get >/dev/null 2>&1 || die "$why and this is not a Debian/Ubuntu machine (no apt-get): install ${missing[*]} with the system's package manager"
  local apt=(apt-get)
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
      || die "$why and installing them needs root: run 'sudo apt-get install -y ${missing[*]}' once, or make image as root"
    apt=(sudo -n apt-get)
  fi
  log "image: ${missing[*]} <- Debian packages (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  local install=("${apt[@]}" install -y -q --no-install-recommends "${missing[@]}")
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || ! "${install[@]}" >&2; then
    "${apt[@]}" update -q >&2 && "${install[@]}" >&2 || die "$why and apt-get could not install them (see above)"
  fi
  for t in "${missing[@]}"; do command -v "$t" >/dev/null 2>&1 || die "image: $t still missing after apt-get install"; done
}

image_exists() {
  if [[ $BUILDER == docker ]]; then docker image inspect "$1" >/dev/null 2>&1
  else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

# build_image CONTAINERFILE CONTEXT [builder flags...]: --isolation chroot runs RUN steps
# without a daemon and without the setrlimit that podman's runtime (runc) is refused in a sandbox.
build_image() {
  local file="$1" context="$2"; shift 2
  if [[ $BUILDER == docker ]]; then DOCKER_BUILDKIT=1 docker build -f "$file" "$@" "$context"
  else buildah bud --isolation chroot -f "$file" "$@" "$context"; fi
}

# context_digest: sha256 of what the image is built from, the files the .dockerignore lets into
# the build context (app/, deploy/local/, pyproject.toml, constraints.txt, no bytecode) and the
# Dockerfile, paths and contents. build.sh labels the image with it (CONTEXT_LABEL); ensure.sh
# rebuilds an image whose label differs from the checkout's.
CONTEXT_LABEL=behavior-segmentation.context
context_digest() {
  (cd "$ROOT" && find app deploy/local pyproject.toml constraints.txt Dockerfile \( -type f -o -type l \) \
      -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*.egg-info*' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
image_label() {  # image_label IMAGE LABEL -> its value, empty when the image or the label is missing
  if [[ $BUILDER == docker ]]; then docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null
  else buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null; fi | sed 's/^<no value>$//'
}

image_size() {  # the size the builder reports, e.g. "1.3 GB" (buildah rounds; docker: bytes -> MB)
  if [[ $BUILDER == docker ]]; then echo "$(( $(docker image inspect -f '{{.Size}}' "$1") / 1000000 )) MB"
  else buildah images --format '{{.Size}}' --noheading "$1" | sed -n 1p; fi
}

# One throw-away container of an image, for several commands (a buildah container is a copy
# of the image's files, so it is made once). Commands run as a uid:gid, not through the
# entrypoint; SPARK_LOCAL_HOSTNAME because the container's name is not in its /etc/hosts.
container_start() {  # container_start IMAGE -> sets CTR
  if [[ $BUILDER == docker ]]; then
    CTR=$(docker run -d --entrypoint /bin/sh -e SPARK_LOCAL_HOSTNAME=localhost "$1" -c 'sleep infinity')
  else
    CTR=$(buildah from --pull-never "$1")
  fi
}
container_run() {  # container_run UID:GID CMD...
  local user="$1"; shift
  if [[ $BUILDER == docker ]]; then docker exec --user "$user" "$CTR" "$@"
  else buildah run --isolation chroot --user "$user" "$CTR" -- env SPARK_LOCAL_HOSTNAME=localhost "$@"; fi
}
container_stop() {
  [[ -n "${CTR:-}" ]] || return 0
  if [[ $BUILDER == docker ]]; then docker rm -f "$CTR" >/dev/null; else buildah rm "$CTR" >/dev/null; fi
  CTR=""
}

# The build host's own CA certificate files (Debian/Ubuntu's and Fedora/RHEL's places).
host_extra_cas() {
  local d dirs=()
  for d in /usr/local/share/ca-certificates /etc/pki/ca-trust/source/anchors; do [[ -d $d ]] && dirs+=("$d"); done
  [[ ${#dirs[@]} -gt 0 ]] || return 0
  find "${dirs[@]}" -type f \( -name '*.crt' -o -name '*.pem' \) | sort
}
