"""A run stopped by SIGTERM ends with one ``error:`` line on every process and a non-zero status, no traceback.

Before: the process that received SIGTERM left through Lightning's ``SIGTERMException`` (a ``SystemExit``
without a code) with status 0 and nothing said, and under CPU DDP the other process died in its next
collective with gloo's "Connection closed by peer" traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException

import sasrec_lightning
from conftest import CONFIGS
from sasrec_lightning.cli.exit import exit_on_reported_errors
from sasrec_lightning.training.callbacks import StopOnSigterm

GLOO_LOST_PEER = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                  "[127.0.0.1]:30089. This is typically caused by a remote worker crashing. Check the logs of the "
                  "remote worker before reporting an error.")

# A callback of the user's own file (--trainer.callbacks+=marker.Marker): each process writes its pid once
# it has trained a few steps, then each step takes a little longer, so the signal lands mid-training.
MARKER = textwrap.dedent(
    """
    import os, time
    import lightning as L


    class Marker(L.Callback):
        def __init__(self, folder: str) -> None:
            self.folder = folder

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with open(os.path.join(self.folder, f"ready_rank{trainer.global_rank}"), "w") as handle:
                    handle.write(str(os.getpid()))
            time.sleep(0.05)
    """
)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_lost_ddp_peer_and_sigterm_are_one_line_and_other_errors_keep_their_traceback(capsys):
    def fail(error):
        raise error

    with pytest.raises(SystemExit) as exit_info:
        exit_on_reported_errors(fail, RuntimeError(GLOO_LOST_PEER))
    assert exit_info.value.code == 1
    assert _errors(capsys.readouterr().err) == [
        "error: another process of this DDP run ended (gloo: Connection closed by peer [127.0.0.1]:30089), so this "
        "process stops too; that process's output says why"]
    with pytest.raises(SystemExit) as exit_info:
        exit_on_reported_errors(fail, SIGTERMException())
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert _errors(capsys.readouterr().err) == ["error: this process received SIGTERM and stopped before the run "
                                                "finished"]
    # Narrow: any other error, also one that mentions a connection, keeps its traceback.
    for other in (RuntimeError("boom"), RuntimeError("Connection reset by peer"), ValueError(GLOO_LOST_PEER)):
        with pytest.raises(type(other)):
            exit_on_reported_errors(fail, other)


def test_stop_on_sigterm_forwards_the_signal_once_and_stops_at_the_next_batch_end():
    forwarded = []
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(kill=forwarded.append)))
    callback = StopOnSigterm()
    before = signal.getsignal(signal.SIGTERM)
    try:
        callback.on_train_start(trainer, None)  # replaces the handler (Lightning's, in a real run)
        callback.on_train_batch_end(trainer, None, None, None, 0)  # no signal yet: training goes on
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert forwarded == [signal.SIGTERM]  # to the processes this one launched, once
    with pytest.raises(SIGTERMException):
        callback.on_train_batch_end(trainer, None, None, None, 1)


def _launch(tmp_path: Path, extra: list[str]) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "marker.py").write_text(MARKER)
    package_root = str(Path(sasrec_lightning.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "SASREC_LIGHTNING_CACHE": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([package_root, str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOCAL_RANK", None)
    args = [sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", str(CONFIGS / "quickstart.yaml"), *extra,
            "--trainer.max_epochs", "1000", "--model.init_args.encoder.hidden_size", "8",
            "--model.init_args.encoder.num_blocks", "1",
            "--data.source.synthetic_users", "300", "--data.print_statistics", "false", "--trainer.enable_progress_bar",
            "false", "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.callbacks+=marker.Marker", "--trainer.callbacks.folder", str(tmp_path)]
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, tmp_path


def _wait_for(process: subprocess.Popen, files: list[Path], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.exists() and path.read_text() for path in files):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"training did not start: {process.communicate()[1][-3000:]}")
        time.sleep(0.2)


def _finish(process: subprocess.Popen, timeout: float = 120) -> str:
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"the run did not end: {process.communicate()[1][-3000:]}") from None


def test_sigterm_ends_a_run_with_one_line_and_status_143(tmp_path):
    process, folder = _launch(tmp_path, [])
    _wait_for(process, [folder / "ready_rank0"])
    process.send_signal(signal.SIGTERM)
    stderr = _finish(process)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "Received SIGTERM" not in stderr, stderr
    assert _errors(stderr) == ["error: this process received SIGTERM and stopped before the run finished"], stderr


@pytest.mark.slow
def test_sigterm_to_one_cpu_ddp_process_ends_every_process_with_one_line(tmp_path):
    """The issue's case: ``kill -TERM`` one rank of a 2-process CPU DDP fit; the other rank's collective fails."""
    process, folder = _launch(tmp_path, ["-c", str(CONFIGS / "trainer" / "cpu-ddp.yaml")])
    _wait_for(process, [folder / "ready_rank0", folder / "ready_rank1"])
    os.kill(int((folder / "ready_rank1").read_text()), signal.SIGTERM)
    stderr = _finish(process)
    assert process.returncode == 1, stderr  # the launching process (rank 0): its peer ended
    assert "Traceback" not in stderr and "Received SIGTERM" not in stderr, stderr
    lines = _errors(stderr)
    assert len(lines) == 2 and ("error: this process (rank 1) received SIGTERM and stopped before the run finished; "
                                "the other processes of this DDP run stop too") in lines, stderr
    (peer,) = (line for line in lines if "another process" in line)
    assert re.fullmatch(r"error: another process of this DDP run ended \(gloo: (Connection closed by peer|Connection "
                        r"reset by peer|Broken pipe)[^)]*\), so this process \(rank 0\) stops too; that process's "
                        r"output says why", peer), peer


@pytest.mark.slow
def test_sigterm_to_the_launching_ddp_process_reaches_the_other_one(tmp_path):
    """``kill -TERM`` the command a user started (rank 0): it forwards the signal to rank 1 and both stop."""
    process, folder = _launch(tmp_path, ["-c", str(CONFIGS / "trainer" / "cpu-ddp.yaml")])
    _wait_for(process, [folder / "ready_rank0", folder / "ready_rank1"])
    process.send_signal(signal.SIGTERM)
    stderr = _finish(process)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "Received SIGTERM" not in stderr, stderr
    lines = _errors(stderr)
    rank0 = ("error: this process (rank 0) received SIGTERM and stopped before the run finished; the other processes "
             "of this DDP run stop too")
    assert len(lines) == 2 and rank0 in lines, stderr
    # Rank 1 got the signal too; if it was inside a collective when rank 0 left, that collective tells it first.
    (rank1,) = (line for line in lines if line != rank0)
    assert rank1.startswith(("error: this process (rank 1) received SIGTERM", "error: another process of this DDP run "
                             "ended (gloo: ")) and "rank 1" in rank1, stderr
