"""Small pure helpers for segment-everything: grids, crops, boxes, NMS, mask scores.

Conventions (the same as Meta's automatic mask generator, so that decisions match):

- Points are ``(x, y)`` in pixels; grids are normalised to ``[0, 1] x [0, 1]``.
- Boxes are ``XYXY`` ``(x0, y0, x1, y1)``. Boxes computed *from masks* are
  **inclusive**: ``x1``/``y1`` are the index of the last pixel of the mask, so a
  one-pixel mask at ``(x, y)`` has the box ``(x, y, x, y)`` and zero area for NMS.
  Crop boxes are **exclusive** on the right/bottom: ``(x0, y0, x0 + w, y0 + h)``.
- The box area used by NMS is ``(x1 - x0) * (y1 - y0)``.

Nothing here imports torchvision; NMS is written in torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Literal

import numpy as np
import torch

from napari_samscope.core.predict.label_image import mask_to_box

__all__ = [
    "batch_slices",
    "box_area",
    "box_iou",
    "box_xyxy_to_xywh",
    "build_point_grid",
    "clean_mask_regions",
    "build_layer_point_grids",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_box",
    "masks_to_boxes",
    "nms",
    "remove_small_regions",
    "stability_score",
    "uncrop_boxes",
    "uncrop_points",
]


# --------------------------------------------------------------------------- grids


def build_point_grid(n_per_side: int) -> np.ndarray:
    """A regular grid of ``n_per_side**2`` points in ``[0, 1]^2``, cell centres.

    Returns:
        float64 ``(n_per_side**2, 2)`` of ``(x, y)``, x varying fastest.
    """
    if int(n_per_side) != n_per_side or n_per_side < 1:
        raise ValueError(f"points per side must be a positive integer, got {n_per_side!r}.")
    n = int(n_per_side)
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1.0 - offset, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One normalised grid per crop layer; layer ``i`` has ``int(n / scale**i)`` per side."""
    if int(n_per_side) != n_per_side or n_per_side < 1:
        raise ValueError(f"points per side must be a positive integer, got {n_per_side!r}.")
    if n_layers < 0:
        raise ValueError(f"crop_n_layers must be >= 0, got {n_layers}.")
    if scale_per_layer < 1:
        raise ValueError(f"crop_n_points_downscale_factor must be >= 1, got {scale_per_layer}.")
    grids = []
    for i in range(n_layers + 1):
        n = int(n_per_side / (scale_per_layer**i))
        if n < 1:
            raise ValueError(
                f"crop layer {i} would have no points ({n_per_side} points per side "
                f"downscaled by {scale_per_layer}**{i}); use fewer crop layers or a "
                "smaller crop_n_points_downscale_factor."
            )
        grids.append(build_point_grid(n))
    return grids


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes for every crop layer (layer 0 is the whole image).

    Layer ``i >= 1`` tiles the image with ``2**i x 2**i`` overlapping crops.

    Args:
        image_size: ``(H, W)`` of the original image.
        n_layers: number of crop layers beyond the whole image.
        overlap_ratio: overlap of neighbouring crops in layer 1, as a fraction of the
            image's short side (halved for each further layer).

    Returns:
        ``(boxes, layer_indices)``: boxes are exclusive ``XYXY`` int lists.
    """
    im_h, im_w = image_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        crop_w = crop_len(im_w, n_per_side, overlap)
        crop_h = crop_len(im_h, n_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}.")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


# --------------------------------------------------------------------------- boxes


def box_xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` XYXY -> XYWH with ``w = x1 - x0``, ``h = y1 - y0`` (a copy)."""
    out = np.array(boxes, copy=True)
    out[..., 2] = out[..., 2] - out[..., 0]
    out[..., 3] = out[..., 3] - out[..., 1]
    return out


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` XYXY -> ``(N,)`` areas ``(x1 - x0) * (y1 - y0)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(N, M)`` of XYXY boxes (NaN where both areas are 0)."""
    area_a = box_area(boxes_a)
    area_b = box_area(boxes_b)
    lt = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    rb = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Boxes are visited by decreasing score (ties keep their input order); a box is
    dropped when its IoU with an already kept box is strictly greater than
    ``iou_threshold``. Memory is ``O(N)``: IoUs are computed one kept box at a time.

    Args:
        boxes: ``(N, 4)`` XYXY, any real dtype (computed in float32).
        scores: ``(N,)``.
        iou_threshold: suppression threshold in ``[0, 1]``.

    Returns:
        int64 ``(K,)`` indices of the kept boxes, by decreasing score.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}.")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}.")
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    # The greedy loop is sequential: run it on the host in one place (one transfer).
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    b = boxes.detach().cpu().float()[order]
    x0, y0, x1, y1 = b.unbind(-1)
    areas = (x1 - x0) * (y1 - y0)
    suppressed = torch.zeros(n, dtype=torch.bool)
    suppressed_view = suppressed.numpy()  # shares memory with the tensor
    kept: list[int] = []
    for i in range(n):
        if suppressed_view[i]:
            continue
        kept.append(i)
        rest = slice(i + 1, n)
        w = (torch.minimum(x1[i], x1[rest]) - torch.maximum(x0[i], x0[rest])).clamp(min=0)
        h = (torch.minimum(y1[i], y1[rest]) - torch.maximum(y0[i], y0[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= iou > iou_threshold
    return order[torch.as_tensor(kept, dtype=torch.int64)].to(device)


def masks_to_boxes(masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """Inclusive XYXY boxes ``(N, 4)`` int64 of ``(N, H, W)`` bool masks; empty -> zeros."""
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}.")
    out = np.zeros((masks.shape[0], 4), dtype=np.int64)
    for i, m in enumerate(masks):
        box = mask_to_box(m)
        if box is not None:
            out[i] = box
    return out


def is_box_near_crop_edge(
    boxes: np.ndarray,
    crop_box: Sequence[int],
    image_box: Sequence[int],
    atol: float = 20.0,
) -> np.ndarray:
    """True for boxes within ``atol`` of a crop edge that is not an image edge.

    Args:
        boxes: ``(N, 4)`` XYXY in the *original image* frame.
        crop_box: exclusive XYXY of the crop.
        image_box: ``(0, 0, W, H)``.
    Returns:
        bool ``(N,)``.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    crop = np.asarray(crop_box, dtype=np.float32)[None, :]
    full = np.asarray(image_box, dtype=np.float32)[None, :]
    near_crop = np.abs(boxes - crop) <= atol
    near_image = np.abs(boxes - full) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def uncrop_boxes(boxes: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """Shift ``(N, 4)`` XYXY boxes from a crop's frame to the original image's."""
    x0, y0 = crop_box[0], crop_box[1]
    return np.asarray(boxes) + np.array([x0, y0, x0, y0], dtype=np.asarray(boxes).dtype)


def uncrop_points(points: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """Shift ``(N, 2)`` ``(x, y)`` points from a crop's frame to the original image's."""
    return np.asarray(points) + np.array(crop_box[:2], dtype=np.asarray(points).dtype)


# --------------------------------------------------------------------------- masks


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at ``threshold + offset`` and ``threshold - offset``.

    Args:
        logits: ``(..., H, W)`` float mask logits.
    Returns:
        float32 ``(...)``; NaN when both masks are empty (as the official code).
    """
    high = (logits > threshold + offset).sum(dim=(-2, -1), dtype=torch.int64)
    low = (logits > threshold - offset).sum(dim=(-2, -1), dtype=torch.int64)
    return high.to(torch.float32) / low.to(torch.float32)


def remove_small_regions(
    mask: np.ndarray,
    area_thresh: float,
    mode: Literal["holes", "islands"],
    large: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """Fill small holes or drop small islands of a 2D bool mask (8-connectivity).

    ``holes``: every connected component of the background smaller than
    ``area_thresh`` is filled (including a small outer background, as in the
    official code). ``islands``: components of the mask smaller than
    ``area_thresh`` are removed; if all are small, the largest is kept.
    ``large`` (bool, like ``mask``) marks pixels whose components count as large
    whatever their size (parts of bigger regions outside the array).

    Returns:
        ``(new_mask, changed)``.
    """
    from skimage.measure import label

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}.")
    mask = np.asarray(mask, dtype=bool)
    working = ~mask if mode == "holes" else mask
    regions, n = label(working, connectivity=2, background=0, return_num=True)
    if n == 0:
        return mask, False
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:].astype(np.float64)
    if large is not None:
        sizes[np.unique(regions[large & (regions > 0)]) - 1] = np.inf
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if mode == "holes":
        return mask | np.isin(regions, small), True
    large = np.flatnonzero(sizes >= area_thresh) + 1
    if large.size == 0:
        large = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, large), True


def clean_mask_regions(
    crop_mask: np.ndarray, y0: int, x0: int, image_shape: tuple[int, int], area_thresh: float
) -> tuple[np.ndarray, int, int, bool]:
    """Fill holes, then drop islands, smaller than ``area_thresh`` (as the official
    ``postprocess_small_regions`` does on the full mask), working on the mask's crop.

    The crop is padded with one background pixel on every side that is not an image
    edge. A background component touching that padding contains the whole image strip
    beyond that side, so it is never smaller than the strip; when every such strip holds
    at least ``area_thresh`` pixels the crop gives the same answer as the full image,
    otherwise the full image is used.

    Args:
        crop_mask: ``(h, w)`` bool mask whose top-left pixel is at ``(y0, x0)``.
        image_shape: ``(H, W)`` of the image.

    Returns:
        ``(mask, y, x, changed)``: the new bool mask and the position of its top-left pixel.
    """
    H, W = image_shape
    h, w = crop_mask.shape
    strips = {
        "top": y0 * W,
        "bottom": (H - y0 - h) * W,
        "left": x0 * H,
        "right": (W - x0 - w) * H,
    }
    padded_sides = {side: size for side, size in strips.items() if size > 0}
    if padded_sides and min(padded_sides.values()) < area_thresh:
        full = np.zeros((H, W), dtype=bool)
        full[y0 : y0 + h, x0 : x0 + w] = crop_mask
        work, oy, ox, pad = full, 0, 0, (0, 0, 0, 0)
    else:
        pad = tuple(int(side in padded_sides) for side in ("top", "bottom", "left", "right"))
        work = np.pad(crop_mask, ((pad[0], pad[1]), (pad[2], pad[3])))
        oy, ox = y0 - pad[0], x0 - pad[2]
    protected = None
    if pad != (0, 0, 0, 0):
        protected = np.ones(work.shape, dtype=bool)
        protected[pad[0] : work.shape[0] - pad[1], pad[2] : work.shape[1] - pad[3]] = False
    work, holes_changed = remove_small_regions(work, area_thresh, "holes", large=protected)
    work, islands_changed = remove_small_regions(work, area_thresh, "islands")
    return work, oy, ox, holes_changed or islands_changed
