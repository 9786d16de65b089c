"""Reading checkpoints safely and checking that they fit the model and the data they are used with.

* Files are read with ``torch.load(weights_only=True)``: tensors and plain Python values only, so a
  crafted checkpoint cannot run code while it is unpickled.
* A checkpoint names the class that wrote it (``hyper_parameters._class_path``, written by
  LightningCLI). Importing that name could run any installed module's import-time code, so a
  name is accepted only when it resolves, without importing anything, to an already imported
  subclass of the expected class (the package's own classes, or a class named on the command line
  or in the config, which the argument parser imported already).
* A checkpoint carries its item ids (``SASRecModule.on_save_checkpoint``); used on data whose item
  ids differ, its scores would belong to other items, so that stops with a :class:`CheckpointError`.
* Before ``torch.load`` the file is checked as an archive (:func:`check_archive`): an empty or cut
  file (a run killed while saving) is named as such, and an archive whose entries declare far more
  bytes than the file holds (a compression bomb) is refused before anything is inflated.
* Before the weights are loaded, every tensor must have the model's shape and kind of dtype
  (:func:`check_state_shapes`): ``load_state_dict`` would cast an integer table to floats silently.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from ..data.options import RUNTIME_OPTIONS
from ..errors import CheckpointError

__all__ = ["read_checkpoint", "check_archive", "imported_class", "check_checkpoint_classes", "check_state_shapes",
           "check_state_dtypes", "check_item_ids", "check_checkpoint_data", "is_unsafe_refusal",
           "unsafe_checkpoint_error", "save_rng_states", "restore_rng_states", "check_checkpoint_features",
           "DATA_OPTIONS", "data_setting_differences", "plain", "flat_options"]

# The instantiator LightningCLI writes into checkpoints (``load_from_checkpoint`` imports it by name).
TRUSTED_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",)

# The data options that decide the item ids (internal id -> original id) a model is trained with.
DATA_OPTIONS = "path, source (format, columns), preprocessing (filters) and max_len"


def plain(value):
    """``value`` with tuples as lists (a saved ``(0.8, 0.9)`` reads back as ``[0.8, 0.9]``), for comparison."""
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    return value


def flat_options(options: Mapping, prefix: str = "") -> dict:
    """Nested option groups as dotted keys: ``{"source": {"user_column": "u"}}`` -> ``{"source.user_column": "u"}``.

    Keys starting with ``_`` (LightningCLI's ``_class_path``) are left out.
    """
    flat = {}
    for key, value in options.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, Mapping):
            flat.update(flat_options(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def data_setting_differences(saved: Mapping | None, current: Mapping | None) -> str:
    """The data options whose values differ between a checkpoint's training run and the current data.

    Args:
        saved: the checkpoint's ``datamodule_hyper_parameters`` (written by Lightning), or ``None``.
        current: the current data module's ``hparams``, or ``None``.

    Returns:
        ``"path: 'a.csv' in the checkpoint, 'b.csv' here; ..."``, or ``""`` when nothing can be compared.
    """
    if not saved or not current:
        return ""
    saved, current = flat_options(saved), flat_options(current)
    differ = [f"{key}: {saved[key]!r} in the checkpoint, {current[key]!r} here" for key in saved
              if key in current and not any(key == r or key.startswith(r + ".") for r in RUNTIME_OPTIONS)
              and plain(saved[key]) != plain(current[key])]
    return "; ".join(differ)


def _what_differs(differences: str) -> str:
    if differences:
        return f"These --data options differ from the training run's: {differences}. Use the training run's values"
    return f"Use it with the data it was trained on (the same --data options: {DATA_OPTIONS})"


# torch.load's own wrapper around a refusal of the weights-only unpickler, and the refusal itself: a
# pickled global (class or function) that is not allowed, named after the pickle opcode (``GLOBAL
# posix.system``), or an object of a class that is not allowlisted. torch's wording and case vary
# between releases ("Unsupported global: GLOBAL x", "unsupported GLOBAL x whose module y is blocked").
_WEIGHTS_ONLY_FAILED = re.compile(r"\s*weights only load failed", re.IGNORECASE)
_REFUSED_OBJECT = re.compile(r"\bGLOBAL\s+[A-Za-z_][\w.]*|\ballowlisted\s+via\b", re.IGNORECASE)
# The refused names, after the opcode as torch spells it (in lower case, "global by default" is prose).
_GLOBAL_NAME = re.compile(r"\bGLOBAL\s+([A-Za-z_][\w.]*)")


def is_unsafe_refusal(error: BaseException) -> bool:
    """Whether ``error`` is ``torch.load(weights_only=True)`` refusing a pickled object (not a damaged file).

    torch raises ``pickle.UnpicklingError`` for both; a refusal is torch.load's "Weights only load
    failed" wrapper around the unpickler naming a global (``GLOBAL module.name``) or a class that is
    not allowlisted. A damaged pickle is reported as an unsupported operand or an early end instead.
    """
    text = str(error)
    return (isinstance(error, pickle.UnpicklingError) and _WEIGHTS_ONLY_FAILED.match(text) is not None
            and _REFUSED_OBJECT.search(text) is not None)


def _weights_only_reason(error: BaseException) -> str:
    """The unpickler's own reason in a ``weights_only`` error, without torch's several paragraphs of advice.

    torch's advice (re-running with ``weights_only=False``) is never repeated: it would run the code.
    """
    text = str(error)
    unsafe_advice = getattr(torch.serialization, "UNSAFE_MESSAGE", "")
    if unsafe_advice:
        text = text.replace(unsafe_advice, "")
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = _WEIGHTS_ONLY_FAILED.sub("", text, count=1).lstrip(". ")
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.strip().startswith(("Check the documentation", "Please file an issue"))]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if not reason or re.search(r"weights_only", reason, re.IGNORECASE):
        return type(error).__name__
    return reason


def unsafe_checkpoint_error(error: pickle.UnpicklingError, path: str | PathLike | None = None,
                            names: list[str] | None = None) -> CheckpointError:
    """The one-paragraph error for a checkpoint that ``weights_only`` loading refused.

    Args:
        error: torch's error.
        path: the checkpoint, when known.
        names: the refused globals (``torch.serialization.get_unsafe_globals_in_checkpoint``), when known;
            else they are read from the error.
    """
    names = names or list(dict.fromkeys(_GLOBAL_NAME.findall(str(error))))
    reason = f"it names {', '.join(names)}" if names else _weights_only_reason(error)
    where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
    return CheckpointError(
        f"{where} was refused: it holds objects other than tensors and plain Python values ({reason}), and "
        "unpickling them could run arbitrary code, so checkpoints are only loaded with "
        "torch.load(weights_only=True). Use a checkpoint written by `sasrec-lightning fit`."
    )


# torch.save writes a zip archive whose entries are stored uncompressed, so their declared sizes add
# up to about the file's size. An archive may declare at most MAX_INFLATION times its file's size, and
# at least INFLATION_FLOOR bytes, in all: generous for a checkpoint someone re-zipped (float weights
# deflate to ~0.9 of their size), while a compression bomb (zeros deflate ~1000:1) is refused unread.
MAX_INFLATION = 4
INFLATION_FLOOR = 64 * 2**20
ZIP_MAGIC = b"PK\x03\x04"


def _size(count: float) -> str:
    """``count`` bytes for a message: ``512 bytes``, ``280.5 KiB``, ``1.0 GiB``."""
    units = ("bytes", "KiB", "MiB", "GiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.0f} bytes" if power == 0 else f"{count:.1f} {units[power]}"


def _other_checkpoints(path: str | PathLike) -> list[str]:
    """The names of the other ``.ckpt`` files in ``path``'s folder, newest first."""
    target = Path(path)
    try:
        others = [other for other in target.parent.glob("*.ckpt") if other.name != target.name and other.is_file()]
        others.sort(key=lambda other: other.stat().st_mtime, reverse=True)
    except OSError:
        return []
    return [other.name for other in others]


def _cut_short(path: str | PathLike, what: str) -> CheckpointError:
    """The error for a checkpoint that a killed save (or a copy) left incomplete, pointing to the others."""
    others = _other_checkpoints(path)
    if others:
        listed = ", ".join(repr(name) for name in others[:3]) + (", ..." if len(others) > 3 else "")
        advice = f"The other checkpoints in its folder, newest first: {listed}; pass one with --ckpt_path"
    else:
        advice = "No other checkpoint is in its folder; train again"
    return CheckpointError(f"checkpoint {str(path)!r} cannot be read: {what}. Was the run killed while saving it, "
                           f"or the file copied in part? {advice}")


def check_archive(path: str | PathLike) -> None:
    """Refuse, before ``torch.load`` reads anything, a file that is no complete checkpoint archive.

    ``torch.load`` allocates and inflates every entry at the size the archive's central directory
    declares (and never more: a record must be exactly the size its tensor needs), so checking the
    declared sizes here bounds what loading can take.

    Raises:
        CheckpointError: the file is empty, cut short, not a zip archive, not a PyTorch archive, damaged,
            or declares more than ``MAX_INFLATION`` times its size (at least ``INFLATION_FLOOR``).
    """
    size = os.path.getsize(path)
    if size == 0:
        raise _cut_short(path, "the file is empty (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    expected = "expected a .ckpt file written by `sasrec-lightning fit`"
    if head != ZIP_MAGIC:
        if ZIP_MAGIC.startswith(head):
            raise _cut_short(path, f"the file is truncated ({size} bytes)")
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: it is not a zip archive (it starts with "
                              f"{head!r}), and every checkpoint torch.save writes is one; {expected}")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as error:
        raise _cut_short(path, f"the file is truncated or damaged, its zip archive has no intact end ({size} "
                               f"bytes; {type(error).__name__}: {error})") from None
    if not any(entry.filename.rsplit("/", 1)[-1] == "data.pkl" for entry in entries):
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: the zip archive holds no data.pkl, so it "
                              f"is not a PyTorch file; {expected}")
    for entry in entries:
        if entry.compress_type == zipfile.ZIP_STORED and entry.file_size != entry.compress_size:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: the entry {entry.filename!r} "
                                  f"declares {entry.file_size} bytes but stores {entry.compress_size}: the file is "
                                  f"damaged; {expected}")
    declared = sum(entry.file_size for entry in entries)
    bound = max(MAX_INFLATION * size, INFLATION_FLOOR)
    if declared > bound:
        largest = max(entries, key=lambda entry: entry.file_size)
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused unread: its entries declare {_size(declared)} uncompressed in a "
            f"{_size(size)} file (the largest, {largest.filename!r}: {_size(largest.file_size)} compressed to "
            f"{_size(largest.compress_size)}), more than {MAX_INFLATION} times the file's size (or "
            f"{_size(INFLATION_FLOOR)}); inflating it could exhaust the memory. torch.save writes checkpoints "
            f"uncompressed; {expected}"
        )


