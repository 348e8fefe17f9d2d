"""3D stacks and time series, one 2D plane at a time (core only, no napari).

- :class:`EmbeddingCache`: an LRU of plane embeddings bounded in bytes; features are
  stored as float16 (2 MiB for a ``256 x 64 x 64`` plane of a 1024-input model).
- :func:`encode_planes_iter`: batched encoding of the planes not yet cached.
- :func:`propagate_iter`: grow seeded 2D masks into a 3D object, plane by plane.
- :func:`segment_volume_everything_iter` and :func:`link_labels`: segment everything on
  every plane and give each object one id through the stack.

Volumes are ``(Z, H, W)`` or ``(Z, H, W, C)`` (channels last); "Z" is any leading axis
(depth or time). Every plane of a stack is normalised with **one** set of contrast
limits (:class:`StackNormalizer`), so that planes are comparable and blank planes work.
Masks are ``bool``; label volumes ``uint32`` with 0 as background.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Generator, Hashable, Sequence
from typing import Any

import numpy as np
import torch

from .progress import Progress

__all__ = [
    "EmbeddingCache",
    "StackNormalizer",
    "encode_planes_iter",
    "link_labels",
    "propagate_iter",
    "segment_volume_everything_iter",
]

_SAMPLE_VALUES = 1 << 22  # values read to estimate stack percentiles (and fingerprints)


class EmbeddingCache:
    """Least-recently-used plane embeddings, bounded by the bytes their features hold.

    Keys are ``(image_key, plane_index, model_key)``. Stored features are detached
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
        from .predictor import ImageEmbedding

        stored = ImageEmbedding(
            embedding.features.detach().to(device=self.device, dtype=self.dtype).clone(),
            tuple(embedding.original_size),
            tuple(embedding.input_size),
            embedding.model_key,
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
        normalization: str = "percentile",
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
        if 0 in volume.shape:
            raise ValueError(f"The stack is empty (shape {volume.shape}).")
        if volume.ndim == 4 and channels is None:
            if volume.shape[-1] == 4:
                channels = (0, 1, 2)  # RGBA: drop alpha
            elif volume.shape[-1] > 4:
                raise ValueError(
                    f"The stack has {volume.shape[-1]} channels; choose up to 3 with channels=(i, j, k)."
                )
        if normalization not in ("percentile", "minmax"):
            raise ValueError(
                f"normalization must be 'percentile' or 'minmax', not {normalization!r}."
            )
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
        from .image import to_rgb_uint8

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
        self, normalization: str, percentiles: tuple[float, float]
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
            if normalization == "percentile" and hi > lo:
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


def _plane_indices(planes: Sequence[int] | None, depth: int) -> list[int]:
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
    wanted = _plane_indices(planes, len(stack))
    key = image_key if image_key is not None else stack.signature()
    model_key = predictor.model_key
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


# --------------------------------------------------------------------------- propagation

PROPAGATION_MODES = ("mask", "box", "points")


def propagate_iter(
    predictor: Any,
    volume: np.ndarray | StackNormalizer,
    seeds: dict[int, np.ndarray],
    *,
    mode: str = "mask",
    iou_threshold: float = 0.5,
    stop_planes: Sequence[int] = (),
    cache: EmbeddingCache | None = None,
    image_key: str | None = None,
    n_points: int = 3,
    **norm_kwargs: Any,
) -> Generator[Progress, None, np.ndarray]:
    """Grow 2D seed masks into one 3D object, plane by plane, in both directions.

    Each step prompts the next plane with the previous plane's mask: its box
    (``"box"``), a low-resolution mask prompt plus its box (``"mask"``), or
    ``n_points`` positive points deep inside it (``"points"``). A direction stops
    before a plane where the new mask is empty, where its IoU with the previous plane's
    mask is below ``iou_threshold``, at a plane of ``stop_planes`` (the plugin passes the
    planes that hold a single negative point), or at the stack's edge.

    Between two seeded planes both seeds grow towards each other and **meet in the
    middle**: each plane is filled from the nearer seed (the lower one on a tie); if
    one side stops early, the other side continues up to it.

    Args:
        predictor: a ``Predictor`` (its current image is restored afterwards).
        volume: ``(Z, H, W[, C])`` stack or a :class:`StackNormalizer`.
        seeds: ``{plane: (H, W) bool mask}``, at least one non-empty mask.
        cache: embedding cache (planes are encoded on demand and stored there).
        **norm_kwargs: for :class:`StackNormalizer` when ``volume`` is an array.

    Returns (as the generator's value):
        ``(Z, H, W)`` bool: the seeds and the propagated masks.
    """
    if mode not in PROPAGATION_MODES:
        raise ValueError(f"mode must be one of {PROPAGATION_MODES}, not {mode!r}.")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be between 0 and 1, not {iou_threshold!r}.")
    stack = (
        volume if isinstance(volume, StackNormalizer) else StackNormalizer(volume, **norm_kwargs)
    )
    depth, shape = len(stack), stack.plane_shape
    seeds = _check_seeds(seeds, depth, shape)
    stops = set(_plane_indices(list(stop_planes), depth)) - set(seeds)
    key = image_key if image_key is not None else stack.signature()
    out = np.zeros((depth, *shape), dtype=bool)
    for z, mask in seeds.items():
        out[z] = mask
    order = sorted(seeds)
    # Each span is bounded by seeds (or the stack's ends, -1 and depth); a chain grows
    # from a seed into the span: [current plane, step, seed, alive].
    spans = [(-1, order[0])] + list(zip(order, order[1:])) + [(order[-1], depth)]
    total, done = depth - len(order), 0
    previous = predictor.get_embedding() if predictor.is_image_set else None
    try:
        for a, b in spans:
            chains = [c for c in ([a, +1, a, a >= 0], [b, -1, b, b < depth]) if c[3]]
            while True:
                up = next((c for c in chains if c[1] > 0), None)
                down = next((c for c in chains if c[1] < 0), None)
                top = down[0] if down else b  # planes strictly between are free
                bottom = up[0] if up else a
                alive = [c for c in chains if c[3] and bottom < c[0] + c[1] < top]
                if not alive:
                    break
                # the chain nearer to its seed goes first (meet in the middle; lower on ties)
                chain = min(alive, key=lambda c: (abs(c[0] - c[2]), -c[1]))
                z = chain[0] + chain[1]
                mask = None
                if z not in stops:
                    mask = _step(predictor, stack, key, cache, out[chain[0]], z, mode, n_points)
                if mask is None or not mask.any() or _iou(mask, out[chain[0]]) < iou_threshold:
                    chain[3] = False
                else:
                    out[z] = mask
                    chain[0] = z
                done += 1
                yield Progress("propagating", min(done, total), total)
    finally:
        if previous is not None:
            predictor.set_embedding(previous)
        else:
            predictor.reset_image()
    return out


def _check_seeds(
    seeds: dict[int, np.ndarray], depth: int, shape: tuple[int, int]
) -> dict[int, np.ndarray]:
    if not isinstance(seeds, dict) or not seeds:
        raise ValueError("seeds must be a non-empty dict {plane: (H, W) bool mask}.")
    out = {}
    for z, mask in seeds.items():
        (z,) = _plane_indices([z], depth)
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(
                f"The seed mask of plane {z} has shape {mask.shape}, not the plane's {shape}."
            )
        if mask.dtype != np.bool_:
            raise TypeError(f"Seed masks must be bool arrays, not {mask.dtype} (plane {z}).")
        if not mask.any():
            raise ValueError(
                f"The seed mask of plane {z} is empty; draw or segment the object first."
            )
        out[z] = mask
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _embedding(
    predictor: Any, stack: StackNormalizer, key: str, cache: EmbeddingCache | None, z: int
) -> Any:
    """Plane ``z``'s embedding from the cache, else encoded (and cached)."""
    cache_key = (key, z, predictor.model_key)
    hit = cache.get(cache_key) if cache is not None else None
    if hit is not None:
        return hit
    (embedding,) = predictor.encode([stack.plane(z)])
    return cache.put(cache_key, embedding) if cache is not None else embedding


def _step(
    predictor: Any,
    stack: StackNormalizer,
    key: str,
    cache: EmbeddingCache | None,
    previous: np.ndarray,
    z: int,
    mode: str,
    n_points: int,
) -> np.ndarray:
    """Segment plane ``z`` prompted by the previous plane's mask; returns ``(H, W)`` bool."""
    predictor.set_embedding(_embedding(predictor, stack, key, cache, z))
    rows, cols = np.flatnonzero(previous.any(1)), np.flatnonzero(previous.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)  # XYXY
    if mode == "box":
        prompts: dict[str, Any] = {"bboxes": box}
    elif mode == "mask":
        prompts = {"bboxes": box, "masks": mask_to_lowres_logits(predictor, previous)}
    else:
        prompts = {"points": points_inside(previous, n_points)}
    return predictor.predict(multimask_output=False, **prompts).masks[0]


def mask_to_lowres_logits(predictor: Any, mask: np.ndarray, scale: float = 20.0) -> np.ndarray:
    """A ``(H, W)`` bool mask as an ``(L, L)`` float32 mask prompt in the model frame.

    The mask is resized like the image (longest side to ``S``), zero-padded to
    ``S x S``, area-averaged to ``L x L`` and mapped to logits ``scale * (2 f - 1)``.
    """
    from torch.nn import functional as F

    from .transforms import resize_longest_side_shape

    size, lowres = predictor.img_size, predictor.lowres_size
    h, w = resize_longest_side_shape(mask.shape[0], mask.shape[1], size)
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, (h, w), mode="bilinear", align_corners=False, antialias=True)
    m = F.pad(m, (0, size - w, 0, size - h))
    m = F.adaptive_avg_pool2d(m, lowres)[0, 0]
    return (scale * (2.0 * m - 1.0)).numpy()


