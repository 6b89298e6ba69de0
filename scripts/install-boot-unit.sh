#!/usr/bin/env bash
# Install deploy/gpuhub.service for this checkout and settings file, and enable it:
# after a reboot (or Docker's restart) systemd runs `make boot` here.
#   install-boot-unit.sh ENV_FILE [UNIT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env_file=$(realpath "$1")
unit_dir=${2:-/etc/systemd/system}
if [ ! -f "$env_file" ]; then
  echo "gpuhub: no settings file $env_file; run make up first" >&2
  exit 1
fi
case "$root$env_file" in
  *[[:space:]]*) echo "gpuhub: the checkout path or settings file has a space; systemd's ExecStart would split it" >&2; exit 1 ;;
esac
sed -e "s|@ROOT@|$root|g" -e "s|@ENV_FILE@|$env_file|g" "$root/deploy/gpuhub.service" > "$unit_dir/gpuhub.service"
if [ -d /run/systemd/system ] && [ "$unit_dir" = /etc/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable gpuhub.service
  echo "gpuhub: gpuhub.service installed and enabled ($unit_dir/gpuhub.service)"
else
  echo "gpuhub: wrote $unit_dir/gpuhub.service; this host does not run systemd, so nothing was enabled" >&2
fi