def read_checkpoint(path: str | PathLike, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` after :func:`check_archive`, with one-paragraph errors.

    Args:
        path: a local checkpoint file.
        map_location: as in ``torch.load`` (default: the CPU).

    Raises:
        CheckpointError: the file is empty or cut short (a killed save), holds arbitrary Python objects,
            declares more than it could need (a compression bomb), or is not a checkpoint at all.
    """
    check_archive(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if is_unsafe_refusal(error):
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # the names are a courtesy; the refusal stands without them
                names = None
            raise unsafe_checkpoint_error(error, path, names) from None
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({_weights_only_reason(error)}): it is "
                              "damaged or not a PyTorch file; expected a .ckpt file written by `sasrec-lightning fit`"
                              ) from None
    except Exception as error:  # a damaged file fails anywhere in the reader (RuntimeError, KeyError, EOFError, ...)
        reason = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}: {reason}): it is "
                              "damaged; expected a .ckpt file written by `sasrec-lightning fit`") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint "
                              "dictionary; expected a .ckpt file written by `sasrec-lightning fit`")
    return checkpoint


def imported_class(class_path: str) -> type | None:
    """The class ``class_path`` names if its module is imported already, else ``None``; never imports.

    ``a.b.C`` is looked up as attribute ``C`` of the imported module ``a.b`` (or ``b.C`` of ``a``).
    """
    parts = class_path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        target = module
        for name in parts[cut:]:
            target = getattr(target, name, None)
            if target is None:
                break
        return target if isinstance(target, type) else None
    return None


def check_checkpoint_classes(hyper_parameters: Mapping, base: type, path: str | PathLike) -> None:
    """Refuse, before anything is imported, a checkpoint naming a class that is not an imported ``base``.

    Raises:
        CheckpointError: ``_class_path`` is not an already imported subclass of ``base``, or
            ``_instantiator`` is not LightningCLI's.
    """
    class_path = hyper_parameters.get("_class_path")
    if class_path is not None:
        cls = imported_class(class_path) if isinstance(class_path, str) else None
        if cls is None or not issubclass(cls, base):
            raise CheckpointError(
                f"checkpoint {str(path)!r} names the class {class_path!r}, which is not an imported subclass of "
                f"{base.__module__}.{base.__qualname__}; it was refused without importing it (importing a "
                "module can run its code). If you trust the checkpoint and the class is yours, name it on the "
                "command line: --model.class_path <module.Class>."
            )
    instantiator = hyper_parameters.get("_instantiator")
    if instantiator is not None and instantiator not in TRUSTED_INSTANTIATORS:
        raise CheckpointError(f"checkpoint {str(path)!r} names the instantiator {instantiator!r}; only "
                              f"{list(TRUSTED_INSTANTIATORS)} is accepted (it would be imported and run)")


def _kind(tensor: torch.Tensor) -> str:
    """The kind of dtype ``load_state_dict`` may cast within (precision may differ, the kind may not)."""
    if tensor.is_floating_point():
        return "a floating-point"
    return "a complex" if tensor.is_complex() else "a boolean" if tensor.dtype == torch.bool else "an integer"


def check_state_dtypes(state_dict: Mapping, own: Mapping) -> None:
    """Refuse a state dict holding a non-tensor, or a tensor of another kind of dtype than the model's.

    ``load_state_dict`` copies values into the model's tensors, casting silently: an integer item table
    would load as whole numbers (an int64 table of rounded weights scores every item 0.0). Floating-point
    weights may differ in precision (a bf16 checkpoint into a float32 model); integer buffers (the
    item popularity) stay integers.

    Raises:
        CheckpointError: naming the first such tensor, its dtype and shape, and what the model expects.
    """
    for key, value in state_dict.items():
        if key not in own:
            continue
        expected = own[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"the checkpoint's {key} is a {type(value).__name__}, not a tensor; this model expects a "
                f"{expected.dtype} tensor of shape {tuple(expected.shape)}. Use a checkpoint written by "
                "`sasrec-lightning fit`."
            )
        if _kind(value) != _kind(expected):
            raise CheckpointError(
                f"the checkpoint's tensor {key} is {value.dtype} of shape {tuple(value.shape)}; this model expects "
                f"{_kind(expected)} tensor ({expected.dtype}, shape {tuple(expected.shape)}): loading it would "
                "cast its values silently. The checkpoint was altered or not written by `sasrec-lightning fit`; "
                "use the training run's checkpoint."
            )


def check_state_shapes(state_dict: Mapping, own: Mapping, num_items: int, differences: str = "") -> None:
    """Refuse a state dict whose tensors differ in shape (or kind of dtype) from the model's, naming what differs.

    Args:
        state_dict: the checkpoint's ``state_dict``.
        own: the model's ``state_dict()``.
        num_items: the model's ``num_items`` (from the data, under the CLI).
        differences: the data settings that differ from the training run's (:func:`data_setting_differences`).

    Raises:
        CheckpointError: a different item count (the item table rows), other hyper-parameters, or a
            tensor of another dtype kind (:func:`check_state_dtypes`).
    """
    check_state_dtypes(state_dict, own)
    table = "model.items.embedding.weight"
    if table in state_dict and table in own and state_dict[table].shape[0] != own[table].shape[0]:
        raise CheckpointError(
            f"the checkpoint was trained with num_items={state_dict[table].shape[0] - 1} but the data has "
            f"num_items={num_items}: the checkpoint was trained on other data. {_what_differs(differences)}, "
            "or train a model on this data."
        )
    different = [f"{key} {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} here"
                 for key, value in state_dict.items()
                 if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape)]
    if different:
        raise CheckpointError(
            f"the checkpoint's weights do not fit this model ({'; '.join(different[:3])}): it was built with other "
            "hyper-parameters (e.g. --data.max_len, which sizes the position embedding). Use the options of the "
            "training run."
        )


def _comparable(ids: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both id arrays in one dtype: as they are when both are integers or both text, else as text."""
    if (ids.dtype.kind in "iu") == (other.dtype.kind in "iu"):
        return ids, other
    return ids.astype(str), other.astype(str)


def check_item_ids(checkpoint_ids, data_ids, differences: str = "") -> None:
    """Refuse a checkpoint whose item ids (internal id -> original id) are not the data's.

    Args:
        checkpoint_ids: ``(I + 1,)`` the checkpoint's ``item_ids`` (entry 0 = padding, not compared).
        data_ids: ``(I' + 1,)`` the data's.
        differences: the data settings that differ from the training run's (:func:`data_setting_differences`).

    Raises:
        CheckpointError: the counts or any id differ; the message shows how many and a few examples.
    """
    saved, data = np.asarray(checkpoint_ids)[1:], np.asarray(data_ids)[1:]  # (I,), (I',)
    if len(saved) != len(data):
        raise CheckpointError(
            f"the checkpoint was trained with num_items={len(saved)} but the data has num_items={len(data)}: the "
            f"checkpoint was trained on other data. {_what_differs(differences)}, or train a model on this data."
        )
    saved, data = _comparable(saved, data)
    differ = np.flatnonzero(saved != data)  # (D,) 0-based positions, internal id - 1
    if not len(differ):
        return
    examples = ", ".join(f"{i + 1}: {saved[i]!s} vs {data[i]!s}" for i in differ[:3])
    raise CheckpointError(
        f"the checkpoint was trained on other data: {len(differ)} of its {len(saved)} item ids differ from the "
        f"data's (internal id: checkpoint item vs data item, e.g. {examples}), so its scores "
        f"would belong to other items. {_what_differs(differences)}, or train a model on this data."
    )


def check_checkpoint_data(checkpoint: Mapping, own_state: Mapping, num_items: int, data_hparams: Mapping | None,
                          data_item_ids) -> None:
    """Refuse a checkpoint of other data before its weights are loaded.

    Loaded anyway it would fail in ``load_state_dict`` with a size-mismatch traceback (another item
    count) or, worse, score the wrong items (same count). The error names the data options that
    differ from the training run's (Lightning saves them in the checkpoint).

    Args:
        checkpoint: the checkpoint dict.
        own_state: the model's ``state_dict()``.
        num_items: the model's number of items.
        data_hparams: the data module's hyper-parameters, or ``None``.
        data_item_ids: the item ids of the data the model is used with, or ``None``.
    """
    differences = data_setting_differences(checkpoint.get("datamodule_hyper_parameters"), data_hparams)
    if checkpoint.get("state_dict") is not None:
        check_state_shapes(checkpoint["state_dict"], own_state, num_items, differences)
    if checkpoint.get("item_ids") is not None and data_item_ids is not None:
        check_item_ids(checkpoint["item_ids"], data_item_ids, differences)


def save_rng_states(checkpoint: dict, device: torch.device) -> None:
    """Store the torch RNG state (and the CUDA one on a GPU) in ``checkpoint``.

    The torch RNG drives dropout (and sampled-softmax negatives): restoring it makes a resumed run
    draw the same masks as an uninterrupted one. Byte tensors: ``weights_only``-safe.
    """
    checkpoint["torch_rng_state"] = torch.get_rng_state()
    if device.type == "cuda":
        checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state(device)


def restore_rng_states(checkpoint: Mapping, device: torch.device) -> None:
    """Restore what :func:`save_rng_states` stored (checkpoints without it leave the RNG as it is)."""
    if checkpoint.get("torch_rng_state") is not None:
        torch.set_rng_state(checkpoint["torch_rng_state"])
        if checkpoint.get("cuda_rng_state") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["cuda_rng_state"], device)


def check_checkpoint_features(saved: Mapping | None, model_has_features: bool, data: Mapping | None,
                              with_data: bool) -> None:
    """Refuse a checkpoint whose item features (``checkpoint["item_features"]``) do not fit the model or the data.

    Args:
        saved: the checkpoint's item-table state (``ItemFeatures.state()``: spec, vocabularies, scaling), or
            ``None`` for a model trained without item features.
        model_has_features: the model was built with an item table's spec.
        data: the data module's item-table state, or ``None`` when it has none.
        with_data: a data module is attached (without one, e.g. ``load_from_checkpoint``, only the model is checked).

    Raises:
        CheckpointError: naming the first column that differs, or saying which side has no item table.
    """
    if saved is None:
        if model_has_features or (with_data and data is not None):
            columns = [column["name"] for column in (data or {}).get("spec", {}).get("columns", ())]
            raise CheckpointError(
                f"the checkpoint was trained without item features, but the data gives an item table (columns "
                f"{columns}): the model would not fit its weights. Use the data options of the training run "
                "(no --data.features.path), or train a model with the item table")
        return
    names = [column["name"] for column in saved.get("spec", {}).get("columns", ())]
    if not model_has_features or (with_data and data is None):
        raise CheckpointError(
            f"the checkpoint was trained with item features (columns {names}) but the data gives no item table: "
            "pass the --data.features.* options of the training run (the table's path and its columns)")
    if data is None:
        return
    theirs = {column["name"]: column for column in data.get("spec", {}).get("columns", ())}
    for column in saved["spec"]["columns"]:
        name = column["name"]
        other = theirs.get(name)
        if other is None:
            problem = "is not in the data's item table"
        elif other != column:
            problem = (f"is {other['kind']} of size {other['size']} (width {other['width']}) in the data but "
                       f"{column['kind']} of size {column['size']} (width {column['width']}) in the checkpoint")
        elif list(data.get("vocabularies", {}).get(name, [])) != list(saved.get("vocabularies", {}).get(name, [])):
            problem = "has other values (its vocabulary differs: the item table changed)"
        elif [float(v) for v in data.get("scaling", {}).get(name, [])] != [
                float(v) for v in saved.get("scaling", {}).get(name, [])]:
            problem = "is scaled differently (its mean or standard deviation differs: the item table changed)"
        else:
            continue
        raise CheckpointError(
            f"item feature column {name!r} {problem}: the checkpoint was trained with another item table "
            f"(columns {names}). Use the item table and --data.features.* options of the training run, or train "
            "a model on this one")
    extra = [name for name in theirs if name not in names]
    if extra:
        raise CheckpointError(
            f"item feature column {extra[0]!r} is in the data's item table but the checkpoint was trained without "
            f"it (columns {names}). Use the --data.features.* options of the training run")
