"""Warm and cold targets, with item features and without: the numbers behind docs/results.md "Item features".

Trains ``configs/quickstart-features.yaml`` (the synthetic data with attributes, the cold-item split,
full ranking) once with its item features and once with ids only (the same data, split, model and
epochs, the feature columns left out), for each seed, and prints test NDCG@10 / HR@10 over all, warm
and cold targets for both models and the two baselines (most popular, category popularity), as the
CLI's test summary prints them. Each run is a whole ``sasrec-lightning fit`` process.

    python benchmarks/cold_start.py --seeds 0 1 2
    python benchmarks/cold_start.py --seeds 0 --set model.init_args.features.id_dropout=0.5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart-features.yaml"
ID_ONLY = ["--data.features.categorical", "[]", "--data.features.multi", "[]", "--data.features.numeric", "[]",
           "--data.features.vector", "[]"]
ROW = re.compile(r"^\s*(model|most-popular|category-popularity)\s+((?:\s*(?:[0-9.]+|n/a)){3})\s*\|"
                 r"((?:\s*(?:[0-9.]+|n/a)){3})\s*$")


def run(seed: int, features: bool, extra: list[str], workdir: str) -> dict[str, list[float]]:
    """One ``fit`` (then ``test``) run: ranker -> [ndcg all, warm, cold, hr all, warm, cold]."""
    command = [sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", str(CONFIG), "--seed_everything", str(seed),
               "--data.init_args.seed", str(seed), "--trainer.enable_progress_bar", "false", *extra]
    if not features:
        command += ID_ONLY
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = {}
    for line in done.stdout.splitlines():
        match = ROW.match(line)
        if match:
            values = (match.group(2) + " " + match.group(3)).split()
            rows[match.group(1)] = [float("nan") if v == "n/a" else float(v) for v in values]
    if "model" not in rows:
        raise SystemExit(f"no test-by-target table in the output of {' '.join(command)}:\n{done.stdout[-3000:]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra CLI option for both runs, e.g. trainer.max_epochs=20 (repeatable)")
    args = parser.parse_args()
    extra = [part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    table: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for features in (True, False):
                rows = run(seed, features, extra, workdir)
                name = "features" if features else "id-only"
                table.setdefault(f"SASRec, {name}", []).append(rows["model"])
                for baseline in ("most-popular", "category-popularity"):
                    if baseline in rows and features:
                        table.setdefault(baseline, []).append(rows[baseline])
                print(f"seed {seed} {name}: " + ", ".join(f"{k} {v}" for k, v in rows.items()), flush=True)
    print(f"\nTest, full ranking, mean over seeds {args.seeds} (NDCG@10 all / warm / cold | HR@10 all / warm / cold):")
    for name, runs in table.items():
        means = [statistics.fmean(run[i] for run in runs) for i in range(6)]
        print(f"{name:<22}" + "".join(f"{m:8.4f}" for m in means[:3]) + " |" + "".join(f"{m:8.4f}" for m in means[3:]))


if __name__ == "__main__":
    main()
