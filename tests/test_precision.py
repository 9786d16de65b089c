"""Mixed precision on CPU: bf16-mixed trains without NaN/inf, loss and metrics stay fp32.

There is no GPU here: ``16-mixed`` (fp16 + GradScaler) is a CUDA feature and Lightning maps it to
bf16 on CPU, so fp16 is only covered at the encoder/loss level with CPU fp16 autocast.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from sasrec_lightning import SASRec, SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.fast.dropout import use_pooled_dropout
from sasrec_lightning.model.losses import SampledSoftmaxLoss
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.evaluation import EvaluationOptions
from sasrec_lightning.training.optimization import OptimizationOptions


class RecordLoss(L.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())


@pytest.mark.parametrize(("loss", "sharing"), [("bce", "batch"), ("sampled_softmax", "batch"),
                                              ("sampled_softmax", "sequence"), ("ce", "batch")])
def test_bf16_mixed_trains_finite_with_fp32_loss_and_metrics(synthetic_txt, loss, sharing):
    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(path=str(synthetic_txt), max_len=12, print_statistics=False,
                            loader=LoaderOptions(batch_size=16))
    model = SASRecModule(num_items=data.num_items, max_len=12,
                         encoder=EncoderOptions(hidden_size=16, num_blocks=2, num_heads=2, dropout=0.2),
                         loss=SampledSoftmaxLoss(negatives=20, sharing=sharing) if loss == "sampled_softmax" else loss,
                         optimization=OptimizationOptions(lr=0.01), evaluation=EvaluationOptions(protocol="full"))
    record = RecordLoss()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[record])
    trainer.fit(model, datamodule=data)
    assert trainer.precision == "bf16-mixed"
    assert len(record.losses) == 2 * len(data.train_dataloader())
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in record.losses)
    per_epoch = len(record.losses) // 2  # batch losses scale with their positions: compare whole epochs
    assert sum(record.losses[per_epoch:]) < sum(record.losses[:per_epoch])  # it learned something
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    metrics = trainer.callback_metrics
    assert metrics["val/ndcg@10"].dtype == torch.float32 and torch.isfinite(metrics["val/ndcg@10"])

    # Metrics under bf16 autocast equal the fp32 evaluation of the same weights (scores are fp32).
    bf16 = trainer.validate(model, datamodule=data, verbose=False)[0]
    fp32 = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False).validate(model, datamodule=data, verbose=False)[0]
    for name, value in fp32.items():
        assert bf16[name] == pytest.approx(value, abs=0.02), name


@pytest.mark.parametrize("pooled", [False, True], ids=["plain", "pooled_dropout"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_mask_is_finite_under_autocast(dtype, pooled):
    """Left padding, a fully padded row and a one-item row: no NaN/inf in outputs or gradients."""
    torch.manual_seed(0)
    encoder = SASRec(num_items=20, max_len=6,
                     options=EncoderOptions(hidden_size=16, num_blocks=2, num_heads=2, dropout=0.3))
    if pooled:  # the speed part speed.pooled_dropout swaps in at fit start (on CPU)
        assert use_pooled_dropout(encoder) is not None
    input_ids = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7], [0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    for training in (True, False):
        encoder.train(training)
        with torch.autocast("cpu", dtype=dtype):
            hidden = encoder(input_ids)  # (B, L, d)
            scores = encoder.score_all(hidden[:, -1])  # (B, I + 1)
        assert torch.isfinite(hidden).all() and torch.isfinite(scores).all(), (dtype, training)
    encoder.train()
    with torch.autocast("cpu", dtype=dtype):
        loss = encoder.score_all(encoder(input_ids)[:, -1]).float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
