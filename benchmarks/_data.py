"""Benchmark inputs: synthetic microscopy images and the prompts used on them.

Prompts are in SAM's convention: points ``(x, y)`` and boxes ``XYXY`` in pixels of
the original image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_samscope.core.synthetic import make_nuclei_2d, make_nuclei_3d


def rgb_image(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An ``(H, W, 3)`` uint8 image of fluorescent nuclei and its ``(H, W)`` labels."""
    grey, labels = make_nuclei_2d((height, width), dtype="uint8", seed=seed)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), labels


def stack(planes: int, side: int, seed: int = 0) -> np.ndarray:
    """A ``(Z, side, side)`` uint16 stack of nuclei."""
    volume, _ = make_nuclei_3d((planes, side, side), seed=seed)
    return volume


def object_boxes(labels: np.ndarray, count: int) -> np.ndarray:
    """``(count, 4)`` XYXY boxes of the ``count`` largest objects (padded by 2 pixels)."""
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    boxes = []
    for i in ids[np.argsort(-areas)][:count]:
        ys, xs = np.nonzero(labels == i)
        boxes.append([xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2])
    return np.asarray(boxes, dtype=np.float64)


def centre(labels: np.ndarray, box: np.ndarray) -> list[float]:
    """An ``(x, y)`` point inside the object whose box is ``box`` (its pixel nearest the centre)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    window = labels[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1]
    ids, counts = np.unique(window[window > 0], return_counts=True)
    ys, xs = np.nonzero(window == ids[counts.argmax()])
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return [float(xs[k] + max(x0, 0)), float(ys[k] + max(y0, 0))]


def parity_prompts(labels: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
    """The prompt kinds of the parity tests, on real objects of ``labels``.

    Positive point (multimask on and off), positive + negative points, box, box +
    point, several boxes at once. (A mask prompt is added by the caller, from the
    first result.)
    """
    boxes = object_boxes(labels, 6)
    p0, p1 = centre(labels, boxes[0]), centre(labels, boxes[1])
    return [
        ("point, multimask", {"points": [p0], "labels": [1], "multimask_output": True}),
        ("point", {"points": [p1], "labels": [1]}),
        ("point + negative point", {"points": [p0, p1], "labels": [1, 0]}),
        ("box", {"bboxes": boxes[2]}),
        ("box + point", {"bboxes": boxes[3], "points": [centre(labels, boxes[3])], "labels": [1]}),
        ("3 boxes", {"bboxes": boxes[3:6]}),
    ]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
