"""Segment everything: prompt SAM with a grid of points and keep the good, distinct masks.

:class:`MaskGenerator` is our equivalent of Meta's ``SamAutomaticMaskGenerator``: the
same parameters, defaults and decisions (IoU filter ``>``, stability filter ``>=``,
crop-edge filter, box NMS inside each crop, NMS between crops preferring smaller crops,
optional removal of small holes and islands followed by NMS). What differs is how the
work is done:

- **Memory is bounded.** Candidates are filtered by predicted IoU first (the same
  decision at any resolution). Survivors are upsampled one at a time, and only on the
  window of the image where the mask can be (:class:`~.windowed_upsampler.WindowedUpsampler`:
  exact, since outside that window every logit is below every threshold). A kept mask
  is stored as the bit-packed crop of its bounding box. No full-resolution float tensor
  of a batch ever exists, so a 4096 x 4096 image needs little more than its own RGB copy.
- **Crops are re-encoded from the original image** (8-bit RGB after normalisation),
  never upsampled from the model input.
- The decoder call is :func:`~.decode.decode_points` (through the predictor's decoder
  runner), the one place to change for other dtypes or devices. It runs the mask decoder in two stages so that the mask upscaling only
  runs for prompts with a candidate that passes the IoU filter, and it takes the
  decoder's inference fast paths: the first transformer block's image side is prepared
  once per image (or crop) and reused for every batch of grid points.

Coordinates follow SAM: points ``(x, y)``; ``bbox`` and ``crop_box`` are ``XYWH``;
boxes from masks are inclusive (``x1`` is the last column of the mask), as in the
official records, so ``bbox = (x0, y0, x1 - x0, y1 - y0)``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any

import numpy as np
import torch

from napari_samscope.core.everything import mask_ops as mo
from napari_samscope.core.everything.decode import decode_points, keep_masks
from napari_samscope.core.everything.records import EverythingResult, MaskRecord
from napari_samscope.core.everything.windowed_upsampler import WindowedUpsampler
from napari_samscope.core.predict.resolve import as_predictor
from napari_samscope.core.progress import Progress

__all__ = [
    "EVERYTHING_DEFAULTS",
    "EverythingResult",
    "MaskGenerator",
    "MaskRecord",
    "model_everything_defaults",
]

#: Parameters of :class:`MaskGenerator` and their defaults (those of the official generator).
#: A model's registry entry may recommend other values (``ModelSpec.everything_defaults``),
#: which then apply to the parameters the user does not set.
EVERYTHING_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_nms_thresh": 0.7,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "min_mask_region_area": 0,
    "multimask_output": True,
}
#: Ultralytics' names for some parameters.
ALIASES = {
    "points_stride": "points_per_side",
    "conf": "pred_iou_thresh",
    "points_batch_size": "points_per_batch",
    "crop_downscale_factor": "crop_n_points_downscale_factor",
}


def model_everything_defaults(model: Any) -> dict[str, Any]:
    """The recommended segment-everything parameters of ``model``'s registry entry.

    ``model`` is anything with a ``spec`` attribute holding a registry ``ModelSpec``
    (a ``SAM`` loaded by name, a ``LoadedModel``) or a ``ModelSpec`` itself. Returns
    ``{}`` for official models, for models given by path, for bare ``Sam`` modules and
    for anything else (so they keep the official defaults).
    """
    from napari_samscope.core.weights.registry import ModelSpec

    spec = model if isinstance(model, ModelSpec) else getattr(model, "spec", None)
    return spec.everything_params() if isinstance(spec, ModelSpec) else {}


class MaskGenerator:
    """Segment everything in an image with a SAM-family model.

    Args:
        model: a ``SAM``, a ``Sam`` module or a ``Predictor``. A predictor's current
            image is restored after each run.
        points_per_side: grid points per image side (Ultralytics: ``points_stride``).
        points_per_batch: prompts decoded together (Ultralytics: ``points_batch_size``).
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` this (alias ``conf``).
        stability_score_thresh: keep masks whose stability score is ``>=`` this.
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which duplicates inside a crop are dropped.
        crop_n_layers: extra crop layers; layer ``i`` has ``(2**i)**2`` crops.
        crop_nms_thresh: box IoU above which duplicates between crops are dropped.
        crop_overlap_ratio: overlap of layer-1 crops, as a fraction of the short side.
        crop_n_points_downscale_factor: layer ``i`` uses ``points_per_side / f**i`` points.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this.
        multimask_output: 3 candidates per point (else 1).
        point_grids: explicit normalised ``(n, 2)`` ``(x, y)`` grids, one per crop layer,
            instead of ``points_per_side``.
        model_defaults: the model's recommended values, used for the parameters not
            given here (then the official defaults). None (default): taken from the
            registry entry of ``model`` when it is a ``SAM`` loaded by name (its
            ``spec.everything_params()``; see :func:`model_everything_defaults`); official
            models have none, so they keep the official defaults exactly. ``{}`` forces
            the official defaults.

    Attributes:
        params: every parameter's value in use (given > model's recommended > official).
        model_defaults: the recommended values that applied (a dict, maybe empty).
    """

    def __init__(
        self,
        model: Any,
        *,
        point_grids: list[np.ndarray] | None = None,
        model_defaults: Mapping[str, Any] | None = None,
        **params: Any,
    ):
        if model_defaults is None:
            model_defaults = model_everything_defaults(model)
        model_defaults = dict(model_defaults)
        unknown = sorted(set(model_defaults) - set(EVERYTHING_DEFAULTS))
        if unknown:
            raise ValueError(
                f"The model's recommended segment-everything parameters {unknown} are not "
                f"parameters of the generator (valid ones: {sorted(EVERYTHING_DEFAULTS)}); "
                "fix the model's registry entry."
            )
        self.model_defaults = model_defaults
        for alias, name in ALIASES.items():
            if alias in params:
                if name in params:
                    raise TypeError(f"Give either {name!r} or its alias {alias!r}, not both.")
                params[name] = params.pop(alias)
        unknown = sorted(set(params) - set(EVERYTHING_DEFAULTS))
        if unknown:
            raise TypeError(
                f"Unknown segment-everything parameter(s) {unknown}; "
                f"valid ones are {sorted(EVERYTHING_DEFAULTS)} and aliases {sorted(ALIASES)}."
            )
        self.params = {**EVERYTHING_DEFAULTS, **model_defaults, **params}
        p = self.params
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_nms_thresh",
        ):
            if not 0.0 <= float(p[name]) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {p[name]!r}.")
        if not 0.0 <= float(p["crop_overlap_ratio"]) < 1.0:
            raise ValueError(
                f"crop_overlap_ratio must be in [0, 1), got {p['crop_overlap_ratio']!r}."
            )
        if float(p["stability_score_offset"]) < 0:
            raise ValueError("stability_score_offset must be >= 0.")
        if float(p["min_mask_region_area"]) < 0:
            raise ValueError("min_mask_region_area must be >= 0.")
        if int(p["points_per_batch"]) < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {p['points_per_batch']!r}.")
        if point_grids is not None:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) != int(p["crop_n_layers"]) + 1 or any(
                g.ndim != 2 or g.shape[1] != 2 for g in grids
            ):
                raise ValueError(
                    "point_grids needs one (n, 2) grid of normalised (x, y) per crop layer "
                    f"({int(p['crop_n_layers']) + 1} grids)."
                )
            self.point_grids = grids
        else:
            self.point_grids = mo.build_layer_point_grids(
                p["points_per_side"],
                int(p["crop_n_layers"]),
                int(p["crop_n_points_downscale_factor"]),
            )
        self.predictor = as_predictor(model)

    # ------------------------------------------------------------------ public

    def generate(
        self,
        image: np.ndarray,
        progress: Callable[[Progress], Any] | str | None = None,
        *,
        embedding: Any = None,
        **norm_kwargs: Any,
    ) -> EverythingResult:
        """Segment everything in ``image`` (see :meth:`generate_iter`); ``progress`` as in
        :func:`~napari_samscope.core.progress.run`."""
        from napari_samscope.core.progress import run

        return run(self.generate_iter(image, embedding=embedding, **norm_kwargs), progress=progress)

    def generate_iter(
        self, image: np.ndarray, *, embedding: Any = None, **norm_kwargs: Any
    ) -> Generator[Progress, None, EverythingResult]:
        """Segment everything, yielding :class:`Progress` between units of work.

        Args:
            image: a 2D microscope image accepted by
                :func:`~napari_samscope.core.predict.image.to_rgb_uint8` (8-bit RGB is used as is).
            embedding: optional precomputed ``ImageEmbedding`` of the whole image (made
                by this model from the same 8-bit RGB image, e.g. from a cache); it
                replaces the encoding of the whole-image crop.
            **norm_kwargs: ``channel_axis``, ``channels``, ``normalization``, ``contrast_limits``.

        Returns (as the generator's value):
            An :class:`EverythingResult`. Closing the generator early returns nothing.
        """
        from napari_samscope.core.predict.image import to_rgb_uint8

        rgb = to_rgb_uint8(image, **norm_kwargs)
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        crops, layers = mo.generate_crop_boxes(
            size, int(self.params["crop_n_layers"]), float(self.params["crop_overlap_ratio"])
        )
        batch = int(self.params["points_per_batch"])
        n_batches = [len(list(mo.batch_slices(len(self.point_grids[k]), batch))) for k in layers]
        total, done = sum(n_batches) + len(crops), 0
        previous = self.predictor.get_embedding() if self.predictor.is_image_set else None
        records: list[MaskRecord] = []
        try:
            for crop, layer in zip(crops, layers):
                yield Progress("segment everything: encoding", done, total)
                whole = embedding if crop == [0, 0, size[1], size[0]] else None
                job = self._process_crop(rgb, crop, layer, whole)
                while True:
                    try:
                        next(job)
                    except StopIteration as stop:
                        records.extend(stop.value)
                        break
                    done += 1
                    yield Progress("segment everything: decoding", done, total)
                done += 1
        finally:
            if previous is not None:
                self.predictor.set_embedding(previous)
            else:
                self.predictor.reset_image()
        if len(crops) > 1:
            records = self._nms_between_crops(records)
        area = float(self.params["min_mask_region_area"])
        if area > 0 and records:
            yield Progress("segment everything: cleaning small regions", total, total)
            records = self._remove_small_regions(records, area)
        yield Progress("segment everything: done", total, total)
        return EverythingResult(records, size)

    # ------------------------------------------------------------------ one crop

    def _process_crop(
        self, rgb: np.ndarray, crop: list[int], layer: int, embedding: Any = None
    ) -> Generator[None, None, list[MaskRecord]]:
        """Masks of one crop, NMS-filtered, in the original frame; yields after each batch."""
        from napari_samscope.core.predict.transforms import apply_coords

        x0, y0, x1, y1 = crop
        crop_size = (y1 - y0, x1 - x0)
        if embedding is not None and tuple(embedding.original_size) != crop_size:
            raise ValueError(
                f"The embedding is of a {tuple(embedding.original_size)} image, but the image "
                f"to segment is {crop_size}; pass the embedding of this image or none."
            )
        if embedding is None:
            (embedding,) = self.predictor.encode([np.ascontiguousarray(rgb[y0:y1, x0:x1])])
        self.predictor.set_embedding(embedding)
        embedding = self.predictor.get_embedding()
        upsampler = WindowedUpsampler(
            crop_size, embedding.input_size, self.predictor.img_size, self.predictor.lowres_size
        )
        points = self.point_grids[layer] * np.array([crop_size[1], crop_size[0]], dtype=np.float64)
        model_points = apply_coords(points, crop_size, embedding.input_size)
        fields = {"crop_box": (x0, y0, x1 - x0, y1 - y0), "image_shape": rgb.shape[:2]}
        multimask = bool(self.params["multimask_output"])
        threshold = float(getattr(self.predictor.model, "mask_threshold", 0.0))
        records: list[MaskRecord] = []
        for part in mo.batch_slices(len(points), int(self.params["points_per_batch"])):
            iou, lowres = decode_points(self.predictor, model_points[part], multimask)
            records.extend(
                keep_masks(self.params, threshold, iou, lowres, points[part], upsampler, crop, fields)
            )
            del iou, lowres
            yield
        if records:
            boxes = torch.tensor([r.box_xyxy for r in records], dtype=torch.float32)
            scores = torch.tensor([r.predicted_iou for r in records], dtype=torch.float32)
            keep = mo.nms(boxes, scores, float(self.params["box_nms_thresh"]))
            records = [records[i] for i in keep.tolist()]
        return records

    # ------------------------------------------------------------------ all crops

    def _nms_between_crops(self, records: list[MaskRecord]) -> list[MaskRecord]:
        """Drop duplicates between crops, preferring masks from smaller crops."""
        if not records:
            return records
        boxes = torch.tensor([r.box_xyxy for r in records], dtype=torch.float32)
        crop_area = torch.tensor(
            [r.crop_box[2] * r.crop_box[3] for r in records], dtype=torch.float32
        )
        keep = mo.nms(boxes, 1.0 / crop_area, float(self.params["crop_nms_thresh"]))
        return [records[i] for i in keep.tolist()]

    def _remove_small_regions(self, records: list[MaskRecord], area: float) -> list[MaskRecord]:
        """Fill small holes, drop small islands, then NMS preferring unchanged masks."""
        cleaned, unchanged = [], []
        for record in records:
            x, y, _, _ = record.bbox
            mask, oy, ox, changed = mo.clean_mask_regions(
                record.crop_mask, y, x, record.image_shape, area
            )
            if changed:
                record = MaskRecord.from_mask(
                    mask, oy, ox, **{k: getattr(record, k) for k in _RECORD_FIELDS}
                )
            cleaned.append(record)
            unchanged.append(0.0 if changed else 1.0)
        boxes = torch.tensor([r.box_xyxy for r in cleaned], dtype=torch.float32)
        threshold = max(float(self.params["box_nms_thresh"]), float(self.params["crop_nms_thresh"]))
        keep = mo.nms(boxes, torch.tensor(unchanged), threshold)
        return [cleaned[i] for i in keep.tolist()]


_RECORD_FIELDS = ("predicted_iou", "stability_score", "point_coords", "crop_box", "image_shape")
