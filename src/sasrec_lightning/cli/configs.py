"""The configs that ship with the package, run by name from any folder (``-c quickstart``)."""

from __future__ import annotations

import os
from pathlib import Path

from .bounded_yaml import check_config_file

__all__ = ["packaged_configs", "resolve_config", "resolve_config_args"]


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

