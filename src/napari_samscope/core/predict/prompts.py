"""Prompt validation for :meth:`~napari_samscope.core.predict.predictor.Predictor.predict`.

Rules (coordinates are ``(x, y)`` pixels of the original image):

- ``points``: ``(2,)`` one point, ``(P, 2)`` points of one object, or ``(N, P, 2)``
  points of ``N`` objects. ``labels`` (1 foreground, 0 background) has the shape of
  ``points`` without its last axis; when omitted every point is foreground.
- ``bboxes``: ``(4,)`` one box or ``(N, 4)`` one object per box, XYXY in any corner
  order. A box without width or height is refused.
- ``points`` and ``bboxes`` together: object ``i`` gets box ``i`` and the points of
  object ``i``; points given for one object are shared by every box.
- ``masks``: low-resolution logits ``(L, L)`` or ``(N, L, L)`` from an earlier
  :class:`Prediction` (``Prediction.logits``), one per object. A mask alone is a
  valid prompt.
- Points and boxes outside the image are allowed (as in the official predictor), but
  coordinates must be finite and within :data:`MAX_COORDINATE` pixels of the origin
  (far beyond any image; larger values overflow the model's float32 arithmetic and
  give NaN scores).
- ``multimask_output`` is a bool (:func:`check_flag`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_COORDINATE", "Prompts", "check_flag", "parse_prompts"]

#: The largest absolute prompt coordinate accepted, in pixels.
MAX_COORDINATE = 1e7


@dataclass
class Prompts:
    """Prompts of ``N`` objects, validated, in pixels of the original image."""

    points: np.ndarray | None  # (N, P, 2) float64
    labels: np.ndarray | None  # (N, P) int32
    boxes: np.ndarray | None  # (N, 4) float64, x0 <= x1, y0 <= y1
    masks: np.ndarray | None  # (N, 1, L, L) float32
    count: int  # N, the number of objects


def parse_prompts(points: Any, labels: Any, bboxes: Any, masks: Any, lowres: int) -> Prompts:
    """Validate the prompts of ``Predictor.predict`` and batch them per object.

    Args:
        points, labels, bboxes, masks: as in ``Predictor.predict`` (see the module docstring).
        lowres: ``L``, the side of the model's low-resolution mask prompts.

    Raises:
        ValueError: with a sentence saying what is wrong with which prompt.
    """
    pts = lab = box = msk = None
    if points is not None:
        pts, lab = _parse_points(points, labels)
    elif labels is not None:
        raise ValueError("labels were given without points.")
    if bboxes is not None:
        box = _parse_boxes(bboxes)
    if masks is not None:
        msk = _parse_masks(masks, lowres)
    if pts is None and box is None and msk is None:
        raise ValueError("Give at least one prompt: points, bboxes or masks.")
    counts = {name: a.shape[0] for name, a in (("points", pts), ("bboxes", box)) if a is not None}
    if pts is not None and box is not None and counts["points"] != counts["bboxes"]:
        if counts["points"] != 1:
            raise ValueError(
                f"points describe {counts['points']} objects but bboxes {counts['bboxes']}; "
                "give points for one object (shared by every box) or for each box."
            )
        pts = np.repeat(pts, box.shape[0], axis=0)
        lab = np.repeat(lab, box.shape[0], axis=0)
    count = box.shape[0] if box is not None else (pts.shape[0] if pts is not None else 0)
    if msk is not None:
        if count and msk.shape[0] != count:
            raise ValueError(
                f"masks holds {msk.shape[0]} mask prompt(s) but the prompts describe {count} "
                "object(s); pass one low-resolution mask per object (for a one-object "
                "multimask result, pick one: r.logits[r.scores.argmax()])."
            )
        count = msk.shape[0]
    return Prompts(pts, lab, box, msk, count)


def check_flag(value: Any, name: str) -> bool:
    """``value`` as a bool; anything but ``True``/``False`` (numpy's too) is refused,
    so that ``"no"`` or ``0`` cannot pass for a switch.

    Raises:
        TypeError: ``value`` is not a bool.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, not {value!r}.")
    return bool(value)


def _coordinates(value: Any, name: str) -> np.ndarray:
    """Finite float64 pixel coordinates within :data:`MAX_COORDINATE`."""
    arr = _finite_float_array(value, name)
    if arr.size and float(np.abs(arr).max()) > MAX_COORDINATE:
        raise ValueError(
            f"{name} holds a coordinate of {float(np.abs(arr).max()):g} pixels; coordinates "
            f"must be pixels of the image (at most {MAX_COORDINATE:g} in absolute value)."
        )
    return arr


def _finite_float_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, not {value!r}.") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


def _parse_points(points: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    raw = _coordinates(points, "points")
    if raw.size == 0:
        raise ValueError(f"points holds no point (shape {raw.shape}).")
    if raw.ndim == 0 or raw.shape[-1] != 2 or raw.ndim > 3:
        raise ValueError(
            f"points must be (2,), (P, 2) or (N, P, 2) (x, y) pixels, not shape {raw.shape}."
        )
    pts = raw.reshape((1,) * (3 - raw.ndim) + raw.shape)
    expected = raw.shape[:-1]
    if labels is None:
        return pts, np.ones(pts.shape[:2], dtype=np.int32)
    lab = _finite_float_array(labels, "labels")
    if lab.shape != expected and not (pts.shape[0] == 1 and lab.size == pts.shape[1]):
        raise ValueError(
            f"labels has shape {lab.shape} but there are points of shape {raw.shape}; "
            f"give one label per point (shape {expected})."
        )
    if not np.isin(lab, (0.0, 1.0)).all():
        raise ValueError("labels must be 1 (foreground) or 0 (background).")
    return pts, lab.reshape(pts.shape[:2]).astype(np.int32)


def _parse_boxes(bboxes: Any) -> np.ndarray:
    box = _coordinates(bboxes, "bboxes")
    if box.ndim == 1:
        box = box[None]
    if box.ndim != 2 or box.shape[1] != 4:
        raise ValueError(f"bboxes must be (4,) or (N, 4) XYXY pixels, not shape {box.shape}.")
    if box.shape[0] == 0:
        raise ValueError("bboxes holds no box.")
    x0, x1 = np.minimum(box[:, 0], box[:, 2]), np.maximum(box[:, 0], box[:, 2])
    y0, y1 = np.minimum(box[:, 1], box[:, 3]), np.maximum(box[:, 1], box[:, 3])
    flat = np.flatnonzero((x1 == x0) | (y1 == y0))
    if flat.size:
        raise ValueError(
            f"Box {int(flat[0])} has no width or height ({box[flat[0]].tolist()}); "
            "draw a box around the object, or use a point prompt."
        )
    return np.stack([x0, y0, x1, y1], axis=1)


def _parse_masks(masks: Any, lowres: int) -> np.ndarray:
    if np.asarray(masks).dtype == np.bool_:
        raise ValueError(
            "masks must be low-resolution logits (float, e.g. Prediction.logits), not a bool mask."
        )
    arr = _finite_float_array(masks, "masks").astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != (lowres, lowres) or arr.shape[0] == 0:
        raise ValueError(
            f"masks must be low-resolution logits of shape ({lowres}, {lowres}) or "
            f"(N, {lowres}, {lowres}) (Prediction.logits), not shape {arr.shape}."
        )
    return arr[:, None]
