"""Range checks of options, used by each option group where it is defined (its ``__post_init__``).

LightningCLI builds the option groups from typed dataclasses, which checks types but not ranges:
``max_len: 0`` or ``dropout: 1.5`` would otherwise fail deep inside the first forward pass (or, for
``num_eval_negatives: 0``, silently score every user a hit). Each check raises an
:class:`~sasrec_lightning.errors.OptionError` naming the option (``--section.name``), the value and
what is allowed, which the CLI prints as one ``error:`` line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .errors import OptionError

__all__ = ["at_least", "in_range", "positive", "one_of", "option_group"]


def at_least(section: str, name: str, value, minimum: int, optional: bool = False, auto: bool = False) -> None:
    """``value >= minimum`` (an integer), or ``None`` when ``optional``, or ``"auto"`` when ``auto``."""
    if (optional and value is None) or (auto and value == "auto"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = ("'auto' or " if auto else "") + f"an integer >= {minimum}" + (" (or empty)" if optional else "")
        raise OptionError(f"--{section}.{name} {value!r}: expected {allowed}")


def in_range(section: str, name: str, value, low: float, high: float, high_open: bool = False) -> None:
    """``low <= value <= high`` (``< high`` when ``high_open``)."""
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not inside or (high_open and value >= high):
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise OptionError(f"--{section}.{name} {value!r}: expected a number in {interval}")


def positive(section: str, name: str, value, allow_zero: bool = False) -> None:
    """A finite number ``> 0`` (``>= 0`` when ``allow_zero``): ``.inf`` and ``.nan`` are refused like ``-1``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (value == 0 and not allow_zero):
        raise OptionError(f"--{section}.{name} {value!r}: expected a finite number {'>=' if allow_zero else '>'} 0")


def one_of(section: str, name: str, value, choices) -> None:
    """``value`` is one of ``choices`` (a sequence, or a ``typing.Literal`` of them)."""
    allowed = tuple(getattr(choices, "__args__", choices))
    if value not in allowed:
        raise OptionError(f"--{section}.{name} {value!r}: expected one of {', '.join(map(repr, allowed))}")


def option_group(cls: type, value, section: str):
    """An option group given as its dataclass or as a mapping of its fields (a checkpoint's, a notebook's).

    Args:
        cls: the group's dataclass.
        value: an instance, or a mapping of field names to values.
        section: the group's flag, e.g. ``model.encoder`` (for the message).
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as error:
            raise OptionError(f"--{section}: {error}; expected the fields of {cls.__name__}") from None
    raise OptionError(f"--{section} {value!r}: expected {cls.__name__} or a mapping of its fields")
