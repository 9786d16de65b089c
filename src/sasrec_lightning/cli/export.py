"""``sasrec-lightning-export``: a checkpoint to TorchScript or ONNX (``serving/export.py``).

``sasrec-lightning-export --ckpt_path model.ckpt --output model.onnx`` (or ``model.pt`` for
TorchScript). ONNX needs the optional extra: ``pip install "sasrec-lightning[onnx]"``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import write_text
from ..errors import OptionError
from ..serving.export import check_exportable, export_onnx, export_torchscript, require_onnx_exporter
from ..training.checkpoints import check_checkpoint_classes, read_checkpoint
from ..training.module import SASRecModule
from .exit import exit_on_reported_errors
from .signals import removing_on_sigterm
from .warnings import quiet_known_warnings

__all__ = ["export_checkpoint", "main"]


def export_checkpoint(ckpt_path: str | Path, output: str | Path, format: str | None = None) -> list[Path]:
    """Load a ``SASRecModule`` checkpoint (``weights_only``) and export it; returns the written files."""
    output = Path(output)
    format = format or {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}.get(output.suffix.lower())
    if format not in ("onnx", "torchscript"):
        raise OptionError(f"--output {str(output)!r}: cannot tell the format from the extension; expected .onnx "
                         "(ONNX) or .pt/.ts (TorchScript), or pass --format onnx|torchscript")
    if format == "onnx":
        require_onnx_exporter()  # one error line naming the extra, before the checkpoint is loaded
    # Refuse a checkpoint naming a class that is not an imported SASRecModule before Lightning imports it.
    check_checkpoint_classes(read_checkpoint(ckpt_path).get("hyper_parameters") or {}, SASRecModule, ckpt_path)
    module = SASRecModule.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=True)
    check_exportable(module.model, f"export --ckpt_path {str(ckpt_path)!r}")
    written = [export_onnx(module.model, output) if format == "onnx" else export_torchscript(module.model, output)]
    if module.item_vocabulary is not None:
        items = output.with_name(output.name + ".items.json")
        write_text(items, json.dumps(module.item_vocabulary.to_list()), "the item ids", "--output")
        written.append(items)
    return written


def main(args: list[str] | None = None) -> None:
    """``sasrec-lightning-export``: a checkpoint to TorchScript or ONNX."""
    parser = argparse.ArgumentParser(prog="sasrec-lightning-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `sasrec-lightning fit`")
    parser.add_argument("--output", required=True, help="model.onnx (ONNX) or model.pt (TorchScript)")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default=None,
                        help="override the format chosen from the extension")
    options = parser.parse_args(args)
    quiet_known_warnings()
    with removing_on_sigterm():
        for path in exit_on_reported_errors(export_checkpoint, options.ckpt_path, options.output, options.format):
            print(f"[sasrec-lightning] wrote {path}")


if __name__ == "__main__":
    main()