def points_inside(mask: np.ndarray, n_points: int = 3) -> np.ndarray:
    """``(n, 2)`` ``(x, y)`` points deep inside ``mask``, spread out (farthest-point sampling).

    The first point is where the distance to the background is largest; the next ones
    are the pixels of the inner half (by distance) farthest from the points so far.
    """
    from scipy.ndimage import distance_transform_edt

    if n_points < 1:
        raise ValueError(f"n_points must be at least 1, not {n_points}.")
    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    inner = np.argwhere(depth >= max(1.0, 0.5 * depth.max()))  # (row, col)
    inner = inner[:: max(1, len(inner) // 4096)]
    chosen = [np.unravel_index(int(np.argmax(depth)), depth.shape)]
    for _ in range(1, min(n_points, len(inner))):
        dist = np.min([np.hypot(*(inner - np.array(p)).T) for p in chosen], axis=0)
        if dist.max() <= 0:
            break
        chosen.append(tuple(inner[int(np.argmax(dist))]))
    return np.array([[c, r] for r, c in chosen], dtype=np.float64)


# --------------------------------------------------------------------------- everything in 3D


def segment_volume_everything_iter(
    generator: Any,
    volume: np.ndarray | StackNormalizer,
    *,
    link_iou: float = 0.3,
    planes: Sequence[int] | None = None,
    cache: EmbeddingCache | None = None,
    image_key: str | None = None,
    **norm_kwargs: Any,
) -> Generator[Progress, None, np.ndarray]:
    """Segment everything on every plane, then link ids through the stack.

    Args:
        generator: a :class:`~napari_samscope.core.everything.MaskGenerator`.
        volume: ``(Z, H, W[, C])`` stack or a :class:`StackNormalizer`.
        link_iou: minimum IoU for an object to keep its id from one plane to the next.
        planes: the planes to segment (default all; the others stay 0).
        cache: cached whole-plane embeddings are reused (and new ones stored).
        **norm_kwargs: for :class:`StackNormalizer` when ``volume`` is an array.

    Returns (as the generator's value):
        ``(Z, H, W)`` uint32 labels; one object keeps one id through z (see :func:`link_labels`).
    """
    stack = (
        volume if isinstance(volume, StackNormalizer) else StackNormalizer(volume, **norm_kwargs)
    )
    wanted = _plane_indices(planes, len(stack))
    key = image_key if image_key is not None else stack.signature()
    predictor = generator.predictor
    labels = np.zeros((len(stack), *stack.plane_shape), dtype=np.uint32)
    for i, z in enumerate(wanted):
        yield Progress(f"segment everything: plane {z}", i, len(wanted))
        embedding = _embedding(predictor, stack, key, cache, z) if cache is not None else None
        result = yield from generator.generate_iter(stack.plane(z), embedding=embedding)
        labels[z] = result.to_label_image()
    yield Progress("linking objects through the stack", len(wanted), len(wanted))
    return link_labels(labels, link_iou=link_iou)


def link_labels(
    label_planes: np.ndarray | Sequence[np.ndarray], link_iou: float = 0.3
) -> np.ndarray:
    """Give each object one id through a stack of independently labelled planes.

    Plane by plane, objects are matched to the objects of the previous plane by an
    optimal one-to-one assignment maximising the total IoU (Hungarian algorithm);
    a pair is linked when its IoU is at least ``link_iou``. An unmatched object gets a
    new id (an object missing from a plane is not bridged across the gap).

    Args:
        label_planes: ``(Z, H, W)`` integer labels (0 = background), ids per plane arbitrary.
        link_iou: the minimum IoU of a link, in ``(0, 1]``.

    Returns:
        ``(Z, H, W)`` uint32 with ids 1, 2, ... in order of first appearance.
    """
    from scipy.optimize import linear_sum_assignment

    planes = np.asarray(label_planes)
    if planes.ndim != 3:
        raise ValueError(f"label_planes must be (Z, H, W), not shape {planes.shape}.")
    if planes.dtype.kind not in "ui" or (planes.size and planes.min() < 0):
        raise ValueError("label_planes must hold non-negative integer labels.")
    if not 0.0 < link_iou <= 1.0:
        raise ValueError(f"link_iou must be in (0, 1], not {link_iou!r}.")
    out = np.zeros(planes.shape, dtype=np.uint32)
    next_id = 1
    # the previous plane as indices into its raw ids, and the linked id of each index
    prev_plane, prev_ids, prev_objects = None, np.zeros(0, np.int64), np.zeros(0, bool)
    for z, plane in enumerate(planes):
        ids, inverse = np.unique(plane, return_inverse=True)
        inverse = inverse.reshape(plane.shape)
        objects = ids != 0
        new_ids = np.zeros(len(ids), dtype=np.int64)
        if prev_plane is not None and objects.any() and prev_objects.any():
            # intersections between previous linked ids and current raw ids
            pair = prev_plane.astype(np.int64) * len(ids) + inverse
            counts = np.bincount(pair.ravel(), minlength=len(prev_ids) * len(ids))
            inter = counts.reshape(len(prev_ids), len(ids)).astype(np.float64)
            area_prev, area_cur = inter.sum(1), inter.sum(0)
            union = area_prev[:, None] + area_cur[None, :] - inter
            iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
            iou[~prev_objects, :], iou[:, ~objects] = 0.0, 0.0  # background never links
            rows, cols = linear_sum_assignment(iou, maximize=True)
            for r, c in zip(rows, cols):
                if iou[r, c] >= link_iou:
                    new_ids[c] = prev_ids[r]
        for c in np.flatnonzero(objects & (new_ids == 0)):
            new_ids[c] = next_id
            next_id += 1
        out[z] = new_ids[inverse]
        prev_plane, prev_ids, prev_objects = inverse, new_ids, objects
    return out
