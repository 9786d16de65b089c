"""Benchmark: a synthetic raw interaction log -> training-ready sequences (time and peak memory).

Writes a raw log (default: 5M interactions, 300k users, 20k items, string user/item ids, Unix
timestamps, ratings, in file order that is *not* chronological), then runs the data module on it in
a fresh process twice: a cold run (``datasets`` reads the file, preprocessing with the paper's
recipe, the leave-one-out split and the training index are built, the cache entry is written) and a
warm run (the cache entry is read). Each run reports wall time and the process's peak RSS.

    python benchmarks/preprocess.py                      # CSV, 5M interactions
    python benchmarks/preprocess.py --format literal --interactions 1000000   # Steam-style lines
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


def write_log(path: str, interactions: int, users: int, items: int, format: str, seed: int = 0) -> None:
    """A raw log with Zipf-skewed item popularity and user activity, shuffled in time."""
    rng = np.random.default_rng(seed)
    user_weight = 1.0 / np.arange(1, users + 1) ** 0.5
    item_weight = 1.0 / np.arange(1, items + 1) ** 0.9
    user = rng.choice(users, size=interactions, p=user_weight / user_weight.sum())
    item = rng.choice(items, size=interactions, p=item_weight / item_weight.sum())
    timestamp = rng.integers(1_300_000_000, 1_600_000_000, size=interactions)
    rating = rng.integers(1, 6, size=interactions)
    user_ids = np.char.add("user_", rng.permutation(users).astype(str))[user]
    item_ids = np.char.add("item_", rng.permutation(items).astype(str))[item]
    if format == "csv":
        table = pa.table({"user_id": user_ids, "item_id": item_ids, "timestamp": timestamp, "rating": rating})
        pacsv.write_csv(table, path)
        return
    with open(path, "w") as handle:  # one Python-literal dict per line, like steam_reviews.json.gz
        for start in range(0, interactions, 100_000):
            end = min(start + 100_000, interactions)
            handle.writelines(
                f"{{'username': '{u}', 'hours': 1.5, 'product_id': '{i}', 'unixReviewTime': {t}, "
                f"'text': \"it's fun, 10/10\\nwould play again\", 'early_access': False}}\n"
                for u, i, t in zip(user_ids[start:end], item_ids[start:end], timestamp[start:end], strict=True)
            )


def run_once(path: str, format: str, cache_dir: str) -> dict:
    """One data-module load in this process (called in a fresh child process)."""
    from sasrec_lightning import SASRecDataModule
    from sasrec_lightning.data.batches import TrainBatches

    columns = {"user_column": "user_id", "item_column": "item_id", "timestamp_column": "timestamp"}
    if format == "literal":
        columns = {"user_column": "username", "item_column": "product_id", "timestamp_column": "unixReviewTime"}
    start = time.perf_counter()
    module = SASRecDataModule(path=path, print_statistics=False, source=columns, cache={"dir": cache_dir})
    data = module.sequences
    loaded = time.perf_counter()
    split = module.split_data  # leave-one-out: the training-ready sequences
    ready = time.perf_counter()
    TrainBatches(split, max_len=50)  # the training negative-sampling index (batches.py/sampling.py)
    end = time.perf_counter()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds_to_training_ready": round(ready - start, 2),
        "seconds_sequences": round(loaded - start, 2),
        "seconds_train_index": round(end - ready, 2),
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "peak_rss_children_gib": round(children_kib / 2**20, 3),
        "cache_hit": data.info["cache"]["hit"],
        "statistics": module.statistics,
        "raw": data.info["raw"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--format", choices=["csv", "literal"], default="csv")
    parser.add_argument("--workdir", default=None, help="where the log and cache go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "FORMAT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_once(*args.child)))
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="sasrec-preprocess-bench-")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "log.csv" if args.format == "csv" else "log.json")
    start = time.perf_counter()
    write_log(path, args.interactions, args.users, args.items, args.format)
    print(f"wrote {args.interactions:,} interactions ({os.path.getsize(path) / 2**20:.0f} MiB, {args.format}) "
          f"in {time.perf_counter() - start:.1f} s to {path}")
    cache = os.path.join(workdir, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}")
    for label in ("cold (read + preprocess + split + cache write)", "warm (cache hit)"):
        out = subprocess.run([sys.executable, __file__, "--child", path, args.format, cache], check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(f"{label}: {json.dumps(result)}")
    print(f"load average after: {os.getloadavg()}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
