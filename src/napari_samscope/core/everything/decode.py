"""Segment-everything's per-batch work: decoding a batch of grid points, then filtering
its candidates into :class:`~.mask_records.MaskRecord` objects.

Used by :class:`~.generator.MaskGenerator` (see there for the decisions, which are the
official generator's). :func:`decode_points` runs the mask decoder in two stages through
the predictor's :class:`~napari_samscope.core.predict.fast_decode.DecoderRunner`
(``transform``, then ``upscale_masks`` only for the prompts with a candidate that passes
the IoU filter), so segment-everything takes the decoder's inference fast paths: with one
image and no mask prompt, the first transformer block's image side is projected once per
image (or crop) and reused for every grid point (the runner keeps it while the image is
the same), the final attention runs for the output tokens only, and on the CPU the masks
are upscaled in bands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from napari_samscope.core.everything import mask_ops as mo
from napari_samscope.core.everything.records import MaskRecord
from napari_samscope.core.everything.windowed_upsampler import WindowedUpsampler

__all__ = ["EDGE_TOLERANCE", "decode_points", "keep_masks"]

#: pixels: masks this close to an inner crop edge are dropped
EDGE_TOLERANCE = 20.0
#: prompts whose masks are upscaled together off the CPU (~0.2 GB for 1024-input models);
#: the CPU upscales one prompt at a time, in bands (``DecoderRunner.upscale_masks``)
_MASK_CHUNK = 16


@torch.no_grad()
def decode_points(
    predictor: Any, model_points: np.ndarray, multimask: bool
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Decode one foreground point per prompt on the predictor's current image.

    Args:
        predictor: a ``Predictor`` with an image set, or a stand-in with its ``device``,
            ``get_embedding`` and ``decode`` (and ``decoder_runner`` None or absent).
        model_points: ``(B, 2)`` ``(x, y)`` points in the model's input frame.
        multimask: three candidates per point (else the single-mask output).

    Returns:
        ``(iou, lowres)``: the predicted IoU ``(B, K)`` float32 of every candidate, and a
        function that returns the float32 low-resolution logits ``(n, K, L, L)`` of the
        prompts it is given (``(n,)`` int64 indices). Through the predictor's
        ``decoder_runner`` (when its decoder has the two stages) the mask stage only runs
        for those prompts, and the numbers are those of ``Predictor.decode`` (up to float
        rounding); otherwise the predictor's ``decode`` is used as it is.
    """
    from napari_samscope.core.device import autocast

    device = predictor.device
    coords = torch.as_tensor(model_points, dtype=torch.float32, device=device)[:, None, :]
    labels = torch.ones(coords.shape[:2], dtype=torch.int, device=device)
    runner = getattr(predictor, "decoder_runner", None)
    if runner is None or not runner.supports_stages:
        low, iou = predictor.decode(coords, labels, None, None, multimask_output=multimask)
        return iou, lambda index: low[index]
    features = predictor.get_embedding().features
    pick = slice(1, None) if multimask else slice(0, 1)
    dtype = runner.dtype
    with runner.lock, autocast(device, dtype):
        sparse, dense = runner.model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        # One image and no mask prompt: the runner reuses its prepared image (the first
        # block's projections of the image tokens) for every step and batch of this image.
        # The steps are the runner's own (a few prompts at a time on the CPU), so their
        # image tokens are never concatenated.
        pe = runner.dense_pe()
        step = runner.transform_step(features, sparse)
        steps = [
            runner.transform(features, pe, sparse[s : s + step], dense[s : s + step])
            for s in range(0, sparse.shape[0], step)
        ]
    iou = torch.cat([part[0] for part in steps])[:, pick].float()
    height, width = steps[0][3]
    on_cpu = features.device.type == "cpu"

    @torch.no_grad()
    def lowres(index: torch.Tensor) -> torch.Tensor:
        groups = _mask_groups(steps, step, index, per_prompt=on_cpu)
        parts = []
        for tokens, keys, rows in groups:
            with runner.lock, autocast(device, dtype):
                masks = runner.upscale_masks(keys[rows], tokens[rows], height, width)
            parts.append(masks[:, pick].float())
        if not parts:
            return iou.new_zeros((0, iou.shape[1], 4 * height, 4 * width))
        return torch.cat(parts)

    return iou, lowres


