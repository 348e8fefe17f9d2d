"""Masks -> one label image (:func:`paint_labels`), and masks stored compactly
(:class:`PackedMask`).

Every place that turns several masks into a label image paints through
:func:`paint_labels`: by default the largest mask first, so that small objects stay
visible where masks overlap. A :class:`PackedMask` keeps a mask as the bit-packed crop
of its bounding box (one bit per pixel of the box), so many masks of a large image
cost little; full-size masks are made only when asked for. Boxes follow the official
records: ``bbox`` is ``XYWH`` with ``x + w`` the mask's last column (inclusive).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from napari_samscope.core.choices import Choice

__all__ = ["PackedMask", "PaintOrder", "Paintable", "mask_to_box", "paint_labels", "paint_order"]


class PaintOrder(Choice):
    """In which order masks are painted; where masks overlap, the one painted last wins."""

    #: larger masks first, so small objects stay visible
    AREA = "area"
    #: lower scores first, so the most confident mask wins
    SCORE = "score"
    #: in mask order, so later masks win
    INDEX = "index"


class Paintable(Protocol):
    """A mask that paints itself: its pixel count and ``array[mask] = value``."""

    @property
    def area(self) -> int: ...

    def paint(self, array: np.ndarray, value: Any) -> None: ...


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive XYXY box of a 2D bool mask, or ``None`` when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


@dataclass(frozen=True)
class PackedMask:
    """A 2D bool mask stored as the bit-packed crop of its bounding box.

    Attributes:
        bbox: ``(x, y, w, h)`` in pixels of the image; ``x + w`` is the mask's last column
            (``(0, 0, 0, 0)`` for an empty mask).
        area: number of mask pixels.
        packed: ``np.packbits`` of the ``(h + 1, w + 1)`` bool crop at ``bbox``.
        image_shape: ``(H, W)`` of the image.
    """

    bbox: tuple[int, int, int, int]
    area: int
    packed: np.ndarray = field(repr=False, compare=False)
    image_shape: tuple[int, int]

    @classmethod
    def from_mask(
        cls, mask: np.ndarray, y0: int, x0: int, image_shape: tuple[int, int], **fields: Any
    ) -> Any:
        """The packed form of the bool ``mask`` whose top-left pixel is at ``(y0, x0)``;
        ``fields`` are the other fields of a subclass."""
        box = mask_to_box(mask)
        shape = (int(image_shape[0]), int(image_shape[1]))
        if box is None:
            return cls((0, 0, 0, 0), 0, packed=np.zeros(0, np.uint8), image_shape=shape, **fields)
        bx0, by0, bx1, by1 = box
        tight = mask[by0 : by1 + 1, bx0 : bx1 + 1]
        return cls(
            bbox=(int(x0) + bx0, int(y0) + by0, bx1 - bx0, by1 - by0),
            area=int(np.count_nonzero(tight)),
            packed=np.packbits(tight, axis=None),
            image_shape=shape,
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
        """The ``(H, W)`` bool mask (made on each access)."""
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


def paint_order(
    areas: np.ndarray,
    order: PaintOrder | str = PaintOrder.AREA,
    scores: np.ndarray | None = None,
    *,
    earlier_wins_ties: bool = False,
) -> np.ndarray:
    """The indices of the masks in painting order (see :class:`PaintOrder`).

    With ``"area"``, masks of equal area keep their order (so the later one wins) unless
    ``earlier_wins_ties``.
    """
    mode = PaintOrder.parse(order, "order")
    n = len(areas)
    if mode is PaintOrder.INDEX:
        return np.arange(n)
    if mode is PaintOrder.SCORE:
        if scores is None:
            raise ValueError("order='score' needs the masks' scores.")
        return np.argsort(np.asarray(scores), kind="stable")
    keys = -np.asarray(areas, dtype=np.int64)
    if not earlier_wins_ties:
        return np.argsort(keys, kind="stable")
    # descending (area, index): on equal areas the higher index is painted first
    return np.lexsort((-np.arange(n), keys))


def paint_labels(
    masks: np.ndarray | Sequence[np.ndarray] | Sequence[Paintable],
    shape: tuple[int, int] | None = None,
    *,
    order: PaintOrder | str = PaintOrder.AREA,
    scores: np.ndarray | None = None,
    values: Sequence[int] | None = None,
    dtype: Any = np.uint32,
    earlier_wins_ties: bool = False,
) -> np.ndarray:
    """Paint masks into one ``(H, W)`` label image (0 = background).

    Args:
        masks: an ``(N, H, W)`` bool array, a sequence of ``(H, W)`` bool masks, or a
            sequence of objects with ``area`` and ``paint(array, value)`` (a
            :class:`PackedMask`, an everything ``MaskRecord``), painted without making
            their full-size masks.
        shape: ``(H, W)``; default: the masks' shape (required for painting objects
            and for an empty sequence).
        order: :class:`PaintOrder`; mask ``i`` gets the same label whatever the order.
        scores: ``(N,)`` scores, for ``order="score"``.
        values: the label of each mask; default ``i + 1`` for mask ``i``.
        dtype: of the label image.
        earlier_wins_ties: with ``"area"``, of two masks of equal area the earlier one
            is painted last.

    Raises:
        ValueError: no ``shape`` where it is needed, a bad ``order``, or too many masks
            for ``dtype``.
    """
    n = len(masks)
    if shape is None:
        if isinstance(masks, np.ndarray) and masks.ndim == 3:
            shape = masks.shape[1:]
        elif n and isinstance(masks[0], np.ndarray):
            shape = masks[0].shape
        else:
            raise ValueError("paint_labels needs the label image's shape for these masks.")
    labels = np.zeros(tuple(shape), dtype=dtype)
    if values is None:
        if n >= np.iinfo(labels.dtype).max:
            raise ValueError(f"Too many masks ({n}) for a {labels.dtype} label image.")
        values = range(1, n + 1)
    if n == 0:
        return labels
    arrays = isinstance(masks, np.ndarray) or isinstance(masks[0], np.ndarray)
    if arrays:
        areas = [int(np.count_nonzero(m)) for m in masks]
    else:
        areas = [int(m.area) for m in masks]
    for i in paint_order(np.array(areas), order, scores, earlier_wins_ties=earlier_wins_ties):
        if arrays:
            labels[masks[i]] = values[i]
        else:
            masks[i].paint(labels, values[i])
    return labels
