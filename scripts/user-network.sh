#!/usr/bin/env bash
# The Docker network of user containers, with the isolation gpuhub relies on:
#  - no traffic between user containers (enable_icc=false): nobody reaches another
#    user's server directly, only through the proxy, which checks who is asking;
#  - when the hub itself is a container on this network (docker-compose), traffic to and
#    from its fixed address is let through (DOCKER-USER), everything else between
#    containers stays dropped;
#  - no cloud metadata service from user containers (link-local 169.254.0.0/16, Azure's
#    168.63.129.16, Alibaba's 100.100.100.200), neither forwarded (DOCKER-USER) nor on this
#    host itself (INPUT).
# Idempotent; `make up` and `make restart` run it (rules do not survive a reboot or a firewall
# reload by themselves). Run as root, or it runs iptables in a throw-away host-network container.
#   user-network.sh NAME SUBNET BRIDGE [HUB_IP [IP_RANGE]]
# IP_RANGE: where Docker hands out container addresses; keep HUB_IP outside it.
set -euo pipefail
name=$1 subnet=$2 bridge=$3 hub_ip=${4:-} ip_range=${5:-}
gateway=$(python3 -c "import ipaddress,sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))" "$subnet")

if docker network inspect "$name" >/dev/null 2>&1; then
  icc=$(docker network inspect -f '{{index .Options "com.docker.network.bridge.enable_icc"}}' "$name")
  br=$(docker network inspect -f '{{index .Options "com.docker.network.bridge.name"}}' "$name")
  if [ "$icc" != "false" ] || [ "$br" != "$bridge" ]; then
    if [ -n "$(docker network inspect -f '{{range .Containers}}{{.Name}} {{end}}' "$name")" ]; then
      echo "gpuhub: network $name allows traffic between user containers; stop its containers and run this again" >&2
      exit 1
    fi
    echo "gpuhub: re-creating network $name without inter-container traffic"
    docker network rm "$name" >/dev/null
  fi
fi
if ! docker network inspect "$name" >/dev/null 2>&1; then
  docker network create --driver bridge --subnet "$subnet" --gateway "$gateway" ${ip_range:+--ip-range "$ip_range"} \
    -o com.docker.network.bridge.enable_icc=false -o com.docker.network.bridge.name="$bridge" "$name" >/dev/null
  echo "gpuhub: created network $name ($subnet, bridge $bridge, no inter-container traffic)"
fi

ipt() {
  if [ "$(id -u)" = 0 ] && command -v iptables >/dev/null; then
    iptables "$@"
  else
    docker run --rm --network host --cap-add NET_ADMIN --cap-add NET_RAW --entrypoint iptables \
      "${GPUHUB_HUB_IMAGE:-gpuhub/hub:latest}" "$@"
  fi
}
rule() {  # add once: rule CHAIN ARGS...
  local chain=$1; shift
  ipt -C "$chain" "$@" 2>/dev/null || ipt -I "$chain" "$@"
}
if ! ipt -n -L DOCKER-USER >/dev/null 2>&1; then
  # Docker makes this chain; not finding it means iptables here is not the one Docker uses
  # (legacy vs nft), and rules added here would do nothing.
  echo "gpuhub: no DOCKER-USER chain in this iptables; the user network's firewall rules were NOT applied" >&2
  exit 1
fi
for meta in 169.254.0.0/16 168.63.129.16/32 100.100.100.200/32; do
  rule DOCKER-USER -i "$bridge" -d "$meta" -j REJECT
  rule INPUT -i "$bridge" -d "$meta" -j REJECT
done
if [ -n "$hub_ip" ]; then
  rule DOCKER-USER -i "$bridge" -o "$bridge" -d "$hub_ip" -j ACCEPT
  rule DOCKER-USER -i "$bridge" -o "$bridge" -s "$hub_ip" -j ACCEPT
fi
