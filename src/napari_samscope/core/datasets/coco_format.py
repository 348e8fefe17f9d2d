"""COCO JSON for masks: ``images`` / ``annotations`` / ``categories``.

COCO polygons are *unioned* by readers (pycocotools), which cannot express holes, so
an object with holes is written as an uncompressed RLE (``{"counts": [...], "size":
[h, w]}``, column-major runs starting with background) and an object without holes as
a list of polygons (one per part, flat ``[x1, y1, x2, y2, ...]`` in pixels, pixel
centres at ``+0.5``). ``bbox`` is ``[x, y, width, height]``, ``area`` the pixel count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_samscope.core.datasets.yolo_format import _check_mask, mask_rings, write_text_atomic

__all__ = ["coco_annotation", "CocoWriter"]


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: column-major runs, starting with a background run."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs.insert(0, 0)
    return runs


def coco_annotation(
    mask: np.ndarray,
    annotation_id: int,
    image_id: int,
    category_id: int,
    score: float | None = None,
    tolerance: float = 0.0,
    image_shape: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
) -> dict[str, Any] | None:
    """A COCO annotation dict for one mask, or ``None`` for an empty mask.

    ``mask`` is the whole image, or a crop whose top-left pixel is ``offset`` (row, col)
    in an image of ``image_shape``. ``bbox`` is ``[x, y, width, height]`` in pixels,
    ``area`` the pixel count. The segmentation is polygons (one per part) without
    holes, uncompressed RLE of the whole image with holes.
    """
    mask = _check_mask(mask)
    shape = tuple(image_shape) if image_shape is not None else mask.shape
    area = int(mask.sum())
    if area == 0:
        return None
    r_off, c_off = int(offset[0]), int(offset[1])
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    bbox = [x0 + c_off, y0 + r_off, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0]
    has_holes = bool((ndi.binary_fill_holes(mask) & ~mask).any())
    if has_holes:
        full = np.zeros(shape, dtype=bool)
        full[r_off : r_off + mask.shape[0], c_off : c_off + mask.shape[1]] = mask
        segmentation: Any = {"counts": _rle_counts(full), "size": [int(shape[0]), int(shape[1])]}
    else:
        segmentation = []
        parts, n = ndi.label(mask, structure=np.ones((3, 3), bool))
        for index in range(1, n + 1):
            rings = mask_rings(parts == index, tolerance)
            if rings:
                ring = rings[0]
                xy = np.stack([ring[:, 1] + c_off + 0.5, ring[:, 0] + r_off + 0.5], axis=1).ravel()
                segmentation.append([round(float(v), 3) for v in xy])
    annotation = {
        "id": int(annotation_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "segmentation": segmentation,
        "area": area,
        "bbox": bbox,
        "iscrowd": 0,
    }
    if score is not None:
        annotation["score"] = float(score)
    return annotation


class CocoWriter:
    """Accumulates images and masks, then writes one COCO JSON file.

    Example::

        coco = CocoWriter(categories={0: "nucleus"})
        image_id = coco.add_image("a.tif", height=256, width=256)
        coco.add_masks(image_id, masks, class_ids, scores)
        coco.write("annotations.json")
    """

    def __init__(self, categories: dict[int, str] | None = None) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.categories: dict[int, str] = dict(categories or {})

    def add_image(self, file_name: str, height: int, width: int, **extra: Any) -> int:
        """Register an image; returns its id (1-based). ``extra`` fields (e.g. ``frame``) are kept."""
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width), **extra}
        )
        return image_id

    def add_object(
        self,
        image_id: int,
        mask: np.ndarray,
        class_id: int,
        score: float | None = None,
        image_shape: tuple[int, int] | None = None,
        offset: tuple[int, int] = (0, 0),
    ) -> bool:
        """Add one object (whole-image mask, or a crop at ``offset``); False if empty."""
        ann = coco_annotation(mask, len(self.annotations) + 1, image_id, int(class_id), score,
                              image_shape=image_shape, offset=offset)
        if ann is None:
            return False
        self.annotations.append(ann)
        self.categories.setdefault(int(class_id), f"class_{int(class_id)}")
        return True

    def add_masks(
        self,
        image_id: int,
        masks: Iterable[np.ndarray],
        class_ids: Iterable[int],
        scores: Iterable[float] | None = None,
    ) -> int:
        """Add one annotation per non-empty whole-image mask; returns how many were added."""
        scores_list = list(scores) if scores is not None else None
        added = 0
        for k, (mask, cls) in enumerate(zip(masks, class_ids)):
            score = scores_list[k] if scores_list is not None else None
            added += self.add_object(image_id, mask, int(cls), score)
        return added

    def to_dict(self) -> dict[str, Any]:
        """The COCO dictionary (``images``, ``annotations``, ``categories``)."""
        categories = [{"id": cid, "name": name} for cid, name in sorted(self.categories.items())]
        return {"images": self.images, "annotations": self.annotations, "categories": categories}

    def write(self, path: str | os.PathLike) -> Path:
        """Write the JSON (atomically) and return its path."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict()))
        return path
