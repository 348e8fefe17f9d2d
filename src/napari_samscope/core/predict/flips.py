"""Flip averaging (test-time augmentation) of prompted masks.

With ``flips=n`` a predictor encodes the model input ``n`` ways - as it is, flipped
upside down, flipped left to right, and both (in that order; ``n`` is 1, 2 or 4) - and
decodes every prompt on each of them: the prompt is flipped into each orientation, the
low-resolution logits are flipped back, and the logits and predicted IoUs are averaged.
The average is less noisy than any single orientation: masks follow the object's
outline more closely (figures in ``training/README.md``). It costs ``n`` encodings per
image and ``n`` decodings per prompt.

The flips act on the whole ``S x S`` model input, padding included, so they are exact in
every frame the decoder sees: a pixel index ``x`` of the input (the prompt encoder adds
0.5 for the pixel centre) maps to ``S - 1 - x``, and low-resolution cell ``i`` of ``L`` to
``L - 1 - i``. ``flips=1`` is the plain computation, bit for bit.

Coordinates here are in the model's input frame: points ``(..., 2)`` as ``(x, y)``, boxes
``(..., 4)`` as XYXY; image tensors are ``(..., rows, cols)``.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = [
    "FLIPS",
    "FlipSetting",
    "check_flips",
    "declared_flips",
    "decode_flipped",
    "flip_boxes",
    "flip_image",
    "flip_points",
    "refuse_tiled_flips",
]

#: The orientations, in the order they are used: (upside down, left to right).
FLIPS: tuple[tuple[bool, bool], ...] = ((False, False), (True, False), (False, True), (True, True))


def check_flips(value: Any) -> int:
    """``value`` as a number of orientations: 1 (no averaging), 2 or 4.

    Raises:
        TypeError: not an integer.
        ValueError: not 1, 2 or 4.
    """
    if isinstance(value, bool):
        raise TypeError(f"flips must be 1, 2 or 4, not {value!r}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"flips must be 1, 2 or 4, not {value!r}.") from None
    if value not in (1, 2, 4):
        raise ValueError(f"flips must be 1, 2 or 4 (orientations averaged), not {value}.")
    return value


def flip_image(tensor: torch.Tensor, flip: tuple[bool, bool]) -> torch.Tensor:
    """``tensor`` ``(..., rows, cols)`` flipped as ``flip`` says (its own inverse)."""
    dims = [d for d, on in zip((-2, -1), flip) if on]
    return tensor.flip(dims) if dims else tensor


def flip_points(points: torch.Tensor, flip: tuple[bool, bool], side: int) -> torch.Tensor:
    """``(..., 2)`` ``(x, y)`` pixel indices of the ``side x side`` input, flipped."""
    if not any(flip):
        return points
    out = points.clone()
    if flip[1]:
        out[..., 0] = side - 1 - points[..., 0]
    if flip[0]:
        out[..., 1] = side - 1 - points[..., 1]
    return out


def flip_boxes(boxes: torch.Tensor, flip: tuple[bool, bool], side: int) -> torch.Tensor:
    """``(..., 4)`` XYXY boxes of the ``side x side`` input, flipped (still XYXY)."""
    if not any(flip):
        return boxes
    out = boxes.clone()
    if flip[1]:
        out[..., 0], out[..., 2] = side - 1 - boxes[..., 2], side - 1 - boxes[..., 0]
    if flip[0]:
        out[..., 1], out[..., 3] = side - 1 - boxes[..., 3], side - 1 - boxes[..., 1]
    return out


def declared_flips(model: Any, spec: Any = None) -> int:
    """The flips a model object asks for: its own ``flips`` attribute (a ``SAM``, when
    set), else its registry entry's (``spec.flips``, or the given ``spec``'s), else 1."""
    for source in (model, getattr(model, "spec", None), spec):
        value = getattr(source, "flips", None)
        if value is not None:
            return check_flips(value)
    return 1


def refuse_tiled_flips(flips: Any) -> None:
    """Raise ``ValueError`` for ``flips`` > 1 asked of a tiled image (its tiles are
    decoded on one orientation); None (the predictor's default) passes."""
    if flips is not None and check_flips(flips) > 1:
        raise ValueError(
            "flips apply to untiled images: a tiled image is decoded on one orientation "
            "(pass flips=1 or leave it out)."
        )


class FlipSetting:
    """The flips of a predictor (a base of
    :class:`~napari_samscope.core.predict.predictor.Predictor`, before ``ScaleSetting``):
    :attr:`flips` and the :attr:`embedding_key` caches file its embeddings under."""

    _flips: int

    def _init_flips(self, model: Any, flips: Any, spec: Any = None) -> None:
        self._flips = declared_flips(model, spec) if flips is None else check_flips(flips)

    @property
    def flips(self) -> int:
        """Orientations ``set_image`` and ``encode`` encode when given none (1, 2 or 4);
        settable, checked."""
        return self._flips

    @flips.setter
    def flips(self, value: Any) -> None:
        self._flips = check_flips(value)

    def _resolve_flips(self, flips: Any) -> int:
        """``flips`` checked, or :attr:`flips` for None."""
        return self._flips if flips is None else check_flips(flips)

    @property
    def embedding_key(self) -> str:
        """What identifies this predictor's embeddings of an image in caches: the model,
        the scale request (``ScaleSetting.embedding_key``) and the :attr:`flips`."""
        key = super().embedding_key  # type: ignore[misc]
        return key if self._flips == 1 else f"{key}x{self._flips}"


@torch.no_grad()
def decode_flipped(
    runner: Any,
    embedding: Any,
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    masks: torch.Tensor | None,
    multimask_output: bool,
    side: int,
    orientations: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode prompts on every orientation of ``embedding`` (the first ``orientations``
    of them, when given) and average.

    Args:
        runner: a :class:`~napari_samscope.core.predict.fast_decode.DecoderRunner`.
        embedding: an :class:`~napari_samscope.core.predict.embedding.ImageEmbedding`
            (its ``all_features``, in :data:`FLIPS` order).
        coords, labels, boxes, masks: the prompts in the input frame, as
            ``DecoderRunner.decode`` takes them (``(B, P, 2)``, ``(B, P)``, ``(B, 4)``,
            ``(B, 1, L, L)`` low-resolution logits, each or None).
        side: ``S``, the side of the model input.
        orientations: decode only this many (1: the image as it is, one decoder pass).

    Returns:
        the mean low-resolution logits ``(B, K, L, L)`` and the mean predicted IoU
        ``(B, K)``, float32, in the unflipped frame.
    """
    features = embedding.all_features[:orientations]
    if len(features) == 1:
        return runner.decode(features[0], coords, labels, boxes, masks, multimask_output)
    low_sum = iou_sum = None
    for flip, view in zip(FLIPS, features):
        low, iou = runner.decode(
            view,
            None if coords is None else flip_points(coords, flip, side),
            labels,
            None if boxes is None else flip_boxes(boxes, flip, side),
            None if masks is None else flip_image(masks, flip),
            multimask_output,
        )
        low = flip_image(low, flip)
        low_sum = low if low_sum is None else low_sum + low
        iou_sum = iou if iou_sum is None else iou_sum + iou
    assert low_sum is not None and iou_sum is not None
    return low_sum / len(features), iou_sum / len(features)
