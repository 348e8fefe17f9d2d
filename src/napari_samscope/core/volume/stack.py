"""Stacks as planes: the embedding cache, one normalisation per stack, batched encoding.

- :class:`EmbeddingCache`: an LRU of plane embeddings bounded in bytes; features are
  stored as float16 (2 MiB for a ``256 x 64 x 64`` plane of a 1024-input model).
- :class:`StackNormalizer`: 8-bit RGB planes with **one** set of contrast limits for the
  whole stack, so that planes are comparable and blank planes work.
- :func:`encode_planes_iter`: batched encoding of the planes not yet cached.

Volumes are ``(Z, H, W)`` or ``(Z, H, W, C)`` (channels last); "Z" is any leading axis
(depth or time). These names are also importable from ``core.volume``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Generator, Hashable, Sequence
from typing import Any

import numpy as np
import torch

from napari_samscope.core.predict.image import Normalization
from napari_samscope.core.predict.input_scale import embedding_key
from napari_samscope.core.progress import Progress

__all__ = [
    "EmbeddingCache",
    "StackNormalizer",
    "encode_planes_iter",
    "plane_embedding",
    "plane_indices",
]

_SAMPLE_VALUES = 1 << 22  # values read to estimate stack percentiles (and fingerprints)



def stack_channels(shape: tuple[int, ...], channels: Any) -> Any:
    """The channels of a ``(Z, H, W)`` or ``(Z, H, W, C)`` stack to use: ``channels`` when
    given, RGB for an RGBA stack, all of up to 3.

    Raises:
        ValueError: an empty stack, or more than 4 channels with no choice made.
    """
    if 0 in shape:
        raise ValueError(f"The stack is empty (shape {tuple(shape)}).")
    if len(shape) == 4 and channels is None:
        if shape[-1] == 4:
            return (0, 1, 2)  # RGBA: drop alpha
        if shape[-1] > 4:
            raise ValueError(
                f"The stack has {shape[-1]} channels; choose up to 3 with channels=(i, j, k)."
            )
    return channels

class EmbeddingCache:
    """Least-recently-used plane embeddings, bounded by the bytes their features hold.

    Keys are ``(image_key, plane_index, embedding_key)`` (``embedding_key``: the model and
    the scale request, :func:`~napari_samscope.core.predict.embedding.embedding_key`). Stored features are detached
    copies on ``device`` in ``dtype`` (float16 by default: masks decoded from them agree
    with float32 ones to within a few boundary pixels; the predictor converts them back
    to float32). Thread-safe: the napari worker fills it while the GUI reads its size.

    Args:
        max_bytes: the bound; the least recently used entries go first. Settable.
        dtype: storage dtype of the features (``torch.float16`` or ``torch.float32``).
        device: where the features are kept (default: CPU memory).
    """

    def __init__(
        self, max_bytes: int = 512 << 20, *, dtype: torch.dtype = torch.float16, device: Any = "cpu"
    ) -> None:
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_bytes = max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, not {value!r}.")
        with self._lock:
            self._max_bytes = int(value)
            self._evict()

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached features."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable) -> Any | None:
        """The cached ``ImageEmbedding`` (and mark it recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, embedding: Any) -> Any:
        """Store a copy of ``embedding`` in the cache's dtype; returns the stored copy.

        An embedding larger than ``max_bytes`` is returned but not kept.
        """
        from napari_samscope.core.predict.predictor import ImageEmbedding

        def copy(features: Any) -> Any:
            return features.detach().to(device=self.device, dtype=self.dtype).clone()

        stored = ImageEmbedding(
            copy(embedding.features),
            tuple(embedding.original_size),
            tuple(embedding.input_size),
            embedding.model_key,
            getattr(embedding, "magnification", None),
            tuple(copy(f) for f in getattr(embedding, "flipped", ())),
            getattr(embedding, "pixels", None),  # kept for zoom (core.predict.zoom)
        )
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._entries[key] = stored
            self._nbytes += stored.nbytes
            self._evict()
        return stored

    def clear(self) -> None:
        """Forget every embedding."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def _evict(self) -> None:
        while self._entries and self._nbytes > self._max_bytes:
            _, entry = self._entries.popitem(last=False)
            self._nbytes -= entry.nbytes


class StackNormalizer:
    """8-bit RGB planes of a stack, all with the same contrast limits.

    Args:
        volume: ``(Z, H, W)`` or ``(Z, H, W, C)``.
        channel_axis: axis of ``volume`` holding channels (default: none for 3D; the
            last axis for 4D).
        channels: 1 to 3 channel indices to use as R, G, B (required for > 3 channels;
            RGBA uses the first three).
        normalization: ``"percentile"`` or ``"minmax"`` over the whole stack (a sample
            of it for large stacks), per channel; ignored for uint8 and bool data.
        contrast_limits: ``(lo, hi)`` or one pair per used channel (e.g. napari's).
        percentiles: the percentiles for ``"percentile"``.
    """

    def __init__(
        self,
        volume: np.ndarray,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        normalization: Normalization | str = Normalization.PERCENTILE,
        contrast_limits: Any = None,
        percentiles: tuple[float, float] = (0.5, 99.5),
    ) -> None:
        volume = np.asarray(volume)
        if volume.ndim == 4 and channel_axis is None:
            channel_axis = -1
        if channel_axis is not None:
            if volume.ndim != 4:
                raise ValueError(
                    f"A stack with channels must be 4D (Z, H, W, C), not shape {volume.shape}."
                )
            volume = np.moveaxis(volume, channel_axis, -1)
        elif volume.ndim != 3:
            raise ValueError(
                f"A stack must be (Z, H, W) or (Z, H, W, C) with channels last, not shape "
                f"{volume.shape}; pass channel_axis=... if the channels are elsewhere."
            )
        channels = stack_channels(volume.shape, channels)
        normalization = Normalization.parse(normalization, "normalization")
        if normalization is Normalization.CONTRAST and contrast_limits is None:
            raise ValueError("normalization='contrast limits' needs contrast_limits=(low, high).")
        self.volume = volume
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        n_used = (
            len(self.channels) if self.channels else (volume.shape[-1] if volume.ndim == 4 else 1)
        )
        if contrast_limits is not None:
            limits = np.asarray(contrast_limits, dtype=np.float64)
            self.contrast_limits = (
                np.broadcast_to(limits, (n_used, 2)).tolist()
                if limits.shape == (2,)
                else limits.tolist()
            )
        elif volume.dtype == np.bool_:
            self.contrast_limits = [[0.0, 1.0]] * n_used
        elif volume.dtype == np.uint8:
            self.contrast_limits = [[0.0, 255.0]] * n_used
        else:
            self.contrast_limits = self._auto_limits(normalization, percentiles)

    def __len__(self) -> int:
        return int(self.volume.shape[0])

    @property
    def plane_shape(self) -> tuple[int, int]:
        return int(self.volume.shape[1]), int(self.volume.shape[2])

    def plane(self, z: int) -> np.ndarray:
        """Plane ``z`` as ``(H, W, 3)`` uint8."""
        from napari_samscope.core.predict.image import to_rgb_uint8

        data = self.volume[z]
        kwargs: dict[str, Any] = {"contrast_limits": self.contrast_limits}
        if data.ndim == 3:
            kwargs.update(channel_axis=-1, channels=self.channels)
        return to_rgb_uint8(data, **kwargs)

    def signature(self) -> str:
        """A fingerprint of the stack's shape, dtype, sampled values and limits."""
        digest = hashlib.sha1(
            f"{self.volume.shape}{self.volume.dtype}{self.contrast_limits}".encode()
        )
        flat = self.volume.reshape(-1)
        digest.update(np.ascontiguousarray(flat[:: max(1, flat.size // 65536)]).tobytes())
        return digest.hexdigest()[:16]

    def _auto_limits(
        self, normalization: Normalization, percentiles: tuple[float, float]
    ) -> list[list[float]]:
        volume = self.volume if self.volume.ndim == 4 else self.volume[..., None]
        used = self.channels if self.channels else range(volume.shape[-1])
        limits = []
        for c in used:
            values = volume[..., c].reshape(-1)
            values = values[:: max(1, values.size // _SAMPLE_VALUES)]
            values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            if values.size == 0:
                raise ValueError("The stack holds only NaN or infinite values.")
            lo, hi = float(values.min()), float(values.max())
            if normalization is Normalization.PERCENTILE and hi > lo:
                p_lo, p_hi = (float(v) for v in np.percentile(values, percentiles))
                if p_hi > p_lo:
                    lo, hi = p_lo, p_hi
            limits.append([lo, hi])
        if all(hi <= lo for lo, hi in limits):
            raise ValueError(
                "The stack is constant; there is nothing to segment. Pass contrast_limits=(low, high) "
                "to encode it anyway."
            )
        return [[lo, hi] if hi > lo else [lo, lo + 1.0] for lo, hi in limits]


def plane_indices(planes: Sequence[int] | None, depth: int) -> list[int]:
    if planes is None:
        return list(range(depth))
    out = []
    for z in planes:
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
            raise TypeError(f"Plane indices must be integers, not {z!r}.")
        if not 0 <= z < depth:
            raise ValueError(f"Plane {z} is outside the stack (0 to {depth - 1}).")
        if int(z) not in out:
            out.append(int(z))
    return out


def encode_planes_iter(
    predictor: Any,
    volume: np.ndarray | StackNormalizer,
    planes: Sequence[int] | None = None,
    *,
    batch_size: int = 2,
    cache: EmbeddingCache | None = None,
    image_key: str | None = None,
    **norm_kwargs: Any,
) -> Generator[Progress, None, dict[int, Any]]:
    """Encode planes of a stack, ``batch_size`` per encoder pass, skipping cached ones.

    Args:
        predictor: a ``Predictor`` (its current image is left untouched).
        volume: the stack, or a :class:`StackNormalizer` of it.
        planes: the planes to encode (default: all).
        batch_size: planes per encoder pass.
        cache: where embeddings are looked up and stored.
        image_key: identifies the stack in the cache (default: a fingerprint of the
            stack and its normalisation).
        **norm_kwargs: for :class:`StackNormalizer` when ``volume`` is an array.

    Returns (as the generator's value):
        ``{plane: ImageEmbedding}`` for every requested plane (the cache's copies when a
        cache is given). Closing the generator stops between batches; the cache keeps
        the batches already done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    stack = (
        volume if isinstance(volume, StackNormalizer) else StackNormalizer(volume, **norm_kwargs)
    )
    wanted = plane_indices(planes, len(stack))
    key = image_key if image_key is not None else stack.signature()
    model_key = embedding_key(predictor)
    out: dict[int, Any] = {}
    missing = []
    for z in wanted:
        hit = cache.get((key, z, model_key)) if cache is not None else None
        if hit is None:
            missing.append(z)
        else:
            out[z] = hit
    total = len(missing)
    yield Progress("encoding planes", 0, total)
    for start in range(0, total, batch_size):
        chunk = missing[start : start + batch_size]
        embeddings = predictor.encode([stack.plane(z) for z in chunk], batch_size=batch_size)
        for z, embedding in zip(chunk, embeddings):
            out[z] = cache.put((key, z, model_key), embedding) if cache is not None else embedding
        yield Progress("encoding planes", start + len(chunk), total)
    return {z: out[z] for z in wanted}


def plane_embedding(
    predictor: Any, stack: StackNormalizer, key: str, cache: EmbeddingCache | None, z: int
) -> Any:
    """Plane ``z``'s embedding from ``cache``, else encoded (and stored in ``cache``)."""
    cache_key = (key, z, embedding_key(predictor))
    hit = cache.get(cache_key) if cache is not None else None
    if hit is not None:
        return hit
    (embedding,) = predictor.encode([stack.plane(z)])
    return cache.put(cache_key, embedding) if cache is not None else embedding
