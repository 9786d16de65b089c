"""What item side features cost a training step (issue 26), at the paper's Amazon Beauty settings.

    python benchmarks/features.py train --features off    # the paper's model (ids only)
    python benchmarks/features.py train --features on     # + a categorical and a multi-valued column
    python benchmarks/features.py ab --a-src SRC_A --b-src SRC_B --a-features off --b-features off --pairs 7

``train`` times ``--steps`` BCE training steps after ``--warmup`` untimed ones through the real Lightning
``Trainer`` (batch 128, ``max_len`` 50, d = 50, 2 blocks, dropout 0.5; ``benchmarks/speed.py``'s setup) and
prints one ``RESULT {json}`` line: milliseconds per step, in wall time and in CPU time.

``--features on`` gives every Beauty item two generated columns, as the issue asks: ``category``, a hash
bucket of the item id among 200 values, and ``tags``, 1 to 4 values out of 1,000 (also hashed from the
id). The item table is built in this script (``ItemFeatures`` by hand), so it measures the model's
cost alone, not reading a table.

``ab`` runs ``train`` in its own process A B A B ... with ``PYTHONPATH`` set to each side's ``src``
folder (e.g. a worktree of the commit before the feature work for A), and prints the per-pair
ratios A/B of the step time and their median: above 1 means A is slower. Alternating in the same
minutes keeps a drift of the (shared) machine out of the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEAUTY = REPO.parent / "shared" / "data" / "beauty.txt"


def generated_features(num_items: int):
    """``category`` (one of 200) and ``tags`` (1 to 4 of 1,000) for items ``1..num_items``, hashed from the id."""
    import numpy as np

    from sasrec_lightning.data.features import FeatureColumn, ItemFeatures

    ids = np.arange(num_items + 1, dtype=np.int64)
    hashed = (ids * 2654435761) % (2**32)  # Knuth's multiplicative hash: buckets unrelated to the id order
    category = hashed % 200 + 1
    count = hashed // 200 % 4 + 1  # 1..4 tags
    tags = np.stack([(hashed // (7 ** (j + 1)) + 31 * j) % 1000 + 1 for j in range(4)], axis=1)
    tags[np.arange(4)[None, :] >= count[:, None]] = 0
    category[0], tags[0] = 0, 0
    columns = (FeatureColumn("category", "categorical", 201), FeatureColumn("tags", "multi", 1001, 4))
    return ItemFeatures(columns, {"category": category, "tags": tags}, has_row=ids > 0)


def train(args) -> dict:
    import lightning as L
    import torch

    from sasrec_lightning import SASRecDataModule, SASRecModule

    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.data).exists():
        sys.exit(f"{args.data} not found; pass --data path/to/beauty.txt")
    class WithItemTable(SASRecDataModule):
        item_features = None  # set below: what the data module's reader gives; the model takes it at setup

    L.seed_everything(args.seed, verbose=False)
    data = (SASRecDataModule if args.features == "off" else WithItemTable)(
        path=str(args.data), max_len=50, seed=args.seed, print_statistics=False, loader=dict(batch_size=128))
    features = None
    if args.features == "on":
        features = data.item_features = generated_features(data.num_items)
    extra = {} if features is None else {"item_features": features.spec()}
    model = SASRecModule(num_items=data.num_items, max_len=50, loss="bce",
                         encoder=dict(hidden_size=50, num_blocks=2, num_heads=1, dropout=0.5), **extra)
    times: dict[str, float] = {}

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup and "start" not in times:
                times["start"], times["cpu_start"] = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times["end"], times["cpu_end"] = time.perf_counter(), time.process_time()

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, max_steps=args.warmup + args.steps, max_epochs=-1,
                        callbacks=[Timer()], log_every_n_steps=50)
    trainer.fit(model, datamodule=data)
    return {"features": args.features, "steps": args.steps,
            "ms_per_step": 1000 * (times["end"] - times["start"]) / args.steps,
            "cpu_ms_per_step": 1000 * (times["cpu_end"] - times["cpu_start"]) / args.steps,
            "threads": torch.get_num_threads(), "load": [round(x, 2) for x in os.getloadavg()]}


def one_run(src: str, features: str, args) -> dict:
    command = [sys.executable, __file__, "train", "--features", features, "--data", str(args.data),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])


def ab(args) -> dict:
    one_run(args.a_src, args.a_features, args), one_run(args.b_src, args.b_features, args)  # warm-up, caches
    pairs = []
    for _ in range(args.pairs):
        a, b = one_run(args.a_src, args.a_features, args), one_run(args.b_src, args.b_features, args)
        pairs.append((a, b))
    ratios = {key: [a[key] / b[key] for a, b in pairs] for key in ("ms_per_step", "cpu_ms_per_step")}
    return {"a": f"{args.a_src} features {args.a_features}", "b": f"{args.b_src} features {args.b_features}",
            "pairs": args.pairs,
            **{f"{key}_ratio_median": statistics.median(values) for key, values in ratios.items()},
            **{f"{key}_ratio_range": [min(values), max(values)] for key, values in ratios.items()},
            "a_ms_per_step_median": statistics.median(a["ms_per_step"] for a, _ in pairs),
            "b_ms_per_step_median": statistics.median(b["ms_per_step"] for _, b in pairs),
            "load": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("train", "ab"))
    parser.add_argument("--features", choices=("off", "on"), default="off")
    parser.add_argument("--data", default=str(BEAUTY), help="Amazon Beauty in SASRec 'user item' format")
    parser.add_argument("--steps", type=int, default=300, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed training steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--a-src", default=str(REPO / "src"))
    parser.add_argument("--b-src", default=str(REPO / "src"))
    parser.add_argument("--a-features", choices=("off", "on"), default="on")
    parser.add_argument("--b-features", choices=("off", "on"), default="off")
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    result = train(args) if args.mode == "train" else ab(args)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
