"""Validated prompts of ``N`` objects -> one :class:`Prediction` (the numpy layer of
:meth:`~napari_samscope.core.predict.predictor.Predictor.predict`).

Prompts in pixels of the original image are mapped into the embedding's input frame
(``original_size`` -> ``input_size``, per axis, whatever the scale the image was placed
at), decoded a bounded number of objects at a time, and the logits are upsampled back
to the original size by the predictor's
:class:`~napari_samscope.core.predict.transforms.MaskUpsampler`.
"""

from __future__ import annotations

from typing import Any

import torch

from napari_samscope.core.predict.embedding import ImageEmbedding
from napari_samscope.core.predict.point_refine import (
    refined_prompts,
    refinement_boxes,
    wants_refinement,
)
from napari_samscope.core.predict.prompts import Prompts
from napari_samscope.core.predict.results import Prediction
from napari_samscope.core.predict.transforms import apply_boxes, apply_coords

__all__ = ["OBJECTS_PER_DECODE", "decode_objects"]

#: Objects decoded together (the decoder's intermediates grow with them).
OBJECTS_PER_DECODE = 64


@torch.no_grad()
def decode_objects(
    predictor: Any, emb: ImageEmbedding, prompts: Prompts, multimask_output: bool
) -> Prediction:
    """Decode ``prompts`` on ``emb`` (the current image) with ``predictor`` (its ``decode``,
    which averages the orientations ``emb`` holds, ``device``, ``mask_upsampler``,
    ``refine_points`` and ``model.mask_threshold``). One object: its candidates; several:
    the best-scored candidate each when ``multimask_output``. Point-only prompts get a
    second pass with their first mask's box when the predictor refines points
    (:mod:`~napari_samscope.core.predict.point_refine`)."""
    low, iou = _decode(predictor, emb, prompts, multimask_output)
    result = Prediction.from_logits(
        low, iou, predictor.mask_upsampler, predictor.model.mask_threshold
    )
    refine = getattr(predictor, "refine_points", False)
    if not (refine and wants_refinement(prompts, multimask_output)):
        return result
    boxes, ok = refinement_boxes(result.boxes(), emb.original_size, emb.input_size)
    if not ok.any():
        return result
    low2, iou2 = _decode(predictor, emb, refined_prompts(prompts, boxes, ok), False)
    keep = torch.as_tensor(ok, device=low.device)
    low[keep], iou[keep] = low2, iou2
    return Prediction.from_logits(
        low, iou, predictor.mask_upsampler, predictor.model.mask_threshold
    )


def _decode(
    predictor: Any, emb: ImageEmbedding, prompts: Prompts, multimask_output: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N*K, L, L)`` low-resolution logits and ``(N*K,)`` predicted IoU of ``prompts``
    (``K`` candidates of one object, else 1 per object)."""
    device = predictor.device

    def tensor(array: Any) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=device)

    coords = labels_t = boxes_t = mask_t = None
    if prompts.points is not None:
        coords = tensor(apply_coords(prompts.points, emb.original_size, emb.input_size))
        labels_t = torch.as_tensor(prompts.labels, dtype=torch.int, device=device)
    if prompts.boxes is not None:
        boxes_t = tensor(apply_boxes(prompts.boxes, emb.original_size, emb.input_size))
    if prompts.masks is not None:
        mask_t = tensor(prompts.masks)
    low = iou = None
    for start in range(0, prompts.count, OBJECTS_PER_DECODE):  # bounds the decoder's memory
        rows = slice(start, start + OBJECTS_PER_DECODE)
        part = (None if t is None else t[rows] for t in (coords, labels_t, boxes_t, mask_t))
        low_part, iou_part = predictor.decode(*part, multimask_output)
        if prompts.count > 1 and low_part.shape[1] > 1:  # several objects: the best each
            best = iou_part.argmax(dim=1)
            index = torch.arange(low_part.shape[0], device=low_part.device)
            low_part, iou_part = low_part[index, best][:, None], iou_part[index, best][:, None]
        if low is None or iou is None:
            low = low_part.new_empty((prompts.count, *low_part.shape[1:]))
            iou = iou_part.new_empty((prompts.count, *iou_part.shape[1:]))
        low[rows], iou[rows] = low_part, iou_part
    return low.reshape(-1, *low.shape[-2:]), iou.reshape(-1)  # N x K -> N*K
