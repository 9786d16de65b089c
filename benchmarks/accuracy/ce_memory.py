"""Peak memory of the full-softmax CE loss at a large catalogue: naive vs item-chunked.

Each variant runs forward + backward in a fresh subprocess; the reported number is the growth of
the peak resident set size (``VmHWM``) over the RSS measured right after the inputs (hidden
states, item table) were allocated, so it is the memory the loss itself needs.

    python benchmarks/accuracy/ce_memory.py --items 1000000 --positions 256 --chunk 8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def naive_cross_entropy(hidden, weight, targets):
    """The reference: the same loss through the full ``(N, I)`` logit matrix (0.2's ``naive_cross_entropy``)."""
    import torch.nn.functional as F

    return F.cross_entropy(hidden.float() @ weight.float()[1:].T, targets - 1)


def run_one(method: str, items: int, positions: int, dim: int, chunk: int) -> dict:
    import torch

    from sasrec_lightning.model.chunked_ce import chunked_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(positions, dim, requires_grad=True)
    weight = (torch.randn(items + 1, dim) * 0.05).requires_grad_()
    targets = torch.randint(1, items + 1, (positions,))
    weight.grad = torch.zeros_like(weight)  # the parameter gradient exists in training anyway
    hidden.grad = torch.zeros_like(hidden)
    _reset_peak()
    base = _status("VmRSS")
    start = time.perf_counter()
    if method == "naive":
        loss = naive_cross_entropy(hidden, weight, targets)
    else:
        loss = chunked_cross_entropy(hidden, weight, targets, chunk)
    loss.backward()
    seconds = time.perf_counter() - start
    return {
        "method": method, "items": items, "positions": positions, "dim": dim,
        "chunk": chunk if method == "chunked" else None, "loss": loss.item(),
        "peak_extra_mib": _status("VmHWM") - base, "seconds": round(seconds, 2),
        "logit_matrix_mib": positions * items * 4 // 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--methods", nargs="+", default=["chunked", "naive"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.items, args.positions, args.dim, args.chunk)))
        return
    for method in args.methods:
        out = subprocess.run(
            [sys.executable, __file__, "--one", method, "--items", str(args.items), "--positions",
             str(args.positions), "--dim", str(args.dim), "--chunk", str(args.chunk)],
            capture_output=True, text=True, check=True,
        )
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
