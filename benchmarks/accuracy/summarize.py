"""Summarize a ``run_beauty.sh`` output folder: validation curve, best epoch, test metrics.

python benchmarks/accuracy/summarize.py /work/notes/runs/beauty-ce
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path


def validation_curve(run: Path) -> list[dict[str, float]]:
    """Per-epoch validation metrics from the CSVLogger file of the (last) fit."""
    files = sorted(run.glob("*/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    rows = []
    for path in files:
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("val/ndcg@10"):
                    rows.append({k: float(v) for k, v in row.items() if v})
    return rows


def test_metrics(log: Path) -> dict[str, float]:
    """``test/...`` values from the table Lightning prints after ``test``."""
    if not log.exists():
        return {}
    pattern = re.compile(r"^\s*(test/[a-z]+(?:@\d+)?)\s+[│|]?\s*([0-9.eE-]+)", re.MULTILINE)
    return {m.group(1): float(m.group(2)) for m in pattern.finditer(log.read_text())}


def main(run: str) -> None:
    run_dir = Path(run)
    curve = validation_curve(run_dir)
    for row in curve:
        print(f"epoch {int(row['epoch']):3d}  val/hr@10 {row['val/hr@10']:.4f}  val/ndcg@10 {row['val/ndcg@10']:.4f}")
    if curve:
        best = max(curve, key=lambda r: r["val/ndcg@10"])
        print(f"best epoch {int(best['epoch'])} (of {int(curve[-1]['epoch']) + 1} validated): "
              f"val/ndcg@10 {best['val/ndcg@10']:.4f}")
    wall = re.findall(r"fit\+test wall time: (\d+) s", (run_dir / "fit.log").read_text()) \
        if (run_dir / "fit.log").exists() else []
    if wall:
        print(f"fit + full-ranking test wall time: {int(wall[-1]) / 60:.1f} min")
    for name, log in [("full", "fit.log"), ("sampled-uniform", "test-sampled-uniform.log"),
                      ("sampled-popularity", "test-sampled-popularity.log")]:
        metrics = test_metrics(run_dir / log)
        if metrics:
            keys = ["test/hr@1", "test/hr@5", "test/hr@10", "test/ndcg@10", "test/hr@20", "test/ndcg@20", "test/mrr"]
            print(f"test {name:18s} " + "  ".join(f"{k[5:]} {metrics[k]:.4f}" for k in keys if k in metrics))


if __name__ == "__main__":
    main(sys.argv[1])
