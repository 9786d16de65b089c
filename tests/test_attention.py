"""Attention heatmaps: the averaged weights (vs a brute-force loop), the PNGs, the callback and the command."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from sasrec_lightning import SASRec, SASRecDataModule, SASRecModule
from sasrec_lightning.cli.attention import main
from sasrec_lightning.data.options import CacheOptions, SourceOptions
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.serving.attention import AttentionHeatmaps, average_attention, plot_attention

QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_encoder() -> SASRec:
    torch.manual_seed(0)
    return SASRec(num_items=20, max_len=5,
                  options=EncoderOptions(hidden_size=8, num_blocks=2, num_heads=2, dropout=0.3))


def test_average_attention_equals_a_brute_force_average_over_right_aligned_real_queries():
    encoder = tiny_encoder()
    batches = [torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]]), torch.tensor([[0, 7], [8, 9], [0, 0]])]
    maps, counts = average_attention(encoder, batches)
    assert encoder.training  # mode restored
    assert counts.tolist() == [1, 1, 2, 3, 4]
    encoder.eval()
    expected = torch.zeros(2, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            for row in batch:
                _, weights = encoder(row[None], need_weights=True)  # unpadded batch of one
                width = row.numel()
                for i in range(width):
                    if row[i] == 0:
                        continue
                    for block, w in enumerate(weights):
                        expected[block, :, 5 - width + i, 5 - width:] += w[0, :, i].double()
    expected /= counts[:, None]
    torch.testing.assert_close(maps, expected.float(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 5))  # each query's weights sum to one
    assert (maps.triu(diagonal=1) == 0).all()  # causal


def test_average_attention_respects_max_users_and_rejects_attention_free_models():
    encoder = tiny_encoder()
    _, counts = average_attention(encoder, [torch.ones(4, 3, dtype=torch.long)] * 3, max_users=6)
    assert counts[-1] == 6
    with pytest.raises(ValueError, match="num_blocks=0"):
        average_attention(SASRec(5, 3, EncoderOptions(hidden_size=4, num_blocks=0)),
                          [torch.ones(1, 2, dtype=torch.long)])


def test_plot_attention_writes_one_png_per_block_and_head(tmp_path):
    pytest.importorskip("matplotlib")
    maps, _ = average_attention(tiny_encoder(), [torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])])
    written = plot_attention(maps, tmp_path, positions=4)
    assert [p.name for p in written] == ["attention.png", "attention_block1_head1.png", "attention_block1_head2.png",
                                         "attention_block2_head1.png", "attention_block2_head2.png"]
    assert all(p.read_bytes().startswith(PNG) for p in written)


class FakeWandb(L.pytorch.loggers.CSVLogger):
    """Stands in for WandbLogger (matched by class name): records log_image calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.images = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, kwargs))


FakeWandb.__name__ = "WandbLogger"


def test_callback_renders_after_fit_and_logs_images(tmp_path):
    pytest.importorskip("matplotlib")
    data = SASRecDataModule(max_len=6, print_statistics=False,
                            source=SourceOptions(synthetic_users=40, synthetic_items=100),
                            cache=CacheOptions(use=False))
    model = SASRecModule(num_items=data.num_items, max_len=6,
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1, num_heads=2))
    logger = FakeWandb(tmp_path)
    callback = AttentionHeatmaps(output_dir=str(tmp_path / "maps"), positions=6, on_test_end=False)
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert (tmp_path / "maps" / "attention_block1_head2.png").read_bytes().startswith(PNG)
    (overview, _, _), (key, images, kwargs) = logger.images
    assert overview == "attention/overview" and key == "attention/heads"
    assert len(images) == 2 and kwargs["caption"] == ["attention_block1_head1", "attention_block1_head2"]
    saved = torch.load(tmp_path / "maps" / "attention.pt", weights_only=True)
    assert saved["attention"].shape == (1, 2, 6, 6)


def test_attention_command_on_the_quickstart_config(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    main(["-c", QUICKSTART, "--data.source.synthetic_users", "40", "--data.source.synthetic_items", "100",
          "--data.cache.use", "false", "--data.print_statistics", "false", "--model.init_args.encoder.hidden_size", "8",
          "--attention.output_dir", str(tmp_path), "--attention.positions", "10"])
    assert "attention_block2_head1.png" in capsys.readouterr().out
    assert (tmp_path / "attention.png").read_bytes().startswith(PNG)


def test_attention_command_without_matplotlib_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError, as when absent
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit) as exit_info:
        # A missing data file too: the missing package is said first, before anything is read.
        main(["-c", QUICKSTART, "--data.path", str(tmp_path / "absent.txt"), "--attention.output_dir",
              str(tmp_path / "maps")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("error: attention heatmaps need matplotlib, which is not installed") and \
        error.count("\n") == 1, error
    assert 'pip install "sasrec-lightning[plots]"' in error and not (tmp_path / "maps").exists()


def test_callback_without_matplotlib_stops_before_training(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    data = SASRecDataModule(max_len=6, print_statistics=False, source=SourceOptions(synthetic_users=40),
                            cache=CacheOptions(use=False))
    model = SASRecModule(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    trainer = L.Trainer(max_epochs=1, logger=False, callbacks=[AttentionHeatmaps(on_test_end=False)],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ImportError, match=r"pip install \"sasrec-lightning\[plots\]\"") as error:
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0 and type(error.value).__name__ == "MissingPackageError"
