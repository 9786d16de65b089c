"""``predict`` to a file: top-K items per user in the dataset's original ids, Parquet or JSON lines.

:class:`PredictionWriter` is a Lightning :class:`~lightning.pytorch.callbacks.BasePredictionWriter`.
It collects the ``predict_step`` outputs of its process (internal ids, a few numbers per user),
and at the end of ``predict``

* with one process writes the output file directly;
* under DDP every rank writes ``<output>.part-<rank>-of-<world>.parquet``, all ranks meet at a
  barrier, and rank 0 merges the parts into the one output file (sorted by user, each user once)
  and deletes them. The output folder must be shared by all nodes (it is on a single machine).

Files are written atomically (a temporary file in the output's folder, then renamed over it, see
``atomic.py``), so a killed run never leaves a truncated output and the next run removes the
temporary a killed one left; a run that predicts no user (every ``predict_users`` id
unknown) writes an empty file rather than leaving an older one in place. The output path is
checked at set-up, before any user is predicted.

Output schema, one row per user: ``user`` (original id), ``items`` (list of original item ids,
best first) and ``scores`` (list of float32 scores). Fewer than K items appear only when the user
has seen almost every item.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.json
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ..atomic import atomic_write
from ..data.vocabulary import read_user_list  # noqa: F401  (re-exported: it was defined here)
from ..errors import OptionError

__all__ = ["PredictionWriter", "read_user_list", "output_format", "recommendations_table"]

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def output_format(path: str) -> str:
    """``parquet`` or ``jsonl`` from the output file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OptionError(
            f"--prediction.output {path!r}: cannot tell the format from the extension {suffix!r}; expected one of "
            f"{sorted(FORMATS)} (Parquet or JSON lines)"
        )
    return FORMATS[suffix]


def recommendations_table(
    user_rows: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
) -> pa.Table:
    """One row per user: ``user``, ``items`` (list) and ``scores`` (list), ``-inf`` slots dropped.

    Args:
        user_rows: ``(N,)`` internal user rows.
        items: ``(N, K)`` internal item ids.
        scores: ``(N, K)`` scores; ``-inf`` marks a slot with no item.
        user_ids: row -> original user id, or ``None`` to keep rows.
        item_ids: internal -> original item id, or ``None`` to keep internal ids.
    """
    valid = np.isfinite(scores)  # (N, K)
    offsets = np.zeros(len(user_rows) + 1, dtype=np.int32)
    np.cumsum(valid.sum(axis=1), out=offsets[1:])
    flat_items = items[valid]  # (n,) row-major, so each user's items stay in rank order
    flat_items = flat_items if item_ids is None else np.asarray(item_ids)[flat_items]
    users = user_rows if user_ids is None else np.asarray(user_ids)[user_rows]
    return pa.table({
        "user": pa.array(users),
        "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_items)),
        "scores": pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[valid].astype(np.float32))),
    })


