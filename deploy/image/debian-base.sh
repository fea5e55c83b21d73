#!/usr/bin/env bash
# The image's base where no registry is reachable: an equivalent of python:3.11-slim-bookworm
# made from Debian's packages only (debootstrap --variant=minbase bookworm; python3 3.11,
# python3-venv, python3-pip, ca-certificates), imported as an image with a FROM scratch
# Containerfile, then brought up to bookworm-updates and bookworm-security.
# The apt settings of Debian's official container images (debuerreotype) are copied in, so
# an `apt-get install` in a Dockerfile step leaves no .deb in its layer.
# Prints the image name on stdout; everything else goes to stderr. Sourced settings:
#   BUILDER (buildah|docker), IMAGE_DIR, DEBIAN_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail
source "$(dirname "$0")/common.sh"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PACKAGES=ca-certificates,python3,python3-venv,python3-pip
# The tag names the recipe: a change to this script or its settings makes a new base.
recipe=$(cat "$0" <(echo "$SUITE $MIRROR $SECURITY_MIRROR $PACKAGES") | sha1sum | cut -c1-10)
BASE_IMAGE="localhost/behavior-segmentation-base:$SUITE-py3.11-$recipe"

if image_exists "$BASE_IMAGE" && [[ "${IMAGE_BASE_REBUILD:-0}" != 1 ]]; then
  log "image: base $BASE_IMAGE present (IMAGE_BASE_REBUILD=1 remakes it)"
  echo "$BASE_IMAGE"; exit 0
fi
need_tools debootstrap
[[ $(id -u) -eq 0 ]] || die "image: debootstrap must run as root (it creates a root file system with its owners and device nodes)"

dir="$IMAGE_DIR/base"
rootfs="$dir/rootfs"
rm -rf "$dir" && mkdir -p "$dir"
start=$SECONDS
log "image: base <- Debian's packages: debootstrap --variant=minbase $SUITE ($MIRROR; ~1 min)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >&2 \
  || die "image: debootstrap failed (see above; the log is $rootfs/debootstrap/debootstrap.log)"

# apt: the three suites python:3.11-slim-bookworm uses, and debuerreotype's settings.
rm -f "$rootfs/etc/apt/sources.list"
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
conf="$rootfs/etc/apt/apt.conf.d"
echo 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";' > "$conf/docker-clean"
echo 'Acquire::Languages "none";' > "$conf/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' > "$conf/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$conf/docker-autoremove-suggests"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs/debootstrap"
: > "$rootfs/etc/hostname"; : > "$rootfs/etc/resolv.conf"

log "image: base root file system $(du -sh "$rootfs" | cut -f1) in $((SECONDS - start)) s; importing"
# The builder supplies /dev, /proc, /sys and /run at run time; debootstrap's device nodes stay out.
tar --numeric-owner -C "$rootfs" -cf "$dir/rootfs.tar" \
  --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' .
rm -rf "$rootfs"
cat > "$dir/Containerfile" <<'CONTAINERFILE'
FROM scratch
ADD rootfs.tar /
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update && apt-get upgrade -y --no-install-recommends && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["bash"]
CONTAINERFILE
build_image "$dir/Containerfile" "$dir" -t "$BASE_IMAGE" >&2 \
  || die "image: importing the base failed (see above)"
rm -f "$dir/rootfs.tar"
log "image: base $BASE_IMAGE, $(image_size "$BASE_IMAGE"), in $((SECONDS - start)) s"
echo "$BASE_IMAGE"
