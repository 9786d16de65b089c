"""Full ranking and top-k over a large catalogue against the speed of their own matrix products.

For a catalogue of ``--items`` items of dimension ``--dim`` and user batches of ``--batch`` rows,
times, alternated case by case in every repeat (so a slow minute of this shared machine hits
every case alike), and reports the median of ``--repeats``:

* ``sgemm``: the products alone, ``(B, d) @ (d, C)`` into one reused ``(B, C)`` block over every
  chunk of the table (the shapes ``full_ranks`` and ``full_top_k`` use; ``C`` from ``--chunk``,
  by default ``auto`` as ``evaluation.chunk_size``), and ``sgemm4096``, ``sgemm16384``: the same products
  at other widths (``--sgemm_chunks``), so a chunk width that slows the products shows;
* ``ranks``: ``ranking.full_ranks`` (rank of a random target, ~``--seen`` history items per user
  excluded), what full-ranking evaluation runs per batch;
* ``topk``: ``recommend.predict_top_k``, what ``predict_step`` runs, for each ``--k``
  (seen items excluded), given the encoder's output (a stand-in encoder returns fixed hidden
  states, so only the scoring and top-k are timed);
* ``square``: a 2048 x 2048 sgemm, the fastest product this machine runs.

Each case is reported as GFLOP/s = 2 * B * d * I / seconds (the flops of the catalogue's product,
whatever the case does beyond it), in wall and in CPU seconds of this process, and as a fraction of
``sgemm`` and ``square`` in the same repeat, and of the fastest ``sgemm*`` (``vs_best_sgemm``).

    python benchmarks/ranking.py --threads 1
    python benchmarks/ranking.py --threads 2 --items 54543 --dim 50       # Amazon Beauty's shapes
    PYTHONPATH=/path/to/other/src python benchmarks/ranking.py ...      # another version of the code

Prints one ``RESULT {json}`` line per case. ``ranks`` and ``topk`` call whichever version of the
package is imported; a version whose ``predict_top_k`` has no ``chunk_size`` argument scores the
whole catalogue at once (a ``(B, I + 1)`` matrix).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import time


class FrozenEncoder:
    """The part of ``SASRec`` that ``predict_top_k`` uses, with fixed hidden states."""

    def __init__(self, hidden, weight) -> None:
        self.hidden, self.output_weight = hidden, weight

    def last_hidden(self, input_ids):
        return self.hidden

    def score_all(self, hidden):
        return hidden @ self.output_weight.T


def timed(function) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def cases(args, batch: int):
    """``{name: (function, flops)}`` for one batch size."""
    import torch

    from sasrec_lightning.model.ranking import full_ranks
    from sasrec_lightning.serving.recommend import predict_top_k

    generator = torch.Generator().manual_seed(args.seed)
    rows_total, dim = args.items + 1, args.dim
    weight = torch.randn(rows_total, dim, generator=generator) / dim**0.25  # (I + 1, d)
    hidden = torch.randn(batch, dim, generator=generator) / dim**0.25  # (B, d)
    targets = torch.randint(1, rows_total, (batch,), generator=generator)  # (B,)
    seen_rows = torch.arange(batch).repeat_interleave(args.seen)  # (S,)
    seen_items = torch.randint(1, rows_total, (batch * args.seen,), generator=generator)  # (S,)
    try:
        from sasrec_lightning.model.ranking import chunk_items
    except ImportError:  # a version before eval_chunk_size: auto
        def chunk_items(chunk, rows, items):
            return min(4096 if chunk == "auto" else int(chunk), items)
    chunk = chunk_items(args.chunk if args.chunk == "auto" else int(args.chunk), batch, rows_total)
    flops = 2 * batch * dim * args.items

    def products(width):
        """The catalogue's products alone, ``width`` items at a time into one reused block."""
        starts = list(range(0, rows_total - width, width)) + [rows_total - width]
        block = torch.empty(batch, width)

        def run():
            for start in starts:
                torch.mm(hidden, weight[start : start + width].T, out=block)
        return run

    # Evaluation computes the table's largest norm (the tie band's scale) once per pass: so here.
    norm = {}
    if "table_norm" in inspect.signature(full_ranks).parameters:
        from sasrec_lightning.model.ranking import max_vector_norm

        norm["table_norm"] = max_vector_norm(weight)

    def ranks():
        full_ranks(hidden, weight, targets, seen_rows, seen_items, chunk, True, **norm)

    encoder = FrozenEncoder(hidden, weight)
    predict_batch = {"input_ids": torch.ones(batch, 1, dtype=torch.int64), "users": torch.arange(batch),
                     "seen_rows": seen_rows, "seen_items": seen_items}
    chunked = "chunk_size" in inspect.signature(predict_top_k).parameters
    extra = {"chunk_size": chunk} if chunked else {}

    def top_k(k):
        return lambda: predict_top_k(encoder, predict_batch, k, True, **extra)

    square_a, square_b, square_out = torch.randn(2048, 2048), torch.randn(2048, 2048), torch.empty(2048, 2048)

    def square():
        for _ in range(4):
            torch.mm(square_a, square_b, out=square_out)

    out = {"sgemm": (products(chunk), flops), "ranks": (ranks, flops)}
    out.update({f"topk{k}": (top_k(k), flops) for k in args.k})
    for width in args.sgemm_chunks:  # the same products at other chunk widths: the best is the machine's rate
        if min(width, rows_total) != chunk:
            out[f"sgemm{width}"] = (products(min(width, rows_total)), flops)
    out["square"] = (square, 4 * 2 * 2048**3)
    return out, chunked, chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024], help="users scored at once")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100], help="top-k sizes")
    parser.add_argument("--chunk", default="auto",
                        help="items scored at once (evaluation.chunk_size): auto or a number")
    parser.add_argument("--sgemm_chunks", type=int, nargs="*", default=[4096, 16384],
                        help="also time the products alone at these chunk widths (best_sgemm: the fastest)")
    parser.add_argument("--seen", type=int, default=25, help="history items excluded per user")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these cases (e.g. sgemm ranks)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import sasrec_lightning

    for batch in args.batch:
        functions, chunked, chunk = cases(args, batch)
        if args.only:
            functions = {name: value for name, value in functions.items() if name in args.only}
        load_before = os.getloadavg()
        for function, _ in functions.values():
            function()  # warm-up: first-touch page faults, thread pool start
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
        for _ in range(args.repeats):
            for name, (function, _) in functions.items():
                runs[name].append(timed(function))
        load_after = os.getloadavg()
        rate = {name: (functions[name][1] / statistics.median(w for w, _ in times) / 1e9,
                       functions[name][1] / statistics.median(c for _, c in times) / 1e9)
                for name, times in runs.items()}
        for name, times in runs.items():
            result = {
                "case": name, "items": args.items, "dim": args.dim, "batch": batch, "chunk": chunk,
                "seen_per_user": args.seen, "threads": torch.get_num_threads(),
                "median_seconds": statistics.median(w for w, _ in times),
                "median_cpu_seconds": statistics.median(c for _, c in times),
                "gflops": rate[name][0], "gflops_per_cpu_s": rate[name][1],
                "seconds": [round(w, 4) for w, _ in times],
            }
            for reference in ("sgemm", "square"):
                if reference in rate and name != reference:
                    result[f"vs_{reference}"] = rate[name][0] / rate[reference][0]
                    result[f"vs_{reference}_cpu"] = rate[name][1] / rate[reference][1]
            best = max((rate[other][0], other) for other in rate if other.startswith("sgemm"))
            if not name.startswith(("sgemm", "square")):
                result["vs_best_sgemm"], result["best_sgemm"] = rate[name][0] / best[0], best[1]
            result.update(package=os.path.dirname(sasrec_lightning.__file__), chunked_top_k=chunked,
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          load_before=[round(x, 2) for x in load_before],
                          load_after=[round(x, 2) for x in load_after], torch=torch.__version__)
            print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
