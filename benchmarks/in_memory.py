"""Benchmark: what reading interactions from memory costs, step by step, and what the cache saves.

Builds Amazon Beauty (``beauty.txt``: 353,962 interactions) as a pandas DataFrame with string ids and a
timestamp column (or, without the file, a synthetic log of the same size), then times, as medians of
``--repeats`` runs in this process (the data is in the page cache and the imports are done):

- each kind as an Arrow table (``memory.memory_table``: DataFrame, Arrow table, Dataset, dict of columns);
- the canonical columns (``columns.canonical_columns``: typed and checked, the files' step);
- the cache key's content digest (``memory.content_digest``: SHA-256 of the canonical columns);
- the preprocessing (``preprocessing.preprocess``: filters, chronological order, ids, CSR);
- ``SASRecDataModule(path=frame).sequences`` end to end: without the cache, a cache miss (build +
  write the entry) and a cache hit.

    python benchmarks/in_memory.py [--data ../shared/data/beauty.txt] [--repeats 5]
    python benchmarks/in_memory.py --interactions 5000000 --repeats 3     # a synthetic log that size

It prints one Markdown table (milliseconds), the one in docs/datasets.md ("Data from memory").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.data.columns import canonical_columns
from sasrec_lightning.data.memory import content_digest, memory_table
from sasrec_lightning.data.options import CacheOptions, SourceOptions
from sasrec_lightning.data.preprocessing import preprocess

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "beauty.txt")


def beauty_frame(path: str, interactions: int | None) -> tuple[pd.DataFrame, str]:
    """(user, item, ts) with string ids, in file order (ts = the line number); synthetic without the file.

    ``interactions``: a synthetic log of that size with Beauty's users and items per interaction instead.
    """
    if interactions is None and os.path.isfile(path):
        pairs, name = np.loadtxt(path, dtype=np.int64), os.path.basename(path)
    else:
        interactions = interactions or 353_962
        users, items = max(interactions * 40_226 // 353_962, 1), max(interactions * 54_542 // 353_962, 1)
        rng = np.random.default_rng(0)
        pairs = np.stack([np.sort(rng.integers(0, users, interactions)), rng.integers(0, items, interactions)], axis=1)
        name = "synthetic"
    frame = pd.DataFrame({"user": np.char.add("u", pairs[:, 0].astype(str)),
                          "item": np.char.add("i", pairs[:, 1].astype(str)), "ts": np.arange(len(pairs))})
    return frame, name


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="a SASRec 'user item' file (Beauty)")
    parser.add_argument("--interactions", type=int, default=None,
                        help="a synthetic log of this many interactions (Beauty's users and items per interaction)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    frame, name = beauty_frame(args.data, args.interactions)
    kinds = {"pandas.DataFrame": frame, "pyarrow.Table": pa.Table.from_pandas(frame, preserve_index=False),
             "datasets.Dataset": datasets.Dataset.from_pandas(frame, preserve_index=False),
             "dict of numpy columns": {column: frame[column].to_numpy() for column in frame.columns}}
    source = SourceOptions(timestamp_column="ts")
    rows = [f"| {name}: {len(frame):,} interactions | ms |", "|---|---:|"]
    for kind, data in kinds.items():
        rows.append(f"| {kind} -> Arrow table | {median_ms(lambda data=data: memory_table(data), args.repeats):.1f} |")
    table = memory_table(frame)
    canonical = canonical_columns(table, "frame", "memory", "user", "item", "ts", None)
    steps = {
        "canonical columns (typed, checked)":
            lambda: canonical_columns(table, "frame", "memory", "user", "item", "ts", None),
        f"content digest (SHA-256 of {canonical.nbytes / 1e6:.1f} MB)": lambda: content_digest(canonical),
        "preprocessing (the 5/5 filter, order, ids, CSR)": lambda: preprocess(canonical),
    }
    for step, function in steps.items():
        rows.append(f"| {step} | {median_ms(function, args.repeats):.1f} |")
    root = tempfile.mkdtemp(prefix="sasrec-in-memory-bench-")
    try:
        def load(cache: CacheOptions) -> None:
            SASRecDataModule(path=frame, source=source, cache=cache, print_statistics=False).sequences  # noqa: B018

        rows.append(f"| `SASRecDataModule(path=frame).sequences`, `cache.use` false | "
                    f"{median_ms(lambda: load(CacheOptions(use=False)), args.repeats):.1f} |")
        counter = iter(range(10**6))  # a new cache folder each time: every load is a miss

        def miss() -> None:
            load(CacheOptions(dir=os.path.join(root, str(next(counter)))))

        rows.append(f"| the same, cache miss (build and write the entry) | {median_ms(miss, args.repeats):.1f} |")
        load(CacheOptions(dir=os.path.join(root, "warm")))
        rows.append("| the same, cache hit | "
                    f"{median_ms(lambda: load(CacheOptions(dir=os.path.join(root, 'warm'))), args.repeats):.1f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
