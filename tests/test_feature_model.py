"""Item side features in the model (issue 26): ``FeatureItems``, its options, training, serving and checkpoints.

The item tables are built by hand here (``ItemFeatures`` of ``data/features.py``); a data module
that reads them from a file is the data part's. :class:`FeatureData` gives any
``SASRecDataModule`` one, and can mark items cold (no trained id) by zeroing their popularity.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from conftest import run_ddp_script
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.features import FeatureColumn, ItemFeatures
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.errors import CheckpointError, OptionError
from sasrec_lightning.model import items as items_module
from sasrec_lightning.model.encoder import SASRec
from sasrec_lightning.model.items import FeatureItems, ItemRepresentation
from sasrec_lightning.model.options import EncoderOptions, ItemFeatureOptions
from sasrec_lightning.training.evaluation import EvaluationOptions

TINY = EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.2)
LOSSES = ["bce", "bpr", "gbce", {"class_path": "sampled_softmax", "init_args": {"negatives": 10}},
          {"class_path": "gbce", "init_args": {"shared_negatives": 10}}, "ce"]


def hand_features(num_items: int, vectors: bool = True) -> ItemFeatures:
    """A categorical, a multi-valued, a numeric and (optionally) a vector column for items ``1..num_items``.

    Unknown codes, items without tags, missing numbers and missing vectors all occur.
    """
    ids = np.arange(num_items + 1)
    category = np.where(ids % 6 == 5, 0, ids % 4 + 1)  # code 0 (unknown) for every 6th item
    tags = np.stack([ids % 5 + 1, np.where(ids % 3 == 0, 0, ids % 7 + 1), np.zeros_like(ids)], axis=1)
    tags[ids % 10 == 9] = 0  # items without any tag
    price = ((ids % 9) / 4.0 - 1.0).astype(np.float32)
    price[ids % 8 == 7] = np.nan
    columns = [FeatureColumn("category", "categorical", 5), FeatureColumn("tags", "multi", 8, 3),
               FeatureColumn("price", "numeric", 1)]
    values = {"category": category, "tags": tags, "price": price}
    if vectors:
        rng = np.random.default_rng(0)
        vector = rng.normal(size=(num_items + 1, 4)).astype(np.float32)
        vector[ids % 7 == 3] = np.nan
        columns.append(FeatureColumn("text", "vector", 4, 4))
        values["text"] = vector
    for column in values.values():
        column[0] = 0 if column.dtype.kind == "i" else np.nan
    has_row = ids > 0
    return ItemFeatures(tuple(columns), values, vocabularies={"category": ["<unknown>", "a", "b", "c", "d"],
                                                                "tags": ["<unknown>", *"tuvwxyz"]},
                        scaling={"price": (10.0, 2.0)}, has_row=has_row)


class FeatureData(SASRecDataModule):
    """A data module with a hand-built item table; ``cold`` internal ids get no training popularity."""

    def __init__(self, *args, cold: tuple[int, ...] = (), no_row: tuple[int, ...] = (), vectors: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cold, self.no_row, self.vectors = tuple(cold), tuple(no_row), vectors

    @property
    def item_features(self) -> ItemFeatures:
        features = hand_features(self.num_items, self.vectors)
        features.has_row[list(self.no_row)] = False
        return features

    @property
    def item_feature_spec(self) -> dict:
        return self.item_features.spec()

    def item_popularity(self) -> np.ndarray:
        popularity = super().item_popularity().copy()
        popularity[list(self.cold)] = 0
        return popularity


def feature_encoder(num_items=12, combine="sum", use_ids=True, id_dropout=0.0, seed=0, vectors=True) -> SASRec:
    torch.manual_seed(seed)
    features = hand_features(num_items, vectors)
    encoder = SASRec(num_items, 6, TINY, features.spec(),
                     ItemFeatureOptions(combine=combine, id_dropout=id_dropout, use_ids=use_ids))
    trained = np.ones(num_items + 1, dtype=bool)
    trained[[2, 5]] = False  # two cold items
    encoder.items.load_features(features, trained)
    return encoder


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(("field", "value", "message"), [
    ("combine", "mean", "--model.features.combine 'mean': expected one of 'sum', 'concat'"),
    ("id_dropout", 1.0, r"--model.features.id_dropout 1.0: expected a number in \[0.0, 1.0\)"),
    ("id_dropout", -0.1, r"--model.features.id_dropout -0.1"),
    ("use_ids", "no", "--model.features.use_ids 'no': expected true or false"),
])
def test_feature_options_are_checked(field, value, message):
    with pytest.raises(OptionError, match=message):
        ItemFeatureOptions(**{field: value})


def test_module_takes_feature_options_as_a_mapping_and_saves_plain_values():
    spec = hand_features(12).spec()
    module = SASRecModule(num_items=12, max_len=6, encoder=TINY, item_features=spec,
                          features={"combine": "concat", "id_dropout": 0.3})
    assert module.features == ItemFeatureOptions(combine="concat", id_dropout=0.3)
    assert module.hparams["features"] == {"combine": "concat", "id_dropout": 0.3, "use_ids": True}
    assert module.hparams["item_features"] == spec
    assert isinstance(module.model.items, FeatureItems)


# ------------------------------------------------------------------------------------------- the representation
def test_without_features_the_model_is_the_papers():
    torch.manual_seed(0)
    encoder = SASRec(12, 6, TINY)
    assert type(encoder.items) is ItemRepresentation and encoder.output_items is None
    assert [name for name, _ in encoder.items.named_parameters()] == ["embedding.weight"]
    assert encoder.items.blocked_items() is None
    unshared = SASRec(12, 6, EncoderOptions(hidden_size=8, num_blocks=1, share_item_embedding=False))
    assert type(unshared.output_items) is ItemRepresentation


@pytest.mark.parametrize("combine", ["sum", "concat"])
@pytest.mark.parametrize("use_ids", [True, False])
def test_vectors_of_ids_are_rows_of_the_table_bit_for_bit(combine, use_ids):
    encoder = feature_encoder(combine=combine, use_ids=use_ids).eval()
    ids = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 12], [9, 10, 11, 8, 3]])
    with torch.no_grad():
        table = encoder.items.table()
        assert table.shape == (13, 8)
        assert torch.equal(encoder.items(ids), table[ids])
        assert torch.equal(table[0], torch.zeros(8))  # padding: exactly zero
        # The computation itself, on the ids (no table): the same values.
        torch.testing.assert_close(encoder.items._vectors(ids), table[ids])


def test_padding_is_zero_and_gets_no_gradient_in_training():
    encoder = feature_encoder(combine="concat", id_dropout=0.5).train()
    ids = torch.tensor([[0, 0, 1, 2], [0, 3, 4, 5]])
    vectors = encoder.items(ids)
    assert torch.equal(vectors[ids == 0], torch.zeros(3, 8))
    vectors.sum().backward()
    assert torch.equal(encoder.items.embedding.weight.grad[0], torch.zeros(8))


def test_feature_parts_follow_the_table():
    """Unknown codes, the mean of the tags, missing numbers and vectors, and unknown ids, each by hand."""
    encoder = feature_encoder(use_ids=True).eval()
    items, features = encoder.items, hand_features(12)
    category, tags, price, text = items.columns
    with torch.no_grad():
        # Item 5: category code 0 -> the learned unknown vector (row 0), not zero.
        assert torch.equal(category(torch.tensor([5])), category.embedding.weight[[0]])
        assert category.embedding.weight[0].abs().sum() > 0
        # Item 4: tags [5, 5 (4 % 7 + 1), 0] -> mean of rows 5 and 5; item 3: [4, 0, 0] -> row 4 alone.
        expected = tags.embedding.weight[[5, 5]].mean(0)
        torch.testing.assert_close(tags(torch.tensor([4]))[0], expected)
        assert torch.equal(tags(torch.tensor([3]))[0], tags.embedding.weight[4])
        # Item 9: no tag at all -> the unknown vector.
        assert not features.values["tags"][9].any()
        assert torch.equal(tags(torch.tensor([9]))[0], tags.embedding.weight[0])
        # Item 7: price NaN -> the missing vector; item 1: value * w + b.
        assert torch.equal(price(torch.tensor([7]))[0], price.missing[0])
        value = float(features.values["price"][1])
        torch.testing.assert_close(price(torch.tensor([1]))[0], value * price.linear.weight[:, 0] + price.linear.bias)
        # Item 3: vector row NaN -> the missing vector.
        assert torch.equal(text(torch.tensor([3]))[0], text.missing[0])
        # Item 2 is cold (no trained id): the unknown-id vector replaces its id row; item 1 uses its row.
        assert torch.equal(items._id_vectors(torch.tensor([2]))[0], items.unknown_id[0])
        assert torch.equal(items._id_vectors(torch.tensor([1]))[0], items.embedding.weight[1])
        # sum: id + every column.
        parts = [items._id_vectors(torch.tensor([4]))] + [column(torch.tensor([4])) for column in items.columns]
        torch.testing.assert_close(items.table()[4], sum(parts)[0])


def test_id_dropout_replaces_ids_in_training_only():
    encoder = feature_encoder(id_dropout=0.999).train()
    items = encoder.items
    ids = torch.arange(1, 13).repeat(20)
    assert torch.equal(items._id_vectors(ids), items.unknown_id.expand(ids.numel(), -1))
    items.eval()
    assert torch.equal(items._id_vectors(torch.tensor([1, 3])), items.embedding.weight[[1, 3]])
    items.train()
    items.options = ItemFeatureOptions(id_dropout=0.5)
    replaced = (items._id_vectors(ids) == items.unknown_id[0]).all(-1)
    assert 0.3 < replaced[~torch.isin(ids, torch.tensor([2, 5]))].float().mean() < 0.7
    # Its own stream: the torch generator is not drawn from; the counter in the state dict replays a draw.
    state, draws = torch.get_rng_state(), int(items.dropout_draws)
    first = items._id_vectors(ids)
    assert torch.equal(torch.get_rng_state(), state) and int(items.dropout_draws) == draws + 1
    items.dropout_draws.fill_(draws)
    assert torch.equal(items._id_vectors(ids), first)
    # A dropped id's row gets no gradient: only the rows used.
    items.embedding.weight.grad = None
    ids = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3])
    draws = int(items.dropout_draws)
    used = ~(items._id_vectors(ids) == items.unknown_id[0]).all(-1)
    items.dropout_draws.fill_(draws)
    items._id_vectors(ids).sum().backward()
    assert torch.equal(items.embedding.weight.grad[1], torch.full((8,), float(used[:10].sum())))


def test_the_table_is_computed_once_while_the_weights_stay(monkeypatch):
    encoder = feature_encoder().eval()
    calls = count_tables(monkeypatch)
    with torch.no_grad():
        first = encoder.items.table()
        encoder.items(torch.tensor([[1, 2]]))
        encoder.score_all(encoder.last_hidden(torch.tensor([[1, 2, 3]])))
        assert calls() == 1
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    encoder.train()
    encoder.items(torch.tensor([1, 2, 4])).sum().backward()
    assert calls() == 1  # training computes the vectors of the ids only
    optimizer.step()
    encoder.eval()
    with torch.no_grad():
        assert not torch.equal(encoder.items.table(), first)  # a step changed the weights: a new table
    assert calls() == 2


def test_eval_vectors_are_rows_of_the_computed_table(monkeypatch):
    """In eval mode without autograd the vectors of ids are read from the table, not computed again."""
    encoder = feature_encoder(combine="concat").eval()
    computed = []
    vectors = FeatureItems._vectors
    monkeypatch.setattr(FeatureItems, "_vectors", lambda self, ids: computed.append(ids.shape) or vectors(self, ids))
    with torch.no_grad():
        table = encoder.items.table()
        encoder.items(torch.tensor([[0, 1, 2], [3, 4, 5]]))
        encoder.item_vectors(torch.tensor([7, 8]))
    assert computed == [torch.Size([13])]  # only the table, on 0..I
    with torch.no_grad():
        table[4] += 1.0  # (the kept table itself)
        assert torch.equal(encoder.items(torch.tensor([4])), table[[4]])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "written_out"])
@pytest.mark.parametrize("loss", LOSSES, ids=["bce", "bpr", "gbce", "sampled_softmax", "gbce_shared", "ce"])
def test_every_loss_reaches_every_feature_parameter(loss, fused):
    """The loss alone (no input side): the gradient reaches the id table and every feature part."""
    from sasrec_lightning.fast.speed import use_fused_losses
    from sasrec_lightning.model.losses import resolve_loss

    encoder = feature_encoder(combine="concat", id_dropout=0.3).train()
    module = resolve_loss(loss)
    if fused:
        use_fused_losses(module)
    torch.manual_seed(0)
    hidden = torch.randn(20, 8)
    targets = torch.randint(1, 13, (20,))
    negatives = torch.randint(1, 13, (20, 1))
    rows = torch.arange(20) // 5
    value = module(encoder.items, hidden, targets, negatives, torch.Generator().manual_seed(0), rows)
    value.backward()
    for name, parameter in encoder.items.named_parameters():
        if loss == "bpr" and name == "project.bias":
            continue  # BPR scores differences of two items: a bias shared by all of them cancels
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} gets no gradient from {loss}"


def test_weights_version_changes_with_every_write():
    """The one private attribute (``Tensor._version``), isolated in ``_weights_version``."""
    encoder = feature_encoder()
    before = items_module._weights_version(encoder.items)
    with torch.no_grad():
        encoder.items.columns[0].embedding.weight[3, 1] += 1.0
    after = items_module._weights_version(encoder.items)
    assert after != before
    encoder.items.load_state_dict(encoder.items.state_dict())
    assert items_module._weights_version(encoder.items) != after
    assert items_module._weights_version(encoder.items) == items_module._weights_version(encoder.items)


def test_blocked_items_are_those_without_a_trained_id_or_a_row():
    features = hand_features(12)
    features.has_row[[2, 7]] = False  # 2 is cold (untrained) too; 7 is trained
    encoder = SASRec(12, 6, TINY, features.spec())
    trained = np.ones(13, bool)
    trained[[2, 5]] = False
    encoder.items.load_features(features, trained)
    assert torch.nonzero(encoder.items.blocked_items()).squeeze(1).tolist() == [2]


def test_reset_parameters_covers_the_feature_parameters():
    encoder = feature_encoder(combine="concat")
    for name, parameter in encoder.items.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(parameter, torch.zeros_like(parameter)), name
        else:
            assert 0.005 < parameter[1:].std() < 0.05 if name == "embedding.weight" else parameter.std() > 0.005, name


def test_unshared_output_items_get_their_own_features():
    spec = hand_features(12).spec()
    torch.manual_seed(0)
    encoder = SASRec(12, 6, EncoderOptions(hidden_size=8, num_blocks=1, share_item_embedding=False), spec)
    assert isinstance(encoder.items, FeatureItems) and isinstance(encoder.output_items, FeatureItems)
    tables = [items.columns[0].embedding.weight.data_ptr() for items in (encoder.items, encoder.output_items)]
    assert tables[0] != tables[1]


# -------------------------------------------------------------------------------------------- training, serving
def count_tables(monkeypatch):
    calls = []
    compute = FeatureItems._compute_table

    def counted(self):
        calls.append(1)
        return compute(self)

    monkeypatch.setattr(FeatureItems, "_compute_table", counted)
    return lambda: len(calls)


def feature_data(path, **kwargs) -> FeatureData:
    return FeatureData(path=str(path), max_len=8, seed=3, print_statistics=False,
                       loader=LoaderOptions(batch_size=8, eval_batch_size=16), **kwargs)


def feature_module(data, loss="bce", protocol="full", **kwargs) -> SASRecModule:
    return SASRecModule(num_items=data.num_items, max_len=8, encoder=TINY, loss=loss,
                        evaluation=EvaluationOptions(protocol=protocol, top_k=(1, 5)),
                        item_features=data.item_feature_spec, **kwargs)


def trainer(root=None, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(default_root_dir=root, **{**options, **kwargs})




@pytest.mark.parametrize("fused", [True, False], ids=["fused", "written_out"])
@pytest.mark.parametrize("loss", LOSSES, ids=["bce", "bpr", "gbce", "sampled_softmax", "gbce_shared", "ce"])
def test_every_loss_trains_the_feature_parameters(synthetic_txt, loss, fused):
    L.seed_everything(0, verbose=False)
    data = feature_data(synthetic_txt)
    module = feature_module(data, loss, speed={"fused_losses": fused})
    before = {name: p.detach().clone() for name, p in module.model.items.named_parameters()}
    trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=data)
    for name, parameter in module.model.items.named_parameters():
        assert not torch.equal(parameter, before[name]), f"{name} did not learn under {loss}"


@pytest.mark.parametrize("updates", ["lazy", "deferred"])
def test_row_sparse_id_updates_with_features(synthetic_txt, updates):
    """Lazy/deferred Adam: the id table row-sparse (rows used only), the feature tables dense."""
    L.seed_everything(0, verbose=False)
    data = feature_data(synthetic_txt)
    module = feature_module(data, {"class_path": "sampled_softmax", "init_args": {"negatives": 5}},
                            speed={"item_updates": updates}, features={"id_dropout": 0.0})
    ids = module.model.items.embedding.weight
    before = ids.detach().clone()
    categories = module.model.items.columns[0].embedding.weight.detach().clone()
    used = set()

    class Used(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            used.update(batch["input_ids"].unique().tolist())

    trainer(max_steps=1, limit_val_batches=0, callbacks=[Used()]).fit(module, datamodule=data)
    changed = set(torch.nonzero((ids.detach() != before).any(-1)).squeeze(1).tolist())
    assert changed and 0 not in changed
    if updates == "lazy":  # only rows a step used (inputs, targets, sampled negatives): not all
        assert len(changed) < data.num_items
    assert not torch.equal(module.model.items.columns[0].embedding.weight, categories)


def test_one_table_per_evaluation_pass_and_prediction(synthetic_txt, monkeypatch, tmp_path):
    L.seed_everything(0, verbose=False)
    data = feature_data(synthetic_txt)
    module = feature_module(data, protocol="sampled")
    trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=data)
    calls = count_tables(monkeypatch)
    run = trainer()
    for protocol in ("sampled", "full"):
        module.ranker.options = module.evaluation = EvaluationOptions(protocol=protocol, top_k=(1, 5))
        start = calls()
        run.validate(module, datamodule=data, verbose=False)
        assert len(data.val_dataloader()) > 1 and calls() - start == 1, protocol
    start = calls()
    run.predict(module, datamodule=data, return_predictions=False)
    assert calls() - start == 1
    start = calls()
    module.recommend([[1, 2, 3]] * 3000, k=3)  # 3 batches of 1024 sequences
    assert calls() - start == 1


def test_cold_items_are_scored_and_recommended_from_features(synthetic_txt):
    L.seed_everything(0, verbose=False)
    data = feature_data(synthetic_txt, cold=(3, 4))
    module = feature_module(data)
    trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=data)
    items = module.model.items
    assert items.id_known[[3, 4]].tolist() == [False, False] and items.id_known[[0, 1, 2]].all()
    module.eval()
    with torch.no_grad():
        table = items.table()
        expected = items.unknown_id[0] + sum(column(torch.tensor([3]))[0] for column in items.columns)
        torch.testing.assert_close(table[3], expected)  # the features alone, plus the unknown id
    original = data.item_ids()
    cold = [original[3].item(), original[4].item()]
    answer = module.recommend([[original[1].item(), cold[0]]], k=data.num_items, exclude_seen=False)
    assert not answer.fallback[0] and set(cold) <= set(answer.items[0])  # cold items are ranked
    assert all(np.isfinite(answer.scores[0]))


def test_items_without_id_or_features_are_never_recommended(synthetic_txt, tmp_path):
    L.seed_everything(0, verbose=False)
    data = feature_data(synthetic_txt, cold=(3, 4, 6), no_row=(4, 6, 7))  # 7 has interactions
    module = feature_module(data)
    with pytest.warns(UserWarning, match=r"2 item\(s\) have no training interaction and no row in the item table "
                                         r"\(e\.g\. \[" ) as caught:
        trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=data)
    assert sum("no row in the item table" in str(w.message) for w in caught) == 1
    original = data.item_ids()
    blocked = {original[4].item(), original[6].item()}
    answer = module.recommend([[original[1].item(), original[4].item()]], k=data.num_items, exclude_seen=False)
    assert not blocked & set(answer.items[0]) and original[7].item() in answer.items[0]
    assert len(answer.items[0]) == data.num_items - 2
    predictions = trainer().predict(module, datamodule=data)
    items = torch.cat([p["items"] for p in predictions])
    assert not torch.isin(items, torch.tensor([4, 6])).any()


# ------------------------------------------------------------------------------------------------ checkpoints
def fitted_checkpoint(path, root, **data_options):
    L.seed_everything(0, verbose=False)
    data = feature_data(path, **data_options)
    module = feature_module(data)
    run = trainer(root, max_steps=2, limit_val_batches=0)
    run.fit(module, datamodule=data)
    checkpoint = root / "features.ckpt"
    run.save_checkpoint(checkpoint)
    return checkpoint, module, data


def test_checkpoint_carries_the_item_table_and_recommends_without_data(synthetic_txt, tmp_path):
    checkpoint, module, data = fitted_checkpoint(synthetic_txt, tmp_path, cold=(3,))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["item_features"] == data.item_features.state()
    assert saved["hyper_parameters"]["item_features"] == data.item_feature_spec
    loaded = SASRecModule.load_from_checkpoint(checkpoint, weights_only=True)
    assert isinstance(loaded.model.items, FeatureItems) and not loaded.model.items.id_known[3]
    sequences = [[data.item_ids()[i].item() for i in (1, 3, 5)], [data.item_ids()[3].item()]]
    expected, actual = module.recommend(sequences, k=5), loaded.recommend(sequences, k=5)
    assert actual.items == expected.items and actual.scores == expected.scores
    # Evaluating the checkpoint on its data: the check passes and the weights load.
    metrics = trainer().test(feature_module(data), datamodule=data, ckpt_path=checkpoint, verbose=False)[0]
    assert np.isfinite(metrics["test/ndcg@5"])


class OtherTable(FeatureData):
    @property
    def item_features(self) -> ItemFeatures:
        features = super().item_features
        features.vocabularies["tags"] = ["<unknown>", *"TUVWXYZ"]
        return features


class NoTable(SASRecDataModule):
    item_features = None
    item_feature_spec = None


def test_checkpoint_of_another_item_table_is_refused_naming_the_column(synthetic_txt, tmp_path):
    checkpoint, _, data = fitted_checkpoint(synthetic_txt, tmp_path)
    other = OtherTable(path=str(synthetic_txt), max_len=8, seed=3, print_statistics=False)
    with pytest.raises(CheckpointError, match="item feature column 'tags' has other values"):
        trainer().test(feature_module(other), datamodule=other, ckpt_path=checkpoint, verbose=False)
    plain = NoTable(path=str(synthetic_txt), max_len=8, seed=3, print_statistics=False)
    model = SASRecModule(num_items=data.num_items, max_len=8, encoder=TINY)
    with pytest.raises(CheckpointError, match=r"trained with item features \(columns \['category', 'tags', 'price', "
                                              r"'text'\]\) but the data gives no item table"):
        trainer().test(model, datamodule=plain, ckpt_path=checkpoint, verbose=False)


def test_id_only_checkpoint_with_an_item_table_is_refused(synthetic_txt, tmp_path):
    L.seed_everything(0, verbose=False)
    plain = NoTable(path=str(synthetic_txt), max_len=8, seed=3, print_statistics=False)
    run = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    run.fit(SASRecModule(num_items=plain.num_items, max_len=8, encoder=TINY), datamodule=plain)
    run.save_checkpoint(tmp_path / "ids.ckpt")
    data = feature_data(synthetic_txt)
    with pytest.raises(CheckpointError, match="trained without item features, but the data gives an item table"):
        trainer().test(feature_module(data), datamodule=data, ckpt_path=tmp_path / "ids.ckpt", verbose=False)


def test_resume_with_features_equals_the_uninterrupted_run(synthetic_txt, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Crash(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                raise RuntimeError("simulated crash")

    def run(root, callbacks=(), ckpt_path=None):
        L.seed_everything(7, verbose=False)
        data = feature_data(synthetic_txt, cold=(3,))
        module = feature_module(data, features={"id_dropout": 0.3, "combine": "concat"})
        save = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=1)
        fit = trainer(root, max_steps=8, enable_checkpointing=True, callbacks=[save, *callbacks],
                      limit_val_batches=2)
        fit.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module

    reference = run(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crashed", [Crash()])
    resumed = run(tmp_path / "crashed", ckpt_path="last")
    for (name, expected), actual in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=f"{name} differs after resume")


def test_bf16_mixed_with_features_trains_finite_and_evaluates_like_fp32(synthetic_txt):
    L.seed_everything(0, verbose=False)
    data = feature_data(synthetic_txt, cold=(3,))
    module = feature_module(data, {"class_path": "sampled_softmax", "init_args": {"negatives": 10}},
                            features={"combine": "concat"})
    fit = trainer(precision="bf16-mixed", max_epochs=2)
    fit.fit(module, datamodule=data)
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in module.parameters())
    bf16 = fit.validate(module, datamodule=data, verbose=False)[0]
    fp32 = trainer().validate(module, datamodule=data, verbose=False)[0]
    for name, value in fp32.items():
        assert np.isfinite(bf16[name]) and bf16[name] == pytest.approx(value, abs=0.05), name


# ---------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_export_of_a_feature_model_matches_the_model(format, tmp_path):
    from sasrec_lightning.serving.export import ServingModel, export_onnx, export_torchscript

    encoder = feature_encoder(combine="concat")
    features = hand_features(12)
    features.has_row[5] = False  # 5 is cold (feature_encoder): never recommended
    encoder.items.load_features(features, encoder.items.id_known.clone())
    ids = torch.tensor([[0, 0, 1, 2, 3, 5], [7, 8, 9, 10, 11, 12]])
    encoder.eval()
    with torch.no_grad():
        hidden = encoder.last_hidden(ids)
        expected = encoder.score_all(hidden)
    expected[:, 0] = float("-inf")
    expected[:, 5] = float("-inf")
    serving = ServingModel(encoder)
    assert type(serving.encoder.items) is ItemRepresentation  # the computed table, nothing of the features
    if format == "torchscript":
        model = torch.jit.load(str(export_torchscript(encoder, tmp_path / "model.pt")))
        scores, user = model(ids)
        scores, user = scores.detach(), user.detach()
    else:
        pytest.importorskip("onnxruntime")
        import onnxruntime

        path = export_onnx(encoder, tmp_path / "model.onnx")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        scores, user = (torch.from_numpy(x) for x in session.run(None, {"input_ids": ids.numpy()}))
    torch.testing.assert_close(user, hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert torch.isinf(scores[:, 5]).all()


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_links_the_item_table_and_predicts_from_the_checkpoint(synthetic_txt, tmp_path, monkeypatch):
    """``fit`` links the data's ``item_feature_spec`` into the model; ``predict --ckpt_path`` rebuilds it."""
    from conftest import TINY_MODEL, TINY_TRAINER
    from sasrec_lightning.cli.app import cli_main

    monkeypatch.chdir(tmp_path)
    data = ["--data", "test_feature_model.FeatureData", "--data.path", str(synthetic_txt), "--data.cold", "[3]"]
    cli = cli_main(["fit", *data, *TINY_MODEL, *TINY_TRAINER, "--trainer.max_steps", "2", "--test_after_fit", "false",
                    "--trainer.default_root_dir", str(tmp_path), "--model.init_args.features.combine", "concat"])
    assert isinstance(cli.model.model.items, FeatureItems) and cli.model.features.combine == "concat"
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["item_features"] == cli.datamodule.item_feature_spec
    assert saved["item_features"]["vocabularies"]["tags"][1] == "t"
    output = tmp_path / "predictions.parquet"
    cli = cli_main(["predict", "--ckpt_path", str(checkpoint), "--data", "test_feature_model.FeatureData",
                    *TINY_TRAINER, "--prediction.output", str(output)])  # data options (path, cold): the checkpoint's
    assert isinstance(cli.model.model.items, FeatureItems) and cli.model.features.combine == "concat"
    assert not cli.model.model.items.id_known[3]
    assert output.is_file()


