"""A GPU accelerator asked for on a machine without one: one line naming who asked and what to use instead.

Lightning refuses ``accelerator: gpu`` without a GPU with "No supported gpu backend found!" (``cuda``: "can not run
on your system") deep in a traceback; the GPU trainer configs (``configs/trainer/gpu-ddp.yaml``, ``fsdp.yaml``,
``tp.yaml``, ``multinode-ddp.yaml``) all set it. :func:`missing_gpu_error` turns that refusal into an
:class:`~sasrec_lightning.errors.OptionError` naming the config file or flag that set the accelerator.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

from ..errors import OptionError
from . import bounded_yaml
from .configs import packaged_configs

__all__ = ["missing_gpu_error"]

# Lightning's accelerator names that need a GPU, and what each needs.
_NEEDS = {"gpu": "a GPU (CUDA, or Apple MPS)", "cuda": "a CUDA GPU", "mps": "an Apple MPS GPU"}


def _available(accelerator: str) -> bool:
    if accelerator == "cuda":
        return CUDAAccelerator.is_available()
    if accelerator == "mps":
        return MPSAccelerator.is_available()
    return CUDAAccelerator.is_available() or MPSAccelerator.is_available()


def _shown(path: str) -> str:
    """A config path as the user knows it: ``configs/trainer/tp.yaml`` for a packaged one (``-c trainer/tp``)."""
    folder = packaged_configs()
    resolved = Path(path).resolve()
    if folder is not None and folder.resolve() in resolved.parents:
        return f"configs/{resolved.relative_to(folder.resolve()).as_posix()}"
    return path


def _sets_accelerator(path: str) -> bool:
    try:  # (the CLI's own YAML loader, bounded like every config it reads)
        content = bounded_yaml.load(Path(path).read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OptionError):
        return False
    trainer = content.get("trainer") if isinstance(content, dict) else None
    return isinstance(trainer, dict) and "accelerator" in trainer


def _where_set(args: list[str]) -> str | None:
    """The flag (``--trainer.accelerator``) or config file (``-c``) that set the accelerator last, else ``None``."""
    source = None
    for index, arg in enumerate(args):
        if arg == "--trainer.accelerator" or arg.startswith("--trainer.accelerator="):
            source = "flag"
        elif arg in ("-c", "--config") and index + 1 < len(args) and _sets_accelerator(args[index + 1]):
            source = args[index + 1]
        elif arg.startswith(("-c=", "--config=")) and _sets_accelerator(arg.split("=", 1)[1]):
            source = arg.split("=", 1)[1]
    return source


def missing_gpu_error(accelerator: object, args: list[str] | None) -> OptionError | None:
    """An :class:`OptionError` when ``accelerator`` needs a GPU this machine does not have, else ``None``.

    Args:
        accelerator: the trainer's ``accelerator`` setting (a name; an ``Accelerator`` object is left to Lightning).
        args: the command line (config files and flags), to name where the accelerator was set.
    """
    name = accelerator.lower() if isinstance(accelerator, str) else None
    if name not in _NEEDS or _available(name):
        return None
    source = _where_set(args or [])
    if source is None or source == "flag":
        where = ""
        instead = ("pass --trainer.accelerator cpu instead (configs/trainer/cpu-ddp.yaml for DDP over 2 CPU "
                   "processes)")
    else:
        shown = _shown(source)
        where = f" (set by {shown})"
        in_place = "configs/trainer/cpu-ddp.yaml (DDP over 2 CPU processes)"
        instead = (f"use {in_place} in place of {shown}, or add --trainer.accelerator cpu after it"
                   if Path(shown).parent.name == "trainer" else
                   f"add --trainer.accelerator cpu after it, or {in_place} for several CPU processes")
    return OptionError(f"--trainer.accelerator {accelerator}{where} needs {_NEEDS[name]}, and this machine has none "
                       f"that PyTorch can use. To run on the CPU, {instead}.")
