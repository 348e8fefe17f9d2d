"""Small objects in large images: box prompts run on crops at the model's scale.

SAM resizes the whole image so that its longest side fills the model input (1024 pixels
for SAM and the default model). A 4096-pixel image is shrunk 4x, and a nucleus 9 pixels
across becomes 2 input pixels: less than one cell of the decoder's low-resolution mask
(4 input pixels per cell), so the mask that comes back is noise the size of a cell
cluster. Such boxes are segmented here on crops instead:

- :func:`is_unresolvable` says which boxes would shrink below :data:`MIN_INPUT_PIXELS`;
- :func:`plan_crops` groups those boxes into square crops: a grid whose cores tile the
  image, each box going to the crop whose core holds its centre, with a margin that
  keeps every box (and some context) inside its crop;
- :func:`crop_side` chooses the crop size that magnifies the boxes to about
  :data:`TARGET_INPUT_PIXELS` (the object size SAM-family models resolve well),
  bounded so that the crop is never larger than the model input nor magnified more than
  :data:`MAX_MAGNIFICATION` times;
- :func:`segment_boxes` runs a predictor on each crop (one ``set_image`` per crop, the
  crop's boxes prompted together) and returns each mask cropped to its bounding box with
  its offset in the whole image: pasting back is adding the crop's corner.

Every crop is converted with the whole image's contrast limits, so that a crop of
background is not stretched into noise. :class:`SmallObjectWarning` is raised (as a
warning) where a prompt cannot be handled this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_samscope.core.predict.resolution import (
    MIN_INPUT_PIXELS,
    SmallObjectWarning,
    as_boxes,
    is_unresolvable,
    warn_unresolvable,
)

__all__ = [
    "MAX_MAGNIFICATION",
    "MIN_INPUT_PIXELS",
    "TARGET_INPUT_PIXELS",
    "Crop",
    "SmallObjectWarning",
    "crop_mask",
    "crop_side",
    "grid_starts",
    "image_contrast_limits",
    "is_unresolvable",
    "plan_crops",
    "segment_boxes",
    "warn_unresolvable",
]

#: crops magnify boxes so that their median shorter side is about this many input pixels
TARGET_INPUT_PIXELS = 64.0
#: crops never magnify more than this (a few pixels blown up 17x look like nothing the
#: model was trained on either)
MAX_MAGNIFICATION = 8.0
#: context kept around a box inside its crop, as a fraction of the crop side
_CONTEXT = 0.125


@dataclass(frozen=True)
class Crop:
    """A square window ``[y0, y1) x [x0, x1)`` of the image and the boxes it segments."""

    y0: int
    x0: int
    y1: int
    x1: int
    indices: tuple[int, ...]

    @property
    def offset(self) -> tuple[int, int]:
        """``(row, col)`` of the crop's top-left pixel in the whole image."""
        return self.y0, self.x0


def crop_side(boxes: Any, image_shape: Sequence[int], img_size: int) -> int:
    """The side of the square crops for ``boxes`` (see the module docstring)."""
    boxes = as_boxes(boxes)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    typical = float(np.median(sides)) if len(sides) else 1.0
    side = img_size * max(typical, 1.0) / TARGET_INPUT_PIXELS
    largest = float(np.max(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), initial=1.0))
    side = max(side, img_size / MAX_MAGNIFICATION, largest / (1 - 2 * _CONTEXT))
    return int(min(math.ceil(side), img_size, max(image_shape[0], image_shape[1])))


def grid_starts(length: int, side: int, stride: int) -> list[int]:
    """Crop starts along one axis: every ``stride``, the last one flush with the end."""
    if length <= side:
        return [0]
    starts = list(range(0, length - side, stride))
    return [*starts, length - side]


