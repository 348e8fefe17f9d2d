"""The prompt-independent decoder work on one image (``TwoWayTransformer.prepare_image``),
and a decoder's memory of the last one it made."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ImageMemo", "PreparedImage"]


@dataclass
class PreparedImage:
    """The prompt-independent inputs of the transformer for one image (inference).

    ``keys`` / ``key_pe``: ``(1, N, C)`` image tokens and positional encoding, token-major.
    ``first_keys`` / ``first_values``: ``(heads, N, d)`` keys ``k_proj(keys + key_pe)`` and
    values ``v_proj(keys)`` of the first block's token-to-image attention;
    ``first_queries``: ``(heads, d, N)`` (transposed) queries ``q_proj(keys + key_pe)`` of its
    image-to-token attention (None when the transformer has no blocks).
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    first_keys: torch.Tensor | None
    first_values: torch.Tensor | None
    first_queries: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors."""
        tensors = (self.keys, self.key_pe, self.first_keys, self.first_values, self.first_queries)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _version(tensor: torch.Tensor) -> int | None:
    """``tensor._version`` (bumped by every in-place change), None for inference tensors."""
    try:
        return tensor._version
    except RuntimeError:
        return None


class ImageMemo:
    """The last prepared image of a decoder, reused while its inputs are unchanged.

    An entry is reused when each input tensor is the same object at the same version (an
    in-place change bumps it), or else equal in value to the snapshot taken when the
    entry was made; and when the weights it was projected with are the same objects at
    the same versions and memory. Not copied or pickled with the module.
    """

    def __init__(self) -> None:
        self._entry: tuple[Any, ...] | None = None

    def __deepcopy__(self, memo: dict) -> ImageMemo:
        return ImageMemo()

    def __reduce__(self) -> tuple[type, tuple]:
        return (ImageMemo, ())

    def clear(self) -> None:
        """Forget the entry (frees its memory)."""
        self._entry = None

    def get(
        self,
        inputs: tuple[torch.Tensor, ...],
        weights: list[torch.Tensor],
        compute: Callable[[], PreparedImage],
    ) -> PreparedImage:
        stamp = tuple((id(w), w.data_ptr(), _version(w), w.device) for w in weights)
        entry = self._entry
        if entry is not None and entry[0] == stamp and all(
            _same(x, ref, version, snapshot) for x, (ref, version, snapshot) in zip(inputs, entry[1])
        ):
            return entry[2]
        value = compute()
        keys = tuple((weakref.ref(x), _version(x), x.detach().clone()) for x in inputs)
        self._entry = (stamp, keys, value)
        return value


def _same(x: torch.Tensor, ref: weakref.ref, version: int | None, snapshot: torch.Tensor) -> bool:
    if ref() is x and version is not None and _version(x) == version:
        return True
    return (
        x.shape == snapshot.shape
        and x.dtype == snapshot.dtype
        and x.device == snapshot.device
        and torch.equal(x, snapshot)
    )
