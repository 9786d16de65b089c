"""Attention heatmaps (paper Sec. IV-G, Fig. 4): where does each position look?

For every block (layer) and head, the average attention weight of query position ``i`` on key
position ``j``, over the real (non-padded) query positions of many users. Positions are the
model's right-aligned ones: ``n`` (= ``max_len``) is the most recent item, so the lower-right corner
of a heatmap is "the latest item attending to itself and the few before it". The paper finds that
on sparse data the weights concentrate near the diagonal (recent items), on dense data they reach
further back, and that higher layers attend to more recent positions.

Three ways in:

* :func:`average_attention` + :func:`plot_attention`, plain functions (a notebook);
* :class:`AttentionHeatmaps`, a Lightning callback that renders at the end of ``fit`` and ``test``,
  saves PNGs and logs them to W&B when a :class:`~lightning.pytorch.loggers.WandbLogger` is on;
* ``sasrec-lightning-attention -c CONFIG --ckpt_path BEST`` for a trained checkpoint (``cli/attention.py``).

Plotting needs matplotlib: ``pip install "sasrec-lightning[plots]"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ..atomic import atomic_write
from ..errors import MissingPackageError
from ..model.encoder import SASRec

__all__ = ["average_attention", "plot_attention", "AttentionHeatmaps", "require_matplotlib"]


@torch.no_grad()
def average_attention(
    encoder: SASRec,
    batches: Iterable[dict[str, Tensor] | Tensor],
    max_users: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Average attention weight of position ``i`` on position ``j`` per block and head.

    Batches may be padded to any width ``L <= max_len``; they are right-aligned into the
    ``max_len`` window, as the encoder's positional embeddings are.

    Args:
        encoder: the model (run in eval mode, restored afterwards).
        batches: ``(B, L)`` left-padded item ids, or batch dicts with ``input_ids``.
        max_users: stop after this many sequences (``None``: all).

    Returns:
        ``(num_blocks, num_heads, max_len, max_len)`` mean weights (NaN for query positions no
        sequence reaches) and the ``(max_len,)`` number of real queries averaged at each position.
    """
    n = encoder.max_len
    sums: Tensor | None = None
    counts = torch.zeros(n, dtype=torch.float64)
    seen = 0
    was_training = encoder.training
    encoder.eval()
    try:
        for batch in batches:
            input_ids = batch["input_ids"] if isinstance(batch, dict) else batch  # (B, L)
            if max_users is not None:
                input_ids = input_ids[: max_users - seen]
            input_ids = input_ids.to(encoder.output_weight.device)
            _, weights = encoder(input_ids, need_weights=True)  # [(B, H, L, L)] per block
            if not weights:
                raise ValueError("the model has no self-attention blocks (num_blocks=0): nothing to plot")
            stacked = torch.stack(weights, dim=1).double()  # (B, blocks, H, L, L)
            real = (input_ids != 0).double()  # (B, L) real query positions
            length = input_ids.size(1)
            if sums is None:
                sums = torch.zeros(*stacked.shape[1:3], n, n, dtype=torch.float64)  # (blocks, H, n, n)
            # Padded queries only attend to themselves (see encoder.attention_bias): leave them out.
            sums[..., n - length :, n - length :] += torch.einsum("bkhij,bi->khij", stacked, real).cpu()
            counts[n - length :] += real.sum(dim=0).cpu()
            seen += input_ids.size(0)
            if max_users is not None and seen >= max_users:
                break
    finally:
        encoder.train(was_training)
    if sums is None:
        raise ValueError("no sequences to average attention over")
    return (sums / counts[:, None]).float(), counts  # (blocks, H, n, n), (n,)


def require_matplotlib() -> None:
    """Raise :class:`MissingPackageError` naming the ``plots`` extra when matplotlib is not installed.

    Called before any work (the command's start, the callback's ``setup``), so a missing matplotlib is one
    error line instead of a traceback after the data is read or the model trained.
    """
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as error:
        raise MissingPackageError(
            f"attention heatmaps need matplotlib, which is not installed ({error}): pip install "
            "\"sasrec-lightning[plots]\" (or pip install matplotlib)"
        ) from error


def _pyplot_free_figure():
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure


def _save_png(figure, path: Path) -> None:
    """``figure`` as a PNG at ``path``, written whole or not at all (``atomic.py``)."""
    with atomic_write(path, "the attention heatmap", "--attention.output_dir") as handle:
        figure.savefig(handle, format="png", dpi=110)


