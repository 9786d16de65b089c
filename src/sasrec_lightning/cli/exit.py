"""The package's errors as one ``error:`` line and exit status 2; a stop on SIGTERM or a lost DDP peer likewise."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import CheckpointError, DataError, MissingPackageError, ModelError, OptionError, OutputError
from ..training.checkpoints import is_unsafe_refusal, unsafe_checkpoint_error

__all__ = ["exit_on_reported_errors"]


def _reported_error(error: BaseException) -> BaseException | None:
    """The package's own error behind ``error`` (its cause chain), else ``None`` (a bug: keep the traceback).

    LightningCLI builds the model and data module through jsonargparse, which wraps a constructor's
    error in its own ``ValueError`` ("Does not validate against any of the Union subtypes") with the
    original as ``__cause__``; the original is what the user needs to read.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (DataError, OptionError, CheckpointError, ModelError, OutputError, MissingPackageError)):
            return error
        if is_unsafe_refusal(error):  # Lightning's own load of --ckpt_path last/best
            return unsafe_checkpoint_error(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# gloo's report of a collective whose peer process is gone (killed, crashed, or stopped by SIGTERM): the
# connection to it was closed or reset. Only these; any other error keeps its traceback.
_PEER_ENDED = re.compile(r"gloo/transport/[^\]]*\] ((?:Connection closed by peer|Connection reset by peer|Broken pipe)"
                         r"(?: \[[^\]]*\]:\d+)?)")


def _peer_ended(error: BaseException | None) -> str | None:
    """Gloo's words when ``error`` (or its cause) is a DDP collective that lost a peer process, else ``None``."""
    seen = set()
    while error is not None and id(error) not in seen:
        match = _PEER_ENDED.search(str(error)) if isinstance(error, RuntimeError) else None
        if match:
            return match.group(1)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _distributed() -> bool:
    """Whether this process belongs to a process group (a DDP run), which Lightning destroys only at exit."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _this_process() -> str:
    """``this process`` and, in a DDP run, its rank."""
    return f"this process (rank {torch.distributed.get_rank()})" if _distributed() else "this process"


def _one_write(line: str) -> None:
    """``line`` on stderr in one write, so that the lines of a DDP run's processes do not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _exit_without_the_lost_group(status: int) -> NoReturn:
    """Exit with ``status``; a DDP process whose peer is gone leaves at once (``os._exit``, output flushed).

    Destroying a gloo process group that lost a peer (Lightning does it at exit) can end in C++'s
    "terminate called without an active exception" and status 134 (SIGABRT); nothing else is left to do.
    """
    if _distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)


def exit_on_reported_errors(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function``; the package's own errors exit with status 2 and one ``error:`` line, others propagate.

    A run stopped by SIGTERM (``SIGTERMException``, from ``callbacks.StopOnSigterm`` or Lightning) ends with
    one line and status 143 (128 + SIGTERM, what a shell reports for a process a signal ended); a DDP process
    whose peer ended (gloo's closed connection, and only that) with one line and status 1.
    """
    try:
        return function(*args)
    except SIGTERMException:
        others = "; the other processes of this DDP run stop too" if _distributed() else ""
        _one_write(f"error: {_this_process()} received SIGTERM and stopped before the run finished{others}")
        raise SystemExit(128 + signal.SIGTERM) from None
    except Exception as error:
        peer = _peer_ended(error)
        if peer is not None:
            _one_write(f"error: another process of this DDP run ended (gloo: {peer}), so {_this_process()} stops "
                       "too; that process's output says why")
            _exit_without_the_lost_group(1)
        reported = _reported_error(error)
        if reported is None:
            raise
        print(f"error: {' '.join(str(reported).split())}", file=sys.stderr)
        raise SystemExit(2) from None

