#!/usr/bin/env bash
# Add this GPU host to gpuhub's Swarm, as root on the new node (docs/admin.md, "Adding a GPU node"):
#   scripts/swarm-join-node.sh MANAGER_ADDR JOIN_TOKEN
# It checks the node (Engine, NVIDIA Container Toolkit >= 1.19), advertises its GPUs / MIG slices
# to Swarm, makes the nvidia runtime the default, restarts dockerd and joins the swarm.
set -euo pipefail
manager=${1:?usage: swarm-join-node.sh MANAGER_ADDR JOIN_TOKEN} token=${2:?usage: swarm-join-node.sh MANAGER_ADDR JOIN_TOKEN}
here=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "gpuhub swarm-join-node: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || die "nvidia-smi is missing: install the NVIDIA driver first"
command -v nvidia-container-runtime >/dev/null || die "nvidia-container-runtime is missing: install nvidia-container-toolkit >= 1.19"
tk=$(nvidia-container-runtime --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
case "$tk" in
  1.1[0-8].*|1.[0-9].*|0.*|"") die "nvidia-container-toolkit ${tk:-unknown} is too old: 1.18.x ignores Swarm's GPU choice (NVIDIA/nvidia-container-toolkit#1599); install >= 1.19" ;;
esac
engine=$(docker version --format '{{.Server.Version}}')
[ "${engine%%.*}" -ge 23 ] || echo "gpuhub swarm-join-node: note: Engine $engine < 23 works (gpuhub never requests generic resources there), but 23+ is recommended"

mkdir -p /etc/docker
nvidia-smi -L | PYTHONPATH="$here" python3 -m spawner.swarm_node /etc/docker/daemon.json >/etc/docker/daemon.json.gpuhub
mv /etc/docker/daemon.json.gpuhub /etc/docker/daemon.json
systemctl restart docker
docker swarm join --token "$token" "$manager"
model=$(nvidia-smi --query-gpu=name --format=csv,noheader | sort -u | head -1)
echo "gpuhub swarm-join-node: joined. On a manager, name the GPU model for model-specific profiles:"
echo "  docker node update --label-add 'gpuhub.gpu-model=$model' $(hostname)"
