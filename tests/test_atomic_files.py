"""Files the package writes survive a crash, a full disk and a read-only folder (issue 23).

Every file is written beside its target and renamed over it (``atomic.py``), never copied over it:
a save killed at any moment leaves the old file or the new one. A kill is simulated by raising
``Killed`` (a ``BaseException``, which nothing catches) at the moment in question; a move across file
systems by a ``shutil.move`` that copies over the target and is killed halfway. A full disk is the
kernel's file-size limit (``RLIMIT_FSIZE``: writes beyond it fail with ``EFBIG``), a read-only folder
is simulated where Python creates files (tests run as root, whom ``chmod`` does not stop).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CONFIGS
from sasrec_lightning import SASRec, SASRecModule
from sasrec_lightning.atomic import remove_stale_temporaries, write_text
from sasrec_lightning.cli.app import cli_main, main
from sasrec_lightning.cli.parse_errors import SASRecArgumentParser
from sasrec_lightning.errors import OutputError
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.serving.prediction import recommendations_table, write_table
from sasrec_lightning.training.checkpoint_io import SafeCheckpointIO
from sasrec_lightning.training.checkpoints import read_checkpoint

QUICKSTART = str(CONFIGS / "quickstart.yaml")
TINY = ["--data.source.synthetic_users", "30", "--data.source.synthetic_items", "40", "--data.max_len", "8",
        "--data.cache.use", "false", "--data.print_statistics", "false", "--data.loader.num_eval_negatives", "20",
        "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# Only last.ckpt, saved at the end of every epoch (so a resumed run overwrites it).
SAVE_LAST = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
             "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.save_last", "true",
             "--trainer.callbacks.enable_version_counter", "false"]


class Killed(BaseException):
    """What SIGKILL does at that moment: everything stops (not an ``Exception``: nothing catches it)."""


def only_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def error_line(status: object, err: str) -> str:
    """Exit status 2 and exactly one ``error:`` line, no traceback; return the line."""
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def run_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return error_line(exit_info.value.code, capsys.readouterr().err)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A run folder after one epoch: checkpoints/last.ckpt and config.yaml."""
    root = tmp_path_factory.mktemp("fitted") / "run"
    with pytest.MonkeyPatch.context() as patch:  # (module scope: the autouse argv reset has not run yet)
        patch.setattr(sys, "argv", ["sasrec-lightning"])
        main(["fit", "-c", QUICKSTART, *TINY, *SAVE_LAST, "--trainer.max_epochs", "1", "--test_after_fit", "false",
              "--trainer.default_root_dir", str(root)])
    return root


@pytest.fixture
def run(fitted, tmp_path) -> Path:
    """A copy of the fitted run folder, to resume or break."""
    shutil.copytree(fitted, tmp_path / "run")
    return tmp_path / "run"


# A crash while a checkpoint is saved.

def test_a_save_killed_while_a_move_copies_across_file_systems_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    """$TMPDIR on another file system: a move there is a copy over the target; a kill during it emptied last.ckpt."""
    plugin = SafeCheckpointIO()
    target = tmp_path / "run" / "last.ckpt"
    plugin.save_checkpoint({"global_step": 1, "weight": torch.ones(3)}, target)
    elsewhere = tmp_path / "tmpfs"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))

    def move_across_file_systems(source, destination, *args, **kwargs):  # copy over the target, killed halfway
        with open(source, "rb") as copied, open(destination, "wb") as over:
            over.write(copied.read(100))
        raise Killed

    monkeypatch.setattr(shutil, "move", move_across_file_systems)
    with contextlib.suppress(Killed):
        plugin.save_checkpoint({"global_step": 2, "weight": torch.ones(3)}, target)
    assert read_checkpoint(target)["global_step"] in (1, 2)  # the old checkpoint or the new one, whole
    assert list(elsewhere.iterdir()) == [], "the checkpoint went through $TMPDIR"
    assert only_files(target.parent) == ["last.ckpt"]