# ------------------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from test_feature_model import feature_data, feature_module, trainer


def main():
    data_path, out = sys.argv[1:3]
    L.seed_everything(3, verbose=False)
    data = feature_data(data_path, cold=(3, 4), no_row=(4,))
    module = feature_module(data, features={{"combine": "concat", "id_dropout": 0.2}})
    checkpoint = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_last=True, save_top_k=0)
    fit = trainer(devices=2, strategy="ddp", max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint])
    fit.fit(module, datamodule=data)
    ckpt = os.path.join(out, "ckpt", "last.ckpt")
    results = {{"world_size": fit.world_size,
                "validate": fit.validate(module, datamodule=data, ckpt_path=ckpt, verbose=False)[0],
                "test": fit.test(module, datamodule=data, ckpt_path=ckpt, verbose=False)[0]}}
    if fit.global_rank == 0:
        with open(os.path.join(out, "results.json"), "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main()
"""


def test_ddp_two_processes_with_features_match_one_process(synthetic_txt, tmp_path):
    import json
    from pathlib import Path

    script = tmp_path / "ddp_features.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "out"
    out.mkdir()
    run_ddp_script(script, [synthetic_txt, out], tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    data = feature_data(synthetic_txt, cold=(3, 4), no_row=(4,))
    model = SASRecModule.load_from_checkpoint(out / "ckpt" / "last.ckpt", weights_only=True)
    assert isinstance(model.model.items, FeatureItems) and not model.model.items.id_known[[3, 4]].any()
    single = trainer()
    for stage, run in (("validate", single.validate), ("test", single.test)):
        alone = run(model, datamodule=data, verbose=False)[0]
        assert set(alone) == set(results[stage])
        for name, value in alone.items():
            assert results[stage][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (stage, name)


@pytest.mark.parametrize("updates", ["dense", "lazy"])
def test_features_only_model_trains_and_scores(synthetic_txt, updates):
    """``use_ids: false``: no id table at all (the speed parts and ``l2_emb`` skip it); every item from its features."""
    L.seed_everything(0, verbose=False)
    data = feature_data(synthetic_txt)
    optimization = {"l2_emb": 0.01} if updates == "dense" else {}
    module = feature_module(data, features={"use_ids": False}, speed={"item_updates": updates},
                            optimization=optimization)
    assert module.model.items.embedding is None
    assert not any("embedding.weight" == name.split("items.")[-1] for name, _ in module.named_parameters())
    trainer(max_steps=2).fit(module, datamodule=data)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    answer = module.recommend([[data.item_ids()[1].item()]], k=3)
    assert len(answer.items[0]) == 3 and all(np.isfinite(answer.scores[0]))


def test_multi_valued_mean_has_the_gradient_of_the_written_out_mean():
    """``MultiColumn``'s weighted bag (its own backward) against the mean written out, in float64."""
    torch.manual_seed(0)
    table = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    codes = torch.tensor([[1, 2, 0], [0, 0, 0], [3, 3, 5], [4, 0, 0]])
    present = (codes != 0).double()
    count = present.sum(-1, keepdim=True)
    weights = present / count.clamp(min=1)
    weights[:, 0] += (count[:, 0] == 0).double()
    assert torch.autograd.gradcheck(lambda w: items_module._WeightedBag.apply(w, codes, weights), (table,))
    expected = (table[codes] * weights.unsqueeze(-1)).sum(1)
    torch.testing.assert_close(items_module._WeightedBag.apply(table, codes, weights), expected)
    assert torch.equal(expected[1], table[0])  # no value: the unknown vector


class DataWithFeatureOptions(FeatureData):
    """Records its item-table options under ``features``, as ``SASRecDataModule`` does with ``--data.features.*``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters({"features": {"path": "items.csv", "categorical": ["category"]}})


def test_loggers_get_the_model_and_data_feature_options_apart(synthetic_txt, tmp_path):
    """Lightning refuses one hyper-parameter name with two values; the model's are logged as ``model_features``."""
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0, verbose=False)
    data = DataWithFeatureOptions(path=str(synthetic_txt), max_len=8, seed=3, print_statistics=False)
    module = feature_module(data, features={"combine": "concat"})
    trainer(max_steps=1, limit_val_batches=0, logger=CSVLogger(tmp_path)).fit(module, datamodule=data)
    class Loader(yaml.SafeLoader):  # the test data module's tuples are written as python/tuple
        pass

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))
    logged = yaml.load(next(tmp_path.rglob("hparams.yaml")).read_text(), Loader=Loader)
    assert logged["model_features"] == {"combine": "concat", "id_dropout": 0.1, "use_ids": True}
    assert logged["features"] == {"path": "items.csv", "categorical": ["category"]}
    assert module.hparams["features"]["combine"] == "concat"  # checkpoints keep the argument's name
