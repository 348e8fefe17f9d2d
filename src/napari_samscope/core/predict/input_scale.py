"""How an image is placed into the model's square input: its magnification.

``scale=`` of :meth:`~napari_samscope.core.predict.predictor.Predictor.set_image` and
``encode`` takes one of three requests:

- ``"fill"``: SAM's preprocessing. The longest side is resized to the input side ``S``
  (magnification ``S / max(H, W)``). The official behaviour, bit for bit, and the default
  for models that declare no scale (the official and micro-sam checkpoints).
- ``"auto"``: for a model that declares the scale it was trained for
  (:class:`~napari_samscope.core.weights.spec.InputScale`), the image's magnification
  stays within the declared range. An image that "fill" would magnify beyond the range
  (a small crop) is placed at the declared magnification instead, top-left in the input
  and zero-padded as SAM pads; an image whose "fill" magnification lies in the range is
  filled as SAM does; an image that does not fit the input even at the least declared
  magnification is filled as SAM does (shrunk to fit), with a
  :class:`~napari_samscope.core.predict.resolution.ShrunkImageWarning` that says how far
  below the trained range it went and how to tile it (``tile_shape=``) instead: it is
  never shrunk silently. The default for models that declare a scale.
  For a model that declares none, ``"auto"`` is ``"fill"``.
- a number ``m > 0``: the magnification itself; the image resized by ``m`` must fit the
  input (else a ``ValueError``: tile it, or pass a smaller ``m``).

Every request resolves to one magnification ``m`` per image size, and the resized image
is ``(int(H * m + 0.5), int(W * m + 0.5))`` pixels, rounded as SAM rounds (with
``m = S / max(H, W)`` this is exactly SAM's resize). That size is the embedding's
``input_size``, from which prompts and masks are mapped (per axis, as the official
``apply_coords`` and ``postprocess_masks`` do), so coordinates in and masks out stay in
pixels of the original image whatever the request.

This module imports neither torch nor numpy (its warning class comes from ``resolution``
when one is raised).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

from napari_samscope.core.weights.spec import InputScale

__all__ = [
    "ScaleLike",
    "ScaleSetting",
    "check_scale",
    "declared_input_scale",
    "embedding_key",
    "default_scale",
    "resolve_magnification",
    "scale_token",
    "scaled_size",
]

#: what ``scale=`` accepts
ScaleLike = Literal["auto", "fill"] | float

_WORDS = ("auto", "fill")


def check_scale(value: Any) -> str | float:
    """``value`` as a scale request: ``"auto"``, ``"fill"`` or a float magnification.

    Words are matched case-insensitively; a string that holds a number (``"2"``, from a
    command line or a text field) is that number.

    Raises:
        ValueError: anything else, a magnification that is not a finite number above 0
            included.
    """
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _WORDS:
        return text
    number: float | None = None
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            number = None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(
            f"scale must be 'auto', 'fill' or a magnification above 0 (such as 2.0), not {value!r}."
        )
    return number


def scale_token(scale: Any) -> str:
    """A short text naming a scale request, for cache keys and stores (``"auto"``,
    ``"fill"``, ``"x2"``)."""
    checked = check_scale(scale)
    return checked if isinstance(checked, str) else f"x{checked!r}"


def default_scale(declared: InputScale | None) -> str:
    """``"auto"`` for a model that declares its scale, else ``"fill"``."""
    return "auto" if declared is not None else "fill"


def declared_input_scale(model: Any) -> InputScale | None:
    """The :class:`InputScale` a model object declares: its own ``input_scale``
    attribute (a ``SAM`` or ``LoadedModel``), else its registry entry's (``spec``)."""
    for source in (model, getattr(model, "spec", None)):
        value = getattr(source, "input_scale", None)
        if isinstance(value, InputScale):
            return value
    return None


def embedding_key(predictor: Any) -> str:
    """What identifies the embeddings ``predictor`` makes of an image, for caches: its
    ``embedding_key`` (the model and the scale request), else its ``model_key``."""
    key = getattr(predictor, "embedding_key", None)
    return str(key if key is not None else predictor.model_key)


def scaled_size(original_size: tuple[int, int], magnification: float) -> tuple[int, int]:
    """``(h, w)`` of an ``(H, W)`` image resized by ``magnification``, rounded as SAM rounds
    (``int(x + 0.5)``, at least 1 pixel)."""
    height, width = original_size
    return (
        max(1, int(height * magnification + 0.5)),
        max(1, int(width * magnification + 0.5)),
    )


