"""The serving part of SASRecModule (serving.py) and its helpers in recommend.py and checkpoints.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import CacheOptions, SourceOptions
from sasrec_lightning.errors import CheckpointError
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.serving.recommend import served_items
from sasrec_lightning.training.checkpoints import check_checkpoint_data


def test_served_items_checks_the_counts_against_the_model():
    vocabulary, counts = served_items(["<pad>", "a", "b"], [0, 4, 1], num_items=2)
    assert vocabulary.to_internal(["b", "a"]).tolist() == [2, 1]
    assert counts.dtype == torch.int64 and counts.tolist() == [0, 4, 1]
    assert served_items(["<pad>", "a", "b"], None, num_items=2)[1] is None
    with pytest.raises(ValueError, match=r"item vocabulary has 2 items but the model was built with num_items=3"):
        served_items(["<pad>", "a", "b"], None, num_items=3)
    with pytest.raises(ValueError, match=r"popularity has 2 entries; expected num_items \+ 1 = 3"):
        served_items(["<pad>", "a", "b"], [1, 2], num_items=2)


def test_predict_step_follows_set_prediction_like_a_brute_force():
    torch.manual_seed(0)
    module = SASRecModule(num_items=6, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1)).eval()
    batch = {"input_ids": torch.tensor([[0, 1, 2], [3, 4, 5]]), "users": torch.tensor([7, 9]),
             "seen_rows": torch.tensor([0, 0, 1, 1, 1, 1]), "seen_items": torch.tensor([1, 2, 2, 3, 4, 5])}
    with torch.no_grad():
        scores = module.model.score_all(module.model(batch["input_ids"])[:, -1]).numpy().copy()  # (2, 7)
    module.set_prediction(k=3, exclude_seen=True)
    with torch.no_grad():
        out = module.predict_step(batch, 0)
    scores[:, 0] = -np.inf
    scores[0, [1, 2]] = scores[1, [2, 3, 4, 5]] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :3]  # (2, 3)
    assert out["users"].tolist() == [7, 9]
    assert out["items"][0].tolist() == expected[0].tolist()
    assert out["items"][1, :2].tolist() == expected[1, :2].tolist()  # user 9 has items 1 and 6 left
    assert torch.isfinite(out["scores"][0]).all() and not torch.isfinite(out["scores"][1, 2])  # no third item
    module.set_prediction(k=2, exclude_seen=False)
    with torch.no_grad():
        assert module.predict_step(batch, 0)["items"].shape == (2, 2)


def test_check_checkpoint_data_refuses_other_item_ids():
    module = SASRecModule(num_items=3, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    checkpoint = {"state_dict": module.state_dict(), "item_ids": ["<pad>", "a", "b", "c"]}
    check_checkpoint_data(checkpoint, module.state_dict(), 3, None, np.array(["<pad>", "a", "b", "c"]))
    with pytest.raises(CheckpointError):
        check_checkpoint_data(checkpoint, module.state_dict(), 3, None, np.array(["<pad>", "a", "b", "z"]))


def test_data_module_item_ids_are_its_sequences():
    data = SASRecDataModule(max_len=8, print_statistics=False,
                            source=SourceOptions(synthetic_users=30, synthetic_items=20), cache=CacheOptions(use=False))
    assert np.array_equal(data.item_ids(), data.sequences.item_ids)
    assert len(data.item_ids()) == data.sequences.num_items + 1
