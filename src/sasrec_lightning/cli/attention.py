"""``sasrec-lightning-attention``: the paper's Fig. 4 heatmaps of a trained checkpoint (``serving/attention.py``)."""

from __future__ import annotations

import sys

from ..data.datamodule import SASRecDataModule
from ..serving.attention import AttentionHeatmaps, require_matplotlib
from ..training.checkpoints import check_checkpoint_classes, check_item_ids, data_setting_differences, read_checkpoint
from ..training.module import SASRecModule
from .app import SASRecCLI
from .configs import resolve_config_args
from .exit import exit_on_reported_errors
from .parse_errors import SASRecArgumentParser
from .signals import removing_on_sigterm
from .warnings import quiet_known_warnings

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    """``sasrec-lightning-attention -c CONFIG --ckpt_path BEST [--attention.output_dir DIR]``.

    Reads the same config as ``sasrec-lightning`` (the data and, with a W&B logger, the logger),
    loads the checkpoint and renders the heatmaps once.
    """
    quiet_known_warnings()
    with removing_on_sigterm():
        exit_on_reported_errors(_render_checkpoint, args)


def _render_checkpoint(args: list[str] | None) -> None:
    require_matplotlib()  # one error line naming the extra, before the config and the data are read
    class AttentionCLI(SASRecCLI):
        def add_arguments_to_parser(self, parser) -> None:
            super().add_arguments_to_parser(parser)
            parser.add_argument("--ckpt_path", type=str | None, default=None,
                                help="checkpoint to load (empty: the freshly initialized model of the config); "
                                "its model and data settings fill in what the config does not give")
            # Keys of a run's saved config.yaml that mean nothing here; accepted so that file can be passed.
            parser.add_argument("--weights_only", type=bool | None, default=None,
                                help="accepted for a run's saved config.yaml; checkpoints always load with "
                                "weights_only=True")
            parser.add_class_arguments(AttentionHeatmaps, "attention")

        def _parse_ckpt_path(self) -> None:  # no subcommand: the checkpoint fills the top level
            self._apply_checkpoint(None)

    if args is None:  # -c NAME: a packaged config (rewritten in place, as sasrec-lightning does)
        sys.argv[1:] = resolve_config_args(sys.argv[1:])
    else:
        args = resolve_config_args(list(args))
    cli = AttentionCLI(SASRecModule, SASRecDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=args, save_config_callback=None, parser_class=SASRecArgumentParser)
    model = cli.model
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path:
        checkpoint = read_checkpoint(ckpt_path)
        # Refuse a checkpoint naming a class that is not an imported SASRecModule before Lightning imports it,
        # and one trained on other items than the config's data (its heatmaps would describe other sequences).
        check_checkpoint_classes(checkpoint.get("hyper_parameters") or {}, SASRecModule, ckpt_path)
        sequences = getattr(cli.datamodule, "sequences", None)
        if checkpoint.get("item_ids") is not None and sequences is not None:
            differences = data_setting_differences(checkpoint.get("datamodule_hyper_parameters"),
                                                   cli.datamodule.hparams)
            check_item_ids(checkpoint["item_ids"], sequences.item_ids, differences)
        model = type(model).load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    callback = AttentionHeatmaps(**cli.config.get("attention").as_dict())
    cli.datamodule.setup(callback.stage)
    for path in callback.render(cli.trainer, model, cli.datamodule):
        print(f"[sasrec-lightning] wrote {path}")


if __name__ == "__main__":
    main()
