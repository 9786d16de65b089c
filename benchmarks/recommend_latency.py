"""How fast ``SASRecModule.recommend`` answers one request: latency p50 / p99 / mean per call.

A service calls ``recommend`` one request at a time. For each catalogue size (``--items``) and request
size (``--batch`` sequences per call) this builds a model once (``--hidden`` 50, ``--blocks`` 2,
``--max_len`` 50, random weights: latency does not depend on what was learned), gives it integer
original item ids and item counts (``set_item_vocabulary``) and puts it in eval mode: the item table
is prepared once, as in a service, never per call. It then times ``--calls`` calls (after ``--warmup``
untimed ones), each on a fresh request of ``--batch`` random histories of ``--length`` original ids,
``k`` = ``--k``, seen items excluded.

    python benchmarks/recommend_latency.py --threads 1
    python benchmarks/recommend_latency.py --items 1000 --batch 1 --calls 3 --warmup 1   # a smoke run
    python benchmarks/recommend_latency.py --threads 1 --compare /tmp/old-serve/src --rounds 3

``--compare OTHER_SRC`` times another version of the package against the imported one, alternated:
every round runs each case once per version, each in its own process (``PYTHONPATH`` = that
``src`` folder), in the order before/after on even rounds and after/before on odd ones, so a slow
minute of a shared machine hits both alike; the calls of all rounds are pooled.

Prints one table: items, batch, p50 / p99 / mean milliseconds per call (with ``--compare``, before and
after each, and the ratios before / after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build_module(items: int, hidden: int, blocks: int, max_len: int, seed: int):
    """A random-weight model of ``items`` items, original ids ``10 * internal + 7`` and item counts, in eval mode."""
    import torch

    from sasrec_lightning import SASRecModule
    from sasrec_lightning.model.options import EncoderOptions

    torch.manual_seed(seed)
    module = SASRecModule(num_items=items, max_len=max_len,
                          encoder=EncoderOptions(hidden_size=hidden, num_blocks=blocks))
    counts = np.random.default_rng(seed).zipf(1.5, items + 1).clip(max=10**6)  # (I + 1,) long-tailed
    module.set_item_vocabulary(10 * np.arange(items + 1) + 7, counts)
    return module.eval()


def measure(args: argparse.Namespace, items: int, batch: int) -> list[float]:
    """Seconds of each timed ``recommend`` call on one case."""
    import torch

    module = build_module(items, args.hidden, args.blocks, args.max_len, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    requests = [(10 * rng.integers(1, items + 1, (batch, args.length)) + 7).tolist()
                for _ in range(args.warmup + args.calls)]  # original ids, made before any call
    seconds = []
    with torch.no_grad():
        for index, request in enumerate(requests):
            start = time.perf_counter()
            module.recommend(request, k=args.k)
            if index >= args.warmup:
                seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p99 and mean in milliseconds."""
    ms = 1000 * np.asarray(seconds)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean())


def in_process(args: argparse.Namespace) -> None:
    print(f"recommend latency, torch threads {args.threads}, {args.calls} calls per case "
          f"(hidden {args.hidden}, {args.blocks} blocks, max_len {args.max_len}, history {args.length}, k {args.k})")
    print(f"{'items':>9} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for items in args.items:
        for batch in args.batch:
            p50, p99, mean = summary(measure(args, items, batch))
            print(f"{items:>9} {batch:>5} {p50:>9.2f} {p99:>9.2f} {mean:>9.2f}", flush=True)


def worker_command(args: argparse.Namespace, items: int, batch: int) -> list[str]:
    return [sys.executable, __file__, "--worker", "--items", str(items), "--batch", str(batch),
            "--calls", str(args.calls), "--warmup", str(args.warmup), "--threads", str(args.threads),
            "--hidden", str(args.hidden), "--blocks", str(args.blocks), "--max_len", str(args.max_len),
            "--length", str(args.length), "--k", str(args.k), "--seed", str(args.seed)]


def run_worker(args: argparse.Namespace, items: int, batch: int, src: str) -> list[float]:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(worker_command(args, items, batch), env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"the worker on {src} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    import sasrec_lightning

    after_src = str(Path(sasrec_lightning.__file__).resolve().parents[1])
    before_src = str(Path(args.compare).resolve())
    versions = {"before": before_src, "after": after_src}
    cases = [(items, batch) for items in args.items for batch in args.batch]
    pooled = {(name, case): [] for name in versions for case in cases}
    for round_ in range(args.rounds):
        for case in cases:
            for name in (("before", "after") if round_ % 2 == 0 else ("after", "before")):
                pooled[name, case] += run_worker(args, *case, versions[name])
    print(f"recommend latency, torch threads {args.threads}, {args.rounds} rounds x {args.calls} calls per case and "
          f"version, alternated (hidden {args.hidden}, {args.blocks} blocks, max_len {args.max_len}, history "
          f"{args.length}, k {args.k})")
    print(f"before: {before_src}\nafter:  {after_src}")
    print(f"{'items':>9} {'batch':>5} {'p50 before':>11} {'p50 after':>10} {'ratio':>6} {'p99 before':>11} "
          f"{'p99 after':>10} {'ratio':>6} {'mean before':>12} {'mean after':>11}")
    for case in cases:
        (b50, b99, bmean), (a50, a99, amean) = summary(pooled["before", case]), summary(pooled["after", case])
        print(f"{case[0]:>9} {case[1]:>5} {b50:>11.2f} {a50:>10.2f} {b50 / a50:>6.2f} {b99:>11.2f} {a99:>10.2f} "
              f"{b99 / a99:>6.2f} {bmean:>12.2f} {amean:>11.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10**4, 10**5, 10**6], help="catalogue sizes")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="sequences per request")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 or 2 on this machine)")
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--max_len", type=int, default=50)
    parser.add_argument("--length", type=int, default=50, help="items per history in a request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", default=None, metavar="OTHER_SRC",
                        help="the src folder of another version: time both, alternated")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: rounds of alternation")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.worker:  # one case, for --compare: the seconds as one JSON line
        print(json.dumps(measure(args, args.items[0], args.batch[0])))
    elif args.compare:
        compare(args)
    else:
        in_process(args)


if __name__ == "__main__":
    main()
