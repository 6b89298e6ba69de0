#!/usr/bin/env bash
# Print the base image to build FROM: the upstream image when it is here or can
# be pulled, otherwise the debootstrap offline base (built on first use).
# Messages go to stderr; only the image name goes to stdout.
set -euo pipefail
upstream=$1
offline=${OFFLINE_BASE:-gpuhub/offline-base:bookworm}
if [ "${GPUHUB_OFFLINE:-0}" != 1 ]; then
  if docker image inspect "$upstream" >/dev/null 2>&1; then echo "$upstream"; exit 0; fi
  if timeout 600 docker pull "$upstream" >/dev/null 2>&1; then echo "$upstream"; exit 0; fi
  echo "gpuhub: cannot pull $upstream (no registry access?); building on the offline Debian base $offline instead" >&2
fi
"$(dirname "$0")/build.sh" "$offline" >&2
echo "$offline"
