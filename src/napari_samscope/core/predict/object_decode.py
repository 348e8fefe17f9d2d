"""Validated prompts of ``N`` objects -> one :class:`Prediction` (the numpy layer of
:meth:`~napari_samscope.core.predict.predictor.Predictor.predict`).

Prompts in pixels of the original image are mapped into the embedding's input frame
(``original_size`` -> ``input_size``, per axis, whatever the scale the image was placed
at), decoded a bounded number of objects at a time, and the logits are upsampled back
to the original size by the predictor's
:class:`~napari_samscope.core.predict.transforms.MaskUpsampler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from napari_samscope.core.predict.embedding import ImageEmbedding
from napari_samscope.core.predict.flips import decode_flipped
from napari_samscope.core.predict.label_image import PackedMask
from napari_samscope.core.predict.point_refine import (
    REFINE_PASSES,
    REFINE_PASSES_ZOOMED,
    refined_prompts,
    refinement_boxes,
    wants_refinement,
)
from napari_samscope.core.predict.prompts import Prompts
from napari_samscope.core.predict.results import Prediction
from napari_samscope.core.predict.transforms import MaskUpsampler, apply_boxes, apply_coords
from napari_samscope.core.predict.zoom import ZoomSource, blend_scales, resample_logits

__all__ = ["OBJECTS_PER_DECODE", "decode_objects", "draft_is_cheaper"]

#: Objects decoded together (the decoder's intermediates grow with them).
OBJECTS_PER_DECODE = 64


def draft_is_cheaper(predictor: Any, emb: ImageEmbedding) -> bool:
    """Whether a draft of a prompt on ``emb`` (``decode_objects(..., draft=True)``) costs
    less than its full decoding: ``emb`` holds more than one orientation, or the
    predictor refines points or zooms. Otherwise the draft would be the same computation."""
    return (len(emb.all_features) > 1 or bool(getattr(predictor, "refine_points", False))
            or getattr(predictor, "zoom", 1.0) > 1)


@torch.no_grad()
def decode_objects(
    predictor: Any, emb: ImageEmbedding, prompts: Prompts, multimask_output: bool,
    draft: bool = False,
) -> Prediction:
    """Decode ``prompts`` on ``emb`` (the current image) with ``predictor`` (its ``decode``,
    which averages the orientations ``emb`` holds, ``device``, ``mask_upsampler``,
    ``refine_points``, ``zoom_source`` and ``model.mask_threshold``). One object: its
    candidates; several: the best-scored candidate each when ``multimask_output``.
    Point-only prompts get more passes (:data:`REFINE_PASSES`, or
    :data:`REFINE_PASSES_ZOOMED` when zooming), each with the box of the mask before,
    when the predictor refines points
    (:mod:`~napari_samscope.core.predict.point_refine`); box prompts, and every pass of
    refined points (the first on the crop that holds the points), are decoded on
    magnified crops as well when the predictor zooms
    (:mod:`~napari_samscope.core.predict.zoom`).

    ``draft``: one decoder pass on the image as it is (its first orientation), without
    point refinement or zoom - the quick first look a live preview shows while the full
    result is computed (:func:`draft_is_cheaper` says when it is quicker)."""
    threshold = predictor.model.mask_threshold
    if draft:
        low, iou = _decode(predictor, emb, prompts, multimask_output, decode=partial(
            decode_flipped, predictor.decoder_runner, emb, side=predictor.img_size, orientations=1))
        return Prediction.from_logits(low, iou, predictor.mask_upsampler, threshold)
    zoom = _zoom_for(predictor, emb, prompts, multimask_output)
    if zoom is not None and prompts.boxes is not None:
        return _zoomed(predictor, emb, prompts, zoom, multimask_output)
    refine = getattr(predictor, "refine_points", False) and wants_refinement(prompts, multimask_output)
    if zoom is not None and refine:  # a click's first pass too, on the crop that holds its points
        result = _zoomed(predictor, emb, prompts, zoom, False, around=_points_box(prompts))
        low, iou = torch.from_numpy(result.logits), torch.from_numpy(result.scores)
    else:
        low, iou = _decode(predictor, emb, prompts, multimask_output)
        result = Prediction.from_logits(low, iou, predictor.mask_upsampler, threshold)
    if not refine:
        return result
    for _ in range(REFINE_PASSES if zoom is None else REFINE_PASSES_ZOOMED):
        boxes, ok = refinement_boxes(result.boxes(), emb.original_size, emb.input_size)
        if not ok.any():
            break
        again = refined_prompts(prompts, boxes, ok)
        if zoom is not None:
            result = _zoomed(predictor, emb, again, zoom, False, first=(low, iou, ok, result))
            low, iou = torch.from_numpy(result.logits), torch.from_numpy(result.scores)
            continue
        low2, iou2 = _decode(predictor, emb, again, False)
        keep = torch.as_tensor(ok, device=low.device)
        low, iou = low.clone(), iou.clone()  # the earlier result's arrays stay as they were
        low[keep], iou[keep] = low2, iou2
        result = Prediction.from_logits(low, iou, predictor.mask_upsampler, threshold)
    return result


def _zoom_for(
    predictor: Any, emb: ImageEmbedding, prompts: Prompts, multimask_output: bool
) -> ZoomSource | None:
    """The zoom source when these prompts are zoomed: a zooming predictor, one mask per
    object (several objects, or ``multimask_output`` off)."""
    source = getattr(predictor, "zoom_source", None)
    if source is None:
        return None
    if multimask_output and prompts.count == 1:
        return None
    return source(emb)


def _zoomed(
    predictor: Any, emb: ImageEmbedding, prompts: Prompts, zoom: ZoomSource,
    multimask_output: bool, first: tuple[torch.Tensor, torch.Tensor, Any, Prediction] | None = None,
    around: np.ndarray | None = None,
) -> Prediction:
    """Decode prompts on the whole image and on the crops of ``zoom`` and average the two
    (:func:`~napari_samscope.core.predict.zoom.blend_scales`; prompts that fit no crop:
    the whole image alone); one mask each (the best-scored candidate at each scale with
    ``multimask_output``, given for several objects only). Each object's crop is the one
    that holds its row of ``around`` (XYXY boxes, default: the prompts' boxes).
    ``first``: the low-resolution logits, predicted IoU, replaced rows and prediction of
    an earlier pass, whose other rows are kept as they were."""
    around = prompts.boxes if around is None else around
    assert around is not None
    threshold = float(predictor.model.mask_threshold)
    low, iou, rows, earlier = first if first is not None else (None, None, np.ones(prompts.count, bool), None)
    targets = np.flatnonzero(rows)
    if low is None:
        low = torch.empty((prompts.count, predictor.lowres_size, predictor.lowres_size))
        iou = torch.empty(prompts.count)
    low, iou = low.clone().cpu(), iou.clone().cpu()
    # per object of the result: its crop's window, upsampler and both scales' logits
    crop_of: list[Any] = [None] * len(low)
    groups: dict[Any, list[int]] = {}
    for k, box in enumerate(around):
        groups.setdefault(zoom.grid.window_for(box), []).append(k)
    # the whole image's decoding of every object, in one pass
    whole_low, whole_iou = _best(*_decode(predictor, emb, prompts, multimask_output), prompts.count)
    for window, members in groups.items():
        part, into = _rows(prompts, members), targets[members]
        low_whole, iou_whole = whole_low[members], whole_iou[members]
        if window is None:
            low[into], iou[into] = low_whole.cpu(), iou_whole.cpu()
            continue
        crop = zoom.embedding(window, predictor)
        shifted = _shifted(part, window)
        if shifted.masks is not None:  # a mask prompt, moved into the crop's frame
            masks = torch.as_tensor(shifted.masks[:, 0], dtype=torch.float32, device=predictor.device)
            shifted = replace(shifted, masks=resample_logits(
                masks, (emb, (0, 0)), (crop, window[::2]), predictor.img_size)[:, None].cpu().numpy())
        low_crop, iou_crop = _best(*_decode(predictor, crop, shifted, multimask_output, decode=partial(
            decode_flipped, predictor.decoder_runner, crop, side=predictor.img_size)), len(members))
        upsampler = MaskUpsampler(crop.original_size, crop.input_size, predictor.img_size,
                                  predictor.lowres_size)
        in_frame = resample_logits(low_crop, (crop, window[::2]), (emb, (0, 0)), predictor.img_size)
        low[into] = blend_scales(low_whole, in_frame).cpu()
        iou[into] = blend_scales(iou_whole, iou_crop).cpu()
        for j, k in enumerate(into):
            crop_of[k] = (window, upsampler, low_whole[j], low_crop[j])
    packed = []
    for k in range(len(low)):
        if earlier is not None and not rows[k]:  # not redone: as the earlier pass made it
            packed.append(PackedMask.from_mask(earlier.mask(k), 0, 0, emb.original_size))
            continue
        if crop_of[k] is None:
            y0, x0, mask = predictor.mask_upsampler.mask_window(low[k].to(predictor.device), threshold)
        else:  # the weighted mean of both scales' logits at image pixels, inside the crop
            window, upsampler, whole, crop_low = crop_of[k]
            mean = blend_scales(predictor.mask_upsampler.logits_window(whole, window), upsampler.logits(crop_low))
            y0, x0, mask = window[0], window[2], mean > threshold
        packed.append(PackedMask.from_mask(mask.cpu().numpy(), y0, x0, emb.original_size))
    return Prediction.from_packed(packed, iou.numpy(), low.numpy())


def _points_box(prompts: Prompts) -> np.ndarray:
    """``(N, 4)`` XYXY box around each object's points (image pixels), which chooses the
    crop of a click's first pass; one point's box is the point itself."""
    points = np.asarray(prompts.points, dtype=np.float64)
    return np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)


def _best(low: torch.Tensor, iou: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best-scored candidate of each of ``n`` objects (a group of one object decoded
    with multimask output has its candidates)."""
    if low.shape[0] == n:
        return low, iou
    pick = iou.reshape(n, -1).argmax(dim=1)
    rows = torch.arange(n, device=low.device)
    return low.reshape(n, -1, *low.shape[-2:])[rows, pick], iou.reshape(n, -1)[rows, pick]


def _rows(prompts: Prompts, rows: list[int]) -> Prompts:
    def take(array: Any) -> Any:
        return None if array is None else array[rows]

    return replace(prompts, points=take(prompts.points), labels=take(prompts.labels),
                   boxes=take(prompts.boxes), masks=take(prompts.masks), count=len(rows))


def _shifted(prompts: Prompts, window: tuple[int, int, int, int]) -> Prompts:
    """``prompts`` in pixels of the crop at ``window`` ``(y0, y1, x0, x1)``."""
    y0, _, x0, _ = window
    points = None if prompts.points is None else prompts.points - np.array([x0, y0])
    boxes = None if prompts.boxes is None else prompts.boxes - np.array([x0, y0, x0, y0])
    return replace(prompts, points=points, boxes=boxes)


def _decode(
    predictor: Any, emb: ImageEmbedding, prompts: Prompts, multimask_output: bool,
    decode: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N*K, L, L)`` low-resolution logits and ``(N*K,)`` predicted IoU of ``prompts``
    (``K`` candidates of one object, else 1 per object), decoded by ``decode`` (default
    ``predictor.decode``, on the current image) on ``emb``'s frame."""
    decode = predictor.decode if decode is None else decode
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
        low_part, iou_part = decode(*part, multimask_output)
        if prompts.count > 1 and low_part.shape[1] > 1:  # several objects: the best each
            best = iou_part.argmax(dim=1)
            index = torch.arange(low_part.shape[0], device=low_part.device)
            low_part, iou_part = low_part[index, best][:, None], iou_part[index, best][:, None]
        if low is None or iou is None:
            low = low_part.new_empty((prompts.count, *low_part.shape[1:]))
            iou = iou_part.new_empty((prompts.count, *iou_part.shape[1:]))
        low[rows], iou[rows] = low_part, iou_part
    return low.reshape(-1, *low.shape[-2:]), iou.reshape(-1)  # N x K -> N*K