def plan_crops(boxes: Any, image_shape: Sequence[int], side: int) -> list[Crop]:
    """Group ``boxes`` (XYXY pixels) into square crops of ``side`` pixels (clipped to the image).

    Crops sit on a grid of stride ``side - 2 * margin`` (margin: an eighth of the side,
    at least the largest box). A box goes to the crop whose centre is nearest to the box
    centre among those that contain the whole box; a box that fits in none (larger than
    the margin allows) gets a crop of its own, centred on it. Crops without boxes are
    dropped. Every box index appears in exactly one crop.
    """
    boxes = as_boxes(boxes)
    height, width = int(image_shape[0]), int(image_shape[1])
    side = int(side)
    if side < 1:
        raise ValueError(f"the crop side must be at least 1 pixel, not {side}")
    margin = max(int(side * _CONTEXT), 1)
    stride = max(side - 2 * margin, 1)
    rows, cols = grid_starts(height, side, stride), grid_starts(width, side, stride)
    grid = [(y, x) for y in rows for x in cols]
    corners = np.asarray(grid, dtype=np.float64)  # (G, 2) row, col of each crop's corner
    ends = np.minimum(corners + side, [height, width])
    centres = (corners + ends) / 2
    members: dict[int, list[int]] = {}
    extra: list[Crop] = []
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        fits = (corners[:, 0] <= y0) & (corners[:, 1] <= x0) & (ends[:, 0] >= y1) & (ends[:, 1] >= x1)
        if fits.any():
            centre = np.array([(y0 + y1) / 2, (x0 + x1) / 2])
            distance = np.where(fits, np.abs(centres - centre).max(axis=1), np.inf)
            members.setdefault(int(np.argmin(distance)), []).append(index)
            continue
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        half = max(side, y1 - y0 + 2 * margin, x1 - x0 + 2 * margin) / 2
        top, left = int(max(0, math.floor(cy - half))), int(max(0, math.floor(cx - half)))
        extra.append(Crop(top, left, int(min(height, math.ceil(cy + half))),
                          int(min(width, math.ceil(cx + half))), (index,)))
    crops = [
        Crop(int(corners[g, 0]), int(corners[g, 1]), int(ends[g, 0]), int(ends[g, 1]), tuple(found))
        for g, found in sorted(members.items())
    ]
    return crops + extra


def image_contrast_limits(image: np.ndarray) -> tuple[float, float] | None:
    """The ``(lo, hi)`` that ``to_rgb_uint8`` would stretch the whole image to (its 0.5 and
    99.5 percentiles), so that every crop is converted alike; None for 8-bit images (used
    as they are) and for constant images."""
    image = np.asarray(image)
    if image.dtype == np.uint8 or image.dtype == np.bool_:
        return None
    values = image[np.isfinite(image)] if image.dtype.kind == "f" else image.ravel()
    if values.size > 1 << 20:  # a regular subsample is enough for two percentiles
        values = values[:: values.size // (1 << 20)]
    if values.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    return (lo, hi) if hi > lo else None


def crop_mask(mask: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """``((row, col), mask[r0:r1, c0:c1])``: a mask cut to its bounding box and the position
    of its top-left pixel; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (int(r0), int(c0)), mask[r0:r1, c0:c1].copy()


def segment_boxes(
    predictor: Any,
    image: np.ndarray,
    boxes: Any,
    *,
    contrast_limits: Any = None,
    side: int | None = None,
    batch: int = 32,
) -> list[tuple[tuple[int, int], np.ndarray] | None]:
    """Segment each box on a crop at the model's scale (see the module docstring).

    Args:
        predictor: a :class:`~napari_samscope.core.predict.predictor.Predictor` (anything
            with ``img_size``, ``set_image``, ``predict`` and ``reset_image``).
        image: ``(H, W)`` or ``(H, W, C)`` image.
        boxes: ``(N, 4)`` XYXY pixels of ``image``.
        contrast_limits: passed to every ``set_image``; default the whole image's limits
            (:func:`image_contrast_limits`).
        side: crop side in pixels; default :func:`crop_side`.
        batch: boxes decoded at once.

    Returns:
        Per box, ``((row, col), mask)``: the mask cropped to its bounding box and the
        position of its top-left pixel in ``image``; None where the mask is empty.
    """
    image = np.asarray(image)
    boxes = as_boxes(boxes)
    results: list[tuple[tuple[int, int], np.ndarray] | None] = [None] * len(boxes)
    if len(boxes) == 0:
        return results
    if contrast_limits is None:
        contrast_limits = image_contrast_limits(image)
    side = side if side is not None else crop_side(boxes, image.shape, predictor.img_size)
    for crop in plan_crops(boxes, image.shape, side):
        window = image[crop.y0 : crop.y1, crop.x0 : crop.x1]
        if contrast_limits is None and np.ptp(window) == 0:
            continue  # a constant window holds nothing to segment
        predictor.set_image(window, contrast_limits=contrast_limits)
        try:
            local = boxes[list(crop.indices)] - [crop.x0, crop.y0, crop.x0, crop.y0]
            for start in range(0, len(local), batch):
                masks = predictor.predict(bboxes=local[start : start + batch], multimask_output=False).masks
                for k, mask in enumerate(masks):
                    found = crop_mask(np.asarray(mask, dtype=bool))
                    if found is not None:
                        (r, c), piece = found
                        results[crop.indices[start + k]] = ((r + crop.y0, c + crop.x0), piece)
        finally:
            predictor.reset_image()
    return results
