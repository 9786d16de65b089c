"""The configs ship with the package: run by name from any directory, also from a non-editable install."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, REPO
from sasrec_lightning.cli.app import cli_main
from sasrec_lightning.cli.configs import resolve_config


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml", "configs/quickstart.yaml"])
def test_a_packaged_config_runs_by_name_outside_the_repository(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", name, "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_epochs"] == yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())["trainer"][
        "max_epochs"]
    assert config["model"]["init_args"]["encoder"]["hidden_size"] == 32


def test_a_file_in_the_working_directory_wins_over_the_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text("seed_everything: 1\n")
    assert resolve_config("quickstart") == "quickstart"
    assert resolve_config("trainer/bf16") == str(CONFIGS / "trainer" / "bf16.yaml")
    assert resolve_config("no-such-config") == "no-such-config"  # the parser reports the missing file
    assert resolve_config("../pyproject.toml") == "../pyproject.toml"  # only names inside the configs folder


@pytest.mark.slow
def test_a_non_editable_install_runs_the_packaged_quickstart_from_an_empty_directory(tmp_path):
    """Build and install the package (not editable) into a fresh virtual environment, run ``-c quickstart``.

    The environment sees the test interpreter's packages (torch, lightning, ...) through a ``.pth``
    file; ``sasrec_lightning`` itself comes only from the wheel built here, from a copy of the
    repository (so the build leaves nothing in the working tree).
    """
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "configs", source / "configs")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # A plain path line (not `import site`): the test interpreter's .pth files, e.g. an editable install
    # of this package, are not processed, so the wheel is the only sasrec_lightning the venv can import.
    Path(purelib, "test-parent-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-build-isolation", "--no-index", "-q", str(source)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run(
        [str(venv / "bin" / "sasrec-lightning"), "fit", "-c", "quickstart", "--trainer.fast_dev_run", "true",
         "--data.source.synthetic_users", "60", "--data.source.synthetic_items", "30",
         "--data.loader.num_eval_negatives", "10",
         "--model.encoder.hidden_size", "8", "--trainer.enable_progress_bar", "false"],
        cwd=empty, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "NDCG@10" in run.stdout and "| synthetic | 60 |" in run.stdout, run.stdout
    where = subprocess.run([str(python), "-c", "import sasrec_lightning.cli.configs as c; print(c.__file__); "
                            "print(c.packaged_configs())"], cwd=empty, capture_output=True, text=True, env=env)
    assert where.returncode == 0, where.stderr
    module_file, configs = where.stdout.split()
    assert module_file.startswith(purelib), where.stdout  # the installed copy, not the repository's
    assert Path(configs) == Path(purelib) / "sasrec_lightning" / "configs"
    assert sorted(p.relative_to(configs).as_posix() for p in Path(configs).rglob("*.yaml")) == sorted(
        p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))


def test_an_unknown_config_name_lists_the_packaged_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", "quickstrat"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "File does not exist" in line and "the packaged configs are: beauty," in line and "quickstart" in line
