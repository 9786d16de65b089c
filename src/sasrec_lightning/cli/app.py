"""``sasrec-lightning``: the LightningCLI entry point (fit / validate / test / predict).

The command's concerns each have a file in this folder: parse errors (``parse_errors.py``), the
settings a checkpoint brings (``checkpoint_settings.py``), the packaged configs (``configs.py``),
the run's config file (``run_config.py``), errors as one line (``exit.py``), warning filters
(``warnings.py``), bounded YAML (``bounded_yaml.py``), the 0.2 option names (``renamed.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ..data.datamodule import SASRecDataModule
from ..errors import OptionError
from ..serving.prediction import PredictionWriter
from ..training.baselines import category_column, category_popularity_metrics, most_popular_metrics
from ..training.callbacks import ResumedEpochProgress, SaveOnInterrupt, StopOnSigterm
from ..training.checkpoint_io import use_safe_checkpoint_io
from ..training.module import SASRecModule
from .bounded_yaml import command_line
from .checkpoint_settings import CheckpointSettings
from .configs import resolve_config_args
from .exit import exit_on_reported_errors
from .hardware import missing_gpu_error
from .parse_errors import SASRecArgumentParser
from .run_config import RunConfigCallback, check_run_folders
from .signals import removing_on_sigterm
from .warnings import no_wandb_anonymous_setting, quiet_known_warnings

__all__ = ["SASRecCLI", "cli_main", "main"]


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class SASRecCLI(CheckpointSettings, LightningCLI):
    """LightningCLI with the values the data decides linked into the model.

    ``num_items`` and ``max_len`` are said once, by the data, and linked into the model. With
    ``--ckpt_path`` the model is rebuilt from the checkpoint, safely (``checkpoint_settings.py``).
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
        # The item table's spec (None without one); a data class without the attribute links nothing.
        parser.link_arguments("data.item_feature_spec", "model.init_args.item_features", apply_on="instantiate")
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

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """LightningCLI's Trainer, saving and loading checkpoints through :class:`SafeCheckpointIO`.

        Atomic saves and checked loads (``checkpoint_io.py``) unless the config names its own plugin, a
        clean end on SIGTERM, also under DDP (``callbacks.StopOnSigterm``), ``last.ckpt`` saved at Ctrl-C and
        SIGTERM and holding the final state after fit (``callbacks.SaveOnInterrupt``), and the epoch named in
        the progress bar of a resumed run (``callbacks.ResumedEpochProgress``). A GPU accelerator on a machine
        without one is an :class:`OptionError` naming the config or flag that set it (``hardware.py``).
        """
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as error:
            problem = missing_gpu_error(self.config_dump_value("trainer").get("accelerator"), self._given_args)
            if problem is None:  # Lightning's own check of trainer options that do not fit together: one line
                problem = OptionError(f"the trainer options do not fit together: {error} Check the trainer "
                                      "section of the configs given with -c (a later one overrides an earlier "
                                      "one) and the --trainer.* flags")
            raise problem from error
        use_safe_checkpoint_io(trainer)
        trainer.callbacks.extend([StopOnSigterm(), SaveOnInterrupt(), ResumedEpochProgress()])
        for logger in trainer.loggers:
            no_wandb_anonymous_setting(logger)  # (wandb's notice that the setting is deprecated, on every run)
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
        data_given = flags & {"--data.path", "--data.init_args.path", "--data.source.url",
                              "--data.init_args.source.url"}
        name_given = any(flag.startswith("--trainer.logger") and flag.endswith(".name") for flag in flags)
        if isinstance(logger, Namespace) and "name" in (logger.get("init_args") or {}) and data_given \
                and not name_given:
            # A config's run name (`beauty`) describes its own data, not the file given with --data.path.
            data = config.get("data.init_args")
            source = data.get("path") or data.get("source.url") or "synthetic"
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
        if self.trainer.is_global_zero and results:
            print_test_summary(results[0], self.model.evaluation, self.datamodule, self.trainer.logger)

    def config_dump_value(self, key: str):
        """A top-level value of the running subcommand's config."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        return config.get(key)


def print_test_summary(results: dict[str, float], evaluation, datamodule, logger=None) -> None:
    """Print the test metrics at K = 10 (or the largest cut-off) beside the most-popular baseline's.

    The baseline needs the data module's ``eval_batches("test")`` (``data/contract.py``): without it
    the metrics are printed alone, with one warning. When the test batches mark cold targets (a
    cold-item split, or item features) a table follows: NDCG@K and HR@K over all, warm and cold targets
    for the model, the most-popular baseline and, with a categorical item feature, the category-popularity
    baseline (``training/baselines.py``).
    """
    k = max(evaluation.top_k) if 10 not in evaluation.top_k else 10
    line = (f"[sasrec-lightning] test ({evaluation.protocol} protocol): "
            f"NDCG@{k} {results[f'test/ndcg@{k}']:.4f}, HR@{k} {results[f'test/hr@{k}']:.4f}")
    if not hasattr(datamodule, "eval_batches"):
        rank_zero_warn(f"{type(datamodule).__name__} has no eval_batches(stage): the most-popular baseline is not "
                       "computed (see sasrec_lightning.data.contract)")
        print(line)
        return
    batches = datamodule.eval_batches("test")
    options = (evaluation.protocol, evaluation.exclude_seen, evaluation.top_k)
    catalogue = getattr(datamodule, "num_items", None)  # with item features: cold-start items after the data's
    baseline = most_popular_metrics(batches, *options, prefix="test_most_popular/", num_items=catalogue)
    rows = {"model": ("test/", results), "most-popular": ("test_most_popular/", baseline)}
    features = getattr(datamodule, "item_features", None)  # issue 26: a categorical column gives the second baseline
    if getattr(batches, "target_cold", False) and features is not None \
            and category_column(features, getattr(evaluation, "baseline_category", None)) is not None:
        category = category_popularity_metrics(batches, features, evaluation.baseline_category, *options,
                                               prefix="test_category_popularity/", num_items=catalogue)
        baseline.update(category)
        rows["category-popularity"] = ("test_category_popularity/", category)
    if logger is not None:
        logger.log_metrics(baseline)
    print(f"{line} | most-popular: NDCG@{k} {baseline[f'test_most_popular/ndcg@{k}']:.4f}, "
          f"HR@{k} {baseline[f'test_most_popular/hr@{k}']:.4f}")
    if f"test/cold/ndcg@{k}" in results or getattr(batches, "target_cold", False):
        print(warm_cold_table(rows, k, evaluation.protocol))


def warm_cold_table(rows: dict[str, tuple[str, dict[str, float]]], k: int, protocol: str) -> str:
    """NDCG@K and HR@K over all, warm and cold targets, one line per ranker (``n/a``: no such target, or not logged).

    Args:
        rows: ranker name -> (its metrics' prefix, its metrics).
        k: the cut-off shown.
        protocol: the evaluation protocol, for the title.
    """
    def cell(metrics: dict[str, float], key: str) -> str:
        value = metrics.get(key)
        return "     n/a" if value is None or value != value else f"{value:8.4f}"  # value != value: nan

    prefix, first = next(iter(rows.values()))
    counts = [first.get(f"{prefix}{group}/users") for group in ("warm", "cold")]
    users = "" if None in counts else f"; {int(counts[0])} warm and {int(counts[1])} cold targets"
    width = max(len(name) for name in rows) + 2
    groups = ("", "warm/", "cold/")
    columns = "".join(f"{group or 'all':>8}" for group in ("", "warm", "cold"))
    lines = [f"[sasrec-lightning] test by target ({protocol} protocol{users}; cold: no training interaction):",
             (" " * width + f"{'NDCG@' + str(k):^24} |{'HR@' + str(k):^24}").rstrip(),
             " " * width + f"{columns} |{columns}"]
    for name, (prefix, metrics) in rows.items():
        ndcg = "".join(cell(metrics, f"{prefix}{group}ndcg@{k}") for group in groups)
        hit = "".join(cell(metrics, f"{prefix}{group}hr@{k}") for group in groups)
        lines.append(f"  {name:<{width - 2}}{ndcg} |{hit}")
    return "\n".join(lines)


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
        **{"parser_class": SASRecArgumentParser, "save_config_callback": RunConfigCallback, **kwargs},
    )


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: bad data, options or checkpoints exit with status 2 and one ``error:`` line.

    SIGTERM while it runs ends the process after its temporary folders are removed (``signals.py``).
    """
    quiet_known_warnings()
    with removing_on_sigterm():
        exit_on_reported_errors(cli_main, args)


if __name__ == "__main__":
    main()
