"""Options that cannot fit in memory stop with one ``error:`` line that gives the estimate and the machine's memory.

Before: ``--model.encoder.hidden_size 1048576`` asked torch for 13 TB and the CLI printed jsonargparse's "Does not
validate against any of the Union subtypes" around the allocation error; ``--data.max_len`` 100,000 with a
long-history user built a terabyte attention mask in the first batch and died with a traceback (or was
killed). The estimates (``memory.py``) are compared here with a fixed amount of memory, so the tests do
not depend on the machine.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import CONFIGS, write_sasrec_txt
from sasrec_lightning import SASRecModule
from sasrec_lightning.cli.app import main
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training import memory

GiB = 1 << 30
QUICKSTART = str(CONFIGS / "quickstart.yaml")
QUIET = ["--data.cache.use", "false", "--data.print_statistics", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.max_epochs", "1", "--test_after_fit", "false"]


@pytest.fixture
def machine_of(monkeypatch):
    """Pretend the CPU has ``size`` bytes available (a GPU is not asked)."""

    def pretend(size: int) -> None:
        monkeypatch.setattr(memory, "available_memory",
                            lambda device: (size, "available on this machine (MemAvailable)"))

    return pretend


def _one_error_line(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "Union subtypes" not in err and "allocate" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_parameters_that_cannot_fit_are_one_line_naming_the_option(capsys, tmp_path, machine_of):
    machine_of(64 * GiB)
    line = _one_error_line(capsys, ["fit", "-c", QUICKSTART, *QUIET, "--data.source.synthetic_users", "30",
                                    "--data.source.synthetic_items", "40",
                                    "--model.init_args.encoder.hidden_size", str(2**20),
                                    "--trainer.default_root_dir", str(tmp_path)])
    # W_Q, W_K, W_V, the output projection and the feed-forward layers: 6 d^2 per block, 2 blocks, float32.
    assert line == ("error: --model.encoder.hidden_size 1048576: the model's parameters need 48.0 TiB (blocks 48.0 "
                    "TiB, position table 200.0 MiB, item tables 164.0 MiB), more than the 64.0 GiB available on this "
                    "machine (MemAvailable); lower --model.encoder.hidden_size or --model.encoder.num_blocks"), line


def test_a_long_history_with_a_huge_max_len_is_refused_before_the_first_batch(capsys, tmp_path, machine_of):
    """One user with 20,000 interactions and ``max_len`` 20,000: the first batch's attention alone is ~300 GB."""
    machine_of(64 * GiB)
    lines = [(1, 1 + i % 300) for i in range(20_000)]  # items 1-300 over and over
    lines += [(user, 301 + (user * 7 + i) % 100) for user in range(2, 31) for i in range(6)]  # items 301-400
    data = write_sasrec_txt(tmp_path / "long.txt", lines)
    line = _one_error_line(capsys, ["fit", "-c", QUICKSTART, *QUIET, "--data.path", str(data), "--data.max_len",
                                    "20000", "--model.init_args.encoder.hidden_size", "8",
                                    "--model.init_args.encoder.num_blocks", "1",
                                    "--trainer.default_root_dir", str(tmp_path)])
    # 30 x 19,997^2 x 26 bytes: the float bias and masks, per block scores, softmax, dropout and two gradients.
    assert line == ("error: the largest training batch (30 sequences x 19,997 positions) needs about 290.9 GiB "
                    "besides the parameters (training attention 290.5 GiB, evaluation attention 201.2 GiB, training "
                    "activations 439.4 MiB, gradients and Adam moments 1.9 MiB), more than the 64.0 GiB available on "
                    "this machine (MemAvailable); lower --data.max_len (20000) or --data.loader.batch_size"), line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_shipped_configs_fit_in_16_gib_with_catalogues_of_the_papers_datasets(machine_of):
    """Every shipped config, its batches at full width, 100,000 items (above each dataset's): accepted by 16 GiB."""
    machine_of(16 * GiB)
    for path in sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("paper/*.yaml")):
        config = yaml.safe_load(path.read_text())
        data = config["data"]["init_args"]
        max_len, loader = data["max_len"], LoaderOptions(**data.get("loader", {}))
        # The config's model (its groups and loss as written, the rest defaults), 100,000 items.
        module = SASRecModule(num_items=100_000, max_len=max_len, **config["model"]["init_args"])
        encoder = module.encoder_options
        memory.check_parameter_memory(100_000, max_len, encoder, torch.device("cpu"))  # no error
        parameters = sum(memory.parameter_memory(100_000, max_len, encoder).values()) // 4
        shapes = (loader.batch_size, max_len), (loader.eval_batch_size, max_len)
        assert memory.check_training_memory(module, parameters, *shapes, torch.device("cpu")) is None, path.name
        # And with room to spare: beauty-ce's (N, chunk) logit blocks, the largest, about 4.8 GiB.
        assert memory.peak(memory.training_memory(module, parameters, *shapes)) < 5 * GiB, path.name


def test_a_model_that_fits_trains_and_the_parameter_count_is_the_encoders_own(tmp_path, machine_of):
    machine_of(GiB)
    encoder = EncoderOptions(hidden_size=8, num_blocks=1, num_heads=2, share_item_embedding=False)
    model = SASRecModule(num_items=40, max_len=8, encoder=encoder)  # accepted: a few KiB
    parts = memory.parameter_memory(40, 8, encoder)
    assert sum(parts.values()) == sum(p.numel() * p.element_size() for p in model.model.parameters())
    assert parts["item tables"] == 2 * 41 * 8 * 4 and parts["position table"] == 8 * 8 * 4


def test_ddp_processes_on_one_machine_share_its_memory(machine_of):
    module = SASRecModule(num_items=1000, encoder=EncoderOptions(hidden_size=8, num_blocks=1))  # the rest defaults
    parts = memory.training_memory(module, 10_000, (128, 500), None)
    machine_of(int(memory.peak(parts) * 1.5))
    assert memory.check_training_memory(module, 10_000, (128, 500), None, torch.device("cpu")) is None
    refusal = memory.check_training_memory(module, 10_000, (128, 500), None, torch.device("cpu"), processes=2)
    assert refusal is not None and " x 2 processes besides the parameters" in refusal
