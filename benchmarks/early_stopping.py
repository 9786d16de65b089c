"""Where early stopping would end a run, read from a run's recorded validation curve.

Train once without early stopping (a patience larger than ``max_epochs``), with the CSV logger, then
replay Lightning's ``EarlyStopping`` rule (mode ``max``, ``min_delta`` 0: a validation counts as an
improvement only when it beats the best so far) for several patiences on the recorded curve:

    sed -e 's/patience: 20/patience: 1000/' -e 's#save_dir: lightning_logs#save_dir: curves#' \
        configs/beauty.yaml > beauty-nostop.yaml                      # the config, without stopping early
    sasrec-lightning fit -c beauty-nostop.yaml                         # 200 epochs, every validation logged
    python benchmarks/early_stopping.py curves/beauty/version_0/metrics.csv --plot curves.png

Prints, per curve, the longest runs of validations without a new best (the plateaus a patience must
outlast) and a table: the epoch each patience stops after, the best epoch it keeps, and that
validation NDCG@10 as a share of the whole run's best.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv

PATIENCES = (5, 10, 15, 20, 30)


def read_curve(path: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``metric`` from a CSVLogger ``metrics.csv``, one value per validation."""
    table = pcsv.read_csv(path)
    epochs = table.column("epoch").to_numpy(zero_copy_only=False)
    values = table.column(metric).to_numpy(zero_copy_only=False)
    rows = ~np.isnan(values.astype(float))
    return epochs[rows].astype(int), values[rows].astype(float)


def stop_epoch(epochs: np.ndarray, values: np.ndarray, patience: int) -> tuple[int, int, float]:
    """(epoch the run stops after, best epoch kept, best value kept) under Lightning's rule."""
    best, best_epoch, wait = -np.inf, int(epochs[0]), 0
    for epoch, value in zip(epochs, values, strict=True):
        if value > best:
            best, best_epoch, wait = value, int(epoch), 0
        else:
            wait += 1
            if wait >= patience:
                return int(epoch), best_epoch, float(best)
    return int(epochs[-1]), best_epoch, float(best)


def plateaus(epochs: np.ndarray, values: np.ndarray, top: int = 5) -> list[tuple[int, int]]:
    """The ``top`` longest runs of validations without a new best: (length, epoch of the best that ended it)."""
    best_so_far = np.maximum.accumulate(values)
    new_best = np.flatnonzero(np.r_[True, values[1:] > best_so_far[:-1]])
    lengths = np.diff(new_best) - 1
    found = sorted(zip(lengths.tolist(), epochs[new_best[1:]].tolist(), strict=True), reverse=True)
    return [(length, epoch) for length, epoch in found[:top] if length > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="+", type=Path, help="CSVLogger metrics.csv files")
    parser.add_argument("--metric", default="val/ndcg@10")
    parser.add_argument("--plot", type=Path, help="also draw the curves into this PNG (needs matplotlib)")
    args = parser.parse_args()
    curves = {path: read_curve(path, args.metric) for path in args.curves}
    for path, (epochs, values) in curves.items():
        top = values.max()
        print(f"{path}: {len(epochs)} validations, best {args.metric} {top:.4f} after epoch {epochs[values.argmax()]}")
        print("  longest plateaus (validations without a new best, ended at epoch):", plateaus(epochs, values))
        print("| patience | stops after epoch | best epoch kept | best kept | of the run's best |")
        print("|---:|---:|---:|---:|---:|")
        for patience in PATIENCES:
            stop, best_epoch, best = stop_epoch(epochs, values, patience)
            print(f"| {patience} | {stop} | {best_epoch} | {best:.4f} | {best / top:.3f} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2), squeeze=False)
        for axis, (path, (epochs, values)) in zip(axes[0], curves.items(), strict=True):
            axis.plot(epochs, values, linewidth=1)  # each curve on its own scale: the plateaus show
            axis.set_title(f"{path.parent.parent.name}/{path.parent.name}", fontsize=9)
            axis.set_xlabel("epoch")
            axis.set_ylabel(args.metric)
            axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
