#!/usr/bin/env bash
# Regenerate images/notebook/constraints.txt: resolve requirements.txt (plus the
# wheelhouse's torch, whose dependencies share the lock) inside the offline base
# image, i.e. the Python the CPU and air-gapped variants run, and freeze it.
set -euo pipefail
base=$(GPUHUB_OFFLINE=1 images/offline-base/resolve-base.sh unused)
ca=$(readlink -f "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}")
docker run --rm --network host -v "$PWD/images/notebook:/src:ro" -v "$PWD/.build/wheelhouse:/wh:ro" \
  -v "$ca:/ca.pem:ro" -e PIP_CERT=/ca.pem -e PIP_DISABLE_PIP_VERSION_CHECK=1 "$base" bash -ec '
    python3 -m venv /v >/dev/null
    /v/bin/pip install -q /wh/torch-*.whl 2>/dev/null || true
    /v/bin/pip install -q -r /src/requirements.txt
    echo "# Lock for images/notebook, made by scripts/lock-notebook.sh (make lock) in $(/v/bin/python -V)."
    /v/bin/pip freeze | grep -v -E "^(torch|triton|nvidia-(cu|nccl|nvjit|nvtx|cus|cud))"
  ' > images/notebook/constraints.txt.new
mv images/notebook/constraints.txt.new images/notebook/constraints.txt
echo "gpuhub: wrote images/notebook/constraints.txt ($(grep -vc '^#' images/notebook/constraints.txt) pins)"