def plot_attention(maps: Tensor, output_dir: str | Path, positions: int = 15, title: str = "") -> list[Path]:
    """Save one heatmap PNG per (block, head) and an overview grid of all of them.

    Args:
        maps: ``(num_blocks, num_heads, n, n)`` from :func:`average_attention`.
        output_dir: folder for ``attention.png`` (the grid) and ``attention_block{b}_head{h}.png``.
        positions: plot the last ``positions`` positions (the paper shows 15).
        title: prefix of the figure titles (e.g. the dataset name).

    Returns:
        The written files, the overview first.
    """
    Figure = _pyplot_free_figure()  # noqa: N806  (a class)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    blocks, heads, n, _ = maps.shape
    p = max(1, min(positions, n))
    window = maps[..., n - p :, n - p :].numpy()  # (blocks, H, p, p)
    labels = [str(position) for position in range(n - p + 1, n + 1)]  # 1-based; n = most recent item
    ticks = list(range(0, p, max(1, p // 5)))
    if ticks[-1] != p - 1:
        ticks.append(p - 1)

    def draw(axes, image, name):
        shown = axes.imshow(image, cmap="viridis", vmin=0.0, origin="upper", interpolation="nearest")
        axes.set_title(name, fontsize=9)
        axes.set_xticks(ticks, [labels[t] for t in ticks], fontsize=7)
        axes.set_yticks(ticks, [labels[t] for t in ticks], fontsize=7)
        axes.set_xlabel("key position j", fontsize=8)
        axes.set_ylabel("query position i", fontsize=8)
        return shown

    prefix = f"{title}: " if title else ""
    grid = Figure(figsize=(3.2 * heads + 0.6, 3.0 * blocks), layout="constrained")
    all_axes = grid.subplots(blocks, heads, squeeze=False)
    for b in range(blocks):
        for h in range(heads):
            shown = draw(all_axes[b][h], window[b, h], f"block {b + 1}, head {h + 1}")
            grid.colorbar(shown, ax=all_axes[b][h], shrink=0.8)
    grid.suptitle(f"{prefix}mean attention of position i on j\n(last {p} of {n} positions; {n} = most recent)",
                  fontsize=9)
    written = [output_dir / "attention.png"]
    _save_png(grid, written[0])
    for b in range(blocks):
        for h in range(heads):
            figure = Figure(figsize=(4.2, 3.6), layout="constrained")
            axes = figure.subplots()
            figure.colorbar(draw(axes, window[b, h], f"{prefix}block {b + 1}, head {h + 1}"), ax=axes)
            path = output_dir / f"attention_block{b + 1}_head{h + 1}.png"
            _save_png(figure, path)
            written.append(path)
    return written


class AttentionHeatmaps(Callback):
    """Render attention heatmaps at the end of ``fit`` and ``test``; log them to W&B when it is on.

    Only global rank 0 renders, from its share of the evaluation users.

    Args:
        output_dir: where the PNGs go; empty: ``<trainer.log_dir or default_root_dir>/attention``.
        stage: whose sequences to average over: ``test`` (training + validation items, the test
            input), ``val`` or ``predict`` (whole histories).
        positions: plot the last ``positions`` positions (paper Fig. 4: 15).
        max_users: average over at most this many users.
        on_fit_end: render after training.
        on_test_end: render after testing (the best checkpoint, when ``fit`` tests it).
    """

    def __init__(self, output_dir: str | None = None, stage: str = "test", positions: int = 15,
                 max_users: int | None = 5000, on_fit_end: bool = True, on_test_end: bool = True) -> None:
        if stage not in ("val", "test", "predict"):
            raise ValueError(f"attention stage must be val, test or predict, got {stage!r}")
        self.output_dir = output_dir
        self.stage = stage
        self.positions = positions
        self.max_users = max_users
        self.render_on_fit_end = on_fit_end
        self.render_on_test_end = on_test_end
        self.written: list[Path] = []

    def render(self, trainer: L.Trainer | None, pl_module: L.LightningModule, datamodule=None) -> list[Path]:
        """Compute, save and (with W&B) log the heatmaps now; returns the written files."""
        datamodule = datamodule if datamodule is not None else getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError("attention heatmaps need a data module with val/test/predict dataloaders")
        loader = getattr(datamodule, f"{self.stage}_dataloader")()
        maps, counts = average_attention(pl_module.model, loader, self.max_users)
        output_dir = self.output_dir
        if output_dir is None:
            root = (trainer.log_dir if trainer is not None else None) or getattr(trainer, "default_root_dir", ".")
            output_dir = str(Path(root) / "attention")
        self.written = plot_attention(maps, output_dir, self.positions)
        with atomic_write(Path(output_dir) / "attention.pt", "the attention maps",
                          "--attention.output_dir") as handle:
            torch.save({"attention": maps, "queries": counts}, handle)
        for logger in getattr(trainer, "loggers", None) or []:
            if type(logger).__name__ == "WandbLogger":
                # Two keys: W&B wants equally sized images under one key (the overview is larger).
                logger.log_image(key="attention/overview", images=[str(self.written[0])])
                logger.log_image(key="attention/heads", images=[str(path) for path in self.written[1:]],
                                 caption=[path.stem for path in self.written[1:]])
        return self.written

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_matplotlib()  # before training, not after it

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.render_on_fit_end and trainer.is_global_zero:
            self.render(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.render_on_test_end and trainer.is_global_zero:
            self.render(trainer, pl_module)
