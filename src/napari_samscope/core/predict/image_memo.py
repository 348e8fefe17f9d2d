"""A memo of one value computed from tensors: reused while those tensors hold the same
values (the decoder runner keeps its prepared image in one)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ImageMemo"]


def _version(tensor: torch.Tensor) -> int | None:
    """``tensor._version`` (bumped by every in-place change), None for inference tensors."""
    try:
        return tensor._version
    except RuntimeError:
        return None


class ImageMemo:
    """The last values computed from some input tensors and weights (up to ``capacity``,
    the least recently used dropped first), each reused while they are unchanged.

    An entry is reused when each input tensor is the same memory (the same tensor, or a
    view at the same place of the same base) at the same version (an in-place change
    bumps it), or else equal in value to the snapshot taken when the entry was made; and
    when the weights it was computed with are the same objects at the same versions and
    memory. A copy or a pickle starts empty. Changes made through ``tensor.data`` bypass
    version counters: call :meth:`clear` after them.
    """

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}.")
        self.capacity = capacity
        self._entries: list[tuple[Any, ...]] = []

    def __deepcopy__(self, memo: dict) -> ImageMemo:
        return ImageMemo(self.capacity)

    def __reduce__(self) -> tuple[type, tuple]:
        return (ImageMemo, (self.capacity,))

    @property
    def value(self) -> Any:
        """The most recently used value, or None."""
        return self._entries[-1][2] if self._entries else None

    def clear(self) -> None:
        """Forget every entry (frees their memory)."""
        self._entries = []

    def get(
        self,
        inputs: tuple[torch.Tensor, ...],
        weights: list[torch.Tensor],
        compute: Callable[[], Any],
    ) -> Any:
        """The kept value if ``inputs`` and ``weights`` are unchanged, else ``compute()``
        (which is then kept)."""
        stamp = tuple((id(w), w.data_ptr(), _version(w), w.device) for w in weights)
        for index, entry in enumerate(self._entries):
            if entry[0] == stamp and all(_same(x, key) for x, key in zip(inputs, entry[1])):
                self._entries.append(self._entries.pop(index))
                return entry[2]
        value = compute()
        self._entries.append((stamp, tuple(_key(x) for x in inputs), value))
        del self._entries[: -self.capacity]
        return value


def _root(x: torch.Tensor) -> torch.Tensor:
    """The tensor that owns ``x``'s memory (``x`` unless it is a view)."""
    return x if x._base is None else x._base


def _key(x: torch.Tensor) -> tuple[Any, ...]:
    """What identifies ``x``'s values: its memory's owner (weakly) at its version, where
    in that memory ``x`` is, and a snapshot of the values for tensors made anew."""
    view = (x.storage_offset(), tuple(x.shape), x.stride(), x.dtype, x.device)
    return weakref.ref(_root(x)), _version(x), view, x.detach().clone()


def _same(x: torch.Tensor, key: tuple[Any, ...]) -> bool:
    """Whether ``x`` holds the values ``key`` was made from. Views of the same memory at
    the same version (a view shares its base's version) are recognised without reading
    the values: no device synchronisation on an accelerator."""
    ref, version, view, snapshot = key
    if (
        ref() is _root(x)
        and version is not None
        and _version(x) == version
        and view == (x.storage_offset(), tuple(x.shape), x.stride(), x.dtype, x.device)
    ):
        return True
    return (
        x.shape == snapshot.shape
        and x.dtype == snapshot.dtype
        and x.device == snapshot.device
        and torch.equal(x, snapshot)
    )
