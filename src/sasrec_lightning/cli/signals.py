"""SIGTERM (``kill``, a scheduler's time limit) during a command: ``finally`` blocks run before the process ends.

SIGTERM's default action ends the process without running ``finally`` blocks, so a temporary folder
being written (the scratch ``datasets`` cache of a file being read, ``data/sources.py``) would stay
behind. While a command runs, :func:`removing_on_sigterm` makes the signal raise instead; once the
stack has unwound (every ``finally`` ran) the signal is delivered again with its default action, so
the process still ends the way its parent expects (status 143 in a shell). During training,
Lightning's own handler (and :class:`~sasrec_lightning.training.callbacks.StopOnSigterm`) take over
and give it back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "removing_on_sigterm"]


class Terminated(BaseException):
    """SIGTERM arrived while a command ran (a ``BaseException``: nothing may swallow it)."""


@contextlib.contextmanager
def removing_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in this process, then end by SIGTERM once the stack has unwound.

    Only in the main thread and where SIGTERM still has its default action; processes forked meanwhile
    (``datasets.map`` workers) behave as without a handler.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    owner = os.getpid()

    def terminate(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked worker: behave as if no handler were installed
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        raise  # not reached: the default action ends the process
    finally:
        if signal.getsignal(signal.SIGTERM) is terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
