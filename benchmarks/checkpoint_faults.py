"""Kill ``sasrec-lightning fit`` with SIGKILL during checkpoint saves; check that a run can always go on.

A tiny ``fit`` saves a checkpoint at every training step (``ModelCheckpoint`` with
``every_n_train_steps 1``, ``save_last true``) while ``$TMPDIR`` is on another file system than the
checkpoints (``/dev/shm``, a tmpfs, by default), the setting in which Lightning's own saving copied a
temporary file over ``last.ckpt``. The script watches for saves in progress (a temporary file beside
a checkpoint, or one in ``$TMPDIR``); at a random one of the first ``--saves`` a run makes (the step
checkpoint and ``last.ckpt`` alternate) it waits a random 0-``--window`` ms and kills the process. A kill
counts when a save was still in progress then (a temporary file was left behind); the others are
retried. After each counted kill:

* ``last.ckpt`` is read with ``torch.load(weights_only=True)`` (whatever the package version), and,
  when that fails, the other checkpoints of the folder ("the previous checkpoint loads");
* the next run is ``fit --ckpt_path last``: it resumed when Lightning restored the checkpoint and
  training reached its next save; a run that exits instead is a failure (its last error line is shown).

The last kill is checked by a run to completion (exit status 0). Prints a table and a summary line.

    python benchmarks/checkpoint_faults.py                       # the package in ./src, 20 kills
    python benchmarks/checkpoint_faults.py --src /tmp/old/src    # another version of the package (0.2 or 0.3)

Needs ``TMPDIR`` (``--tmpdir``) on another file system than ``--workdir`` for the check to mean anything.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

FIT = ["fit", "-c", "quickstart", "--trainer.max_epochs", "1000", "--data.source.synthetic_users", "2000",
       "--data.source.synthetic_items", "20000", "--data.max_len", "20", "--data.loader.batch_size", "32",
       "--data.cache.use", "false", "--data.print_statistics", "false",
       "--model.encoder.hidden_size", "32", "--model.encoder.num_blocks", "1",
       "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
       "--trainer.num_sanity_val_steps", "0", "--test_after_fit", "false", "--trainer.enable_checkpointing", "true",
       "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "1",
       "--trainer.callbacks.save_last", "true"]
#: The same run in the flat options of sasrec-lightning 0.2 and before (for ``--src`` of such a version).
FIT_0_2 = [{"--data.source.synthetic_users": "--data.synthetic_users",
            "--data.source.synthetic_items": "--data.synthetic_items", "--data.loader.batch_size": "--data.batch_size",
            "--data.cache.use": "--data.use_cache", "--model.encoder.hidden_size": "--model.init_args.hidden_size",
            "--model.encoder.num_blocks": "--model.init_args.num_blocks"}.get(word, word) for word in FIT]


def fit_arguments(src: Path) -> list[str]:
    """``FIT`` in the option spelling of the package in ``src``: 0.3's groups, or 0.2's flat options."""
    grouped = (src / "sasrec_lightning" / "cli" / "renamed.py").is_file()  # 0.3 names the 0.2 options it renamed
    return FIT if grouped else FIT_0_2


def loads(path: Path) -> bool:
    """Whether ``torch.load(weights_only=True)`` reads ``path`` (the judge, whatever the package version)."""
    try:
        return isinstance(torch.load(path, map_location="cpu", weights_only=True), dict)
    except Exception:
        return False


def saving(checkpoints: Path, tmpdir: Path) -> list[str]:
    """The temporary files of saves in progress: beside the checkpoints, or in ``$TMPDIR`` (Lightning's own)."""
    found = []
    for folder, is_temporary in ((checkpoints, lambda name: ".ckpt.tmp-" in name),
                                 (tmpdir, lambda name: name.startswith("tmp"))):
        try:
            found += [entry.name for entry in os.scandir(folder) if entry.is_file() and is_temporary(entry.name)]
        except FileNotFoundError:
            pass
    return found


def start(args: argparse.Namespace, root: Path, extra: list[str]) -> subprocess.Popen:
    """``sasrec-lightning fit`` in the run folder, its stderr to ``<workdir>/stderr.txt``."""
    env = {**os.environ, "PYTHONPATH": str(args.src), "TMPDIR": str(args.tmpdir), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "sasrec_lightning.cli", *fit_arguments(args.src), "--trainer.default_root_dir",
               str(root), *extra]
    with open(root.parent / "stderr.txt", "w") as stderr:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def last_error(root: Path) -> str:
    """The last error line the latest run printed."""
    lines = [line.strip() for line in (root.parent / "stderr.txt").read_text().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1][:160]


def run_until_killed(args, root: Path, rng: random.Random) -> dict:
    """One ``fit`` (``--ckpt_path last`` once a last.ckpt exists): killed during a save, or ended on its own.

    A run started with ``--ckpt_path last`` that reaches a save has resumed (Lightning restores the
    checkpoint before the first training step); one that ends before any save failed to.
    """
    checkpoints = root / "checkpoints"
    extra = ["--ckpt_path", "last"] if (checkpoints / "last.ckpt").exists() else []
    earlier = set(saving(checkpoints, args.tmpdir))  # left by killed runs: not this run's saves
    seen: set[str] = set()
    target = rng.randint(1, args.saves)  # kill during this run's n-th save seen (top-k and last.ckpt alternate)
    process = start(args, root, extra)
    deadline = time.monotonic() + args.timeout
    while process.poll() is None and time.monotonic() < deadline:
        in_progress = [name for name in saving(checkpoints, args.tmpdir) if name not in earlier]
        seen.update(in_progress)
        if in_progress and len(seen) >= target:
            delay = rng.uniform(0, args.window / 1000)
            time.sleep(delay)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            left = [name for name in saving(checkpoints, args.tmpdir) if name not in earlier]
            return {"hit": bool(left), "delay_ms": delay * 1000, "temporaries": left or in_progress,
                    "resumed": True if extra else None}
        time.sleep(0.0005)
    if process.poll() is None:
        process.kill()
        process.wait()
    return {"hit": False, "resumed": False if extra else None, "exit": process.returncode, "error": last_error(root)}


def inspect(root: Path) -> dict:
    checkpoints = root / "checkpoints"
    last = checkpoints / "last.ckpt"
    others = [path for path in checkpoints.glob("*.ckpt") if path.name != "last.ckpt"]
    return {"last_bytes": last.stat().st_size if last.exists() else None, "last_loads": last.exists() and loads(last),
            "previous_loads": any(loads(path) for path in others), "previous": [path.name for path in others]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills that hit a save")
    parser.add_argument("--attempts", type=int, default=120, help="give up after this many runs")
    parser.add_argument("--window", type=float, default=40.0, help="kill 0..window ms after a save is seen")
    parser.add_argument("--saves", type=int, default=6, help="kill during a run's n-th save, n random in 1..saves")
    parser.add_argument("--tmpdir", type=Path, default=Path("/dev/shm/sasrec-checkpoint-faults"),
                        help="TMPDIR of the runs (another file system than --workdir)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the run folder goes (default: a new "
                        "folder under the system temporary folder)")
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the package's source folder (PYTHONPATH)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a run to save")
    args = parser.parse_args()
    args.tmpdir.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="checkpoint-faults-", dir="/tmp"))
    root = workdir / "run"
    root.mkdir(parents=True, exist_ok=True)
    same = os.stat(args.tmpdir).st_dev == os.stat(workdir).st_dev
    print(f"package: {args.src}\nrun folder: {root}\nTMPDIR: {args.tmpdir} "
          f"({'the SAME file system: the check means little' if same else 'another file system'})")
    rng = random.Random(args.seed)
    first = start(args, root, ["--trainer.max_steps", "2"])  # a last.ckpt to resume from before the first kill
    if first.wait(timeout=args.timeout) != 0:
        raise SystemExit(f"the first run failed: {last_error(root)}")
    rows = []
    attempts = 0
    print(f"{'kill':>4} | {'ms after save seen':>18} | {'writing':<44} | {'last.ckpt bytes':>15} | "
          f"{'last loads':>10} | {'previous loads':>14} | next --ckpt_path last")
    while len(rows) < args.kills and attempts < args.attempts:
        attempts += 1
        outcome = run_until_killed(args, root, rng)
        if rows and "next" not in rows[-1] and outcome["resumed"] is not None:  # the counted kill's resume check
            rows[-1]["next"] = "resumed" if outcome["resumed"] else \
                f"FAILED (exit {outcome.get('exit')}: {outcome.get('error', '')})"
            print_row(rows[-1])
            if not outcome["resumed"]:  # let the next trials go on from a fresh start
                (root / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
        if not outcome["hit"]:
            continue
        rows.append({"kill": len(rows) + 1, "delay_ms": outcome["delay_ms"],
                     "writing": ", ".join(outcome["temporaries"])[:44], **inspect(root)})
        if rows[-1]["last_bytes"] is None:  # (after a failure removed it) killed before the first last.ckpt
            rows[-1]["next"] = "no last.ckpt yet: nothing to resume"
            print_row(rows[-1])
    if rows and "next" not in rows[-1]:  # the last kill: a resume run to completion
        checkpoint = root / "checkpoints" / "last.ckpt"
        step = torch.load(checkpoint, weights_only=True).get("global_step", 0) if loads(checkpoint) else 0
        process = start(args, root, ["--ckpt_path", "last", "--trainer.max_steps", str(step + 2)])
        process.wait(timeout=args.timeout)
        rows[-1]["next"] = "resumed (exit 0)" if process.returncode == 0 else \
            f"FAILED (exit {process.returncode}: {last_error(root)})"
        print_row(rows[-1])
    leftovers = sorted(path.name for path in (root / "checkpoints").glob(".*.tmp-*"))
    resumed = sum(row["next"].startswith("resumed") for row in rows)
    fresh = sum(row["last_bytes"] is None for row in rows)  # killed before any last.ckpt existed: nothing to lose
    previous = sum(row["next"].startswith("FAILED") and row["previous_loads"] for row in rows)
    lost = len(rows) - resumed - previous - fresh
    empty = sum(row["last_bytes"] == 0 for row in rows)
    unreadable = sum(row["last_bytes"] is not None and not row["last_loads"] for row in rows)
    print(f"summary: {len(rows)} kills during checkpoint saves ({attempts} runs): --ckpt_path last resumed "
          f"{resumed} of {len(rows)}; it failed {previous} times, and then the previous checkpoint loaded (an older "
          f"state); nothing usable {lost}; killed before the first last.ckpt {fresh}; last.ckpt left at 0 bytes "
          f"{empty}, unreadable {unreadable}; temporaries left in the checkpoint folder at the end: {len(leftovers)}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(args.tmpdir, ignore_errors=True)


def print_row(row: dict) -> None:
    print(f"{row['kill']:>4} | {row['delay_ms']:>18.1f} | {row['writing']:<44} | {row['last_bytes']!s:>15} | "
          f"{'yes' if row['last_loads'] else 'NO':>10} | {'yes' if row['previous_loads'] else 'no':>14} | "
          f"{row['next']}", flush=True)


if __name__ == "__main__":
    main()
