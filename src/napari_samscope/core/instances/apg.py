"""Automatic prompt generation (APG), micro-sam's second decoder-based mode.

Point prompts come from the decoder's maps (one per seed of the AIS recipe, placed at the
point of the seed farthest from its border), the SAM mask decoder turns each into a mask,
and the masks are merged: small ones dropped, overlapping ones suppressed (mask IoU above
``nms_threshold``, the best ``predicted IoU x stability`` kept), painted largest first
without overwriting, split into connected pieces, and pieces under ``min_size`` removed.
Parameter names and defaults follow micro-sam's ``AutomaticPromptGenerator.generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

from napari_samscope.core.everything.mask_ops import stability_score
from napari_samscope.core.instances.postprocess import NumberParams
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.transforms import apply_coords

__all__ = ["APGParams", "instances_from_prompts", "mask_nms", "merge_masks", "point_prompts_from_maps"]

# micro-sam's APG labels seeds and pieces with elf's ``label``, which is 4-connected (AIS,
# by contrast, labels its seeds 8-connected)
_FOUR = ndimage.generate_binary_structure(2, 1)
_STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class APGParams(NumberParams):
    """Parameters of APG, with micro-sam's names and defaults."""

    kind = "APG"

    min_size: int = 25
    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    nms_threshold: float = 0.9
    batch_size: int = 32

    def __post_init__(self) -> None:
        self._check_numbers()
        if self.batch_size < 1 or int(self.batch_size) != self.batch_size:
            raise ValueError(f"batch_size must be a whole number >= 1, not {self.batch_size}.")



def point_prompts_from_maps(
    maps: np.ndarray,
    *,
    foreground_threshold: float = 0.5,
    center_distance_threshold: float = 0.5,
    boundary_distance_threshold: float = 0.5,
) -> np.ndarray:
    """One ``(x, y)`` point per seed region of the (unsmoothed) maps, ``(N, 2)`` float.

    Seeds: centre distance and boundary distance below their thresholds where the
    foreground is not below its threshold, 4-connected. Each point is the pixel of its
    seed farthest from the seed's outline (never on the image border).
    """
    foreground, center, boundary = maps[0], maps[1], maps[2]
    seeds = (center < center_distance_threshold) & (boundary < boundary_distance_threshold)
    seeds &= ~(foreground < foreground_threshold)
    labels, count = ndimage.label(seeds, structure=_FOUR)
    if count == 0:
        return np.zeros((0, 2), dtype=np.float64)
    inside = ~find_boundaries(labels, mode="outer")
    inside[0, :] = inside[-1, :] = False
    inside[:, 0] = inside[:, -1] = False
    distances = ndimage.distance_transform_edt(inside)
    points = np.zeros((count, 2), dtype=np.float64)
    for index, box in enumerate(ndimage.find_objects(labels)):
        own = labels[box] == index + 1
        local = np.where(own, distances[box], 0.0)
        row, col = np.unravel_index(int(np.argmax(local)), local.shape)
        points[index] = (col + box[1].start, row + box[0].start)
    return points


def _boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, 4)`` row0, col0, row1, col1 (exclusive) of non-empty ``(N, H, W)`` masks."""
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    r0 = rows.argmax(axis=1)
    r1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    c0 = cols.argmax(axis=1)
    c1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    return np.stack([r0, c0, r1, c1], axis=1)


def mask_nms(masks: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the masks kept by greedy NMS on mask IoU (best score first).

    Only masks whose boxes overlap are compared, on the overlap of their boxes.
    """
    order = np.argsort(-scores, kind="stable")
    boxes = _boxes(masks)
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    suppressed = np.zeros(len(masks), dtype=bool)
    kept = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        kept.append(i)
        rest = order[rank + 1 :]
        rest = rest[~suppressed[rest]]
        top = np.maximum(boxes[rest, :2], boxes[i, :2])
        bottom = np.minimum(boxes[rest, 2:], boxes[i, 2:])
        overlapping = rest[(bottom > top).all(axis=1)]
        for j in overlapping:
            r0, c0 = np.maximum(boxes[i, :2], boxes[j, :2])
            r1, c1 = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = np.count_nonzero(masks[i, r0:r1, c0:c1] & masks[j, r0:r1, c0:c1])
            if inter / (areas[i] + areas[j] - inter) > threshold:
                suppressed[j] = True
    return np.asarray(kept, dtype=np.int64)


