#!/usr/bin/env bash
# docker build with a quiet success and a useful failure: the full log goes to
# .build/<tag>.log and its last lines are shown when the build fails.
set -uo pipefail
tag=$1; shift
mkdir -p .build
log=".build/build-$(echo "$tag" | tr '/:' '__').log"
start=$(date +%s)
if docker build --network host -t "$tag" "$@" . >"$log" 2>&1; then
  echo "gpuhub: built $tag in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
else
  echo "gpuhub: building $tag failed; last lines of $log:" >&2
  tail -30 "$log" >&2
  exit 1
fi
