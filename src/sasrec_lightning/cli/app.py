"""``sasrec-lightning``: the LightningCLI entry point (fit / validate / test / predict)."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..atomic import check_writable_folder, write_text
from ..data.datamodule import SASRecDataModule
from ..errors import CheckpointError, DataError, ModelError, OptionError, OutputError
from ..serving.prediction import PredictionWriter
from ..training.baselines import most_popular_metrics
from ..training.callbacks import StopOnSigterm
from ..training.checkpoint_io import use_safe_checkpoint_io
from ..training.checkpoints import (
    DATA_RUNTIME_OPTIONS,
    check_checkpoint_classes,
    imported_class,
    is_unsafe_refusal,
    plain,
    read_checkpoint,
    unsafe_checkpoint_error,
)
from ..training.module import SASRecModule
from .bounded_yaml import PARSER_MODE, ConfigTooLarge, check_config_file, command_line

__all__ = ["SASRecCLI", "cli_main", "main", "exit_on_reported_errors", "packaged_configs", "resolve_config",
           "quiet_known_warnings"]


# How a model is evaluated, not what it learned: taken from the command's own config and flags, not
# from the checkpoint, so `test --ckpt_path best.ckpt --model.init_args.eval_protocol sampled` tests a
# model trained under full ranking with the sampled protocol.
EVALUATION_SETTINGS = ("eval_protocol", "exclude_seen", "top_k", "eval_chunk_size")

# ``--ckpt_path`` values the Trainer resolves itself (no file of that name).
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


# Lines of jsonargparse's nested report that say nothing about the value at fault.
_GENERIC_PARSE_LINES = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
                        "- Expected a <class 'NoneType'>")


def condensed_parse_error(message: str) -> str:
    """Turn jsonargparse's nested, multi-line report of a bad value into one line naming the flag.

    ``Parser key "data": ... Problem with given class_path ...: Parser key "max_len": Expected a
    <class 'int'>. Got value: abc`` becomes ``--data.max_len: Expected a <class 'int'>. Got value: abc``.
    A message of another shape is kept whole, on one line. An unknown model or data option gets the
    closest valid names (``did you mean hidden_size?``); a class whose module cannot be imported, a
    hint about ``PYTHONPATH``.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = [(index, match.group(1)) for index, line in enumerate(lines)
            if (match := re.match(r'Parser key "([^"]+)":', line))]
    if not keys:
        return " ".join(lines)
    reasons = [line.removeprefix("- ") for line in lines[keys[-1][0] + 1:]
               if not line.startswith(_GENERIC_PARSE_LINES) and not re.match(r'Parser key "', line)]
    given = [line.removeprefix("Given value:").strip() for line in lines if line.startswith("Given value:")]
    if given and not any("Got value" in reason for reason in reasons) and not given[-1].startswith("NestedArg"):
        reasons.append(f"Got value: {given[-1]}")
    flag = ".".join(dict.fromkeys(key for _, key in keys))  # outer section, then the inner key
    reason = _merged_expectations(" ".join(reasons) or " ".join(lines))
    if "Option '" in reason and "is not accepted" in reason:
        reason = re.sub(r" Got value: .*", "", reason)  # the whole section as given: noise next to the option
    return _explained(flag, reason, message)


_EXPECTED = re.compile(r"Expected a (?:<class '(\w+)'>|typing\.Literal\[([^\]]*)\])\.?")


def _merged_expectations(reason: str) -> str:
    """One "Expected ..." for a union option, naming each accepted kind once.

    ``Expected a <class 'int'> Expected a typing.Literal['auto']`` becomes ``Expected an int or 'auto'``.
    """
    found = list(_EXPECTED.finditer(reason))
    if len(found) < 2:
        return reason
    kinds = list(dict.fromkeys(match.group(1) or match.group(2) for match in found))
    merged = "Expected " + ("an " if kinds[0][0] in "aeiou" else "a ") + " or ".join(kinds)
    rest = _EXPECTED.sub("", reason).strip()
    return f"{merged}. {rest}" if rest else merged