@pytest.mark.parametrize("moment", ["while torch.save writes", "before the rename"])
def test_a_save_killed_at_any_moment_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch, moment):
    plugin = SafeCheckpointIO()
    target = tmp_path / "last.ckpt"
    plugin.save_checkpoint({"global_step": 1, "weight": torch.ones(3)}, target)
    old = target.read_bytes()
    if moment == "while torch.save writes":
        def half_written(obj, handle, *args, **kwargs):
            handle.write(old[: len(old) // 2])
            raise Killed
        monkeypatch.setattr(torch, "save", half_written)
    else:
        def killed(*args, **kwargs):
            raise Killed
        monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Killed):
        plugin.save_checkpoint({"global_step": 2, "weight": torch.zeros(3)}, target)
    assert target.read_bytes() == old
    assert only_files(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("plugins", [None, "lightning.pytorch.plugins.io.AsyncCheckpointIO"])
def test_the_cli_installs_the_safe_plugin_unless_the_config_names_one(plugins):
    extra = [] if plugins is None else ["--trainer.plugins", plugins]
    cli = cli_main(["-c", QUICKSTART, *TINY, *extra], run=False)
    io_plugin = cli.trainer.strategy.checkpoint_io
    assert type(io_plugin).__name__ == ("SafeCheckpointIO" if plugins is None else "AsyncCheckpointIO")


def test_resuming_with_tmpdir_elsewhere_never_copies_over_last_ckpt(run, tmp_path, monkeypatch):
    """The CLI's own saves: with $TMPDIR elsewhere and moves that are killed copies, a resumed run still saves."""
    elsewhere = tmp_path / "tmpfs"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))

    def move_across_file_systems(source, destination, *args, **kwargs):
        with open(source, "rb") as copied, open(destination, "wb") as over:
            over.write(copied.read(100))
        raise Killed

    monkeypatch.setattr(shutil, "move", move_across_file_systems)
    before = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    main(["fit", "-c", QUICKSTART, *TINY, *SAVE_LAST, "--trainer.max_epochs", "2", "--test_after_fit", "false",
          "--trainer.default_root_dir", str(run), "--ckpt_path", "last"])
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] > before  # the second epoch's, whole
    assert [path.name for path in elsewhere.iterdir() if path.is_file()] == []


# Temporaries of killed writers.

def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    output = tmp_path / "recs.parquet"
    dead = tmp_path / f".recs.parquet.tmp-{dead_pid()}-0123abcd"  # a killed predict's
    live = tmp_path / f".recs.parquet.tmp-{os.getppid()}-89abcdef"  # a live writer's (the parent process)
    old = tmp_path / f".recs.parquet.tmp-{os.getppid()}-4567cdef"  # unchanged for two hours
    other = tmp_path / f".other.parquet.tmp-{dead_pid()}-0123abcd"  # another file's
    for path in (dead, live, old, other):
        path.write_bytes(b"PAR1 partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    write_table(recommendations_table(np.arange(2), np.ones((2, 1), np.int64), np.ones((2, 1), np.float32)),
                str(output))
    assert only_files(tmp_path) == sorted([output.name, live.name, other.name])


def test_a_killed_save_of_a_step_checkpoint_is_removed_by_the_next_checkpoint_save(tmp_path):
    """Step checkpoints are never written twice under one name: any .ckpt's stale temporary goes."""
    stale = tmp_path / f".epoch=0-step=3.ckpt.tmp-{dead_pid()}-0123abcd"
    stale.write_bytes(b"PK\x03\x04 partial")
    SafeCheckpointIO().save_checkpoint({"global_step": 4}, tmp_path / "epoch=0-step=4.ckpt")
    assert only_files(tmp_path) == ["epoch=0-step=4.ckpt"]
    assert remove_stale_temporaries(tmp_path / "epoch=0-step=4.ckpt", suffix=".ckpt") == []


# Disk full, a file-size limit.

def test_a_checkpoint_beyond_the_file_size_limit_is_one_line_and_keeps_the_old_one(run):
    """The kernel's file-size limit (RLIMIT_FSIZE) in a subprocess: writes beyond it fail with EFBIG."""
    pytest.importorskip("resource")
    last = run / "checkpoints" / "last.ckpt"
    old = last.read_bytes()
    # The limit set in the child before the CLI runs (it applies to regular files: not to the pipes to pytest).
    limited = ("import resource, runpy, sys; hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]; "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(old) // 2}, hard)); sys.argv[0] = 'sasrec-lightning'; "
               "runpy.run_module('sasrec_lightning.cli', run_name='__main__')")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", limited, "fit", "-c", QUICKSTART, *TINY, *SAVE_LAST,
                             "--trainer.max_epochs", "2", "--test_after_fit", "false", "--trainer.default_root_dir",
                             str(run), "--ckpt_path", "last"], env=env, capture_output=True, text=True, timeout=300)
    line = error_line(result.returncode, result.stderr)
    assert f"cannot write checkpoint {str(last)!r}: File too large (EFBIG" in line
    assert "the previous last.ckpt is left as it was" in line
    assert last.read_bytes() == old
    # (the resumed run's config is kept beside the first run's, never over it: cli/run_config.py)
    assert only_files(last.parent) == ["config-1.yaml", "config.yaml", "last.ckpt"]


class FullDisk(io.RawIOBase):
    """A file handle on a full disk: every write fails with ENOSPC."""

    def __init__(self, handle) -> None:
        super().__init__()
        self.handle = handle

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.handle.close()
        super().close()


@pytest.fixture
def full_disk(monkeypatch) -> None:
    """Every file the package writes is on a full disk (its handles fail with ENOSPC)."""
    import sasrec_lightning.atomic

    monkeypatch.setattr(sasrec_lightning.atomic, "open", lambda path, mode: FullDisk(open(path, mode)), raising=False)


