"""A data module of your own, written from the batch contract alone (``docs/data-contract.md``).

It serves sequences it holds in memory (lists of item ids ``1..num_items``), with the paper's
leave-one-out split and 100 sampled negatives for evaluation, and nothing of
``SASRecDataModule``. Run it to train and evaluate a small SASRec on a toy task::

    python docs/examples/minimal_datamodule.py

The test suite runs it (``tests/test_worked_examples.py``).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from sasrec_lightning import SASRecModule


def left_pad(sequences: list[list[int]], width: int) -> torch.Tensor:
    """``(B, width)`` int64: the last ``width`` items of each sequence, left-padded with 0."""
    rows = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tail = sequence[-width:]
        if tail:
            rows[row, width - len(tail):] = torch.tensor(tail)
    return rows


class InMemorySequences(L.LightningDataModule):
    """Users' item sequences in memory; training on all but the last two items of each.

    Args:
        sequences: one list of item ids per user, oldest first (ids ``1..num_items``).
        num_items: catalogue size.
        max_len: longest input the model sees.
        num_negatives: negatives per training position (the paper's BCE uses 1).
        batch_size: users per batch.
    """

    def __init__(self, sequences: list[list[int]], num_items: int, max_len: int = 20, num_negatives: int = 1,
                 batch_size: int = 32) -> None:
        super().__init__()
        self.sequences, self.num_items, self.max_len = sequences, num_items, max_len
        self.num_negatives, self.batch_size = num_negatives, batch_size
        self.generator = torch.Generator().manual_seed(0)

    def _negatives(self, shape: tuple[int, ...], avoid: torch.Tensor) -> torch.Tensor:
        """Uniform item ids of ``shape`` that differ from ``avoid`` (broadcast over the last dimension)."""
        draws = torch.randint(1, self.num_items, shape, generator=self.generator)
        return draws + (draws >= avoid.unsqueeze(-1)).long()  # skip the avoided id: uniform over the others

    def _training_batch(self, users: list[list[int]]) -> dict[str, torch.Tensor]:
        train = [sequence[:-2] for sequence in users]  # the last two items are validation and test
        inputs = left_pad([sequence[:-1] for sequence in train], self.max_len)  # (B, L)
        targets = left_pad([sequence[1:] for sequence in train], self.max_len)  # (B, L), 0 = no target
        negatives = self._negatives((*targets.shape, self.num_negatives), targets)  # (B, L, k)
        negatives[targets == 0] = 0
        return {"input_ids": inputs, "targets": targets, "negatives": negatives}

    def _evaluation_batch(self, users: list[list[int]], held_out: int) -> dict[str, torch.Tensor]:
        histories = [sequence[:held_out] for sequence in users]  # everything before the held-out item
        targets = torch.tensor([sequence[held_out] for sequence in users])  # (B,)
        candidates = torch.cat([targets.unsqueeze(1), self._negatives((len(users), 100), targets)], dim=1)
        return {"input_ids": left_pad(histories, self.max_len), "targets": targets, "candidates": candidates}

    def train_dataloader(self) -> DataLoader:
        usable = [sequence for sequence in self.sequences if len(sequence) >= 4]  # at least one training pair
        return DataLoader(usable, batch_size=self.batch_size, shuffle=True, collate_fn=self._training_batch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sequences, batch_size=self.batch_size,
                          collate_fn=lambda u: self._evaluation_batch(u, -2))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sequences, batch_size=self.batch_size,
                          collate_fn=lambda u: self._evaluation_batch(u, -1))


def main() -> None:
    L.seed_everything(0, verbose=False)
    num_items = 200
    # A toy task: each user walks up the catalogue from a random start (item i is followed by i + 1).
    starts = torch.randint(1, num_items - 30, (300,)).tolist()
    sequences = [list(range(start, start + 12)) for start in starts]
    data = InMemorySequences(sequences, num_items, max_len=20)
    # loss_normalization "batch": each batch's loss is its mean over positions. The default ("epoch") needs
    # training_statistics() from the data module, which this one does not offer (it would warn and do the same).
    model = SASRecModule(num_items=num_items, max_len=20, encoder={"hidden_size": 32, "num_blocks": 1},
                         optimization={"lr": 0.005, "loss_normalization": "batch"})
    trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    print(f"test NDCG@10 {test['test/ndcg@10']:.4f} HR@10 {test['test/hr@10']:.4f}")


if __name__ == "__main__":
    main()