def check_output_path(path: str) -> None:
    """Fail now, not after predicting, when ``path`` cannot be written (a folder, a file as folder, no rights).

    Creates the missing folders and a probe file next to ``path`` (then removes it).
    """
    target = Path(path)
    if target.is_dir():
        raise OptionError(f"--prediction.output {path!r} is a folder; expected a file path such as "
                          f"{str(target / 'predictions.parquet')!r}")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OptionError(f"--prediction.output {path!r}: {str(ancestor)!r} is a file, not a folder; expected a "
                          "path whose folders are folders (or do not exist yet)")
    probe = target.with_name(f".{target.name}.probe-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise OptionError(f"--prediction.output {path!r} cannot be written ({error.strerror or error}: "
                          f"{error.filename or target.parent}); expected a path in a writable folder") from error


def write_table(table: pa.Table, path: str) -> None:
    """Write Parquet or JSON lines, chosen by the extension of ``path``, atomically.

    The file is written under a temporary name in the same folder, flushed to disk and renamed
    over ``path`` (``atomic.py``), so ``path`` holds either the old file or the complete new one.

    Raises:
        OutputError: the disk is full, the file-size limit is reached or the folder is read-only.
    """
    file_format = output_format(path)
    with atomic_write(path, "--prediction.output", "--prediction.output") as handle:
        if file_format == "parquet":
            pq.write_table(table, handle)
        else:
            for batch in table.to_batches(max_chunksize=65536):
                # pandas' C JSON writer (pandas comes with `datasets`): ~5x faster than json.dumps per row.
                text = batch.to_pandas().to_json(orient="records", lines=True, double_precision=10)
                handle.write((text if text.endswith("\n") or not text else text + "\n").encode("utf-8"))


def _say(trainer: L.Trainer, line: str) -> None:
    """Print ``line`` on a line of its own: through the progress bar when there is one.

    The predict bar is still drawn when the writer finishes; a plain ``print`` would be glued to its last line.
    """
    bar = trainer.progress_bar_callback
    (bar.print if bar is not None else print)(line)


class PredictionWriter(BasePredictionWriter):
    """Write every predicted user's top-K items and scores in original ids to a file.

    K and the seen-item switch live here rather than on the model because LightningCLI rebuilds
    the model from the hyper-parameters stored in ``--ckpt_path``; the writer hands them to the
    module through its public ``set_prediction(k, exclude_seen)`` when ``predict`` starts.

    Args:
        output: output file; ``.parquet`` writes Parquet, ``.jsonl`` (or ``.json``/``.ndjson``)
            writes JSON lines. Relative paths are relative to the working directory.
        k: items per user.
        exclude_seen: never recommend an item from the user's own history.
    """

    def __init__(self, output: str = "predictions.parquet", k: int = 10, exclude_seen: bool = True) -> None:
        super().__init__(write_interval="batch")
        # Lightning tracks per-sample indices for writers; ours carry the user rows in the outputs and
        # our batch sampler yields whole batches, so that bookkeeping (and its warning) does not apply.
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")
        output_format(output)  # fail at configuration time, not after predicting
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise OptionError(f"--prediction.k {k!r}: expected an integer >= 1")
        self.output = output
        self.k = k
        self.exclude_seen = exclude_seen
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._written = False  # this predict run wrote its output (see teardown)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            self._written = False
            if trainer.is_global_zero:
                check_output_path(self.output)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning skips the whole predict loop (and on_predict_end) when there is no batch, e.g. when
        # no id of data.predict_users is in the data: write an empty output rather than keep an old one.
        if stage != "predict" or self._written or not trainer.is_global_zero:
            return
        user_ids, item_ids = self._id_maps(trainer, pl_module)
        rows = np.zeros(0, np.int64)
        write_table(recommendations_table(rows, np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32),
                                          user_ids, item_ids), self.output)
        self._written = True
        print(f"[sasrec-lightning] no user to predict: wrote an empty {self.output}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._chunks = []
        pl_module.set_prediction(self.k, self.exclude_seen)

    def write_on_batch_end(self, trainer, pl_module, prediction: dict[str, torch.Tensor], batch_indices,
                           batch, batch_idx: int, dataloader_idx: int) -> None:
        self._chunks.append(tuple(prediction[key].detach().cpu().numpy() for key in ("users", "items", "scores")))

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._chunks:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
        users, items, scores = (np.concatenate(parts) for parts in zip(*self._chunks, strict=True))
        return users, items, scores

    @staticmethod
    def _id_maps(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray | None, np.ndarray | None]:
        sequences = getattr(trainer.datamodule, "sequences", None) if trainer.datamodule is not None else None
        user_ids = None if sequences is None else sequences.user_ids
        vocabulary = getattr(pl_module, "item_vocabulary", None)
        item_ids = sequences.item_ids if sequences is not None else None
        if vocabulary is not None:  # the ids the weights were trained with
            item_ids = vocabulary.item_ids
        if user_ids is None or item_ids is None:
            log.warning("prediction writer: no id map found (datamodule without `sequences`); writing internal ids")
        return user_ids, item_ids

    def part_path(self, rank: int, world_size: int) -> str:
        return f"{self.output}.part-{rank}-of-{world_size}.parquet"

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        user_ids, item_ids = self._id_maps(trainer, pl_module)
        users, items, scores = self._gathered()
        self._chunks = []
        world_size, rank = trainer.world_size, trainer.global_rank
        if world_size == 1:
            order = np.argsort(users, kind="stable")
            write_table(recommendations_table(users[order], items[order], scores[order], user_ids, item_ids),
                        self.output)
            self._written = True
            _say(trainer, f"[sasrec-lightning] wrote the top-{items.shape[1] if items.ndim == 2 else 0} items of "
                 f"{len(users)} users to {self.output}")
            return
        # Parts keep internal ids (compact, exact); rank 0 maps them once while merging.
        k = items.shape[1] if items.ndim == 2 else 0
        part = pa.table({
            "user_row": pa.array(users, pa.int64()),
            "items": pa.FixedSizeListArray.from_arrays(pa.array(items.reshape(-1), pa.int64()), k),
            "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1), pa.float32()), k),
        })
        write_table(part, self.part_path(rank, world_size))
        trainer.strategy.barrier("prediction_writer_parts")
        if rank == 0:
            _say(trainer, self._merge(world_size, user_ids, item_ids))
        trainer.strategy.barrier("prediction_writer_merged")
        self._written = True

    def _merge(self, world_size: int, user_ids, item_ids) -> str:
        """Merge the ranks' parts into the output; returns the line that says so."""
        paths = [self.part_path(r, world_size) for r in range(world_size)]
        tables = [pq.read_table(path) for path in paths if pq.read_metadata(path).num_rows]
        if tables:
            merged = pa.concat_tables(tables)
            users = merged.column("user_row").to_numpy()
            rows, first = np.unique(users, return_index=True)  # sorted by user, each user once
            if len(rows) < len(users):
                log.warning("prediction writer: %d duplicated user row(s) across ranks dropped",
                            len(users) - len(rows))
            k = merged.schema.field("items").type.list_size
            items = merged.column("items").combine_chunks().flatten().to_numpy().reshape(-1, k)[first]  # (N, K)
            scores = merged.column("scores").combine_chunks().flatten().to_numpy().reshape(-1, k)[first]  # (N, K)
        else:
            rows, items, scores = np.zeros(0, np.int64), np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
        write_table(recommendations_table(rows, items, scores, user_ids, item_ids), self.output)
        for path in paths:
            os.remove(path)
        return (f"[sasrec-lightning] merged {world_size} ranks: wrote the top-{items.shape[1]} items of "
                f"{len(rows)} users to {self.output}")