@pytest.mark.parametrize("name", ["recs.parquet", "recs.jsonl"])
def test_predictions_on_a_full_disk_are_one_line_and_keep_the_old_file(run, tmp_path, capsys, full_disk, name):
    output = tmp_path / "out" / name
    output.parent.mkdir()
    output.write_text("an older run's output\n")
    line = run_error(capsys, ["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", str(run / "checkpoints" /
                              "last.ckpt"), "--prediction.output", str(output)])
    assert f"cannot write --prediction.output {str(output)!r}: No space left on device (ENOSPC" in line
    assert f"the previous {name} is left as it was" in line and "--prediction.output" in line
    assert output.read_text() == "an older run's output\n"
    assert only_files(output.parent) == [name]


def test_a_full_disk_names_the_file_and_the_reason(tmp_path, full_disk):
    target = tmp_path / "config.yaml"
    target.write_text("old: true\n")
    with pytest.raises(OutputError, match=r"cannot write the run's config '.*config.yaml': No space left on device "
                                          r"\(ENOSPC: the disk is full\); the previous config.yaml is left as it was"):
        write_text(target, "new: true\n", "the run's config")
    assert target.read_text() == "old: true\n"
    assert only_files(tmp_path) == ["config.yaml"]


# A read-only folder.

@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder in which creating files or folders fails with EROFS, as on a read-only mount.

    Root ignores ``chmod``, so the mount is simulated at the lowest level Python creates files with:
    ``open``/``io.open`` in a writing mode, ``os.open`` with a writing flag and ``os.mkdir``.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()

    def inside(path) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and \
            Path(os.path.abspath(os.fsdecode(path))).is_relative_to(folder)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def open_(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    return folder


@pytest.mark.parametrize("logger", ["false", "true"])
def test_fit_in_a_read_only_folder_is_one_line_before_training(read_only, capsys, monkeypatch, logger):
    trained = []
    original = SASRecModule.training_step
    monkeypatch.setattr(SASRecModule, "training_step", lambda self, *args: trained.append(1) or original(self, *args))
    line = run_error(capsys, ["fit", "-c", QUICKSTART, *TINY, *SAVE_LAST, "--trainer.max_epochs", "1",
                              "--test_after_fit", "false", "--trainer.default_root_dir", str(read_only / "run"),
                              "--trainer.logger", logger])
    assert trained == [], "training started before the folder was checked"
    assert "cannot write in " in line and str(read_only / "run") in line
    assert "Read-only file system (EROFS" in line and "--trainer.default_root_dir" in line


# config.yaml, exports and heatmaps are written whole too.

def test_a_kill_while_the_run_config_is_written_leaves_the_old_config(run, monkeypatch):
    """Killed while the config is turned into text, which the CLI also does before the run: only after setup."""
    config = run / "checkpoints" / "config.yaml"
    old = config.read_text()
    set_up = []
    setup, dump = SASRecModule.setup, SASRecArgumentParser.dump
    monkeypatch.setattr(SASRecModule, "setup", lambda self, stage: set_up.append(stage) or setup(self, stage))

    def killed_once_set_up(self, *args, **kwargs):
        if set_up:  # the run's config.yaml is being written (on_fit_start, without a logger)
            raise Killed
        return dump(self, *args, **kwargs)

    monkeypatch.setattr(SASRecArgumentParser, "dump", killed_once_set_up)
    with pytest.raises(Killed):
        main(["fit", "-c", QUICKSTART, *TINY, *SAVE_LAST, "--trainer.max_epochs", "2", "--test_after_fit", "false",
              "--trainer.default_root_dir", str(run)])
    assert config.read_text() == old
    assert only_files(config.parent) == ["config.yaml", "last.ckpt"]


def partial_writer(*args, **kwargs):
    """A writer killed after writing a part of its file (to a path or a handle)."""
    target = args[1] if len(args) > 1 else kwargs.get("fname", kwargs.get("f"))
    if hasattr(target, "write"):
        target.write(b"partial")
    else:
        Path(target).write_bytes(b"partial")
    raise Killed


def test_a_kill_while_exporting_leaves_the_old_model_file(tmp_path, monkeypatch):
    from sasrec_lightning.serving.export import export_torchscript

    output = tmp_path / "model.pt"
    output.write_bytes(b"the old model")
    monkeypatch.setattr(torch.jit, "save", partial_writer)
    with pytest.raises(Killed):
        export_torchscript(SASRec(5, 4, EncoderOptions(hidden_size=8, num_blocks=1, num_heads=1)), output)
    assert output.read_bytes() == b"the old model"
    assert only_files(tmp_path) == ["model.pt"]


def test_a_kill_while_drawing_heatmaps_leaves_the_old_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from sasrec_lightning.serving.attention import plot_attention

    (tmp_path / "attention.png").write_bytes(b"the old heatmap")
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: partial_writer(None, *args, **kwargs))
    with pytest.raises(Killed):
        plot_attention(torch.full((1, 1, 4, 4), 0.25), tmp_path)
    assert (tmp_path / "attention.png").read_bytes() == b"the old heatmap"
    assert only_files(tmp_path) == ["attention.png"]