@torch.no_grad()
def instances_from_prompts(predictor: Predictor, points: np.ndarray, params: APGParams) -> np.ndarray:
    """Segment each point with the SAM mask decoder and merge the masks (module docstring).

    ``predictor`` must have the image set. Returns ``(H, W)`` uint32 labels.
    """
    emb = predictor.get_embedding()
    H, W = emb.original_size
    if len(points) == 0:
        return np.zeros((H, W), dtype=np.uint32)
    upsampler = predictor.mask_upsampler
    kept_masks: list[torch.Tensor] = []
    kept_scores: list[torch.Tensor] = []
    for start in range(0, len(points), int(params.batch_size)):
        chunk = points[start : start + int(params.batch_size)]
        coords = apply_coords(chunk[:, None, :], emb.original_size, emb.input_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float32, device=predictor.device)
        labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=predictor.device)
        low, iou = predictor.decode(coords_t, labels_t, multimask_output=False)
        logits = upsampler.logits(low[:, 0])
        masks = logits > predictor.model.mask_threshold
        scores = iou[:, 0] * torch.nan_to_num(
            stability_score(logits, predictor.model.mask_threshold, _STABILITY_OFFSET)
        )
        area = masks.sum(dim=(-2, -1))
        keep = area > params.min_size
        kept_masks.append(masks[keep].cpu())
        kept_scores.append(scores[keep].cpu())
    masks = torch.cat(kept_masks).numpy()
    scores = torch.cat(kept_scores).numpy()
    return merge_masks(masks, scores, int(params.min_size), params.nms_threshold, (H, W))


def merge_masks(
    masks: np.ndarray, scores: np.ndarray, min_size: int, nms_threshold: float,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """APG's last step (micro-sam's ``apply_nms``): ``(N, H, W)`` bool masks with their
    scores (predicted IoU x stability) -> ``(H, W)`` uint32 labels.

    Masks of ``min_size`` pixels or fewer are dropped, the rest go through :func:`mask_nms`,
    are painted largest first without overwriting, split into 4-connected pieces, and
    pieces under ``min_size`` pixels are removed.
    """
    masks = np.asarray(masks, dtype=bool)
    shape = tuple(masks.shape[1:]) if shape is None else shape
    keep = masks.reshape(masks.shape[0], -1).sum(axis=1) > min_size
    masks, scores = masks[keep], np.asarray(scores)[keep]
    if masks.shape[0] == 0:
        return np.zeros(shape, dtype=np.uint32)
    masks = masks[mask_nms(masks, scores, nms_threshold)]
    # paint largest first, never over an earlier mask
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    painted = np.zeros(shape, dtype=np.uint32)
    for new_id, index in enumerate(np.argsort(-areas, kind="stable"), start=1):
        painted[masks[index] & (painted == 0)] = new_id
    return _split_and_filter(painted, int(min_size))


def _split_and_filter(painted: np.ndarray, min_size: int) -> np.ndarray:
    """Connected pieces (4-connected, per id) numbered 1..N, pieces under ``min_size`` removed."""
    out = np.zeros(painted.shape, dtype=np.uint32)
    next_id = 1
    for value, box in enumerate(ndimage.find_objects(painted), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(painted[box] == value, structure=_FOUR)
        for piece in range(1, count + 1):
            where = pieces == piece
            if where.sum() < min_size:
                continue
            out[box][where] = next_id
            next_id += 1
    return out
