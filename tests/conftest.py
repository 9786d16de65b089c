"""Shared tiny fixtures: hand-written and synthetic SASRec text files, tiny CLI flags.

Every test runs on CPU, offline, and writes its caches under ``tmp_path`` (never ``~/.cache``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two torch threads
# mostly wait for each other (a test-set forward pass measured 0.93 s with 2 threads, 0.11 s with 1
# under load). Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Hand-written SASRec text file ("user item" per line, chronological). Users 1-4 have >= 3 actions
# (evaluated); user 5 has 2 and user 6 has 1 (training only).
TINY_LINES = [
    (1, 1), (1, 2), (1, 3), (1, 4), (1, 5),
    (2, 2), (2, 3), (2, 6),
    (3, 5), (3, 1), (3, 2), (3, 3),
    (4, 6), (4, 4), (4, 2),
    (5, 1), (5, 6),
    (6, 3),
]

# Flags that make any config tiny and fast (hidden 8, 1 block, short sequences, CPU, no logger files).
TINY_MODEL = ["--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
              "--model.init_args.encoder.num_heads", "1"]
TINY_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false"]


def write_sasrec_txt(path: Path, lines: list[tuple[int, int]]) -> Path:
    """Write ``user item`` lines and return the path."""
    path.write_text("".join(f"{user} {item}\n" for user, item in lines))
    return path


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Processed-sequence cache under ``tmp_path`` so tests never share or leave state.

    ``sys.argv`` is reset so in-process ``cli_main(args)`` calls do not see pytest's own arguments.
    """
    monkeypatch.setenv("SASREC_LIGHTNING_CACHE", str(tmp_path / "sequence_cache"))
    monkeypatch.setattr(sys, "argv", ["sasrec-lightning"])


@pytest.fixture
def tiny_txt(tmp_path) -> Path:
    """The hand-written file above: 6 users, 6 items, 18 actions."""
    return write_sasrec_txt(tmp_path / "tiny.txt", TINY_LINES)


@pytest.fixture
def synthetic_txt(tmp_path) -> Path:
    """A small synthetic log written as a SASRec text file: 80 users, 40 items, 5-12 actions each."""
    from sasrec_lightning.data.synthetic import synthetic_interactions

    table = synthetic_interactions(num_users=80, num_items=40, num_clusters=4, min_length=5, max_length=12, seed=3)
    users = table.column("user").to_numpy()
    items = table.column("item").to_numpy()
    return write_sasrec_txt(tmp_path / "synthetic.txt", list(zip(users.tolist(), items.tolist(), strict=True)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``sasrec-lightning`` in a subprocess (``python -m sasrec_lightning.cli``); fail with its output."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "sasrec_lightning.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"sasrec-lightning {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def run_ddp_script(script: Path, args: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a test's multi-process script (``python script args...``) as a launcher would start it; fail with its output.

    ``LOCAL_RANK`` is removed from the environment: inherited from a launched pytest it would make the
    script a worker instead of the process that starts the others.
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"DDP run failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def assert_one_error_line(err: str, fragments=()) -> str:
    """The CLI's stderr ends with its one ``error:`` line, no traceback and no other ``error:`` line; return it."""
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    message = lines[-1]
    assert message.startswith("error: ") and not any(line.startswith("error: ") for line in lines[:-1]), err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message
