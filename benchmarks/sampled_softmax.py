"""Large-catalogue benchmarks: the sampled-softmax loss against its own matrix products, and training throughput.

    # the loss alone (forward + backward, item-table gradient included) vs the three products it needs
    python benchmarks/sampled_softmax.py loss --negatives 3000 --positions 3000
    # whole training steps through Lightning's Trainer on synthetic users (40,000 x 25 actions)
    python benchmarks/sampled_softmax.py train --items 54542 --loss bce
    python benchmarks/sampled_softmax.py train --items 1000000 --loss sampled_softmax --option speed.item_updates=lazy
    # the same under DDP: 2 CPU processes (gloo), one thread each; sequences/s counts both processes
    OMP_NUM_THREADS=1 python benchmarks/sampled_softmax.py train --devices 2 --threads 1 --items 1000000

``loss`` alternates the cases (products, fused, plain) ``--repeat`` times in one process and prints
the medians; ``train`` runs one configuration per process (run it alternated from a shell loop to
compare two). Each prints one ``RESULT {json}`` line with the load average before and after: the
machine is shared, so compare ratios measured in the same minutes.

``train --option GROUP.NAME=VALUE`` (repeatable) sets any other ``SASRecModule`` option in its 0.3
dotted spelling, the CLI's ``--model.GROUP.NAME`` without ``--model.``: ``speed.item_updates=lazy``,
``speed.fused_losses=false``, ``encoder.dropout=0.5``, ``optimization.lr=0.002``, and the loss's own
options as ``loss.init_args.NAME`` (or ``loss.NAME``), e.g. ``loss.init_args.sharing=sequence``, or
with ``--loss gbce`` ``loss.init_args.shared_negatives=3000``. Values are read as int, float,
true/false or text. ``--negatives`` is ``loss.init_args.negatives`` of ``--loss sampled_softmax``. A 0.2
flat name (``item_updates=lazy``) is refused with its new spelling.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def bench_loss(args) -> dict:
    import torch

    from sasrec_lightning import SASRec
    from sasrec_lightning.fast.row_grad import use_row_gradients
    from sasrec_lightning.fast.speed import use_fused_losses
    from sasrec_lightning.model.losses import GBCELoss, SampledSoftmaxLoss
    from sasrec_lightning.model.options import EncoderOptions

    torch.manual_seed(args.seed)
    model = SASRec(args.items, 50, EncoderOptions(hidden_size=args.hidden, num_blocks=0))
    use_row_gradients(model)
    model.items.embedding.keep_row_gradients(True)  # as in CPU training (speed.row_gradients: auto)
    n, m, d = args.positions, args.negatives, args.hidden
    sequences = max(1, n // args.positions_per_sequence)
    rows = torch.arange(sequences).repeat_interleave(args.positions_per_sequence)[:n]
    n = rows.numel()
    hidden = torch.randn(n, d) * 0.3
    targets = torch.randint(1, args.items + 1, (n,))
    sharing = "sequence" if args.per_sequence else "batch"
    if args.loss == "gbce":
        fused = GBCELoss(0.75, shared_negatives=m, sharing=sharing)
        plain = GBCELoss(0.75, shared_negatives=m, sharing=sharing)
    else:
        fused = SampledSoftmaxLoss(negatives=m, sampling="uniform", sharing=sharing)
        plain = SampledSoftmaxLoss(negatives=m, sampling="uniform", sharing=sharing)
    use_fused_losses(fused)  # what speed.fused_losses: true (the default) does at fit start; plain stays written out
    empty = torch.empty(n, 0, dtype=torch.long)
    # The three products of the loss, into reused outputs: logits, d hidden, d negatives.
    if args.per_sequence:
        width = args.positions_per_sequence
        h3, w3 = torch.randn(sequences, width, d), torch.randn(sequences, m, d)
        logits = torch.empty(sequences, width, m)
        out_h, out_w = torch.empty(sequences, width, d), torch.empty(sequences, m, d)

        def products():
            torch.bmm(h3, w3.transpose(1, 2), out=logits)
            torch.bmm(logits, w3, out=out_h)
            torch.bmm(logits.transpose(1, 2), h3, out=out_w)
        flops = 3 * 2 * sequences * width * m * d
    else:
        w = torch.randn(m, d)
        logits, out_h, out_w = torch.empty(n, m), torch.empty(n, d), torch.empty(m, d)

        def products():
            torch.mm(hidden, w.T, out=logits)
            torch.mm(logits, w, out=out_h)
            torch.mm(logits.T, hidden, out=out_w)
        flops = 3 * 2 * n * m * d

    def step(loss_fn):
        def run():
            h = hidden.clone().requires_grad_(True)
            model.zero_grad(set_to_none=True)  # as Lightning does; the row-gradient buffer is kept
            generator = torch.Generator().manual_seed(1)
            loss_fn(model.scoring_items, h, targets, empty, generator, rows).backward()
        return run

    cases = {"products": products, "fused": step(fused), "plain": step(plain)}
    for run in cases.values():  # warm-up: allocations, workspace, thread pools
        run()
        run()
    times = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"loss": args.loss, "positions": n, "negatives": m, "hidden": d, "items": args.items, "sharing": sharing,
            "ms": {name: round(value * 1e3, 2) for name, value in median.items()},
            "products_gflops": flops / median["products"] / 1e9,
            "fused_over_products": median["fused"] / median["products"],
            "plain_over_products": median["plain"] / median["products"],
            "plain_over_fused": median["plain"] / median["fused"]}


def synthetic_data(args):
    import numpy as np
    import pyarrow as pa

    from sasrec_lightning import SASRecDataModule
    from sasrec_lightning.data.preprocessing import build_sequences

    rng = np.random.default_rng(args.seed)
    users = np.repeat(np.arange(args.users), args.actions)
    items = rng.integers(1, args.items + 1, size=len(users))
    covered = min(len(items), args.items)
    items[:covered] = rng.permutation(args.items)[:covered] + 1  # as many item ids used as the actions allow
    sequences = build_sequences(pa.table({"user": users, "item": items}))

    class Synthetic(SASRecDataModule):
        @property
        def sequences(self):
            return sequences

    return Synthetic(max_len=50, seed=args.seed, print_statistics=False,
                     loader=dict(batch_size=args.batch_size, num_negatives=1))


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def set_option(options: dict, assignment: str) -> None:
    """Apply one ``--option GROUP.NAME=VALUE`` (0.3 dotted spelling) to the ``SASRecModule`` arguments."""
    from sasrec_lightning.cli.renamed import new_spelling

    name, equals, text = assignment.partition("=")
    path = name.split(".")
    if not equals or len(path) < 2 or path[0] not in ("encoder", "loss", "optimization", "evaluation", "speed"):
        renamed = new_spelling("model", name)
        hint = f" (0.2's {name} is {renamed.removeprefix('--model.')} since sasrec-lightning 0.3)" if renamed else ""
        sys.exit(f"--option {assignment!r}: expected GROUP.NAME=VALUE, GROUP one of encoder, loss, optimization, "
                 f"evaluation, speed{hint}")
    if path[0] == "loss" and path[1] != "init_args":
        path.insert(1, "init_args")  # loss.NAME is loss.init_args.NAME, as on the command line
    group = options
    for key in path[:-1]:
        group = group.setdefault(key, {})
    group[path[-1]] = parse_value(text)


def bench_train(args) -> dict:
    import lightning as L
    from speed import make_trainer, throughput_callback

    from sasrec_lightning import SASRecModule

    # The loss by shorthand; --negatives is sampled softmax's (0.2's sampled_negatives, read by no other loss).
    negatives = {"negatives": args.negatives} if args.loss == "sampled_softmax" else {}
    loss = {"class_path": args.loss, "init_args": negatives}
    options = dict(max_len=50, encoder=dict(hidden_size=args.hidden, num_blocks=2, num_heads=1, dropout=0.2),
                   loss=loss)
    for assignment in args.option:  # before the data is built: a misspelt option stops at once
        set_option(options, assignment)
    L.seed_everything(args.seed, verbose=False)
    data = synthetic_data(args)
    model = SASRecModule(num_items=data.sequences.num_items, **options)
    timer = throughput_callback(args.warmup)
    processes = dict(devices=args.devices, strategy="ddp") if args.devices > 1 else {}
    trainer = make_trainer(max_steps=args.warmup + args.steps, callbacks=[timer], max_epochs=-1,
                           log_every_n_steps=50, **processes)
    trainer.fit(model, datamodule=data)
    if trainer.global_rank != 0:
        sys.exit(0)  # rank 0 reports; each process trains the same number of batches of the same size
    seconds = timer.end - timer.start
    return {"items": data.sequences.num_items, "users": args.users, "actions": len(data.sequences.items),
            "options": options, "devices": args.devices,
            "ms_per_step": seconds / timer.steps * 1e3,
            "sequences_per_s": timer.sequences * args.devices / seconds, "steps": timer.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=("loss", "train"))
    parser.add_argument("--items", type=int, default=54_542)
    parser.add_argument("--negatives", type=int, default=3000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--positions", type=int, default=3072, help="loss: positions (the issue's batch: ~3,000)")
    parser.add_argument("--positions_per_sequence", type=int, default=24)
    parser.add_argument("--per_sequence", action="store_true", help="loss: negatives per sequence")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--actions", type=int, default=25)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--loss", default="sampled_softmax", help="train: any loss; loss: sampled_softmax or gbce")
    parser.add_argument("--option", action="append", default=[],
                        help="more SASRecModule options, GROUP.NAME=VALUE (e.g. speed.item_updates=lazy)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--devices", type=int, default=1, help="train: CPU processes under DDP (gloo)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = bench_loss(args) if args.benchmark == "loss" else bench_train(args)
    result.update(benchmark=args.benchmark, wall_seconds=round(time.perf_counter() - start, 1),
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  threads=torch.get_num_threads(), load_before=[round(x, 2) for x in load_before],
                  load_after=[round(x, 2) for x in os.getloadavg()])
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
