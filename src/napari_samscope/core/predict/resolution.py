"""What the model can resolve: objects that shrink below a few model-input pixels when the
image is resized to the model input get masks that are noise, and a warning says so.

SAM resizes the whole image so that its longest side fills the model input. The
decoder's low-resolution mask has one cell per 4 input pixels, so a box whose shorter
side becomes fewer than :data:`MIN_INPUT_PIXELS` input pixels is not resolved.
:mod:`napari_samscope.core.predict.crops` segments such boxes on crops instead; the
predictor warns (:class:`SmallObjectWarning`) when it is given one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MIN_INPUT_PIXELS",
    "SmallObjectWarning",
    "as_boxes",
    "is_unresolvable",
    "warn_unresolvable",
    "warn_unresolvable_prompts",
]

#: a box whose shorter side is under this many model-input pixels is not resolved by the
#: decoder (its low-resolution mask has one cell per 4 input pixels)
MIN_INPUT_PIXELS = 16.0


class SmallObjectWarning(UserWarning):
    """A prompt's object shrinks below what the model can resolve at this image size."""


class ShrunkImageWarning(SmallObjectWarning):
    """``scale="auto"`` had to shrink an image below the magnification range its model
    was trained for, so that it fits the input in one piece: its objects look smaller
    than the training objects. Tiling (``tile_shape=``) keeps them at the model's scale."""


def as_boxes(boxes: Any) -> np.ndarray:
    """``(N, 4)`` float64 XYXY boxes; non-finite values are refused."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(array).all():
        raise ValueError("boxes must hold finite numbers (x0, y0, x1, y1 in pixels)")
    return array


def is_unresolvable(
    boxes: Any, image_shape: Sequence[int], img_size: int, magnification: float | None = None
) -> np.ndarray:
    """``(N,)`` bool: the boxes (XYXY pixels) whose shorter side, once the image is resized
    to the model input of side ``img_size`` (or by ``magnification`` when given, see
    :mod:`~napari_samscope.core.predict.input_scale`), is under :data:`MIN_INPUT_PIXELS`."""
    boxes = as_boxes(boxes)
    scale = img_size / max(image_shape[0], image_shape[1]) if magnification is None else magnification
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return sides * scale < MIN_INPUT_PIXELS


def warn_unresolvable(
    image_shape: Sequence[int], img_size: int, boxes: Any = None, what: str = "prompt", stacklevel: int = 2,
    magnification: float | None = None,
) -> bool:
    """Warn (:class:`SmallObjectWarning`) when objects would be too small for the model.

    With ``boxes``, warns when any box is unresolvable (:func:`is_unresolvable`); without,
    warns when the image is shrunk more than 2x, so that objects under
    ``MIN_INPUT_PIXELS * shrink`` pixels cannot be resolved. ``magnification``: how much
    the image was magnified into the input (default: SAM's fill). Returns whether it warned.
    """
    fill = img_size / max(image_shape[0], image_shape[1])
    shrink = 1.0 / (fill if magnification is None else magnification)
    if boxes is not None:
        small = int(is_unresolvable(boxes, image_shape, img_size, magnification).sum())
        if not small:
            return False
        plural = what + ("es" if what.endswith(("s", "x")) else "s")
        text = f"{small} {what} covers" if small == 1 else f"{small} {plural} cover"
        masks = "its mask is" if small == 1 else "their masks are"
        advice = "Segment them on crops at the model's scale (napari_samscope.core.predict.crops.segment_boxes)"
    elif shrink > 2:
        text = f"objects smaller than {math.ceil(MIN_INPUT_PIXELS * shrink)} pixels in this {what} cover"
        masks = "their masks are"
        advice = "Prompt them with boxes (segmented on crops at the model's scale) or crop the image"
    else:
        return False
    warnings.warn(
        f"{text} fewer than {MIN_INPUT_PIXELS:g} model-input pixels: the "
        f"{image_shape[0]}x{image_shape[1]} image is {_resized(shrink)} to the model's "
        f"{img_size}-pixel input, below what the model can resolve, so {masks} "
        f"unreliable. {advice}.",
        SmallObjectWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def _resized(shrink: float) -> str:
    """``"shrunk 4.0x"`` or ``"magnified 2.0x"``."""
    return f"shrunk {shrink:.1f}x" if shrink >= 1 else f"magnified {1 / shrink:.1f}x"


def warn_unresolvable_prompts(
    emb: Any, prompts: Any, img_size: int, crop_magnification: float | None = None, stacklevel: int = 2,
) -> None:
    """:func:`warn_unresolvable` for the parsed ``prompts`` of a ``predict`` call on the
    image embedding ``emb``: its boxes at the magnification they are decoded at (that
    of their zoom crops, ``crop_magnification``, when zooming), else the image itself
    when there are points."""
    size, magnification = emb.original_size, emb.magnification
    if prompts.boxes is not None:
        at = magnification if crop_magnification is None else crop_magnification
        warn_unresolvable(size, img_size, prompts.boxes, "box", stacklevel + 1, magnification=at)
    elif prompts.points is not None:
        warn_unresolvable(size, img_size, what="image", stacklevel=stacklevel + 1,
                          magnification=magnification)