def _option_names(class_path: str) -> list[str]:
    """The ``__init__`` parameters of the imported class ``class_path`` and its bases (``[]`` when not imported)."""
    cls = imported_class(class_path)
    names: list[str] = []
    for klass in getattr(cls, "__mro__", ()):
        if "__init__" in vars(klass) and klass is not object:
            names += [name for name, parameter in inspect.signature(klass.__init__).parameters.items()
                      if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    return list(dict.fromkeys(names))


def _explained(flag: str, reason: str, message: str) -> str:
    """A reason with the hint it needs: close option names for a typo, ``PYTHONPATH`` for a missing module."""
    class_path = re.search(r"class_path '([^']+)'", message)
    unknown = re.search(r"Option '([^']+)' is not accepted", reason)
    if unknown and class_path:
        names = _option_names(class_path.group(1))
        close = difflib.get_close_matches(unknown.group(1).split(".")[-1], names, n=3, cutoff=0.6)
        section = flag.split(".")[0]
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        return (f"--{section}.{unknown.group(1)}: Option {unknown.group(1)!r} is not accepted by "
                f"{class_path.group(1)}; {hint}"
                f"(every option: --{section}.help {class_path.group(1).rsplit('.', 1)[-1]})")
    missing = re.search(r"No module named '([^']+)'", reason)
    if missing and class_path:
        return (f"--{flag}: cannot import {class_path.group(1)!r}: no module named {missing.group(1)!r}. If it is "
                f"your own file ({missing.group(1).split('.')[0]}.py), run from its folder with PYTHONPATH=. "
                "(e.g. PYTHONPATH=. sasrec-lightning fit ...) or install it")
    return f"--{flag}: {reason}"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class SASRecArgumentParser(LightningArgumentParser):
    """Parse errors as one ``error:`` line, without jsonargparse's usage text of every option.

    YAML (configs and flag values) is read by ``bounded_yaml.load``: a config above its size bounds is refused.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parser_mode", PARSER_MODE)
        super().__init__(*args, **kwargs)

    def dump(self, cfg, *args, **kwargs) -> str:
        # The optimizer is a model option (--model.optimizer). LightningCLI's top-level --optimizer /
        # --lr_scheduler stay accepted (a run's saved config.yaml lists them) but are not printed
        # while unset, so `--print_config` shows `optimizer: null` once. (dump also runs on the model's
        # own init_args, whose optimizer stays: hence only a config with a trainer section.)
        if "trainer" in cfg and any(cfg.get(key, "unset") is None for key in ("optimizer", "lr_scheduler")):
            cfg = cfg.clone()
            for key in ("optimizer", "lr_scheduler"):
                if key in cfg and cfg[key] is None:
                    del cfg[key]
        if "skip_none" in kwargs:  # Lightning still passes jsonargparse's deprecated name (a warning each run)
            kwargs["skip_unset"] = kwargs.pop("skip_none")
        return super().dump(cfg, *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # raise instead of exiting (a caller asked for the exception)
        too_large = _cause(ex, ConfigTooLarge)
        condensed = str(too_large) if too_large is not None else condensed_parse_error(message)
        folder = packaged_configs()
        if condensed.startswith("--config:") and "does not exist" in condensed and folder is not None:
            names = sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))
            condensed += f"; the packaged configs are: {', '.join(names)}"
        # A typo's message points to its section's help; a config too large needs no help.
        hint = "" if ".help " in condensed or too_large is not None else " (see --help)"
        sys.stderr.write(f"error: {condensed}{hint}\n")
        self.exit(2)


class SASRecCLI(LightningCLI):
    """LightningCLI with the values the data decides linked into the model.

    With ``--ckpt_path``, LightningCLI rebuilds the model from the checkpoint's hyper-parameters;
    the evaluation settings (``EVALUATION_SETTINGS``) keep the values of the running command.
    """

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """LightningCLI's trainer, model and data sections, with the package's classes as defaults.

        Without ``--model`` / ``--data`` (or a config naming them) `fit` alone trains on the synthetic
        data and ``predict --ckpt_path run.ckpt`` needs nothing else (LightningCLI requires both).
        """
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{key}": value for key, value in self.trainer_defaults.items()
                             if key != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model,
                                        required=False)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
                                        required=False)
        if self.subclass_mode_model and self.subclass_mode_data:
            parser.set_defaults({"model": {"class_path": _class_path(self._model_class)},
                                 "data": {"class_path": _class_path(self._datamodule_class)}})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Said once, in the data section; the model receives them.
        # (subclass mode: the source must be spelled data.init_args.*; "data.max_len" silently linked nothing)
        parser.link_arguments("data.init_args.max_len", "model.init_args.max_len")
        parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="after fit, test (the best checkpoint when checkpointing is on) and print the "
            "most-popular baseline evaluated the same way",
        )
        # `predict` writes every user's top --prediction.k items in original ids to --prediction.output.
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        # The generated usage line lists all ~200 trainer flags; the model and data options are only
        # listed by --model.help / --data.help (subclass mode), so point there instead.
        parser.usage = "%(prog)s [-c CONFIG] [--trainer.* ...] [--model.* ...] [--data.* ...] [--ckpt_path CKPT]"
        pointer = (f"Model and data options: --model.help {self._model_class.__name__} and --data.help "
                   f"{self._datamodule_class.__name__} (each option with its documentation). Configs shipped with "
                   "the package run by name: -c quickstart.")
        parser.description = f"{parser.description or ''}\n\n{pointer}".strip()
        parser.epilog = pointer

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        given = None if isinstance(args, (dict, Namespace)) else list(sys.argv[1:] if args is None else args)
        with command_line(given or []):  # a value over the YAML bounds is named by the flag it follows
            super().parse_arguments(parser, args)
        # Kept to tell the options the user gave (config files and flags) from defaults: those win
        # over the data settings a checkpoint carries (see ``_apply_checkpoint_data``).
        self._given_args = given

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._apply_checkpoint(subcommand)

    def _apply_checkpoint(self, subcommand: str | None) -> None:
        """Rebuild the model and the data settings from ``--ckpt_path``, safely.

        Replaces LightningCLI's version, which imports whatever class the checkpoint names
        (``_class_path``) before the parser can reject it: here the name must be an already imported
        subclass of the model class (see ``checkpoints.py``). Every load of the run, including
        ``--ckpt_path last``/``best`` that Lightning resolves and loads itself, uses
        ``weights_only=True``. The evaluation settings (``EVALUATION_SETTINGS``) keep the command's values;
        the data settings of the training run fill in every data option the command does not give.

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
        self._apply_checkpoint_data(checkpoint, root)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        prefix = f"{root}model.init_args."
        given = {key: self.config.get(prefix + key) for key in EVALUATION_SETTINGS}
        model = {"model": hparams}
        self.config = self.parser.parse_object({subcommand: model} if subcommand else model, self.config)
        for key, value in given.items():
            if value is not None and self.config.get(prefix + key, None) is not None:
                self.config[prefix + key] = value

    def _apply_checkpoint_data(self, checkpoint: dict, root: str) -> None:
        """Fill the data options the command leaves at their defaults from the checkpoint's training run.

        So ``predict --ckpt_path run.ckpt --data.path new.csv`` reads ``new.csv`` with the run's
        columns, filters, ``max_len``, ... ; options in the command's config files or flags win.
        Run-time options (``DATA_RUNTIME_OPTIONS``) are never taken from the checkpoint.
        """
        saved = dict(checkpoint.get(SASRecDataModule.CHECKPOINT_HYPER_PARAMS_KEY) or {})
        class_path = self.config.get(f"{root}data.class_path")
        if not saved or saved.pop("_class_path", class_path) != class_path or self._given_args is None:
            return  # another data class: its options need not mean the same
        given = self.parser.parse_args(self._given_args, defaults=False)
        given_options = set(dict(given.get(f"{root}data.init_args") or {}))
        # max_len sizes the position embedding: the checkpoint fits no other, so a config file's value
        # gives way too; only a flag keeps it (and then gets the shape error naming it).
        if not any(arg.split("=")[0] in ("--data.max_len", "--data.init_args.max_len") for arg in self._given_args):
            given_options.discard("max_len")
        current = self.config.get(f"{root}data.init_args")
        taken = {key: value for key, value in saved.items()
                 if key in current and key not in given_options and key not in DATA_RUNTIME_OPTIONS
                 and plain(value) != plain(current[key])}
        if not taken:
            return
        data = {"data": {"class_path": class_path, "init_args": taken}}
        self.config = self.parser.parse_object({root.rstrip("."): data} if root else data, self.config)
        print("[sasrec-lightning] data options of the checkpoint's training run: "
              + ", ".join(f"{key}={value!r}" for key, value in taken.items()))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """LightningCLI's Trainer, saving and loading checkpoints through :class:`SafeCheckpointIO`.

        Atomic saves and checked loads (``checkpoint_io.py``) unless the config names its own plugin, and a
        clean end on SIGTERM, also under DDP (``callbacks.StopOnSigterm``).
        """
        trainer = super().instantiate_trainer(**kwargs)
        use_safe_checkpoint_io(trainer)
        trainer.callbacks.append(StopOnSigterm())
        return trainer

    def before_instantiate_classes(self) -> None:
        """Keep outputs tidy: name the run after its data; predict/test a checkpoint without a new run folder."""
        subcommand = self.subcommand
        if not subcommand or self._given_args is None:
            return
        config = self.config[subcommand]
        flags = {arg.split("=")[0] for arg in self._given_args if arg.startswith("--")}
        logger = config.get("trainer.logger")
        if subcommand != "fit" and config.get("ckpt_path") and logger is not False \
                and not any(flag.startswith("--trainer.logger") for flag in flags):
            # Evaluating or predicting a trained model is not a training run: no logger version folder
            # (pass --trainer.logger to log the test metrics anyway).
            config["trainer.logger"] = False
            return
        data_given = flags & {"--data.path", "--data.init_args.path", "--data.url", "--data.init_args.url"}
        name_given = any(flag.startswith("--trainer.logger") and flag.endswith(".name") for flag in flags)
        if isinstance(logger, Namespace) and "name" in (logger.get("init_args") or {}) and data_given \
                and not name_given:
            # A config's run name (`beauty`) describes its own data, not the file given with --data.path.
            data = config.get("data.init_args")
            source = data.get("path") or data.get("url") or "synthetic"
            logger["init_args"]["name"] = Path(str(source).rstrip("/")).name.split(".")[0] or "data"

    def before_fit(self) -> None:
        check_run_folders(self.trainer)
        if not self.trainer.loggers:
            return
        # With any logger (W&B, CSV, TensorBoard), track the learning rate without every config
        # having to list the callback (a YAML list would replace the config's other callbacks).
        if not any(isinstance(callback, LearningRateMonitor) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        # The run config: model and data hyper-parameters are logged by Lightning; add the trainer's.
        trainer_config = self.config[self.subcommand].get("trainer", {}) if self.subcommand else {}
        primitive = (bool, int, float, str, type(None))
        settings = {f"trainer/{key}": value for key, value in dict(trainer_config).items()
                    if isinstance(value, primitive) and "." not in key}  # not the logger's own init args
        settings["seed_everything"] = self.config_dump_value("seed_everything")
        for logger in self.trainer.loggers:
            logger.log_hyperparams(settings)

    def after_fit(self) -> None:
        if not self.config_dump_value("test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True)
        if not self.trainer.is_global_zero or not results:
            return
        model_hp = self.model.hparams
        baseline = most_popular_metrics(
            self.datamodule.eval_batches("test"), model_hp.eval_protocol, model_hp.exclude_seen,
            model_hp.top_k, prefix="test_most_popular/",
        )
        if self.trainer.logger is not None:
            self.trainer.logger.log_metrics(baseline)
        k = max(model_hp.top_k) if 10 not in model_hp.top_k else 10
        print(
            f"[sasrec-lightning] test ({model_hp.eval_protocol} protocol): "
            f"NDCG@{k} {results[0][f'test/ndcg@{k}']:.4f}, HR@{k} {results[0][f'test/hr@{k}']:.4f} | "
            f"most-popular: NDCG@{k} {baseline[f'test_most_popular/ndcg@{k}']:.4f}, "
            f"HR@{k} {baseline[f'test_most_popular/hr@{k}']:.4f}"
        )

    def config_dump_value(self, key: str):
        """A top-level value of the running subcommand's config."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        return config.get(key)


RUN_FOLDER_OPTION = "--trainer.default_root_dir"


def check_run_folders(trainer: L.Trainer) -> None:
    """Fail before training, with one line, when the folders ``fit`` writes to cannot be written.

    The logger's folder (where the config and, by default, the checkpoints go), else the run's
    folder when checkpoints are saved, and every checkpoint callback's own ``dirpath``. A read-only
    mount would otherwise stop the run with a traceback when the logger first writes, or after the
    first epoch when the first checkpoint is saved.

    Raises:
        OutputError: naming the folder and the reason.
    """
    folders = {}
    if trainer.loggers:
        folders[trainer.log_dir] = "the run's log folder"
    elif trainer.checkpoint_callback is not None:
        folders[trainer.default_root_dir] = "the run's folder"
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            folders[callback.dirpath] = "the checkpoint folder"
    for folder, what in folders.items():
        if folder and "://" not in str(folder):
            check_writable_folder(folder, what, RUN_FOLDER_OPTION + (" or the checkpoint callback's dirpath"
                                                                     if what == "the checkpoint folder" else ""))


def _cause(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``error``'s cause chain, else ``None``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def packaged_configs() -> Path | None:
    """The folder of the configs that ship with the package, or ``None`` when there is none.

    A wheel installs the repository's ``configs/`` as ``sasrec_lightning/configs``; a source checkout
    (``PYTHONPATH=src``, or an editable install, which maps the folder instead of copying it) has it
    beside ``src/``.
    """
    package = Path(__file__).resolve().parents[1]  # sasrec_lightning/
    for candidate in (package / "configs", package.parents[1] / "configs"):
        if (candidate / "quickstart.yaml").is_file():
            return candidate
    return None


def resolve_config(name: str) -> str:
    """``name`` as given when it is an existing path, else the packaged config it names, else unchanged.

    ``quickstart``, ``quickstart.yaml``, ``trainer/bf16`` and ``configs/steam.yaml`` (the repository
    form, run outside a clone) all name packaged configs. An unknown name is returned unchanged, so the
    parser reports the missing file as usual.
    """
    if os.path.exists(name) or "\n" in name or ":" in name:  # a file, or inline YAML (``-c '{...}'``)
        return name
    folder = packaged_configs()
    if folder is None:
        return name
    relative = name.removeprefix("configs/")
    for candidate in (relative, f"{relative}.yaml"):
        path = folder / candidate
        if path.is_file() and folder in path.resolve().parents:
            return str(path)
    return name


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with each ``-c``/``--config`` value that is not an existing path resolved by :func:`resolve_config`.

    Raises:
        ConfigTooLarge: for a config file above ``bounded_yaml.MAX_CONFIG_BYTES`` (checked before it is read).
    """
    resolved = list(args)
    for index, arg in enumerate(resolved):
        if arg in ("-c", "--config") and index + 1 < len(resolved):
            resolved[index + 1] = resolve_config(resolved[index + 1])
            check_config_file(resolved[index + 1])
        elif arg.startswith(("--config=", "-c=")):
            flag, value = arg.split("=", 1)
            resolved[index] = f"{flag}={resolve_config(value)}"
            check_config_file(resolve_config(value))
    return resolved


class RunConfigCallback(SaveConfigCallback):
    """Save the run's ``config.yaml`` in the run's folder, never in the working directory, atomically.

    With a logger that is the logger's ``log_dir`` (as in LightningCLI); without one, the folder of
    the checkpoints; without either, nothing is saved (no run folder exists). Only ``fit`` starts a
    run: ``validate``/``test``/``predict`` save nothing.

    The file is written whole or not at all (``atomic.py``).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or stage != "fit" or trainer.logger is None:
            return  # (without a logger: saved in on_fit_start, after ModelCheckpoint checked its folder is new)
        log_dir = trainer.log_dir  # (broadcast from rank 0)
        config_path = os.path.join(log_dir, self.config_filename)
        if not self.overwrite and trainer.strategy.broadcast(trainer.is_global_zero and os.path.isfile(config_path)):
            self._refuse_overwrite(config_path)  # (on every rank)
        if trainer.is_global_zero:
            self._save(config_path, skip_unset=False)  # (as LightningCLI saves it: every option, null ones too)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = trainer.strategy.broadcast(True)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.already_saved or trainer.logger is not None:
            return
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and trainer.is_global_zero:
            folder = checkpoint.dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
            self._save(os.path.join(folder, self.config_filename))
        self.already_saved = True

    def _refuse_overwrite(self, path: str) -> None:
        raise RuntimeError(f"{type(self).__name__} expected {path} to NOT exist. Aborting to avoid overwriting "
                           "results of a previous run.")

    def _save(self, path: str, skip_unset: bool = True) -> None:
        """Write the config to ``path`` atomically (a remote or multi-file config: jsonargparse's own save)."""
        if not self.overwrite and os.path.isfile(path):
            self._refuse_overwrite(path)
        if "://" in path or self.multifile:
            self.parser.save(self.config, path, skip_unset=skip_unset, overwrite=self.overwrite,
                             multifile=self.multifile)
            return
        write_text(path, self.parser.dump(self.config, skip_unset=skip_unset), "the run's config", RUN_FOLDER_OPTION)


def cli_main(args: list[str] | None = None, **kwargs) -> SASRecCLI:
    """Build and run the CLI; model and data classes can be any subclass (``--model.class_path``).

    ``-c NAME`` runs a packaged config by name (``-c quickstart``) when ``NAME`` is no file here.
    """
    if args is None:  # rewritten in place: LightningCLI warns when given both args and a command line
        sys.argv[1:] = resolve_config_args(sys.argv[1:])
    elif isinstance(args, list):
        args = resolve_config_args(args)
    return SASRecCLI(
        SASRecModule,
        SASRecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        **{"parser_class": SASRecArgumentParser, "save_config_callback": RunConfigCallback,
           "save_config_kwargs": {"overwrite": True}, **kwargs},
    )


def _reported_error(error: BaseException) -> BaseException | None:
    """The package's own error behind ``error`` (its cause chain), else ``None`` (a bug: keep the traceback).

    LightningCLI builds the model and data module through jsonargparse, which wraps a constructor's
    error in its own ``ValueError`` ("Does not validate against any of the Union subtypes") with the
    original as ``__cause__``; the original is what the user needs to read.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (DataError, OptionError, CheckpointError, ModelError, OutputError)):
            return error
        if is_unsafe_refusal(error):  # Lightning's own load of --ckpt_path last/best
            return unsafe_checkpoint_error(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# gloo's report of a collective whose peer process is gone (killed, crashed, or stopped by SIGTERM): the
# connection to it was closed or reset. Only these; any other error keeps its traceback.
_PEER_ENDED = re.compile(r"gloo/transport/[^\]]*\] ((?:Connection closed by peer|Connection reset by peer|Broken pipe)"
                         r"(?: \[[^\]]*\]:\d+)?)")


def _peer_ended(error: BaseException | None) -> str | None:
    """Gloo's words when ``error`` (or its cause) is a DDP collective that lost a peer process, else ``None``."""
    seen = set()
    while error is not None and id(error) not in seen:
        match = _PEER_ENDED.search(str(error)) if isinstance(error, RuntimeError) else None
        if match:
            return match.group(1)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _distributed() -> bool:
    """Whether this process belongs to a process group (a DDP run), which Lightning destroys only at exit."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _this_process() -> str:
    """``this process`` and, in a DDP run, its rank."""
    return f"this process (rank {torch.distributed.get_rank()})" if _distributed() else "this process"


def _one_write(line: str) -> None:
    """``line`` on stderr in one write, so that the lines of a DDP run's processes do not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _exit_without_the_lost_group(status: int) -> NoReturn:
    """Exit with ``status``; a DDP process whose peer is gone leaves at once (``os._exit``, output flushed).

    Destroying a gloo process group that lost a peer (Lightning does it at exit) can end in C++'s
    "terminate called without an active exception" and status 134 (SIGABRT); nothing else is left to do.
    """
    if _distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)


def exit_on_reported_errors(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function``; the package's own errors exit with status 2 and one ``error:`` line, others propagate.

    A run stopped by SIGTERM (``SIGTERMException``, from ``callbacks.StopOnSigterm`` or Lightning) ends with
    one line and status 143 (128 + SIGTERM, what a shell reports for a process a signal ended); a DDP process
    whose peer ended (gloo's closed connection, and only that) with one line and status 1.
    """
    try:
        return function(*args)
    except SIGTERMException:
        others = "; the other processes of this DDP run stop too" if _distributed() else ""
        _one_write(f"error: {_this_process()} received SIGTERM and stopped before the run finished{others}")
        raise SystemExit(128 + signal.SIGTERM) from None
    except Exception as error:
        peer = _peer_ended(error)
        if peer is not None:
            _one_write(f"error: another process of this DDP run ended (gloo: {peer}), so {_this_process()} stops "
                       "too; that process's output says why")
            _exit_without_the_lost_group(1)
        reported = _reported_error(error)
        if reported is None:
            raise
        print(f"error: {' '.join(str(reported).split())}", file=sys.stderr)
        raise SystemExit(2) from None


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Known-harmless messages of other libraries, silenced by the console scripts only (not on import, so
# a user's own Lightning code sees everything): each by its exact text, never a whole category.
_HARMLESS_WARNINGS = (
    # Lightning's own pytree helper uses a torch class that torch >= 2.10 deprecates.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # predict/test load a checkpoint whose ModelCheckpoint folder is not this run's: nothing to restore.
    (r"The dirpath has changed from .* therefore `best_model_score`", UserWarning),
)
_HARMLESS_LOGS = {
    # Advertisements for Lightning's cloud services, on every run.
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip:",),
    # The ONNX exporter looks up torchvision's operators, which a recommender never uses.
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
}


def quiet_known_warnings() -> None:
    """Silence the known-harmless third-party warnings and tips listed above (console scripts call it)."""
    for message, category in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefixes in _HARMLESS_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropMessages) for existing in logger.filters):
            logger.addFilter(_DropMessages(*prefixes))


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: bad data, options or checkpoints exit with status 2 and one ``error:`` line."""
    quiet_known_warnings()
    exit_on_reported_errors(cli_main, args)


if __name__ == "__main__":
    main()
