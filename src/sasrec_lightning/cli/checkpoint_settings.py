"""What ``--ckpt_path`` brings to a command: the model it rebuilds, safely, and the data options of its run.

LightningCLI rebuilds the model from a checkpoint's hyper-parameters by importing whatever class
they name; here every name is checked first (the model class, and a loss given by class path, must
be imported subclasses of the package's), and every load uses ``weights_only=True``. The
evaluation options are the command's own (how a model is evaluated is not what it learned); the
data options of the training run fill in the ones the command does not give.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..data.locations import is_local_path
from ..data.options import RUNTIME_OPTIONS
from ..errors import CheckpointError, DataError, OptionError
from ..model.losses import LOSSES, Loss
from ..training.checkpoints import check_checkpoint_classes, flat_options, imported_class, plain, read_checkpoint
from .renamed import RENAMED

__all__ = ["CheckpointSettings", "LIGHTNING_CKPT_NAMES"]

# ``--ckpt_path`` values the Trainer resolves itself (no file of that name).
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_checkpoint_version(hparams: Mapping, path) -> None:
    """Refuse a checkpoint of sasrec-lightning 0.2 (flat options) with one line."""
    flat = sorted(set(hparams) & set(RENAMED["model"]))
    if flat:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by sasrec-lightning 0.2 (its options are flat: {', '.join(flat[:4])}"
            f"{', ...' if len(flat) > 4 else ''}); 0.3 groups them (--model.encoder.*, --model.optimization.*, ...) "
            "and names the weights anew, so it cannot rebuild this model. Use it with sasrec-lightning 0.2.0 "
            "(pip install sasrec-lightning==0.2.0), or train again with 0.3"
        )


def check_loss_class(hparams: Mapping, path) -> None:
    """Refuse a checkpoint whose loss class path is not an imported ``Loss`` subclass (never imported here)."""
    loss = hparams.get("loss")
    class_path = loss.get("class_path") if isinstance(loss, Mapping) else None
    if class_path is None or class_path in LOSSES:
        return
    cls = imported_class(class_path) if isinstance(class_path, str) else None
    if cls is None or not issubclass(cls, Loss):
        raise CheckpointError(
            f"checkpoint {str(path)!r} names the loss class {class_path!r}, which is not an imported Loss subclass; "
            "it was refused without importing it (importing a module can run its code). If the loss is yours, "
            "name it on the command line (--model.loss <module.Class>) or import it first"
        )


class CheckpointSettings:
    """The part of :class:`~sasrec_lightning.cli.app.SASRecCLI` that applies ``--ckpt_path`` (LightningCLI's hook)."""

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._apply_checkpoint(subcommand)

    def _apply_checkpoint(self, subcommand: str | None) -> None:
        """Rebuild the model and the data settings from ``--ckpt_path``, safely.

        Replaces LightningCLI's version, which imports whatever class the checkpoint names
        (``_class_path``) before the parser can reject it. Every load of the run, including
        ``--ckpt_path last``/``best`` that Lightning resolves and loads itself, uses ``weights_only=True``.

        Args:
            subcommand: ``fit``/``validate``/``test``/``predict``, or ``None`` for a parser without
                subcommands (``sasrec-lightning-attention``).
        """
        config = self.config[subcommand] if subcommand else self.config
        root = f"{subcommand}." if subcommand else ""
        if "weights_only" in config:
            if config.get("weights_only") is False:
                raise OptionError("--weights_only false: checkpoints are only loaded with weights_only=True (tensors "
                                  "and plain values; unpickling anything else could run arbitrary code)")
            config["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if not Path(ckpt_path).is_file():
            if ckpt_path in LIGHTNING_CKPT_NAMES or "://" in str(ckpt_path) or str(ckpt_path).startswith("registry"):
                return  # resolved and loaded by the Trainer (with weights_only=True, set above)
            raise CheckpointError(f"--ckpt_path {ckpt_path!r} is not a file; expected a .ckpt written by "
                                  f"`sasrec-lightning fit`, or one of {list(LIGHTNING_CKPT_NAMES)}")
        checkpoint = read_checkpoint(ckpt_path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        check_checkpoint_classes(hparams, self._model_class, ckpt_path)
        check_checkpoint_version(hparams, ckpt_path)
        check_loss_class(hparams, ckpt_path)
        self._apply_checkpoint_data(checkpoint, root)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        prefix = f"{root}model.init_args."
        evaluation = self.config.get(prefix + "evaluation")  # the command's: how to evaluate is not what was learned
        model = {"model": hparams}
        self.config = self.parser.parse_object({subcommand: model} if subcommand else model, self.config)
        if evaluation is not None and self.config.get(prefix + "evaluation", None) is not None:
            self.config[prefix + "evaluation"] = evaluation

    def _apply_checkpoint_data(self, checkpoint: dict, root: str) -> None:
        """Fill the data options the command leaves at their defaults from the checkpoint's training run.

        So ``predict --ckpt_path run.ckpt --data.path new.csv`` reads ``new.csv`` with the run's
        columns, filters, ``max_len``, ... ; options in the command's config files or flags win.
        Run-time options (``data/options.RUNTIME_OPTIONS``) are never taken from the checkpoint.
        """
        saved = dict(checkpoint.get(self._datamodule_class.CHECKPOINT_HYPER_PARAMS_KEY) or {})
        class_path = self.config.get(f"{root}data.class_path")
        if not saved or saved.pop("_class_path", class_path) != class_path or self._given_args is None:
            return  # another data class: its options need not mean the same
        given = self.parser.parse_args(self._given_args, defaults=False)
        given_options = set(flat_options(dict(given.get(f"{root}data.init_args") or {})))
        # max_len sizes the position embedding: the checkpoint fits no other, so a config file's value
        # gives way too; only a flag keeps it (and then gets the shape error naming it).
        if not any(arg.split("=")[0] in ("--data.max_len", "--data.init_args.max_len") for arg in self._given_args):
            given_options.discard("max_len")
        current = flat_options(dict(self.config.get(f"{root}data.init_args")))
        taken = {key: value for key, value in flat_options(saved).items()
                 if key in current and key not in given_options and not _runtime(key)
                 and plain(value) != plain(current[key])}
        if not taken:
            return
        if isinstance(taken.get("path"), str):
            check_checkpoint_data_path(taken["path"], self.config.get(f"{root}ckpt_path"))
        data = {"data": {"class_path": class_path, "init_args": _nested(taken)}}
        self.config = self.parser.parse_object({root.rstrip("."): data} if root else data, self.config)
        print("[sasrec-lightning] data options of the checkpoint's training run: "
              + ", ".join(f"{key}={value!r}" for key, value in taken.items()))


def check_checkpoint_data_path(path: str, ckpt_path) -> None:
    """Refuse, with one line, a local data path taken from a checkpoint that does not exist here.

    Checkpoints store the path absolute (``data/locations.resolved_path``); one written by 0.3.0 may hold
    it relative to the folder its training ran in, which is then tried from the current folder.

    Raises:
        DataError: naming the path tried, the checkpoint it came from and ``--data.path``.
    """
    if not is_local_path(path) or Path(path).exists():
        return
    tried = repr(path) if Path(path).is_absolute() else (
        f"{str(Path(path).absolute())!r} ({path!r}, relative to the folder its training ran in, tried from here)")
    raise DataError(f"data file {tried} does not exist: it is the data path stored in --ckpt_path {str(ckpt_path)!r} "
                    "(where its training run read the data); pass --data.path to override it with where the data "
                    "is now")


def _runtime(key: str) -> bool:
    return any(key == option or key.startswith(option + ".") for option in RUNTIME_OPTIONS)


def _nested(flat: Mapping[str, object]) -> dict:
    """``{"source.user_column": "u"}`` -> ``{"source": {"user_column": "u"}}``."""
    nested: dict = {}
    for key, value in flat.items():
        *groups, name = key.split(".")
        target = nested
        for group in groups:
            target = target.setdefault(group, {})
        target[name] = value
    return nested
