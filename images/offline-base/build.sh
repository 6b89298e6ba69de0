#!/usr/bin/env bash
# Build a Debian bookworm base image with debootstrap + `docker import`, for hosts
# that cannot pull from a registry (air-gapped labs, this project's CI).
#
#   images/offline-base/build.sh [IMAGE]      (default gpuhub/offline-base:bookworm)
#
# The Debian mirror is taken from this host's apt sources (override with
# DEBIAN_MIRROR=...). Needs root and debootstrap. Idempotent: an existing image
# is kept unless REBUILD=1.
set -euo pipefail
image=${1:-gpuhub/offline-base:bookworm}
suite=${DEBIAN_SUITE:-bookworm}

if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "offline-base: $image already present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "offline-base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/gpuhub-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "offline-base: debootstrap $suite from $mirror (about a minute)"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates,tini,git,tmux,curl \
  "$suite" "$root" "$mirror" >/var/tmp/gpuhub-debootstrap.log 2>&1 \
  || { tail -20 /var/tmp/gpuhub-debootstrap.log >&2; exit 1; }
# Keep the image lean: no apt lists or caches in the base.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
echo "deb $mirror $suite main" >"$root/etc/apt/sources.list"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "offline-base: built $image"
