"""``SASRecModule.recommend``: original ids, seen-item exclusion, cold items, empty sequences, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sasrec_lightning import SASRecModule
from sasrec_lightning.data.vocabulary import ItemVocabulary
from sasrec_lightning.model.options import EncoderOptions

ITEM_IDS = [None, "apple", "banana", "cherry", "date", "elder", "fig"]  # internal 1..6
POPULARITY = [0, 5, 1, 9, 2, 7, 3]


def tiny_module() -> SASRecModule:
    torch.manual_seed(0)
    module = SASRecModule(num_items=6, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=2, num_heads=2))
    module.set_item_vocabulary(["<pad>", *ITEM_IDS[1:]], POPULARITY)
    return module


def reference_scores(module: SASRecModule, internal: list[int]) -> torch.Tensor:
    """Scores of every item after one sequence, computed directly with the encoder."""
    module.eval()
    with torch.no_grad():
        ids = torch.tensor([internal[-module.model.max_len:]])
        return module.model.score_all(module.model(ids)[:, -1])[0]


def test_vocabulary_maps_both_ways_and_marks_unknown_ids():
    vocabulary = ItemVocabulary([0, 30, 10, 20])
    assert vocabulary.to_internal([10, 20, 30, 99]).tolist() == [2, 3, 1, 0]
    assert vocabulary.to_original(np.array([[1, 2]])).tolist() == [[30, 10]]
    strings = ItemVocabulary(["", "b", "a"])
    assert strings.to_internal(["a", "b", "zz"]).tolist() == [2, 1, 0]


def test_recommend_returns_original_ids_ranked_like_the_encoder():
    module = tiny_module()
    sequence = ["banana", "date", "fig", "apple", "cherry"]  # longer than max_len: last 4 used
    out = module.recommend([sequence], k=6, exclude_seen=False)
    scores = reference_scores(module, [2, 4, 6, 1, 3])
    expected = torch.argsort(scores[1:], descending=True) + 1
    assert out.items[0] == [ITEM_IDS[i] for i in expected.tolist()]
    assert out.scores[0] == pytest.approx(scores[expected].tolist(), rel=1e-5)


def test_recommend_excludes_seen_items_by_default_and_batches_mixed_lengths():
    module = tiny_module()
    sequences = [["apple", "banana"], ["cherry"], ["fig", "elder", "date"]]
    out = module.recommend(sequences, k=3)
    assert len(out.items) == 3
    for sequence, items, scores in zip(sequences, out.items, out.scores, strict=True):
        assert len(items) == 3 and not set(items) & set(sequence)
        assert scores == sorted(scores, reverse=True)
    # Batched (padded) and one-at-a-time answers agree.
    alone = module.recommend([sequences[1]], k=3)
    assert alone.items[0] == out.items[1]
    assert alone.scores[0] == pytest.approx(out.scores[1], rel=1e-5)


def test_recommend_returns_fewer_items_when_the_sequence_saw_almost_everything():
    module = tiny_module()
    out = module.recommend([["apple", "banana", "cherry", "date", "elder"]], k=4)
    assert out.items == [["fig"]]


def test_unknown_items_are_skipped_with_a_warning():
    module = tiny_module()
    with pytest.warns(UserWarning, match="skipped 2 unknown item id"):
        out = module.recommend([["banana", "kiwi", "date", "mango"]], k=3, exclude_seen=False)
    assert out == module.recommend([["banana", "date"]], k=3, exclude_seen=False)


def test_empty_and_all_unknown_sequences_get_the_most_popular_items():
    module = tiny_module()
    with pytest.warns(UserWarning, match="most-popular"):
        out = module.recommend([[], ["kiwi"], ["apple"]], k=3)
    assert out.items[0] == out.items[1] == ["cherry", "elder", "apple"]  # counts 9, 7, 5
    with pytest.warns(UserWarning, match="most-popular"):
        assert module.recommend([[]], k=2).items == [["cherry", "elder"]]  # a batch of nothing but empty rows
    assert out.scores[0] == [9.0, 7.0, 5.0]
    assert "apple" not in out.items[2]


def test_recommend_without_vocabulary_uses_internal_ids_and_restores_train_mode():
    torch.manual_seed(0)
    module = SASRecModule(num_items=6, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    module.train()
    with pytest.warns(UserWarning, match="unknown"):
        out = module.recommend([[1, 2, 7]], k=2)
    assert module.training
    assert all(1 <= item <= 6 and item not in (1, 2) for item in out.items[0])


def test_recommend_rejects_a_flat_sequence_and_bad_k():
    module = tiny_module()
    with pytest.raises(TypeError, match="list of item-id sequences"):
        module.recommend(["apple", "banana"])
    with pytest.raises(ValueError, match="k must be at least 1"):
        module.recommend([["apple"]], k=0)


def test_vocabulary_and_popularity_survive_a_weights_only_checkpoint(tmp_path):
    import lightning as L

    module = tiny_module()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["item_ids"][1:] == ITEM_IDS[1:]
    restored = SASRecModule.load_from_checkpoint(path, weights_only=True)
    assert restored.item_popularity.tolist() == POPULARITY
    sequence = [["banana", "fig"]]
    assert restored.recommend(sequence, k=3) == module.recommend(sequence, k=3)


def test_checkpoints_without_the_popularity_buffer_still_load(tmp_path):
    import lightning as L

    module = tiny_module()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    del checkpoint["state_dict"]["item_popularity"], checkpoint["item_ids"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    restored = SASRecModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert restored.item_popularity.sum() == 0 and restored.item_vocabulary is None
    with pytest.warns(UserWarning, match="most-popular"):
        assert len(restored.recommend([[]], k=2).items[0]) == 2


def test_the_fallback_is_visible_in_the_return_value():
    module = tiny_module()
    with pytest.warns(UserWarning):
        out = module.recommend([["banana"], [], ["kiwi"], ["kiwi", "date"]], k=2)
    assert out.fallback == [False, True, True, False]


def test_strict_raises_on_an_unknown_id_instead_of_falling_back():
    module = tiny_module()
    with pytest.raises(KeyError, match=r"strict=True.*1 item id\(s\) not in the model's vocabulary.*\[3\].*type int"):
        module.recommend([["banana", 3]], k=2, strict=True)  # an integer where the ids are strings
    out = module.recommend([["banana"], []], k=2, strict=True)  # known ids and an empty history: no error
    assert out.fallback == [False, True]
