"""A reused scratch block, lent to one holder at a time: the losses' logit blocks from step to step.

The losses' ``(N, C)`` logit blocks are large (160 MB for an average Amazon Beauty batch of the
full softmax, over 1 GB for the longest), and a freshly allocated block of that size is paid for
again in page faults on first touch each step: glibc hands blocks above its mmap threshold (at most
32 MiB) back to the kernel when they are freed. A :class:`Workspace` keeps the largest block and
lends it out (``docs/performance.md``). The speed parts give one to each loss that can use it
(``fast/speed.py``); the plain losses allocate their blocks.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["Workspace", "give_back"]


class Workspace:
    """A reusable scratch block for the loss's ``(N, C)`` logits, lent to one holder at a time.

    :meth:`take` returns a view of the kept block when it is free and large enough (growing it
    when free but too small), and a fresh tensor when it is lent out, so a second loss computed
    before the first one's backward pass never shares memory with it. The block is not part of
    any state dict; copies and pickles of a workspace start empty.
    """

    def __init__(self) -> None:
        self._block: Tensor | None = None
        self._lent = False

    def take(self, numel: int, like: Tensor) -> tuple[Tensor, _Loan | None]:
        """An uninitialized flat tensor of ``numel`` elements, of ``like``'s dtype and device, and its loan.

        Args:
            numel: elements needed.
            like: a tensor of the dtype and on the device to use.

        Returns:
            The tensor and the :class:`_Loan` to give back (``None`` when the tensor is a fresh one).
        """
        if self._lent:
            return like.new_empty(numel), None
        block = self._block
        if block is None or block.numel() < numel or block.device != like.device or block.dtype != like.dtype:
            self._block = None  # free the old block before allocating the larger one
            block = self._block = like.new_empty(numel)
        self._lent = True
        return block[:numel], _Loan(self)

    def clear(self) -> None:
        """Let go of the kept block (it is freed once no loan still uses it)."""
        self._block = None

    def __getstate__(self) -> dict:
        return {"_block": None, "_lent": False}

    def __deepcopy__(self, memo: dict) -> Workspace:
        return Workspace()


class _Loan:
    """A :class:`Workspace`'s block in use; returned by :meth:`give_back` or when garbage-collected."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace: Workspace | None = workspace

    def give_back(self) -> None:
        if self.workspace is not None:
            self.workspace._lent = False
            self.workspace = None

    def __del__(self) -> None:
        self.give_back()


def _give_back(loan: _Loan | None) -> None:
    if loan is not None:
        loan.give_back()


def give_back(loan: _Loan | None) -> None:
    """Return a :meth:`Workspace.take` loan (``None``: a fresh tensor, nothing to return)."""
    if loan is not None:
        loan.give_back()
