"""The result of a prompted prediction: masks, scores, low-resolution logits.

A :class:`Prediction` of a few objects holds its full-size masks. One of many objects
on a large image (more than :data:`EAGER_MASK_BYTES` of full-size masks) is compact:
it keeps the low-resolution logits, from which every mask is exactly determined, and
makes masks only when asked for: :meth:`Prediction.mask` one at a time,
:meth:`Prediction.to_label_image`, :attr:`~Prediction.areas` and
:meth:`~Prediction.boxes` without ever holding them all, and :attr:`~Prediction.masks`
all at once (then kept). The masks are the same either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from napari_samscope.core.predict.label_image import (
    PackedMask,
    PaintOrder,
    paint_labels,
)

__all__ = ["EAGER_MASK_BYTES", "LABEL_ORDERS", "Prediction"]

#: Accepted values of ``Prediction.to_label_image(order=...)``.
LABEL_ORDERS = PaintOrder.values()
#: Full-size masks (one byte per pixel) above which a prediction made from logits is compact.
EAGER_MASK_BYTES = 256 << 20
#: Bit-packed mask crops a compact prediction keeps once made (bytes); beyond it, masks
#: are made again from the logits when needed.
_PACKED_BUDGET = 64 << 20


class Prediction:
    """Masks predicted for one image.

    Args / attributes:
        masks: ``(N, H, W) bool`` at the original image size (made on first access for
            a compact prediction, see the module docstring).
        scores: ``(N,) float32``, the model's predicted IoU of each mask.
        logits: ``(N, L, L) float32`` low-resolution logits of the same masks (``L = 4 * E``,
            256 for 1024-input models), ready to be fed back as a mask prompt; or None.

    For one object the ``N`` masks are its candidates (3 with ``multimask_output``,
    else 1); for several objects there is one mask per object, in prompt order.
    """

    def __init__(self, masks: Any, scores: Any, logits: Any = None) -> None:
        self._upsampler: Any = None  # set for a compact prediction
        self._masks: np.ndarray | None = None
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), not shape {masks.shape}.")
        if self.scores.shape[0] != masks.shape[0]:
            raise ValueError(f"There are {masks.shape[0]} masks but {self.scores.shape[0]} scores.")
        self._masks = masks
        self._size = (int(masks.shape[1]), int(masks.shape[2]))
        self.logits = self._check_logits(logits)

    @classmethod
    def from_logits(
        cls,
        logits: Any,
        scores: Any,
        upsampler: Any,
        threshold: float = 0.0,
        *,
        compact: bool | None = None,
    ) -> Prediction:
        """The prediction whose masks are ``upsampler.masks(logits) > threshold``.

        Args:
            logits: ``(N, L, L)`` float torch tensor of low-resolution logits.
            scores: ``(N,)`` torch tensor or array.
            upsampler: a :class:`~napari_samscope.core.predict.transforms.MaskUpsampler`
                of the image.
            threshold: the model's mask threshold.
            compact: keep the logits and make masks on demand; default: when the
                full-size masks would take more than :data:`EAGER_MASK_BYTES`.
        """
        import torch

        n = int(logits.shape[0])
        height, width = upsampler.original_size
        if compact is None:
            compact = n * height * width > EAGER_MASK_BYTES
        scores = scores.cpu().numpy() if isinstance(scores, torch.Tensor) else scores
        if not compact:
            masks = upsampler.masks(logits, threshold=threshold).cpu().numpy()
            return cls(masks, scores, logits.cpu().numpy())
        self = cls.__new__(cls)
        self._masks = None
        self._size = (int(height), int(width))
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        self.logits = self._check_logits(logits.detach().float().cpu().numpy())
        self._upsampler, self._threshold, self._device = upsampler, float(threshold), logits.device
        self._packed: list[PackedMask | None] | None = None
        return self

    @classmethod
    def from_packed(cls, packed: list[PackedMask], scores: Any, logits: Any = None) -> Prediction:
        """A compact prediction of masks already made and packed (one per score; masks
        decoded on crops of the image, :mod:`~napari_samscope.core.predict.zoom`)."""
        if not packed:
            raise ValueError("from_packed needs at least one mask.")
        self = cls.__new__(cls)
        self._masks, self._upsampler = None, None
        self._size = tuple(int(v) for v in packed[0].image_shape)
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(packed) != len(self.scores):
            raise ValueError(f"There are {len(packed)} masks but {len(self.scores)} scores.")
        self.logits = self._check_logits(logits)
        self._packed = list(packed)
        self._packed_bytes = sum(p.packed.nbytes for p in packed)
        return self

    def _check_logits(self, logits: Any) -> np.ndarray | None:
        if logits is None:
            return None
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 3 or logits.shape[0] != len(self):
            raise ValueError(
                f"logits must be (N, L, L) with N={len(self)}, not shape {logits.shape}."
            )
        return logits

    # ------------------------------------------------------------------ masks

    @property
    def is_compact(self) -> bool:
        """Whether the full-size masks are made on demand (not held)."""
        return self._masks is None

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W) bool`` (a compact prediction makes them all now and keeps them)."""
        if self._masks is None:
            out = np.zeros((len(self), *self._size), dtype=bool)
            for i in range(len(self)):
                self._packed_mask(i).paint(out[i], True)
            self._masks = out
        return self._masks

    @masks.setter
    def masks(self, value: Any) -> None:
        masks = np.asarray(value, dtype=bool)
        if masks.ndim != 3 or masks.shape[0] != len(self):
            raise ValueError(f"masks must be (N, H, W) with N={len(self)}, not shape {masks.shape}.")
        self._masks, self._size = masks, (int(masks.shape[1]), int(masks.shape[2]))

    def mask(self, i: int) -> np.ndarray:
        """The ``(H, W) bool`` mask ``i`` alone (without making the others)."""
        if self._masks is not None:
            return self._masks[i]
        return self._packed_mask(range(len(self))[i]).full_mask()

    def iter_masks(self) -> Iterator[np.ndarray]:
        """The ``(H, W) bool`` masks one by one (a compact prediction holds one at a time)."""
        for i in range(len(self)):
            yield self.mask(i)

    def _packed_mask(self, i: int) -> PackedMask:
        """Mask ``i`` of a compact prediction, packed (kept while within the budget)."""
        import torch

        if self._packed is None:
            self._packed = [None] * len(self)
            self._packed_bytes = 0
        packed = self._packed[i]
        if packed is None:
            low = torch.from_numpy(self.logits[i]).to(self._device)
            y0, x0, window = self._upsampler.mask_window(low, self._threshold)
            packed = PackedMask.from_mask(window.cpu().numpy(), y0, x0, self._size)
            if self._packed_bytes + packed.packed.nbytes <= _PACKED_BUDGET:
                self._packed[i] = packed
                self._packed_bytes += packed.packed.nbytes
        return packed

    def _summary(self) -> tuple[np.ndarray, np.ndarray]:
        """``(areas (N,) int64, boxes (N, 4) float32)`` of a compact prediction (made once)."""
        if getattr(self, "_stats", None) is None:
            areas = np.zeros(len(self), dtype=np.int64)
            boxes = np.full((len(self), 4), np.nan, dtype=np.float32)
            for i in range(len(self)):
                packed = self._packed_mask(i)
                areas[i] = packed.area
                if packed.area:
                    boxes[i] = packed.box_xyxy
            self._stats = (areas, boxes)
        return self._stats

    # ------------------------------------------------------------------ summaries

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        kind = "compact" if self.is_compact else "masks held"
        return f"Prediction({len(self)} masks of {self._size[0]}x{self._size[1]}, {kind})"

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the masks (the original image size)."""
        return self._size

    @property
    def areas(self) -> np.ndarray:
        """``(N,) int64`` number of pixels of each mask."""
        if self._masks is None:
            return self._summary()[0].copy()
        return self._masks.reshape(len(self), -1).sum(axis=1, dtype=np.int64)

    def best(self) -> Prediction:
        """The highest-scored mask alone, as a one-mask :class:`Prediction`."""
        if len(self) == 0:
            raise ValueError("This prediction holds no masks.")
        i = int(np.argmax(self.scores))
        logits = None if self.logits is None else self.logits[i : i + 1]
        return Prediction(self.mask(i)[None], self.scores[i : i + 1], logits)

    def to_label_image(self, order: str = "area") -> np.ndarray:
        """Paint the masks into one ``(H, W) uint32`` label image (0 = background).

        Mask ``i`` gets label ``i + 1`` whatever the painting order. Where masks overlap,
        the one painted last wins (:class:`~napari_samscope.core.predict.label_image.PaintOrder`):

        - ``"area"`` (default): larger masks first, so small objects stay visible;
        - ``"score"``: lower scores first, so the most confident mask wins;
        - ``"index"``: in mask order, so later masks win.

        A compact prediction paints one mask at a time.
        """
        if order not in LABEL_ORDERS:
            raise ValueError(f"order must be one of {LABEL_ORDERS}, not {order!r}.")
        if self._masks is not None:
            return paint_labels(self._masks, self._size, order=order, scores=self.scores)
        areas = self._summary()[0] if order == PaintOrder.AREA else np.zeros(len(self), np.int64)
        items = [_Deferred(self, i, int(a)) for i, a in enumerate(areas)]
        return paint_labels(items, self._size, order=order, scores=self.scores)

    def boxes(self) -> np.ndarray:
        """``(N, 4) float32`` XYXY box of each mask, in pixels of the original image.

        ``x0, y0`` are the first and ``x1, y1`` the last column/row that holds the mask
        (inclusive, as the official ``batched_mask_to_box``). An empty mask gets a row of
        NaN, so it cannot be mistaken for a one-pixel box.
        """
        if self._masks is None:
            return self._summary()[1].copy()
        out = np.full((len(self), 4), np.nan, dtype=np.float32)
        for i, mask in enumerate(self._masks):
            cols = np.flatnonzero(mask.any(axis=0))
            if cols.size == 0:
                continue
            rows = np.flatnonzero(mask.any(axis=1))
            out[i] = (cols[0], rows[0], cols[-1], rows[-1])
        return out


class _Deferred:
    """Mask ``i`` of a compact prediction, made when it is painted."""

    def __init__(self, prediction: Prediction, i: int, area: int) -> None:
        self.prediction, self.i, self.area = prediction, i, area

    def paint(self, array: np.ndarray, value: Any) -> None:
        self.prediction._packed_mask(self.i).paint(array, value)
