"""bf16 matmul TFLOP/s from a Jupyter kernel next to the bare process (GPU hosts).

The same `gpu_check.matmul_tflops` (8192^3 bf16, 50 timed products after warm-up)
runs alternately in a bare `python3` process and in an ipykernel driven by
nbclient, as a notebook cell does; reported: medians and kernel / bare.
Goal: the notebook/kernel path reaches >= 98% of the bare figure.

    python benchmarks/notebook_matmul.py [--rounds 5] [--size 8192]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "images" / "notebook" / "gpuhub"
CODE = (
    f"import sys; sys.path.insert(0, {str(LIB)!r}); import torch, gpu_check; "
    "print(gpu_check.matmul_tflops(torch, 'cuda', torch.bfloat16, {n}, {repeats}))"
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    import nbformat
    from nbclient import NotebookClient

    code = CODE.format(n=args.size, repeats=args.repeats)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    client = NotebookClient(nb, kernel_name="python3", timeout=600)
    bare, kernel = [], []
    with client.setup_kernel():
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            bare.append(float(out.stdout.strip().splitlines()[-1]))
            client.execute_cell(nb.cells[0], 0)
            kernel.append(float(nb.cells[0].outputs[-1]["text"].strip().splitlines()[-1]))
    b, k = statistics.median(bare), statistics.median(kernel)
    print(f"bf16 {args.size}^3 matmul, {args.rounds} rounds alternating")
    print(f"  bare process : median {b:7.1f} TFLOP/s  (all: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"  notebook kernel: median {k:7.1f} TFLOP/s  (all: {', '.join(f'{v:.1f}' for v in kernel)})")
    print(f"  kernel / bare = {k / b:.3f} (goal >= 0.98: {'met' if k / b >= 0.98 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
