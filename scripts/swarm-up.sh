#!/usr/bin/env bash
# Deploy gpuhub on the Docker Swarm this host manages: `make swarm-up`. Idempotent.
# Usage: scripts/swarm-up.sh ENV_FILE [STACK]   (DOCKER_HOST may name another manager's socket)
set -euo pipefail
env_file=$1 stack=${2:-gpuhub}
here=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "gpuhub swarm-up: $*" >&2; exit 1; }

state=$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}' 2>/dev/null) \
  || die "no Docker Engine answers"
case "$state" in
  "active true") ;;
  "active false") die "this node is a Swarm worker: run make swarm-up on a manager" ;;
  *) die "this Docker Engine is not in a Swarm: run 'docker swarm init' first (docs/admin.md)" ;;
esac

# The settings file is KEY=VALUE lines (docker's env-file format, values unquoted): export them
# for the stack file's ${...} without letting a shell evaluate them.
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in ''|'#'*) continue ;; esac
  key=${line%%=*}
  [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$env_file: not a KEY=VALUE line: ${line:0:60}"
  export "$key=${line#*=}"
done <"$env_file"
export GPUHUB_ENV_FILE=$(cd "$(dirname "$env_file")" && pwd)/$(basename "$env_file")
export GPUHUB_CONFIG_DIR=$(cd "${GPUHUB_CONFIG_DIR:-$here/config}" && pwd)
export GPUHUB_NETWORK=${GPUHUB_NETWORK:-gpuhub-swarm}
[ "$GPUHUB_NETWORK" = gpuhub-users ] && export GPUHUB_NETWORK=gpuhub-swarm  # the one-host default

# The hub refuses the same at start; saying it here keeps a broken stack from being deployed.
if [ "${GPUHUB_SWARM_REQUEST_GENERIC_RESOURCES:-false}" = true ]; then
  old=$(docker node ls --format '{{.Hostname}} {{.EngineVersion}}' | awk '{split($2, v, "."); if (v[1] + 0 < 23) print $1 " (" $2 ")"}')
  [ -z "$old" ] || die "GPUHUB_SWARM_REQUEST_GENERIC_RESOURCES=true needs Docker Engine >= 23 on every node (moby/moby#44378); too old: $(echo $old)"
fi

if ! docker network inspect "$GPUHUB_NETWORK" >/dev/null 2>&1; then
  # Attachable: the hub's task and every user service join it; dnsrr: no IPVS needed.
  docker network create --driver overlay --attachable "$GPUHUB_NETWORK" >/dev/null
  echo "gpuhub swarm-up: created the overlay network $GPUHUB_NETWORK"
fi
if [ "${GPUHUB_SWARM_HOME_MODE:-shared-path}" = shared-path ]; then
  root=${GPUHUB_SWARM_HOME_ROOT:-/srv/gpuhub/homes}
  mkdir -p "$root"
  mountpoint -q "$root" || echo "gpuhub swarm-up: note: $root is not a mount point here; every node must see the same folder (NFS, docs/admin.md)"
fi

docker stack deploy --prune -c "$here/docker-stack.yml" "$stack"
echo "gpuhub swarm-up: deployed stack $stack; the hub listens on this manager's port ${GPUHUB_PUBLIC_PORT:-8000}"
