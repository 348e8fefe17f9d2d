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
from napari_samscope.core.everything.params import EVERYTHING_DEFAULTS, EverythingParams
from napari_samscope.core.everything.records import EverythingResult, MaskRecord
from napari_samscope.core.everything.windowed_upsampler import WindowedUpsampler
from napari_samscope.core.predict.resolve import as_predictor
from napari_samscope.core.progress import Progress

__all__ = [
    "EVERYTHING_DEFAULTS",
    "EverythingParams",
    "EverythingResult",
    "MaskGenerator",
    "MaskRecord",
    "model_everything_defaults",
]


def model_everything_defaults(model: Any) -> dict[str, Any]:
    """The recommended segment-everything parameters of ``model``'s registry entry.

    ``model`` is anything with a ``spec`` attribute holding a registry ``ModelSpec``
    (a ``SAM`` loaded by name, a ``LoadedModel``) or a ``ModelSpec`` itself. Returns
    ``{}`` for official models, for models given by path, for bare ``Sam`` modules and
    for anything else (so they keep the official defaults).
    """
    from napari_samscope.core.weights.spec import ModelSpec

    spec = model if isinstance(model, ModelSpec) else getattr(model, "spec", None)
    return spec.everything_params() if isinstance(spec, ModelSpec) else {}


class MaskGenerator:
    """Segment everything in an image with a SAM-family model.

    Args:
        model: a ``SAM``, a ``Sam`` module or a ``Predictor``. A predictor's current
            image is restored after each run.
        params: an :class:`~napari_samscope.core.everything.params.EverythingParams`
            used as it is (keyword parameters, if any, replace some of its values;
            ``model_defaults`` do not apply to it).
        point_grids: explicit normalised ``(n, 2)`` ``(x, y)`` grids, one per crop layer,
            instead of ``points_per_side``.
        model_defaults: the model's recommended values, used for the parameters not
            given here (then the official defaults). None (default): taken from the
            registry entry of ``model`` when it is a ``SAM`` loaded by name (its
            ``spec.everything_params()``; see :func:`model_everything_defaults`); official
            models have none, so they keep the official defaults exactly. ``{}`` forces
            the official defaults.
        **kwargs: parameters by name (the fields of ``EverythingParams``; Ultralytics'
            aliases ``points_stride``, ``conf``, ``points_batch_size`` and
            ``crop_downscale_factor`` too).

    Attributes:
        config: the :class:`EverythingParams` in use (given > model's recommended > official).
        params: the same as a dict.
        model_defaults: the recommended values that applied (a dict, maybe empty).
    """

    def __init__(
        self,
        model: Any,
        *,
        params: EverythingParams | None = None,
        point_grids: list[np.ndarray] | None = None,
        model_defaults: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        if params is not None:
            if not isinstance(params, EverythingParams):
                raise TypeError(
                    f"params must be an EverythingParams, not {type(params).__name__}; pass "
                    "single parameters as keyword arguments."
                )
            self.config = params.replace(**kwargs) if kwargs else params
            self.model_defaults: dict[str, Any] = {}
        else:
            if model_defaults is None:
                model_defaults = model_everything_defaults(model)
            self.config = EverythingParams.with_defaults(kwargs, model_defaults)
            self.model_defaults = dict(model_defaults)
        p = self.config
        if point_grids is not None:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) != p.crop_n_layers + 1 or any(
                g.ndim != 2 or g.shape[1] != 2 for g in grids
            ):
                raise ValueError(
                    "point_grids needs one (n, 2) grid of normalised (x, y) per crop layer "
                    f"({p.crop_n_layers + 1} grids)."
                )
            self.point_grids = grids
        elif p.points_per_side is None:
            raise ValueError("points_per_side=None needs explicit point_grids.")
        else:
            self.point_grids = mo.build_layer_point_grids(
                p.points_per_side, p.crop_n_layers, p.crop_n_points_downscale_factor
            )
        self.predictor = as_predictor(model)

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter's value in use, as a dict (``config.to_dict()``)."""
        return self.config.to_dict()

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
            size, self.config.crop_n_layers, self.config.crop_overlap_ratio
        )
        batch = self.config.points_per_batch
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
        area = float(self.config.min_mask_region_area)
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
            (embedding,) = self.predictor.encode([np.ascontiguousarray(rgb[y0:y1, x0:x1])], flips=1)
        self.predictor.set_embedding(embedding)
        embedding = self.predictor.get_embedding()
        upsampler = WindowedUpsampler(
            crop_size, embedding.input_size, self.predictor.img_size, self.predictor.lowres_size
        )
        points = self.point_grids[layer] * np.array([crop_size[1], crop_size[0]], dtype=np.float64)
        model_points = apply_coords(points, crop_size, embedding.input_size)
        fields = {"crop_box": (x0, y0, x1 - x0, y1 - y0), "image_shape": rgb.shape[:2]}
        # the official order of filters, one batch of candidates at a time (see keep_masks)
        params, threshold = self.params, float(getattr(self.predictor.model, "mask_threshold", 0.0))
        multimask = self.config.multimask_output
        records: list[MaskRecord] = []
        for part in mo.batch_slices(len(points), self.config.points_per_batch):
            iou, lowres = decode_points(self.predictor, model_points[part], multimask)
            records.extend(keep_masks(params, threshold, iou, lowres, points[part], upsampler, crop, fields))
            del iou, lowres
            yield
        if records:
            boxes = torch.tensor([r.box_xyxy for r in records], dtype=torch.float32)
            scores = torch.tensor([r.predicted_iou for r in records], dtype=torch.float32)
            keep = mo.nms(boxes, scores, self.config.box_nms_thresh)
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
        keep = mo.nms(boxes, 1.0 / crop_area, self.config.crop_nms_thresh)
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
        threshold = max(self.config.box_nms_thresh, self.config.crop_nms_thresh)
        keep = mo.nms(boxes, torch.tensor(unchanged), threshold)
        return [cleaned[i] for i in keep.tolist()]


_RECORD_FIELDS = ("predicted_iou", "stability_score", "point_coords", "crop_box", "image_shape")
