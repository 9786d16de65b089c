"""Bounded YAML for the CLI: what a config may hold and expand to, checked before jsonargparse works on it.

Every YAML the CLI reads goes through one loader (:func:`load`): ``-c`` files and inline ``-c '{...}'``
configs, and the values of flags (``--model.init_args.top_k '[1, 5]'``). Three bounds, each far above
what a real config holds (the shipped ones: at most 2.5 KB, 111 values and lists of 4; a whole run's
``--print_config``: 4 KB and 337 values):

* ``MAX_CONFIG_BYTES``, checked before parsing (a ``-c`` file before it is read): parsing takes about
  2 s per MiB of YAML.
* ``MAX_CONFIG_NODES`` values once every alias is expanded. PyYAML builds an alias (``*name``) once and
  shares it, so a "billion laughs" config of 500 bytes (9 levels of 10 aliases) loads in a millisecond;
  jsonargparse then copies, validates and dumps it value by value, 10^9 of them, for minutes and
  gigabytes. The count visits each shared list or mapping once (memoized by object id).
* ``MAX_LIST_ENTRIES`` per list: jsonargparse validates a list by copying it once per entry, so a list of
  n entries costs n^2 copies (measured: 1,000 entries 2 s, 4,000 entries 32 s, a 60,000-entry ``top_k``
  over 5 minutes) before any option check could see it.

Each refusal is one ``error:`` line naming the file or flag, the size found and the bound.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

import yaml
from jsonargparse import get_loader, set_loader

from ..errors import OptionError

__all__ = ["MAX_CONFIG_BYTES", "MAX_CONFIG_NODES", "MAX_LIST_ENTRIES", "PARSER_MODE", "ConfigSize", "ConfigTooLarge",
           "check_config_file", "command_line", "config_size", "load"]

MAX_CONFIG_BYTES = 256 << 10  # 256 KiB
MAX_CONFIG_NODES = 10_000
MAX_LIST_ENTRIES = 256
PARSER_MODE = "sasrec_yaml"  # the parser mode (jsonargparse.set_loader) of SASRecArgumentParser

# The command line being parsed, to name the flag whose value is refused (set by ``command_line``).
_ARGS: ContextVar[Sequence[str]] = ContextVar("sasrec_lightning_config_args", default=())


class ConfigTooLarge(OptionError):
    """A config or a flag's YAML value above the bounds of this module."""


class ConfigSize(NamedTuple):
    """What a loaded config holds: ``values`` once every alias is expanded, and its ``longest_list``."""

    values: int
    longest_list: int


def config_size(value: Any) -> ConfigSize:
    """Measure a loaded config: each list, mapping, key and scalar is one value; an alias counts as often as it is used.

    A list or mapping referenced ``n`` times counts ``n`` times but is visited once (sizes are memoized
    by object id), so a 9-level bomb of 10^9 values is measured in about a hundred steps.

    Raises:
        ConfigTooLarge: when a list or mapping contains itself (``&a [*a]``), which expands without end.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # the containers on the path being visited: meeting one again is a cycle
    longest = 0
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, children_counted = stack.pop()
        children = _children(node)
        if children is None or (not children_counted and id(node) in sizes):
            continue  # a scalar (counted by its parent) or a container already measured
        if children_counted:
            open_.discard(id(node))
            keys = len(node) if isinstance(node, dict) else 0
            sizes[id(node)] = 1 + keys + sum(sizes.get(id(child), 1) for child in children)
            continue
        if id(node) in open_:
            raise ConfigTooLarge("it contains itself (an alias inside its own anchor, like &a [*a]), so it expands "
                                 "without end")
        open_.add(id(node))
        longest = max(longest, len(children)) if isinstance(node, list) else longest
        stack.append((node, True))
        stack.extend((child, False) for child in children if _children(child) is not None)
    return ConfigSize(sizes.get(id(value), 1), longest)


def _children(node: Any) -> list | None:
    """The values inside a list or mapping (``None`` for a scalar)."""
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list):
        return node
    return None


@contextmanager
def command_line(args: Sequence[str]) -> Iterator[None]:
    """While parsing ``args``, a refused value is named by the flag it follows (``--model.init_args.top_k``)."""
    token = _ARGS.set(tuple(args))
    try:
        yield
    finally:
        _ARGS.reset(token)


def _source(value: str, path: str | os.PathLike) -> str:
    """``config file 'x.yaml'``, the flag given ``value`` on the command line, or ``a YAML value``."""
    if path:
        return f"config file {os.fspath(path)!r}"
    args = _ARGS.get()
    for index, arg in enumerate(args):
        if arg == value and index > 0 and args[index - 1].startswith("-"):
            return f"the value of {args[index - 1]}"
        flag, _, given = arg.partition("=")
        if flag.startswith("-") and given == value:
            return f"the value of {flag}"
    return "a YAML value"


def check_config_file(path: str) -> None:
    """Refuse a ``-c`` file above ``MAX_CONFIG_BYTES`` before it is read (jsonargparse reads it whole)."""
    if not os.path.isfile(path):
        return  # inline YAML, a packaged config's name, or a missing file (the parser reports it)
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise ConfigTooLarge(f"config file {path!r} is {size:,} bytes; a config may be at most {MAX_CONFIG_BYTES:,} "
                             "bytes (256 KiB; the shipped configs are at most 2.5 KB): check that -c names a config "
                             "file")


_jsonargparse_yaml = get_loader("yaml")


def load(value: str, path: str | os.PathLike = "") -> Any:
    """Load YAML as jsonargparse does, within the bounds above (``path``: a config file's name, from jsonargparse)."""
    if len(value) > MAX_CONFIG_BYTES:
        raise ConfigTooLarge(f"{_source(value, path)} holds {len(value):,} characters; a config may hold at most "
                             f"{MAX_CONFIG_BYTES:,} (256 KiB; the shipped configs are at most 2.5 KB)")
    loaded = _jsonargparse_yaml(value)
    try:
        size = config_size(loaded)
    except ConfigTooLarge as error:
        raise ConfigTooLarge(f"{_source(value, path)} cannot be used: {error}") from None
    if size.values > MAX_CONFIG_NODES:
        raise ConfigTooLarge(f"{_source(value, path)} expands to {size.values:,} values once its YAML aliases (*name) "
                             f"are expanded; a config may expand to at most {MAX_CONFIG_NODES:,} (the shipped configs "
                             "hold at most 111): remove the aliases that repeat large parts")
    if size.longest_list > MAX_LIST_ENTRIES:
        raise ConfigTooLarge(f"{_source(value, path)} holds a list of {size.longest_list:,} entries; a list may hold "
                             f"at most {MAX_LIST_ENTRIES} (the shipped configs' longest has 4)")
    return loaded


set_loader(PARSER_MODE, load, exceptions=(yaml.YAMLError,))
