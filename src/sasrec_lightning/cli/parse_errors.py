"""Parse errors as one line naming the flag: jsonargparse's nested reports condensed, typos and 0.2 names explained."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import sys
import typing
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from ..errors import in_chain
from ..model.losses import LOSSES
from ..training.checkpoints import imported_class
from .bounded_yaml import PARSER_MODE, ConfigTooLarge
from .configs import packaged_configs
from .renamed import new_spelling

__all__ = ["SASRecArgumentParser", "condensed_parse_error"]


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
    """The options of the imported class ``class_path`` (``[]`` when not imported).

    Its and its bases' ``__init__`` parameters and, for an option group (a dataclass parameter), each
    field as ``group.field``.
    """
    cls = imported_class(class_path)
    names: list[str] = []
    for klass in getattr(cls, "__mro__", ()):
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            hints = typing.get_type_hints(klass.__init__)
        except Exception:  # an annotation that does not resolve here: the parameters alone
            hints = {}
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            names.append(name)
            if dataclasses.is_dataclass(hints.get(name)):
                names += [f"{name}.{field.name}" for field in dataclasses.fields(hints[name])]
    return list(dict.fromkeys(names))


def _unknown_option(reason: str) -> str | None:
    """The option a parse error says is unknown, relative to its section (``encoder.hidden_sise``), else ``None``.

    jsonargparse says it three ways: ``Option 'X' is not accepted`` (a class's own option), ``unrecognized
    arguments: --group.X=...`` (a flag inside an option group), ``Group 'group' does not accept option 'X'``
    (a config's key inside an option group).
    """
    if match := re.search(r"Group '([^']+)' does not accept option '([^']+)'", reason):
        return f"{match.group(1)}.{match.group(2)}"
    match = re.search(r"Option '([^']+)' is not accepted|unrecognized arguments: --([^\s=]+)", reason)
    return None if match is None else (match.group(1) or match.group(2)).removeprefix("init_args.")


def _closest(unknown: str, names: list[str]) -> list[str]:
    """Up to 3 options close to ``unknown``: within its group when it names one, else by their last part too.

    ``hidden_sise`` finds ``encoder.hidden_size`` (a 0.2 name misspelt); ``encoder.hidden_sise`` finds it too.
    """
    group, _, leaf = unknown.rpartition(".")
    if group:
        fields = {name.rpartition(".")[2]: name for name in names if name.startswith(f"{group}.")}
    else:
        fields = {name.rpartition(".")[2]: name for name in reversed(names)}  # a top-level name wins its leaf
    return [fields[name] for name in difflib.get_close_matches(leaf, list(fields), n=3, cutoff=0.6)]


def _explained(flag: str, reason: str, message: str) -> str:
    """A reason with the hint it needs: close option names for a typo, ``PYTHONPATH`` for a missing module."""
    class_paths = re.findall(r"class_path '([^']+)'", message)
    class_path = class_paths[-1] if class_paths else None  # the innermost class: a loss's inside the model's
    section, *inner = flag.split(".")  # "model", ["loss"] for an option of the loss
    unknown = _unknown_option(reason)
    every = f"--{flag}.help {class_path.rsplit('.', 1)[-1]}" if class_path else "--help"
    renamed = new_spelling(section, unknown) if unknown and not inner else None
    if renamed:  # a 0.2 config or flag
        return (f"--{section}.{unknown} is {renamed} since sasrec-lightning 0.3, which groups the options "
                f"(docs/configuration.md lists the old and the new names); (every option: {every})")
    grouped = new_spelling(section, inner[0]) if len(inner) == 1 and not unknown else None
    value = re.search(r"Unable to load config '([^']*)'", reason)
    if grouped and value:  # a 0.2 option whose name is a group's now: --data.holdout temporal
        every = f"--{section}.help {class_path.rsplit('.', 1)[-1]}" if class_path else "--help"
        return (f"--{flag} {value.group(1)} is {grouped} {value.group(1)} since sasrec-lightning 0.3, which groups "
                f"the options (docs/configuration.md lists the old and the new names); (every option: {every})")
    shorthand = re.search(r"Expected a dot import path string: (\w+)", reason)
    if inner == ["loss"] and shorthand and shorthand.group(1) in LOSSES:  # --model.loss gbce --model.loss.t 0.5
        name = LOSSES[shorthand.group(1)].__name__
        return (f"--{flag} {shorthand.group(1)} is a shorthand, which takes no options: to set the loss's options "
                f"name its class (--{flag} {name} --{flag}.OPTION VALUE; every option: --{flag}.help {name})")
    if unknown and class_path:  # relative to the innermost class: --model.loss.tt is option tt of the loss
        close = _closest(unknown, _option_names(class_path))
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        return (f"--{flag}.{unknown}: Option {unknown!r} is not accepted by {class_path}; {hint}"
                f"(every option: {every})")
    missing = re.search(r"No module named '([^']+)'", reason)
    if missing and class_path:
        # The class path that names the missing module (the message may name the model's class first).
        named = re.search(rf"'({re.escape(missing.group(1))}\.[\w.]+)'", f"{reason} {message}")
        shown = named.group(1) if named else class_path
        return (f"--{flag}: cannot import {shown!r}: no module named {missing.group(1)!r}. If it is "
                f"your own file ({missing.group(1).split('.')[0]}.py), run from its folder with PYTHONPATH=. "
                "(e.g. PYTHONPATH=. sasrec-lightning fit ...) or install it")
    return f"--{flag}: {reason}"


class SASRecArgumentParser(LightningArgumentParser):
    """Parse errors as one ``error:`` line, without jsonargparse's usage text of every option.

    YAML (configs and flag values) is read by ``bounded_yaml.load``: a config above its size bounds is refused.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parser_mode", PARSER_MODE)
        # No abbreviated flags: a misspelt group option (--data.source.user_col) is refused as a typo, not
        # expanded to the option it starts (this parser class also parses the model's and data's options).
        kwargs.setdefault("allow_abbrev", False)
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
        too_large = in_chain(ex, ConfigTooLarge)
        condensed = str(too_large) if too_large is not None else condensed_parse_error(message)
        folder = packaged_configs()
        if condensed.startswith("--config:") and "does not exist" in condensed and folder is not None:
            names = sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))
            condensed += f"; the packaged configs are: {', '.join(names)}"
        # A typo's message points to its section's help; a config too large needs no help.
        hint = "" if ".help " in condensed or too_large is not None else " (see --help)"
        sys.stderr.write(f"error: {condensed}{hint}\n")
        self.exit(2)

