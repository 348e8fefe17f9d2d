"""What segment-everything returns: compact per-mask records and their collection.

A :class:`MaskRecord` keeps its mask as the bit-packed crop of its bounding box (one
bit per pixel of the box), so a result holds many masks of a large image cheaply;
full-size masks are materialised only when asked for. Boxes follow the official
records: ``bbox`` is ``XYWH`` with ``x + w`` the mask's last column (inclusive).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_samscope.core.everything.mask_ops import mask_to_box

__all__ = ["EverythingResult", "MaskRecord"]


@dataclass(frozen=True)
class MaskRecord:
    """One mask found by :class:`MaskGenerator`, stored compactly.

    Attributes:
        bbox: ``(x, y, w, h)`` in original pixels; ``x + w`` is the mask's last column.
        area: number of mask pixels.
        predicted_iou: the model's quality estimate.
        stability_score: IoU of the masks thresholded at ``+-stability_score_offset``.
        point_coords: the ``(x, y)`` grid point that produced the mask.
        crop_box: ``(x, y, w, h)`` of the image crop it was found in.
        image_shape: ``(H, W)`` of the original image.
        packed: ``np.packbits`` of the ``(h + 1, w + 1)`` bool crop at ``bbox``.
    """

    bbox: tuple[int, int, int, int]
    area: int
    predicted_iou: float
    stability_score: float
    point_coords: tuple[float, float]
    crop_box: tuple[int, int, int, int]
    image_shape: tuple[int, int]
    packed: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_mask(
        cls, mask: np.ndarray, y0: int, x0: int, image_shape: tuple[int, int], **fields: Any
    ) -> MaskRecord:
        """A record for the bool ``mask`` whose top-left pixel is at ``(y0, x0)``."""
        box = mask_to_box(mask)
        if box is None:
            return cls(
                (0, 0, 0, 0), 0, packed=np.zeros(0, np.uint8), image_shape=image_shape, **fields
            )
        bx0, by0, bx1, by1 = box
        tight = mask[by0 : by1 + 1, bx0 : bx1 + 1]
        return cls(
            bbox=(x0 + bx0, y0 + by0, bx1 - bx0, by1 - by0),
            area=int(np.count_nonzero(tight)),
            packed=np.packbits(tight, axis=None),
            image_shape=image_shape,
            **fields,
        )

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        """Inclusive ``(x0, y0, x1, y1)`` box."""
        x, y, w, h = self.bbox
        return x, y, x + w, y + h

    @property
    def crop_mask(self) -> np.ndarray:
        """The ``(h + 1, w + 1)`` bool mask inside :attr:`bbox` (``(0, 0)`` when empty)."""
        if self.area == 0:
            return np.zeros((0, 0), dtype=bool)
        _, _, w, h = self.bbox
        bits = np.unpackbits(self.packed, count=(h + 1) * (w + 1))
        return bits.reshape(h + 1, w + 1).astype(bool)

    @property
    def mask(self) -> np.ndarray:
        """The ``(H, W)`` bool mask (materialised on each access)."""
        return self.full_mask()

    def full_mask(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The mask painted into a new ``shape`` (default :attr:`image_shape`) bool array."""
        shape = self.image_shape if shape is None else tuple(shape)
        out = np.zeros(shape, dtype=bool)
        self.paint(out, True)
        return out

    def paint(self, array: np.ndarray, value: Any) -> None:
        """Set ``array[mask] = value`` in place (``array`` is at least the mask's extent)."""
        if self.area:
            x, y, w, h = self.bbox
            view = array[y : y + h + 1, x : x + w + 1]
            view[self.crop_mask[: view.shape[0], : view.shape[1]]] = value


@dataclass
class EverythingResult:
    """All masks of one image, in the order the official generator returns them."""

    records: list[MaskRecord]
    image_shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[MaskRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> MaskRecord:
        return self.records[index]

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool (materialised on access: ``N * H * W`` bytes)."""
        out = np.zeros((len(self), *self.image_shape), dtype=bool)
        for i, record in enumerate(self.records):
            record.paint(out[i], True)
        return out

    @property
    def scores(self) -> np.ndarray:
        """``(N,)`` float32 predicted IoU."""
        return np.array([r.predicted_iou for r in self.records], dtype=np.float32)

    @property
    def stability_scores(self) -> np.ndarray:
        """``(N,)`` float32 stability scores."""
        return np.array([r.stability_score for r in self.records], dtype=np.float32)

    @property
    def areas(self) -> np.ndarray:
        """``(N,)`` int64 mask areas in pixels."""
        return np.array([r.area for r in self.records], dtype=np.int64)

    def boxes(self) -> np.ndarray:
        """``(N, 4)`` float32 inclusive XYXY boxes (as ``Prediction.boxes``; NaN if empty)."""
        out = np.full((len(self), 4), np.nan, dtype=np.float32)
        for i, record in enumerate(self.records):
            if record.area:
                out[i] = record.box_xyxy
        return out

    def to_label_image(self) -> np.ndarray:
        """``(H, W)`` uint32: record ``i`` is label ``i + 1``; large masks are painted
        first so that small ones stay visible; 0 is background."""
        labels = np.zeros(self.image_shape, dtype=np.uint32)
        for i in np.argsort(-self.areas, kind="stable"):
            self.records[i].paint(labels, i + 1)
        return labels

    def to_prediction(self):  # -> Prediction (import deferred to keep this module light)
        """The masks and scores as a :class:`~napari_samscope.core.predict.results.Prediction`."""
        from napari_samscope.core.predict.results import Prediction

        return Prediction(masks=self.masks, scores=self.scores)
