"""Benchmark: what reading and encoding an item table costs, and what the feature cache saves.

Loads Amazon Beauty (``beauty.txt``: 54,542 items; without the file, a synthetic log of that size),
writes an item table for every item plus 5 % new items without interactions (cold-start items): a
``category`` (one of 200), ``tags`` (1-5 of 1,000, ``|``-separated), a ``price`` (10 % empty) and a
32-number ``embedding``, as CSV (every cell text: the vector as ``0.1 0.2 ...``) and as Parquet (a list
column). Then times, as medians of ``--repeats`` runs in this process, what ``SASRecDataModule.item_features``
adds to loading the sequences (``feature_table.load_item_features``):

- ``read + encode``: the cache off (``--data.cache.use false`` for the features);
- ``cache miss``: read, encode and write the entry;
- ``cache hit``: the entry read back (the table is not read).

    python benchmarks/item_table.py [--data ../shared/data/beauty.txt] [--repeats 3]

It prints one Markdown table (milliseconds), the one in docs/features.md ("Cache").
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
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.data.feature_table import load_item_features
from sasrec_lightning.data.options import CacheOptions, FeatureOptions

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "beauty.txt")
KINDS = dict(categorical=["category"], multi=["tags"], numeric=["price"], vector=["embedding"])


def interactions(path: str, folder: str) -> str:
    """Beauty's ``user item`` lines, or a synthetic log with Beauty's 54,542 items."""
    if os.path.isfile(path):
        return path
    rng = np.random.default_rng(0)
    users, items = np.sort(rng.integers(1, 40_227, 353_962)), rng.integers(1, 54_543, 353_962)
    synthetic = os.path.join(folder, "synthetic.txt")
    np.savetxt(synthetic, np.stack([users, items], axis=1), fmt="%d")
    return synthetic


def item_table(item_ids: np.ndarray, folder: str) -> tuple[str, str]:
    """The item table of ``item_ids`` plus 5 % cold-start items, as a CSV and a Parquet file."""
    rng = np.random.default_rng(1)
    cold = np.arange(1, len(item_ids) // 20 + 1) + int(item_ids.max())
    ids = np.concatenate([item_ids, cold])
    n = len(ids)
    lengths = rng.integers(1, 6, n)
    tags = np.split(np.char.add("t", rng.integers(0, 1000, lengths.sum()).astype(str)), np.cumsum(lengths)[:-1])
    price = np.round(rng.gamma(2.0, 10.0, n), 2)
    embedding = rng.normal(size=(n, 32)).round(4)
    parquet = pa.table({"item": ids, "category": np.char.add("c", rng.integers(0, 200, n).astype(str)),
                        "tags": [list(row) for row in tags],
                        "price": pa.array(price, mask=rng.random(n) < 0.1),
                        "embedding": list(embedding)})
    csv = parquet.set_column(2, "tags", pa.array(["|".join(row) for row in tags]))
    csv = csv.set_column(4, "embedding", pa.array([" ".join(map(str, row)) for row in embedding]))
    paths = os.path.join(folder, "items.csv"), os.path.join(folder, "items.parquet")
    pyarrow.csv.write_csv(csv, paths[0])
    pq.write_table(parquet, paths[1])
    return paths


def timed(build, repeats: int) -> float:
    """Median milliseconds of ``build()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        build()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    folder = tempfile.mkdtemp(prefix="item-table-bench-")
    try:
        log = interactions(args.data, folder)
        plain = SASRecDataModule(path=log, print_statistics=False, cache=CacheOptions(dir=os.path.join(folder, "c")))
        item_ids = plain.item_ids()  # (I + 1,) the interactions' items
        csv, parquet = item_table(item_ids[1:], folder)
        features = load_item_features(parquet, FeatureOptions(path=parquet, **KINDS), item_ids, None)
        rows = [f"items: {plain.num_items:,} with interactions + {features.info['cold_items']:,} cold-start items, "
                f"{features.info['rows']:,} rows; columns: "
                + ", ".join(f"{column.kind} {column.name} (size {column.size}, width {column.width})"
                            for column in features.columns), "",
                "| item table | read + encode | cache miss (+ write) | cache hit |", "|---|---:|---:|---:|"]
        for name, path in (("CSV", csv), ("Parquet", parquet)):
            options = FeatureOptions(path=path, **KINDS)
            cold = timed(lambda path=path, options=options: load_item_features(path, options, item_ids, None),
                         args.repeats)

            def miss(path=path, options=options) -> None:
                entries = tempfile.mkdtemp(dir=folder)
                load_item_features(path, options, item_ids, entries)
                shutil.rmtree(entries)

            missed = timed(miss, args.repeats)
            entries = tempfile.mkdtemp(dir=folder)
            load_item_features(path, options, item_ids, entries)  # the entry the hits read
            hit = timed(lambda path=path, options=options, entries=entries: load_item_features(
                path, options, item_ids, entries), args.repeats)
            rows.append(f"| {name} ({os.path.getsize(path) / 2**20:.1f} MiB) | {cold:,.0f} | {missed:,.0f} | "
                        f"{hit:,.0f} |")
        print("\n".join(rows))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
