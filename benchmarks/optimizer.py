"""Optimizer cost of one training step on a large item table: dense Adam, SparseAdam, lazy and deferred Adam.

    python benchmarks/optimizer.py --threads 1                 # 1,000,000 and 54,543 items, d = 64
    python benchmarks/optimizer.py --threads 2 --items 54543

Cases (the same lookups, gradient values and dense-part gradients for all):

- ``dense``: fused ``torch.optim.Adam`` over the table and the dense part (the paper's optimizer,
  ``speed.item_updates: dense``);
- ``sparse_adam``: ``torch.optim.SparseAdam`` on the table, fed the sparse COO gradient that
  ``nn.Embedding(sparse=True)`` hands autograd (``F.embedding(..., sparse=True)``: the two lookups'
  uncoalesced gradients, summed by autograd), plus fused Adam for the dense part;
- ``lazy_lists``: ``LazyAdam`` (``speed.item_updates: lazy``) with the rows from the ``RowGradient`` lists;
- ``lazy_nonzero``: ``LazyAdam`` finding the rows as the non-zero rows of the dense gradient (what
  it does under DDP, with the ``ce`` loss or with ``speed.row_gradients`` off);
- ``deferred``: ``LazyAdam(catch_up=True)`` (``speed.item_updates: deferred``) with the row lists. After the
  warm-up step the rows' last updates are spread over the previous 1,000 steps, so every step's
  catch-up sums the full ~J terms per touched row (what training sees once uniform negatives reach
  rows unused for a long time). Also timed: one ``flush()`` after the timed steps (``flush_ms``,
  every row behind), what an epoch end costs.

What one timed step includes, split in two timers:

- ``grad_ms``: ``zero_grad``, the forward lookups of the table (two: the inputs, and the targets
  plus sampled negatives) and their backward pass into the table's gradient. For ``dense`` and
  ``lazy_*`` that is the package's ``RowGradient`` path (persistent dense buffer: clear the rows
  written last step, ``index_add_`` the new ones); for ``sparse_adam`` it is autograd building and
  adding the two sparse COO gradients. The dense part's gradients are assigned (no model pass);
- ``step_ms``: ``optimizer.step()`` (for ``sparse_adam`` also the fused Adam of the dense part, and
  SparseAdam's ``coalesce``; for ``lazy_*`` finding the rows).

The encoder's forward and backward passes are the same whatever the optimizer and are not timed.
The cases alternate (one round runs every case, in a rotating order; each round rebuilds the
optimizer and discards its first step, which allocates the moments). Prints one ``RESULT {json}``
line per case with medians over all timed steps and the ratio to ``dense``, and one line timing
three ways to find the non-zero rows of a dense gradient (``find_nonzero_rows``). The machine may be
shared: read the ratios, and the load printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sasrec_lightning.fast.lazy_adam import LazyAdam, touched_rows
from sasrec_lightning.fast.row_grad import RowGradient
from sasrec_lightning.model.encoder import SASRec
from sasrec_lightning.model.options import EncoderOptions

CASES = ("dense", "sparse_adam", "lazy_lists", "lazy_nonzero", "deferred")
LR, BETAS = 0.001, (0.9, 0.98)


def make_steps(num_items: int, args, rng: np.random.Generator) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, two lookups ``(ids, upstream gradient)``: inputs (popular items, repeats) and scored items.

    Inputs are drawn with probability ~ 1 / rank^0.8 (a long-tailed catalogue), so popular ids repeat;
    scored items are the batch's targets (another popular draw) and ``--negatives`` uniform negatives.
    """
    ranks = np.arange(1, num_items + 1, dtype=np.float64)
    popularity = ranks**-0.8
    popularity /= popularity.sum()
    steps = []
    for _ in range(args.distinct_steps):
        inputs = rng.choice(num_items, size=args.inputs, p=popularity) + 1
        targets = rng.choice(num_items, size=args.inputs // 2, p=popularity) + 1
        negatives = rng.integers(1, num_items + 1, size=args.negatives)
        scored = np.concatenate([targets, negatives])
        steps.append([(torch.from_numpy(ids).long(), torch.randn(len(ids), args.dim)) for ids in (inputs, scored)])
    return steps


def dense_part(args) -> list[torch.nn.Parameter]:
    """The encoder's parameters other than the item table (hidden ``--dim``, 2 blocks, max_len 50)."""
    encoder = SASRec(1, 50, EncoderOptions(hidden_size=args.dim, num_blocks=2, num_heads=1))
    return [p for name, p in encoder.named_parameters() if not name.startswith("items.")]


def run_case(case: str, table: torch.nn.Parameter, dense: list, dense_grads: list, steps: list, count: int):
    """Warm-up step, then ``count`` timed steps.

    Returns:
        Per-step (grad seconds, step seconds), unique rows per step, and the seconds of one ``flush()``
        (``deferred``; else ``None``).
    """
    row_grad = None
    if case == "sparse_adam":
        optimizers = [torch.optim.SparseAdam([table], lr=LR, betas=BETAS),
                      torch.optim.Adam(dense, lr=LR, betas=BETAS, fused=True)]

        def lookup(ids):
            return F.embedding(ids, table, padding_idx=0, sparse=True)
    else:
        row_grad = RowGradient(table)
        lookup = row_grad.lookup
        if case == "dense":
            optimizers = [torch.optim.Adam([table, *dense], lr=LR, betas=BETAS, fused=True)]
        else:
            row_lists = (lambda parameter: row_grad.written_rows()) if case in ("lazy_lists", "deferred") else None
            optimizers = [LazyAdam([{"params": dense}, {"params": [table], "row_sparse": True}], lr=LR, betas=BETAS,
                                   row_lists=row_lists, fused=True, catch_up=case == "deferred")]
    times, unique = [], []
    for index in range(count + 1):
        lookups = steps[index % len(steps)]
        start = time.perf_counter()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        outputs = [lookup(ids) for ids, _ in lookups]  # (n, d) each
        torch.autograd.backward(outputs, [grad for _, grad in lookups])
        for parameter, grad in zip(dense, dense_grads, strict=True):
            parameter.grad = grad
        middle = time.perf_counter()
        for optimizer in optimizers:
            optimizer.step()
        end = time.perf_counter()
        if index:  # the first step allocates the moments (and the gradient buffer)
            times.append((middle - start, end - middle))
            unique.append(torch.cat([ids for ids, _ in lookups]).unique().numel())
        elif case == "deferred":  # the rows were last updated up to 1,000 steps ago (the moments are random)
            state = optimizers[0].state[table]
            state["step"] += 1000
            state["last_step"].random_(int(state["step"]) - 1000, int(state["step"]) + 1)
            state["exp_avg"].normal_(0.0, 1e-3)
            state["exp_avg_sq"].uniform_(1e-6, 2e-6)
    flush = None
    if case == "deferred":
        start = time.perf_counter()
        optimizers[0].flush()
        flush = time.perf_counter() - start
    if row_grad is not None:
        row_grad.remove()
    table.grad = None
    return times, unique, flush


def bench_row_search(table: torch.nn.Parameter, steps: list, args) -> dict:
    """Median seconds of three ways to find the non-zero rows of one step's dense gradient, alternated."""
    grad = torch.zeros_like(table)
    for ids, values in steps[0]:
        grad.index_add_(0, ids, values)
    ways = {
        "any": lambda: grad.any(dim=1).nonzero().squeeze(1),
        "amax_amin": lambda: ((grad.amax(dim=1) != 0) | (grad.amin(dim=1) != 0)).nonzero().squeeze(1),
        "blocked_abs_mv": lambda: touched_rows(grad),  # what LazyAdam does
    }
    expected = ways["any"]()
    times = {name: [] for name in ways}
    for _ in range(args.rounds * 2):
        for name, way in ways.items():
            start = time.perf_counter()
            rows = way()
            times[name].append(time.perf_counter() - start)
            assert torch.equal(rows, expected), name
    return {f"find_rows_{name}_ms": round(1000 * statistics.median(values), 3) for name, values in times.items()}


def bench(num_items: int, args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    table = torch.nn.Parameter(torch.randn(num_items + 1, args.dim) * 0.02)
    with torch.no_grad():
        table[0] = 0.0
    dense = dense_part(args)
    dense_grads = [torch.randn_like(p) for p in dense]
    steps = make_steps(num_items, args, rng)
    cases = [case for case in CASES if case in args.cases]
    measured = {case: [] for case in cases}
    unique_rows, flushes = [], []
    load_before = os.getloadavg()
    for round_index in range(args.rounds):
        order = cases[round_index % len(cases):] + cases[: round_index % len(cases)]  # rotate: ABCD, BCDA, ...
        for case in order:
            with torch.no_grad():
                table.normal_(0.0, 0.02)  # the same start for every case (a deferred flush moves every row)
                table[0] = 0.0
            times, unique, flush = run_case(case, table, dense, dense_grads, steps, args.steps)
            measured[case] += times
            unique_rows += unique
            flushes += [flush] if flush is not None else []
    load_after = os.getloadavg()
    results = []
    reference = statistics.median(g + s for g, s in measured["dense"]) if "dense" in measured else None
    reference_step = statistics.median(s for _, s in measured["dense"]) if "dense" in measured else None
    for case in cases:
        totals = [g + s for g, s in measured[case]]
        step = statistics.median(s for _, s in measured[case])
        result = {
            "case": case, "items": num_items, "dim": args.dim, "dense_part_parameters": sum(p.numel() for p in dense),
            "lookups_per_step": args.inputs + args.inputs // 2 + args.negatives,
            "unique_rows_per_step": round(statistics.mean(unique_rows)), "timed_steps": len(totals),
            "median_total_ms": round(1000 * statistics.median(totals), 3),
            "median_grad_ms": round(1000 * statistics.median(g for g, _ in measured[case]), 3),
            "median_step_ms": round(1000 * step, 3),
            "threads": torch.get_num_threads(), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after], "torch": torch.__version__,
        }
        if reference:
            result["dense_over_case_total"] = round(reference / statistics.median(totals), 2)
            result["dense_over_case_step"] = round(reference_step / step, 2)
        if case == "deferred":
            result["median_flush_ms"] = round(1000 * statistics.median(flushes), 3)
        results.append(result)
        print("RESULT " + json.dumps(result), flush=True)
    search = {"case": "find_nonzero_rows", "items": num_items, "dim": args.dim, **bench_row_search(table, steps, args),
              "threads": torch.get_num_threads(), "load": [round(x, 2) for x in os.getloadavg()]}
    print("RESULT " + json.dumps(search), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000, 54_543], help="table sizes (items)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--inputs", type=int, default=2000, help="input lookups per step (popular ids, repeats)")
    parser.add_argument("--negatives", type=int, default=3000, help="uniform negatives per step (scored lookup)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every case once")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case and round")
    parser.add_argument("--distinct_steps", type=int, default=8, help="different lookup sets cycled through")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for num_items in args.items:
        bench(num_items, args)


if __name__ == "__main__":
    main()
