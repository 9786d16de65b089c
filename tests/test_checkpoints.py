"""Checkpoints through the CLI: other data is refused, and loading one never imports or unpickles code.

A checkpoint is trained once on items 1-40; it must not be used on data whose items are others
(1001-1040: same count, so the weights would load and score the wrong items) or another count
(a state-dict size mismatch). A checkpoint naming an unknown class must be refused before that
class's module is imported, and a checkpoint holding a pickled object must be refused on every
path (``--ckpt_path FILE``, ``last``, and with ``--weights_only false``).
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import shutil
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import CONFIGS, write_sasrec_txt
from sasrec_lightning.cli.app import main
from sasrec_lightning.errors import CheckpointError
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.checkpoint_io import SafeCheckpointIO
from sasrec_lightning.training.checkpoints import (
    check_item_ids,
    check_state_dtypes,
    imported_class,
    is_unsafe_refusal,
    read_checkpoint,
    unsafe_checkpoint_error,
)

QUICKSTART = str(CONFIGS / "quickstart.yaml")
TINY = ["--data.max_len", "8", "--data.cache.use", "false", "--data.print_statistics", "false",
        "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def interactions(num_users: int = 30, items: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Every user sees 6 items cycling through ``items`` (default 1-40): each item occurs."""
    items = np.arange(1, 41) if items is None else items
    return [(user, int(items[(user * 6 + step) % len(items)])) for user in range(1, num_users + 1) for step in range(6)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(data file with items 1-40, checkpoint trained on it for one epoch)."""
    root = tmp_path_factory.mktemp("trained")
    data = write_sasrec_txt(root / "items-1-40.txt", interactions())
    with pytest.MonkeyPatch.context() as patch:  # (module scope: the autouse argv reset has not run yet)
        patch.setattr(sys, "argv", ["sasrec-lightning"])
        main(["fit", "-c", QUICKSTART, "--data.path", str(data), *TINY, "--trainer.max_epochs", "1",
              "--test_after_fit", "false", "--trainer.enable_checkpointing", "true",
              "--trainer.default_root_dir", str(root)])
    (checkpoint,) = (root / "checkpoints").glob("*.ckpt")
    return data, checkpoint


def run_failing(capsys, args: list[str]) -> tuple[object, str]:
    """Run the CLI entry point, expecting it to exit; return (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def error_line(status: object, err: str) -> str:
    """Exit status 2 and exactly one ``error:`` line, no traceback or usage text; return the line."""
    assert status == 2, err
    assert "Traceback" not in err and "usage:" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def run_error(capsys, args: list[str]) -> str:
    return error_line(*run_failing(capsys, args))


@pytest.mark.parametrize("subcommand", ["predict", "test"])
def test_a_checkpoint_on_other_items_is_refused(trained, tmp_path, capsys, subcommand):
    _, checkpoint = trained
    other = write_sasrec_txt(tmp_path / "items-1001-1040.txt", interactions(items=np.arange(1001, 1041)))
    output = tmp_path / "recs.parquet"
    line = run_error(capsys, [subcommand, "-c", QUICKSTART, "--data.path", str(other), *TINY,
                              "--ckpt_path", str(checkpoint), "--prediction.output", str(output)])
    assert "trained on other data" in line and "40 of its 40 item ids differ" in line
    assert "1: 1 vs 1001" in line and "--data options" in line
    assert not output.exists()


def test_a_checkpoint_on_another_item_count_is_refused_without_a_size_mismatch_traceback(trained, tmp_path, capsys):
    _, checkpoint = trained
    fewer = write_sasrec_txt(tmp_path / "items-1-30.txt", interactions(items=np.arange(1, 31)))
    line = run_error(capsys, ["test", "-c", QUICKSTART, "--data.path", str(fewer), *TINY,
                              "--ckpt_path", str(checkpoint)])
    assert "num_items=40" in line and "num_items=30" in line and "trained on other data" in line


def test_the_same_data_still_works(trained, tmp_path, capsys):
    data, checkpoint = trained
    main(["test", "-c", QUICKSTART, "--data.path", str(data), *TINY, "--ckpt_path", str(checkpoint)])
    assert "test/ndcg@10" in capsys.readouterr().out


def test_item_ids_compare_as_text_across_dtypes():
    check_item_ids([0, 1, 2, 3], np.array(["", "1", "2", "3"]))  # the same ids read as text: accepted
    with pytest.raises(CheckpointError, match=r"1 of its 3 item ids differ .*3: 3 vs 7"):
        check_item_ids([0, 1, 2, 3], np.array([0, 1, 2, 7]))


def test_imported_class_never_imports(tmp_path, monkeypatch):
    (tmp_path / "never_imported_module.py").write_text("class Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert imported_class("never_imported_module.Model") is None
    assert imported_class("sasrec_lightning.SASRecModule").__name__ == "SASRecModule"
    assert imported_class("sasrec_lightning.training.module.SASRecModule.recommend") is None  # a function, not a class


def test_a_checkpoint_naming_an_unknown_class_is_refused_before_importing_it(trained, tmp_path, monkeypatch, capsys):
    data, checkpoint = trained
    marker = tmp_path / "imported.marker"
    (tmp_path / "records_its_import.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\nclass Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"]["_class_path"] = "records_its_import.Model"
    crafted = tmp_path / "crafted.ckpt"
    torch.save(state, crafted)
    status, err = run_failing(capsys, ["test", "-c", QUICKSTART, "--data.path", str(data), *TINY,
                                       "--ckpt_path", str(crafted)])
    assert not marker.exists(), "the checkpoint made the CLI import a module it names"
    line = error_line(status, err)
    assert "records_its_import.Model" in line and "refused" in line


class RunsCodeWhenUnpickled:
    """Unpickling this touches a file: what an arbitrary pickled object could do."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def pickled_last(trained, tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """(run folder whose checkpoints/last.ckpt holds a pickled object, the marker its unpickling creates)."""
    _, checkpoint = trained
    marker = tmp_path / "unpickled.marker"
    state = torch.load(checkpoint, weights_only=True)
    state["payload"] = RunsCodeWhenUnpickled(marker)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.ckpt")
    return tmp_path / "run", marker


@pytest.mark.parametrize("weights_only", [None, "false"])
def test_a_pickled_object_in_last_ckpt_is_refused(trained, pickled_last, capsys, weights_only):
    data, _ = trained
    root, marker = pickled_last
    extra = [] if weights_only is None else ["--weights_only", weights_only]
    args = ["fit", "-c", QUICKSTART, "--data.path", str(data), *TINY, "--trainer.max_epochs", "2",
            "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]
    try:
        status, err = run_failing(capsys, [*args, *extra])
    finally:
        assert not marker.exists(), "loading the checkpoint ran code"
    assert "weights_only" in error_line(status, err)


def test_a_pickled_object_in_a_checkpoint_file_is_refused(trained, pickled_last, capsys):
    data, _ = trained
    root, marker = pickled_last
    try:
        status, err = run_failing(capsys, ["test", "-c", QUICKSTART, "--data.path", str(data), *TINY,
                                           "--ckpt_path", str(root / "checkpoints" / "last.ckpt")])
    finally:
        assert not marker.exists(), "loading the checkpoint ran code"
    line = error_line(status, err)
    assert "last.ckpt" in line and "refused" in line


def test_a_missing_checkpoint_file_is_one_line(trained, tmp_path, capsys):
    data, _ = trained
    line = run_error(capsys, ["test", "-c", QUICKSTART, "--data.path", str(data), *TINY,
                              "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert "nope.ckpt" in line and "is not a file" in line


def test_export_refuses_a_checkpoint_naming_an_unknown_class(trained, tmp_path, monkeypatch, capsys):
    from sasrec_lightning.cli.export import main as export_main

    _, checkpoint = trained
    marker = tmp_path / "imported.marker"
    (tmp_path / "records_export_import.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\nclass Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"]["_class_path"] = "records_export_import.Model"
    torch.save(state, tmp_path / "crafted.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--ckpt_path", str(tmp_path / "crafted.ckpt"), "--output", str(tmp_path / "model.pt")])
    assert not marker.exists()
    line = error_line(exit_info.value.code, capsys.readouterr().err)
    assert "records_export_import.Model" in line and not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("text", ["not a checkpoint\n", "hello\n", ""])
def test_a_file_that_is_not_a_checkpoint_is_one_line(trained, tmp_path, capsys, text):
    data, _ = trained
    (tmp_path / "notes.ckpt").write_text(text)
    line = run_error(capsys, ["test", "-c", QUICKSTART, "--data.path", str(data), *TINY,
                              "--ckpt_path", str(tmp_path / "notes.ckpt")])
    assert "notes.ckpt" in line and "cannot be read" in line


def test_weights_of_another_shape_are_refused_before_loading_them():
    from sasrec_lightning import SASRecModule

    encoder = EncoderOptions(hidden_size=8, num_blocks=1)
    trained_on_40 = SASRecModule(num_items=40, max_len=8, encoder=encoder).state_dict()
    with pytest.raises(CheckpointError, match=r"num_items=40 but the data has num_items=30"):
        SASRecModule(num_items=30, max_len=8, encoder=encoder).on_load_checkpoint(
            {"state_dict": dict(trained_on_40)})
    with pytest.raises(CheckpointError, match=r"position_embedding.weight \(8, 8\) in the checkpoint, \(5, 8\) here"):
        SASRecModule(num_items=40, max_len=5, encoder=encoder).on_load_checkpoint(
            {"state_dict": dict(trained_on_40)})


# Issue 23: what a killed save leaves, pickled globals torch names in capitals, integer tables, compression bombs.

@pytest.fixture
def run_with_last(trained, tmp_path) -> pathlib.Path:
    """A run folder whose checkpoints/ holds the trained checkpoint and a last.ckpt (a copy of it) to break."""
    _, checkpoint = trained
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(checkpoint, folder / checkpoint.name)
    shutil.copy(checkpoint, folder / "last.ckpt")
    return tmp_path / "run"


def resume_last(data: pathlib.Path, root: pathlib.Path) -> list[str]:
    return ["fit", "-c", QUICKSTART, "--data.path", str(data), *TINY, "--trainer.max_epochs", "2",
            "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]


@pytest.mark.parametrize(("cut", "expected"), [("empty", "empty (0 bytes)"), ("half", "truncated or damaged"),
                                               ("two bytes", "truncated (2 bytes)")])
def test_a_last_ckpt_left_empty_or_cut_by_a_killed_save_is_one_line(trained, run_with_last, capsys, cut, expected):
    data, checkpoint = trained
    last = run_with_last / "checkpoints" / "last.ckpt"
    whole = checkpoint.read_bytes()
    last.write_bytes({"empty": b"", "half": whole[: len(whole) // 2], "two bytes": whole[:2]}[cut])
    line = run_error(capsys, resume_last(data, run_with_last))  # Lightning resolves and loads `last` itself
    assert "last.ckpt" in line and expected in line and "killed while saving" in line
    assert repr(checkpoint.name) in line  # the checkpoint that can be used instead
    with pytest.raises(CheckpointError, match="last.ckpt. cannot be read: the file is " + re.escape(expected)):
        read_checkpoint(last)


class RunsAShellCommand:
    """Unpickling this runs a shell command: ``os.system``, which torch names ``GLOBAL posix.system``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def system_last(trained, run_with_last, tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """(run folder whose last.ckpt pickles os.system, the marker the command would create)."""
    _, checkpoint = trained
    marker = tmp_path / "shell.marker"
    state = torch.load(checkpoint, weights_only=True)
    state["payload"] = RunsAShellCommand(marker)
    torch.save(state, run_with_last / "checkpoints" / "last.ckpt")
    return run_with_last, marker


def assert_refused_without_torchs_advice(line: str) -> None:
    assert "was refused" in line and "system" in line and "weights_only=True" in line, line
    assert "False" not in line and "Re-running" not in line, line  # torch's advice would run the command


def test_a_pickled_os_system_is_refused_through_read_checkpoint(system_last):
    root, marker = system_last
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(root / "checkpoints" / "last.ckpt")
    assert not marker.exists()
    assert_refused_without_torchs_advice(str(refused.value))
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no chained torch advice


@pytest.mark.parametrize("ckpt_path", ["last", "file"])
def test_a_pickled_os_system_is_refused_through_the_cli(trained, system_last, capsys, ckpt_path):
    data, _ = trained
    root, marker = system_last
    args = resume_last(data, root)
    if ckpt_path == "file":
        args[-1] = str(root / "checkpoints" / "last.ckpt")
    try:
        line = run_error(capsys, args)
    finally:
        assert not marker.exists(), "loading the checkpoint ran the command"
    assert_refused_without_torchs_advice(line)


@pytest.mark.parametrize("message", [
    "Weights only load failed. In PyTorch 2.6, we changed ... Re-running `torch.load` with `weights_only` set to "
    "`False` will likely succeed ...\n\n\nTrying to load unsupported GLOBAL posix.system whose module posix is "
    "blocked.\n\nCheck the documentation of torch.load ...",
    "Weights only load failed. ...\n\tWeightsUnpickler error: Unsupported global: GLOBAL pathlib.Path was not an "
    "allowed global by default. Please use `torch.serialization.add_safe_globals([pathlib.Path])` ...",
    "weights only load failed: unsupported global: global builtins.eval",
])
def test_a_refusal_is_told_from_a_damaged_file_whatever_the_case(message):
    assert is_unsafe_refusal(pickle.UnpicklingError(message))
    line = str(unsafe_checkpoint_error(pickle.UnpicklingError(message), "x.ckpt"))
    assert "refused" in line and "False" not in line
    assert ("it names posix.system)" in line) == ("posix.system" in message)
    assert ("it names pathlib.Path)" in line) == ("pathlib.Path" in message)  # not "by" of "global by default"
    damaged = "Weights only load failed. ... WeightsUnpickler error: Unsupported operand 101"
    assert not is_unsafe_refusal(pickle.UnpicklingError(damaged))


def test_an_integer_item_table_is_refused_before_its_values_are_cast(trained, tmp_path, capsys):
    data, checkpoint = trained
    state = torch.load(checkpoint, weights_only=True)
    table = state["state_dict"]["model.items.embedding.weight"]
    state["state_dict"]["model.items.embedding.weight"] = table.round().to(torch.int64)  # scores 0.0 once cast
    torch.save(state, tmp_path / "integer-table.ckpt")
    line = run_error(capsys, ["test", "-c", QUICKSTART, "--data.path", str(data), *TINY,
                              "--ckpt_path", str(tmp_path / "integer-table.ckpt")])
    assert "model.items.embedding.weight is torch.int64 of shape (41, 8)" in line
    assert "floating-point tensor (torch.float32, shape (41, 8))" in line


def test_tensor_kinds_are_checked_and_precision_may_differ():
    own = {"table": torch.zeros(3, 2), "popularity": torch.zeros(3, dtype=torch.int64)}
    # float64 weights into float32, int32 counts into int64: cast safely
    check_state_dtypes({"table": torch.zeros(3, 2, dtype=torch.float64),
                        "popularity": torch.zeros(3, dtype=torch.int32)}, own)
    with pytest.raises(CheckpointError, match=r"popularity is torch.float32 .* expects an integer tensor"):
        check_state_dtypes({"popularity": torch.zeros(3)}, own)
    with pytest.raises(CheckpointError, match=r"table is a list, not a tensor"):
        check_state_dtypes({"table": [[0.0, 0.0]] * 3}, own)
    with pytest.raises(CheckpointError, match=r"table is torch.bool"):
        check_state_dtypes({"table": torch.zeros(3, 2, dtype=torch.bool)}, own)


def write_bomb(checkpoint: pathlib.Path, path: pathlib.Path, mib: int = 96) -> pathlib.Path:
    """``checkpoint`` plus an entry of ``mib`` MiB of zeros, deflated to ~100 KB (written in 1 MiB pieces)."""
    with zipfile.ZipFile(checkpoint) as source, zipfile.ZipFile(path, "w") as bomb:
        for info in source.infolist():
            bomb.writestr(info, source.read(info.filename))
        entry = zipfile.ZipInfo(f"{source.namelist()[0].split('/')[0]}/data/999")
        entry.compress_type = zipfile.ZIP_DEFLATED
        with bomb.open(entry, "w", force_zip64=True) as handle:
            for _ in range(mib):
                handle.write(bytes(2**20))
    return path


def test_a_compression_bomb_is_refused_before_torch_reads_it(trained, tmp_path, monkeypatch):
    _, checkpoint = trained
    bomb = write_bomb(checkpoint, tmp_path / "bomb.ckpt")
    assert bomb.stat().st_size < 2**20
    read = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: read.append(args) or {})
    with pytest.raises(CheckpointError, match=r"refused unread: its entries declare 96.0 MiB uncompressed in a "
                                              r"[0-9.]+ KiB file .*data/999"):
        read_checkpoint(bomb)
    with pytest.raises(CheckpointError, match="refused unread"):  # Lightning's load of --ckpt_path last/best
        SafeCheckpointIO().load_checkpoint(bomb)
    assert read == [], "torch.load read the archive"
