#!/usr/bin/env bash
# Wait until a container's health check passes: wait-healthy.sh CONTAINER SECONDS
set -euo pipefail
container=$1 limit=${2:-120}
[ -n "$container" ] || { echo "gpuhub: no container to wait for" >&2; exit 1; }
for _ in $(seq 1 "$limit"); do
  # An image without a health check (e.g. upstream postgres): running is all that can be known.
  case "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container" 2>/dev/null)" in
    healthy) exit 0 ;;
    running) sleep 3; exit 0 ;;
  esac
  sleep 1
done
echo "gpuhub: $(docker inspect -f '{{.Name}}' "$container") is not healthy after $limit s; its log:" >&2
docker logs --tail 20 "$container" >&2
exit 1
