"""A GPU trainer config or accelerator on a machine without a GPU: one ``error:`` line naming it and what to use."""

from __future__ import annotations

import pytest
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

from conftest import CONFIGS
from sasrec_lightning.cli.app import main

TINY_RUN = ["-c", str(CONFIGS / "quickstart.yaml"), "--data.source.synthetic_users", "40", "--data.cache.use", "false",
            "--data.print_statistics", "false"]

pytestmark = pytest.mark.skipif(CUDAAccelerator.is_available() or MPSAccelerator.is_available(),
                                reason="this machine has a GPU: the GPU configs run here")


@pytest.mark.parametrize("config", ["tp", "gpu-ddp"])
def test_a_gpu_trainer_config_without_a_gpu_names_the_config_and_the_cpu_one(config, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *TINY_RUN, "-c", str(CONFIGS / "trainer" / f"{config}.yaml")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1, error
    assert error == (f"error: --trainer.accelerator gpu (set by configs/trainer/{config}.yaml) needs a GPU (CUDA, or "
                     "Apple MPS), and this machine has none that PyTorch can use. To run on the CPU, use "
                     "configs/trainer/cpu-ddp.yaml (DDP over 2 CPU processes) in place of "
                     f"configs/trainer/{config}.yaml, or add --trainer.accelerator cpu after it.\n")


def test_a_gpu_accelerator_flag_without_a_gpu_says_to_pass_cpu(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *TINY_RUN, "--trainer.accelerator", "cuda"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1, error
    assert error.startswith("error: --trainer.accelerator cuda needs a CUDA GPU, and this machine has none") and \
        "pass --trainer.accelerator cpu instead" in error
