"""What segment-everything returns: compact per-mask records and their collection.

A :class:`MaskRecord` keeps its mask as the bit-packed crop of its bounding box (one
bit per pixel of the box), so a result holds many masks of a large image cheaply;
full-size masks are materialised only when asked for. Boxes follow the official
records: ``bbox`` is ``XYWH`` with ``x + w`` the mask's last column (inclusive).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from napari_samscope.core.predict.label_image import PackedMask, paint_labels

__all__ = ["EverythingResult", "MaskRecord"]


@dataclass(frozen=True)
class MaskRecord(PackedMask):
    """One mask found by :class:`MaskGenerator`, stored compactly (a
    :class:`~napari_samscope.core.predict.label_image.PackedMask`: ``bbox``, ``area``,
    ``packed``, ``image_shape``, ``crop_mask``, ``paint``, ``full_mask``), with its scores.

    Attributes:
        predicted_iou: the model's quality estimate.
        stability_score: IoU of the masks thresholded at ``+-stability_score_offset``.
        point_coords: the ``(x, y)`` grid point that produced the mask.
        crop_box: ``(x, y, w, h)`` of the image crop it was found in.
    """

    predicted_iou: float
    stability_score: float
    point_coords: tuple[float, float]
    crop_box: tuple[int, int, int, int]


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
        return paint_labels(self.records, self.image_shape)

    def to_prediction(self):  # -> Prediction (import deferred to keep this module light)
        """The masks and scores as a :class:`~napari_samscope.core.predict.results.Prediction`."""
        from napari_samscope.core.predict.results import Prediction

        return Prediction(masks=self.masks, scores=self.scores)
