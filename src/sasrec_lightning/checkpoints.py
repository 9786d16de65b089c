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
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping
from os import PathLike

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["read_checkpoint", "imported_class", "check_checkpoint_classes", "check_state_shapes",
           "check_item_ids", "check_checkpoint_data", "is_unsafe_refusal", "unsafe_checkpoint_error",
           "save_rng_states", "restore_rng_states",
           "DATA_OPTIONS", "DATA_RUNTIME_OPTIONS", "data_setting_differences", "plain"]

# The instantiator LightningCLI writes into checkpoints (``load_from_checkpoint`` imports it by name).
TRUSTED_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",)

# The data options that decide the item ids (internal id -> original id) a model is trained with.
DATA_OPTIONS = ("path, format, user_column/item_column, min_user_interactions, min_item_interactions, filter_mode, "
                "min_rating and deduplicate")


# Data options that say how to run, not which data a model was trained on: never taken from a
# checkpoint, never named as a difference.
DATA_RUNTIME_OPTIONS = ("predict_users", "cache_dir", "num_proc", "use_cache", "rebuild_cache", "hash_source",
                        "print_statistics", "batch_size", "eval_batch_size", "num_workers")


def plain(value):
    """``value`` with tuples as lists (a saved ``(0.8, 0.9)`` reads back as ``[0.8, 0.9]``), for comparison."""
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    return value


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
    differ = [f"{key}: {saved[key]!r} in the checkpoint, {current[key]!r} here" for key in saved
              if key in current and not key.startswith("_") and key not in DATA_RUNTIME_OPTIONS
              and plain(saved[key]) != plain(current[key])]
    return "; ".join(differ)


def _what_differs(differences: str) -> str:
    if differences:
        return f"These --data options differ from the training run's: {differences}. Use the training run's values"
    return f"Use it with the data it was trained on (the same --data options: {DATA_OPTIONS})"


def is_unsafe_refusal(error: BaseException) -> bool:
    """Whether ``error`` is ``torch.load(weights_only=True)`` refusing a pickled object (not a damaged file).

    torch raises the same error type for both; a refused object is reported as an unsupported "global".
    """
    text = str(error)
    return isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text and "global" in text


def _weights_only_reason(error: BaseException) -> str:
    """The reason line of a ``weights_only`` error (torch's own message is several paragraphs)."""
    reason = str(error)
    if "WeightsUnpickler error:" in reason:
        reason = reason.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].split(". ")[0].strip()
    return reason


def unsafe_checkpoint_error(error: pickle.UnpicklingError, path: str | PathLike | None = None) -> CheckpointError:
    """The one-paragraph error for a checkpoint that ``weights_only`` loading refused."""
    reason = _weights_only_reason(error)
    where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
    return CheckpointError(
        f"{where} was refused: it holds objects other than tensors and plain Python values ({reason}), and "
        "unpickling them could run arbitrary code, so checkpoints are only loaded with "
        "torch.load(weights_only=True). Use a checkpoint written by `sasrec-lightning fit`."
    )


def read_checkpoint(path: str | PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-paragraph errors.

    Raises:
        CheckpointError: the file holds arbitrary Python objects, or is not a checkpoint at all.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if is_unsafe_refusal(error):
            raise unsafe_checkpoint_error(error, path) from error
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({_weights_only_reason(error)}): it is "
                              "damaged or not a PyTorch file; expected a .ckpt file written by `sasrec-lightning fit`"
                              ) from error
    except Exception as error:  # a damaged or foreign file fails anywhere in the unpickler (KeyError, EOFError, ...)
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); expected a .ckpt file written "
                              "by `sasrec-lightning fit`") from error
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


def check_state_shapes(state_dict: Mapping, own: Mapping, num_items: int, differences: str = "") -> None:
    """Refuse a state dict whose tensors differ in shape from the model's, naming what differs.

    Args:
        state_dict: the checkpoint's ``state_dict``.
        own: the model's ``state_dict()``.
        num_items: the model's ``num_items`` (from the data, under the CLI).
        differences: the data settings that differ from the training run's (:func:`data_setting_differences`).

    Raises:
        CheckpointError: a different item count (the item table rows) or other hyper-parameters.
    """
    table = "model.item_embedding.weight"
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
