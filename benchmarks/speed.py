"""Speed and memory benchmark: the way to reproduce the numbers in ``docs/performance.md``.

Every benchmark runs in its own process (so peak memory is that benchmark's alone) through the
real Lightning ``Trainer``, i.e. end to end: batch building, negative sampling, forward, loss,
backward, optimizer step, Lightning's loop.

    python benchmarks/speed.py train            # BCE training throughput (paper's Amazon settings)
    python benchmarks/speed.py eval-sampled     # all users, 100 sampled negatives
    python benchmarks/speed.py eval-full        # all users, full ranking over every item
    python benchmarks/speed.py ce-epoch         # one epoch of full-softmax CE training
    python benchmarks/speed.py large            # 1M synthetic items: sampled softmax + full ranking
    python benchmarks/speed.py all              # all of the above, one process each
    python benchmarks/speed.py accuracy         # val metrics after --epochs epochs (before/after checks)

Prints one ``RESULT {json}`` line per benchmark (for scripts), then the same figures as a two-column Markdown
table (for a person, :func:`result_table`): sequences/s, seconds, peak resident memory
(``ru_maxrss``) and the machine load (``os.getloadavg``) at start and end. The machine is shared:
always report the load next to the number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEAUTY = REPO.parent / "shared" / "data" / "beauty.txt"
BENCHMARKS = ("train", "eval-sampled", "eval-full", "ce-epoch", "large")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_trainer(**kwargs):
    import lightning as L

    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def throughput_callback(warmup: int):
    """A callback timing training from the start of batch ``warmup`` to the end of the last batch."""
    import lightning as L

    class Throughput(L.Callback):
        def __init__(self) -> None:
            self.start = None
            self.sequences = 0
            self.steps = 0
            self.end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and self.start is None:
                self.start = time.perf_counter()
                self.cpu_start = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.start is not None:
                self.sequences += batch["input_ids"].size(0)
                self.steps += 1
                self.end = time.perf_counter()
                self.cpu_end = time.process_time()

    return Throughput()


def beauty_data(args, **loader):
    """Amazon Beauty with the paper's batches; ``loader``: more ``data.loader`` options."""
    from sasrec_lightning import SASRecDataModule

    if not Path(args.data).exists():
        sys.exit(f"{args.data} not found; pass --data path/to/beauty.txt")
    return SASRecDataModule(path=str(args.data), max_len=50, seed=args.seed, print_statistics=False,
                            loader=dict(batch_size=128, num_workers=args.num_workers, **loader))


def model_for(data, loss="bce", **groups):
    """The paper's Amazon encoder (d = 50, 2 blocks, 1 head, dropout 0.5); ``groups``: other option groups."""
    from sasrec_lightning import SASRecModule

    encoder = dict(hidden_size=50, num_blocks=2, num_heads=1, dropout=0.5)
    return SASRecModule(num_items=data.num_items, max_len=50, encoder=encoder, loss=loss, **groups)


def bench_train(args) -> dict:
    import lightning as L

    L.seed_everything(args.seed, verbose=False)
    data = beauty_data(args)
    model = model_for(data, loss="bce")
    timer = throughput_callback(args.warmup)
    trainer = make_trainer(max_steps=args.warmup + args.steps, callbacks=[timer], max_epochs=-1,
                           log_every_n_steps=args.log_every_n_steps)
    if args.compile:
        import torch

        from sasrec_lightning.fast.speed import apply_speed_parts

        # The speed parts inside the compiled encoder, as 0.2 built them (fit's SpeedParts then finds them in).
        apply_speed_parts(model.model, model.loss, model.speed, torch.device("cpu"))
        model.model = torch.compile(model.model, dynamic=True)
    trainer.fit(model, datamodule=data)
    seconds = timer.end - timer.start
    cpu = timer.cpu_end - timer.cpu_start
    return {"sequences_per_s": timer.sequences / seconds, "steps": timer.steps, "seconds": seconds,
            "sequences": timer.sequences, "cpu_seconds": cpu, "sequences_per_cpu_s": timer.sequences / cpu}