def resolve_magnification(
    original_size: tuple[int, int],
    img_size: int,
    scale: Any = "fill",
    declared: InputScale | None = None,
) -> float:
    """The magnification at which an ``(H, W)`` image goes into the ``S x S`` input.

    Args:
        original_size: ``(H, W)`` of the image.
        img_size: ``S``, the model input side.
        scale: ``"fill"``, ``"auto"`` or a magnification (see the module docstring).
        declared: the model's declared scale (None: ``"auto"`` is ``"fill"``).

    Raises:
        ValueError: a bad ``scale``, or an image that does not fit the input at the
            requested magnification.

    Warns:
        ShrunkImageWarning: ``"auto"`` shrank the image below the declared range.
    """
    height, width = (int(v) for v in original_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"Image sizes must be positive, not {height}x{width}.")
    request = check_scale(scale)
    fill = img_size * 1.0 / max(height, width)  # exactly SAM's resize factor
    if request == "fill" or (request == "auto" and declared is None):
        return fill
    if request == "auto" and declared is not None:
        if fill > declared.max_magnification:  # a small image: not blown up beyond the range
            return declared.magnification
        if fill < declared.min_magnification:
            _warn_shrunk(height, width, img_size, fill, declared)
        return fill
    magnification = float(request)
    _refuse_unfit(height, width, img_size, magnification)
    return magnification


def _warn_shrunk(height: int, width: int, img_size: int, fill: float, declared: InputScale) -> None:
    import warnings

    from napari_samscope.core.predict.resolution import ShrunkImageWarning

    side = largest_side(img_size, "auto", declared)
    if fill < 1:
        placed = f"shrunk {1 / fill:.2g}x"
    else:
        placed = "kept at 1x" if fill == 1 else f"magnified only {fill:.2g}x"
    warnings.warn(
        f"The {height}x{width} image is {placed} to fit the model's "
        f"{img_size}-pixel input, below the {declared.min_magnification:g}-"
        f"{declared.max_magnification:g}x the model was trained for: small objects may be "
        f"missed. Tile it (tile_shape=({side}, {side})) to keep the model's scale.",
        ShrunkImageWarning,
        stacklevel=4,
    )


def _refuse_unfit(height: int, width: int, img_size: int, magnification: float) -> None:
    """Raise when the image resized by ``magnification`` does not fit the input."""
    if max(scaled_size((height, width), magnification)) <= img_size:
        return
    side = int(img_size / magnification)
    raise ValueError(
        f"The {height}x{width} image does not fit the model's {img_size}-pixel input "
        f"at scale {magnification:g}: "
        f"tile it (tile_shape=({side}, {side})), pass a smaller scale, or pass scale='fill' "
        "to shrink the whole image into the input (objects then look smaller than the "
        "model was trained on)."
    )


class ScaleSetting:
    """The scale request of a predictor (a base of
    :class:`~napari_samscope.core.predict.predictor.Predictor`): :attr:`scale`, the
    model's declared :attr:`input_scale`, the :attr:`embedding_key` caches file its
    embeddings under and the current image's :attr:`magnification`."""

    model_key: str
    img_size: int
    _embedding: Any
    _scale: str | float
    #: the object scale the model declares (``core.weights.spec.InputScale``), or None
    input_scale: InputScale | None

    def _init_scale(self, model: Any, input_scale: Any, scale: Any) -> None:
        if input_scale is not None and not isinstance(input_scale, InputScale):
            raise TypeError(f"input_scale must be an InputScale or None, not {type(input_scale).__name__}.")
        self.input_scale = input_scale or declared_input_scale(model) or declared_input_scale(self)
        if scale is None:  # a model wrapper's own default (``SAM.scale``), if it has one
            scale = getattr(model, "scale", None) if hasattr(model, "model") else None
        self._scale = default_scale(self.input_scale) if scale is None else check_scale(scale)

    @property
    def scale(self) -> str | float:
        """The scale request ``set_image`` and ``encode`` use when given none (``"auto"``,
        ``"fill"`` or a magnification); settable, checked."""
        return self._scale

    @scale.setter
    def scale(self, value: Any) -> None:
        self._scale = check_scale(value)

    @property
    def embedding_key(self) -> str:
        """What identifies this predictor's embeddings of an image in caches: the model
        (``model_key``) and the :attr:`scale` request."""
        return f"{self.model_key}@{scale_token(self._scale)}"

    @property
    def magnification(self) -> float | None:
        """How much the current image was magnified into the model input, or None."""
        embedding = getattr(self, "_embedding", None)
        return None if embedding is None else embedding.magnification

    def max_side(self, scale: Any = None) -> int:
        """The longest image side that fits the model input at ``scale`` (default
        :attr:`scale`) without being shrunk below the declared range: the input side for
        ``"fill"``, the input side over the magnification otherwise (for ``"auto"``, the
        declared magnification). Tiles of this side are encoded at that magnification."""
        return largest_side(int(self.img_size), self._scale if scale is None else scale, self.input_scale)


def largest_side(img_size: int, scale: Any, declared: InputScale | None) -> int:
    """See :meth:`ScaleSetting.max_side`."""
    request = check_scale(scale)
    if request == "fill" or (request == "auto" and declared is None):
        return int(img_size)
    magnification = declared.magnification if request == "auto" and declared else float(request)
    side = int(img_size / magnification)
    while side > 1 and max(scaled_size((side, side), magnification)) > img_size:
        side -= 1
    if side < 1:
        raise ValueError(f"At scale {magnification:g} not even one pixel fits the {img_size}-pixel input.")
    return side
