"""``sasrec-lightning``: the LightningCLI entry point (fit / validate / test / predict)."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .baselines import most_popular_metrics
from .datamodule import SASRecDataModule
from .errors import DataError
from .module import SASRecModule
from .prediction import PredictionWriter

__all__ = ["SASRecCLI", "cli_main", "main"]


# How a model is evaluated, not what it learned: taken from the command's own config and flags, not
# from the checkpoint, so `test --ckpt_path best.ckpt --model.init_args.eval_protocol sampled` tests a
# model trained under full ranking with the sampled protocol.
EVALUATION_SETTINGS = ("eval_protocol", "exclude_seen", "top_k", "eval_chunk_size")


class SASRecCLI(LightningCLI):
    """LightningCLI with the values the data decides linked into the model.

    With ``--ckpt_path``, LightningCLI rebuilds the model from the checkpoint's hyper-parameters;
    the evaluation settings (``EVALUATION_SETTINGS``) keep the values of the running command.
    """

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

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        prefix = f"{subcommand}.model.init_args."
        given = {key: self.config.get(prefix + key) for key in EVALUATION_SETTINGS} if subcommand else {}
        super()._parse_ckpt_path()
        for key, value in given.items():
            if value is not None and self.config.get(prefix + key, None) is not None:
                self.config[prefix + key] = value

    def before_fit(self) -> None:
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
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
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


def cli_main(args: list[str] | None = None, **kwargs) -> SASRecCLI:
    """Build and run the CLI; model and data classes can be any subclass (``--model.class_path``)."""
    return SASRecCLI(
        SASRecModule,
        SASRecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )


def main() -> None:
    """Console-script entry point; bad input data exits with status 2 and a one-paragraph message."""
    try:
        cli_main()
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