def bench_eval(args, protocol: str) -> dict:
    import lightning as L

    L.seed_everything(args.seed, verbose=False)
    data = beauty_data(args, eval_batch_size=args.eval_batch_size)
    model = model_for(data, evaluation=dict(protocol=protocol, exclude_seen=True, top_k=(10,),
                                            chunk_size=args.eval_chunk_size))
    trainer = make_trainer(limit_val_batches=1.0)
    data.prepare_data()
    data.setup("validate")
    start, cpu_start = time.perf_counter(), time.process_time()
    data.eval_batches("val")  # fixed candidates of every user (sampled negatives drawn here)
    prepared = time.perf_counter()
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    end, cpu_end = time.perf_counter(), time.process_time()
    users = len(data.eval_batches("val"))
    return {"seconds": end - start, "cpu_seconds": cpu_end - cpu_start, "candidate_seconds": prepared - start,
            "loop_seconds": end - prepared, "users": users, "items": data.num_items,
            "val_ndcg@10_untrained": metrics["val/ndcg@10"]}


def bench_ce_epoch(args) -> dict:
    import lightning as L

    from sasrec_lightning.model.losses import FullCrossEntropyLoss

    L.seed_everything(args.seed, verbose=False)
    data = beauty_data(args)
    model = model_for(data, loss=FullCrossEntropyLoss(chunk_size=args.ce_chunk_size))
    timer = throughput_callback(0)
    trainer = make_trainer(max_epochs=1, callbacks=[timer], log_every_n_steps=args.log_every_n_steps)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    end = time.perf_counter()
    return {"epoch_seconds": timer.end - timer.start, "epoch_cpu_seconds": timer.cpu_end - timer.cpu_start,
            "fit_seconds": end - start, "steps": timer.steps,
            "sequences_per_s": timer.sequences / (timer.end - timer.start)}


def bench_accuracy(args) -> dict:
    """Validation metrics after ``--epochs`` epochs with the paper's Amazon settings (before/after checks)."""
    import lightning as L

    L.seed_everything(args.seed, verbose=False)
    data = beauty_data(args)
    model = model_for(data, loss="bce", evaluation=dict(protocol="sampled", top_k=(10,)))
    trainer = make_trainer(max_epochs=args.epochs, limit_val_batches=1.0, check_val_every_n_epoch=args.epochs,
                           log_every_n_steps=args.log_every_n_steps)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    return {"epochs": args.epochs, "fit_seconds": time.perf_counter() - start, **metrics}


def bench_large(args) -> dict:
    import lightning as L
    import numpy as np
    import pyarrow as pa

    from sasrec_lightning import SASRecDataModule, SASRecModule
    from sasrec_lightning.data.preprocessing import build_sequences
    from sasrec_lightning.model.losses import SampledSoftmaxLoss

    L.seed_everything(args.seed, verbose=False)
    num_items, num_users = args.large_items, args.large_users
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(3, 51, size=num_users)  # (U,)
    users = np.repeat(np.arange(num_users), lengths)
    items = rng.integers(1, num_items + 1, size=len(users))
    if len(items) < num_items:
        sys.exit(f"--large_users {num_users} give {len(items)} actions, fewer than {num_items} items; add users")
    items[:num_items] = rng.permutation(num_items) + 1  # every item id occurs at least once
    table = pa.table({"user": users, "item": items})
    sequences = build_sequences(table)

    class Synthetic(SASRecDataModule):
        @property
        def sequences(self):
            return sequences

    data = Synthetic(max_len=50, seed=args.seed, print_statistics=False,
                     loader=dict(batch_size=128, eval_batch_size=256))
    model = SASRecModule(num_items=sequences.num_items, max_len=50,
                         encoder=dict(hidden_size=64, num_blocks=2, num_heads=1, dropout=0.2),
                         loss=SampledSoftmaxLoss(negatives=args.sampled_negatives),
                         evaluation=dict(protocol="full", exclude_seen=True))
    timer = throughput_callback(args.warmup)
    trainer = make_trainer(max_steps=args.warmup + args.steps, callbacks=[timer], max_epochs=-1,
                           log_every_n_steps=args.log_every_n_steps)
    trainer.fit(model, datamodule=data)
    train_seconds = timer.end - timer.start
    evaluator = make_trainer(limit_val_batches=args.large_eval_batches or 1.0)
    start, cpu_start = time.perf_counter(), time.process_time()
    evaluator.validate(model, datamodule=data, verbose=False)
    eval_seconds, eval_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    eval_batches = evaluator.num_val_batches[0]
    return {"items": sequences.num_items, "users": num_users, "actions": len(sequences.items),
            "train_sequences_per_s": timer.sequences / train_seconds, "train_steps": timer.steps,
            "train_sequences_per_cpu_s": timer.sequences / (timer.cpu_end - timer.cpu_start),
            "full_eval_seconds": eval_seconds, "full_eval_cpu_seconds": eval_cpu,
            "eval_batches": eval_batches, "eval_users_scored": min(eval_batches * 256, len(data.eval_batches("val")))}