def _mask_groups(
    steps: list[tuple[torch.Tensor, ...]], step: int, index: torch.Tensor, *, per_prompt: bool
) -> list[tuple[torch.Tensor, torch.Tensor, Any]]:
    """``(mask tokens, image tokens, rows)`` to upscale for the prompts ``index`` of the
    ``transform`` outputs ``steps`` (``step`` prompts each). ``per_prompt`` (the CPU, which
    upscales one prompt at a time in bands): one view per prompt, no gathered copy of its
    image tokens. Otherwise (one step: no step limit off the CPU) ``_MASK_CHUNK`` prompts
    at a time, indexed on the device (no host synchronisation)."""
    if per_prompt:
        return [(*steps[i // step][1:3], slice(i % step, i % step + 1)) for i in index.tolist()]
    if len(steps) == 1:
        tokens, keys = steps[0][1:3]
    else:  # not reached by decode_points; correct anyway
        tokens, keys = (torch.cat([part[j] for part in steps]) for j in (1, 2))
    return [(tokens, keys, index[s : s + _MASK_CHUNK]) for s in range(0, len(index), _MASK_CHUNK)]


@torch.no_grad()
def keep_masks(
    params: Mapping[str, Any],
    mask_threshold: float,
    iou: torch.Tensor,
    lowres: Callable[[torch.Tensor], torch.Tensor],
    points: np.ndarray,
    upsampler: WindowedUpsampler,
    crop: list[int],
    fields: dict[str, Any],
) -> list[MaskRecord]:
    """Filter one batch of candidates (the official order of filters) into records.

    Args:
        params: the generator's parameters (``pred_iou_thresh``, ``stability_score_thresh``,
            ``stability_score_offset``).
        mask_threshold: the model's logit threshold of a mask pixel.
        iou, lowres: from :func:`decode_points` for ``B`` prompts.
        points: ``(B, 2)`` ``(x, y)`` grid points in the crop's frame (original pixels).
        upsampler: the crop's :class:`WindowedUpsampler`.
        crop: ``[x0, y0, x1, y1]`` of the crop in the image.
        fields: ``crop_box`` (XYWH) and ``image_shape`` ``(H, W)`` of the records.

    Returns:
        The kept candidates' records, in the original image's frame.
    """
    threshold = float(mask_threshold)
    offset = float(params["stability_score_offset"])
    k = iou.shape[1]
    iou = iou.flatten()
    keep = torch.arange(iou.shape[0], device=iou.device)
    if float(params["pred_iou_thresh"]) > 0.0:
        keep = (iou > float(params["pred_iou_thresh"])).nonzero()[:, 0]
    if keep.numel() == 0:
        return []
    prompts, position = torch.unique(keep // k, return_inverse=True)
    low = lowres(prompts)[position, keep % k]  # (n, L, L), the kept candidates only
    iou = iou[keep]
    point_index = (keep // k).cpu().numpy()
    # Outside the low-res box of logits > (threshold - offset) nothing can pass any
    # threshold at full resolution either (bilinear weights are convex).
    above = low > threshold - offset
    rows_any, cols_any = above.any(dim=2).cpu().numpy(), above.any(dim=1).cpu().numpy()
    iou_host = iou.cpu().numpy()
    stab_thresh = np.float32(params["stability_score_thresh"])
    image_box = [0, 0, fields["image_shape"][1], fields["image_shape"][0]]
    out: list[MaskRecord] = []
    for j in range(low.shape[0]):
        rows, cols = np.flatnonzero(rows_any[j]), np.flatnonzero(cols_any[j])
        if rows.size:
            wy, wx, logits = upsampler.window(low[j], (rows[0], rows[-1]), (cols[0], cols[-1]))
        else:
            wy, wx, logits = 0, 0, low.new_zeros((0, 0))
        values = logits.numpy() if logits.device.type == "cpu" else logits  # no copy on CPU
        high_count = int(_count(values > threshold + offset))
        low_count = int(_count(values > threshold - offset))
        with np.errstate(divide="ignore", invalid="ignore"):
            stability = np.float32(high_count) / np.float32(low_count)
        if stab_thresh > 0 and not stability >= stab_thresh:
            continue
        mask = values > threshold
        mask = mask if isinstance(mask, np.ndarray) else mask.cpu().numpy()
        record = MaskRecord.from_mask(
            mask,
            crop[1] + wy,
            crop[0] + wx,
            predicted_iou=float(iou_host[j]),
            stability_score=float(stability),
            point_coords=tuple(float(v) for v in mo.uncrop_points(points[point_index[j]], crop)),
            **fields,
        )
        if (
            crop != image_box
            and mo.is_box_near_crop_edge(
                np.array([record.box_xyxy]), crop, image_box, EDGE_TOLERANCE
            )[0]
        ):
            continue
        out.append(record)
    return out


def _count(flags: np.ndarray | torch.Tensor) -> int:
    """Number of True values (numpy on the host, torch on a device)."""
    return np.count_nonzero(flags) if isinstance(flags, np.ndarray) else torch.count_nonzero(flags)
