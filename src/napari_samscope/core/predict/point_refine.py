"""Point prompts refined by the box of their own mask (more decoder passes).

A point says *which* object is meant; a box also says *how far* it reaches, and a SAM
decoder draws tighter outlines from a box than from a point. With ``refine_points`` on,
a prompt made of points only (no box), asked for one mask per object, is decoded
``1 + REFINE_PASSES`` times (``1 + REFINE_PASSES_ZOOMED`` when the predictor zooms):

1. as given (points, and the mask prompt if one was passed);
2. again with the same points (and mask prompt) plus the tight box of the mask of the
   pass before: inclusive XYXY in pixels of the original image, grown by
   :data:`REFINE_MARGIN` model-input pixels on every side and clipped to the image;
   repeated when there is more than one such pass (a mask that reached past its box
   widens the next one).

The last result is returned. An object whose mask is empty, or one row or one column
thick, keeps that result (its box would not be a box). Prompts with a box, and
multimask requests (whose candidates are alternatives the user chooses between), are
decoded once, as before.

The default model declares it (``ModelSpec.refine_points``); official SAM and micro-sam
models do not, so their results stay the official computation. On held-out synthetic
nuclei and on a real nuclei image it raises one-point IoU by about 0.02, and a second box
pass with zoom by 0.0002 to 0.0033 more on the held-out synthetic sets (training/README.md,
"Point refinement"); it costs one more decoder pass per prompt per box pass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from napari_samscope.core.predict.prompts import Prompts

__all__ = [
    "REFINE_MARGIN",
    "REFINE_PASSES",
    "REFINE_PASSES_ZOOMED",
    "RefineSetting",
    "check_refine_points",
    "declared_refine_points",
    "refined_prompts",
    "refinement_boxes",
    "wants_refinement",
]

#: Model-input pixels added on every side of a first mask's box (2 image pixels for the
#: default model at its 2x magnification). Chosen on held-out synthetic sets (0, 1 and 2
#: image pixels compared), never on real images.
REFINE_MARGIN = 4.0

#: Passes with the box of the mask before, without zoom and with zoom
#: (:mod:`~napari_samscope.core.predict.zoom`). Chosen on the held-out synthetic sets
#: (seed 9000, plain and low-SNR; ``realistic_nuclei_style``), never on real images:
#: without zoom a second box pass was below one; with zoom it was above on every set
#: (+0.0011, +0.0002 and +0.0033 mean IoU).
REFINE_PASSES = 1
REFINE_PASSES_ZOOMED = 2


def check_refine_points(value: Any) -> bool:
    """``value`` as a bool; anything but True/False (numpy's included) is refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"refine_points must be True or False, not {value!r}.")


def declared_refine_points(model: Any, spec: Any = None) -> bool:
    """Whether a model refines point prompts by default: its own ``refine_points`` (a
    ``SAM``, when set), else its registry entry's (``spec.refine_points``, or the given
    ``spec``'s), else False."""
    for source in (model, getattr(model, "spec", None), spec):
        value = getattr(source, "refine_points", None)
        if value is not None:
            return check_refine_points(value)
    return False


class RefineSetting:
    """The :attr:`refine_points` setting of a predictor (a base of
    :class:`~napari_samscope.core.predict.predictor.Predictor`)."""

    _refine_points: bool

    def _init_refine(self, model: Any, refine_points: Any, spec: Any = None) -> None:
        self._refine_points = (
            declared_refine_points(model, spec)
            if refine_points is None
            else check_refine_points(refine_points)
        )

    @property
    def refine_points(self) -> bool:
        """Whether point-only prompts get more decoder passes with the box of their mask
        (:data:`REFINE_PASSES`, :data:`REFINE_PASSES_ZOOMED` when zooming; module
        docstring); settable, checked."""
        return self._refine_points

    @refine_points.setter
    def refine_points(self, value: Any) -> None:
        self._refine_points = check_refine_points(value)


def wants_refinement(prompts: Prompts, multimask_output: bool) -> bool:
    """Whether ``prompts`` are refined: points, no box, one mask per object."""
    return prompts.points is not None and prompts.boxes is None and not multimask_output


def refinement_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The boxes of the next pass from the boxes of the masks before.

    Args:
        boxes: ``(N, 4)`` inclusive XYXY boxes of the masks before, in pixels of the
            original image, NaN rows for empty masks (``Prediction.boxes()``).
        original_size: ``(H, W)`` of the image.
        input_size: ``(h, w)`` the image occupies in the model input (sets the margin in
            image pixels per axis).

    Returns:
        ``(N, 4) float64`` grown and clipped boxes, and ``(N,) bool``: which rows are real
        boxes (finite, wider and taller than one pixel). Rows that are not are zero.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = original_size
    ok = np.isfinite(boxes).all(axis=1)
    ok[ok] = (boxes[ok, 2] > boxes[ok, 0]) & (boxes[ok, 3] > boxes[ok, 1])
    margin_x = REFINE_MARGIN * width / input_size[1]
    margin_y = REFINE_MARGIN * height / input_size[0]
    out = np.zeros_like(boxes)
    grown = boxes[ok] + np.array([-margin_x, -margin_y, margin_x, margin_y])
    out[ok] = np.clip(grown, 0, [width - 1, height - 1, width - 1, height - 1])
    return out, ok


def refined_prompts(prompts: Prompts, boxes: np.ndarray, ok: np.ndarray) -> Prompts:
    """The rows ``ok`` of ``prompts`` with ``boxes[ok]`` added (a box pass)."""

    def rows(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[ok]

    return replace(
        prompts, points=rows(prompts.points), labels=rows(prompts.labels),
        masks=rows(prompts.masks), boxes=boxes[ok], count=int(ok.sum()),
    )