def run_one(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    if args.benchmark == "train":
        result = bench_train(args)
    elif args.benchmark == "eval-sampled":
        result = bench_eval(args, "sampled")
    elif args.benchmark == "eval-full":
        result = bench_eval(args, "full")
    elif args.benchmark == "ce-epoch":
        result = bench_ce_epoch(args)
    elif args.benchmark == "accuracy":
        result = bench_accuracy(args)
    else:
        result = bench_large(args)
    result.update(
        benchmark=args.benchmark, wall_seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb(),
        threads=torch.get_num_threads(), load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()], torch=torch.__version__, compile=args.compile,
    )
    print("RESULT " + json.dumps(result), flush=True)
    print(result_table(result), flush=True)


def _shown(value) -> str:
    """A measurement as a person reads it: thousands separated, 3-4 significant digits, lists joined."""
    if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        return str(value)
    if isinstance(value, list):
        return " / ".join(_shown(item) for item in value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def result_table(result: dict) -> str:
    """The ``RESULT`` line's figures as a two-column Markdown table, for a person (the JSON stays for scripts)."""
    rows = [f"| {key} | {_shown(value)} |" for key, value in result.items()]
    return "\n".join([f"| {result.get('benchmark', 'benchmark')} | value |", "|---|---|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=(*BENCHMARKS, "accuracy", "all"))
    parser.add_argument("--data", default=str(BEAUTY), help="Amazon Beauty in SASRec 'user item' format")
    parser.add_argument("--steps", type=int, default=300, help="timed training steps")
    parser.add_argument("--epochs", type=int, default=5, help="accuracy: epochs before the validation")
    parser.add_argument("--warmup", type=int, default=20, help="untimed training steps first")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--eval_batch_size", type=int, default=256)
    parser.add_argument("--ce_chunk_size", type=int, default=65536)
    parser.add_argument("--eval_chunk_size", type=int, default=4096, help="items scored at once (full ranking)")
    parser.add_argument("--log_every_n_steps", type=int, default=50)
    parser.add_argument("--large_items", type=int, default=1_000_000)
    parser.add_argument("--large_users", type=int, default=40_000, help="~26 actions each: >= 1M actions")
    parser.add_argument("--large_eval_batches", type=int, default=20, help="full-ranking batches of 256 users (0: all)")
    parser.add_argument("--sampled_negatives", type=int, default=3000)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (train only)")
    parser.add_argument("--repeat", type=int, default=1, help="with 'all': run each benchmark this many times")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.benchmark != "all":
        run_one(args)
        return
    passthrough = sys.argv[1:]
    passthrough.remove("all")
    if "--repeat" in passthrough:
        at = passthrough.index("--repeat")
        del passthrough[at : at + 2]
    for name in BENCHMARKS:
        for _ in range(args.repeat):
            subprocess.run([sys.executable, __file__, name, *passthrough], check=True)


if __name__ == "__main__":
    main()
