"""Zoom (``zoom``): each object also decoded on a crop magnified more than the whole image.

A SAM decoder draws its mask on a low-resolution grid of 4 model-input pixels per cell.
The default model places a 512x512 image at 2x into its 1024-pixel input, so a cell is 2
image pixels, and outlines are off by a pixel where a nucleus is 20 pixels across. With
``zoom=z`` an object is decoded twice: on the whole image, and on a square crop around
it encoded at ``z`` times the whole image's magnification (a cell is ``1/z`` as wide
there). The two logits are averaged at image pixels inside the crop, the crop weighted
:data:`ZOOM_CROP_WEIGHT` (5/8) and the whole image the rest (multi-scale averaging, as
:mod:`~napari_samscope.core.predict.flips` averages orientations), and the mask is where
the weighted mean is above the model's threshold. The crop alone draws sharper outlines
on clean images but loses on noisy ones, where the whole image's context helps; the
weighted mean did better than either on the held-out sets the rule was chosen on.

What is zoomed:

- **box prompts** (with or without points, one mask per object): every box that fits a
  crop with some context;
- **point-only prompts** with ``refine_points`` on: every pass. The first at the crop
  that holds the points, the passes with a box (points plus the grown box of the mask
  before, :mod:`~napari_samscope.core.predict.point_refine`) each at the crop that holds
  its box.

A mask prompt (the logits of an earlier result) goes with its object to the crop,
resampled into the crop's frame. Multimask candidates of one object, point prompts
without refinement, boxes too large for a crop and tiled images are decoded on the whole
image alone, as before.

The crops lie on a fixed grid (:class:`ZoomGrid`: side ``S / (z * m)`` pixels for an
``S``-pixel input and an image at magnification ``m``, overlapping by a quarter of the
side), so prompts near one another share a crop. The predictor encodes a crop the first
time a prompt needs it (with its flips, one encoder pass per crop), from the pixels the
image embedding carries (``ImageEmbedding.pixels``: an embedding from a store has none
and is not zoomed), and keeps the last :data:`ZOOM_CACHE` crops of the current image.

Results stay in pixels of the whole image: masks are placed at the crop's offset; the
low-resolution logits are the weighted mean of the whole image's and the crop's, the
crop's resampled into the whole image's frame (:func:`resample_logits`), so a result
can be fed back as a mask prompt.

The default model declares ``zoom=2`` (``ModelSpec.zoom``), chosen on held-out synthetic
nuclei; official SAM and micro-sam models declare 1 (off). Figures and cost in
training/README.md ("Zoom").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_samscope.core.predict.crops import grid_starts

__all__ = [
    "MAX_ZOOM_MAGNIFICATION",
    "ZOOM_CACHE",
    "ZOOM_CONTEXT",
    "ZOOM_CROP_WEIGHT",
    "OUTSIDE_LOGIT",
    "ZoomGrid",
    "ZoomSetting",
    "ZoomSource",
    "blend_scales",
    "check_zoom",
    "declared_zoom",
    "resample_logits",
]

#: A crop keeps at least this fraction of its side as context on each side of a box (the
#: grid's overlap is twice it).
ZOOM_CONTEXT = 0.125
#: The crop's share of the weighted mean of both scales' logits and predicted IoUs (the
#: whole image has the rest; :func:`blend_scales` reads it at each call); chosen on
#: held-out sets (training/README.md, "The crop's weight").
ZOOM_CROP_WEIGHT = 0.625
#: Crops are never magnified more than this.
MAX_ZOOM_MAGNIFICATION = 8.0
#: Crop embeddings kept per image (least recently used dropped first).
ZOOM_CACHE = 16
#: The logit given to the whole image's frame outside a crop (surely background).
OUTSIDE_LOGIT = -20.0

Window = tuple[int, int, int, int]  # (y0, y1, x0, x1), ends exclusive


def check_zoom(value: Any) -> float:
    """``value`` as a float zoom factor: a finite number >= 1 (1: off)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"zoom must be a number >= 1 (1: off), not {value!r}.")
    zoom = float(value)
    if not math.isfinite(zoom) or zoom < 1:
        raise ValueError(f"zoom must be a finite number >= 1 (1: off), not {value!r}.")
    return zoom


def declared_zoom(model: Any, spec: Any = None) -> float:
    """The zoom a model asks for: its own ``zoom`` (a ``SAM``, when set), else its
    registry entry's (``spec.zoom``, or the given ``spec``'s), else 1."""
    for source in (model, getattr(model, "spec", None), spec):
        value = getattr(source, "zoom", None)
        if value is not None:
            return check_zoom(value)
    return 1.0


@dataclass(frozen=True)
class ZoomGrid:
    """Square crops of ``side`` pixels on a grid over an ``(height, width)`` image, each
    encoded at ``magnification``; neighbours overlap by ``2 * margin`` pixels."""

    height: int
    width: int
    side: int
    margin: int
    magnification: float

    @classmethod
    def plan(
        cls, image_shape: tuple[int, int], img_size: int, magnification: float, zoom: float
    ) -> ZoomGrid | None:
        """The grid for an image placed at ``magnification`` into an ``img_size`` input,
        zoomed ``zoom`` times; None when that magnifies no more than the whole image."""
        target = min(magnification * zoom, MAX_ZOOM_MAGNIFICATION)
        height, width = int(image_shape[0]), int(image_shape[1])
        side = min(int(img_size // target), max(height, width))
        if target <= magnification * (1 + 1e-9) or side < 8:
            return None
        return cls(height, width, side, max(int(side * ZOOM_CONTEXT), 1), float(target))

    def window_for(self, box: Any) -> Window | None:
        """The crop that decodes an inclusive XYXY ``box`` (pixels): the grid crop that
        holds it with its centre nearest the box's, else a crop centred on it; None when
        the box with its margin is larger than a crop."""
        x0, y0, x1, y1 = (float(v) for v in box)
        rows = self._span(y0, y1, self.height)
        cols = self._span(x0, x1, self.width)
        if rows is None or cols is None:
            return None
        return rows[0], rows[1], cols[0], cols[1]

    def _span(self, lo: float, hi: float, length: int) -> tuple[int, int] | None:
        side = min(self.side, length)
        first = int(np.clip(math.floor(lo), 0, length - 1))  # inclusive pixel range
        last = int(np.clip(math.ceil(hi), first, length - 1))
        if last - first + 1 + 2 * self.margin > side and side < length:
            return None
        starts = [s for s in grid_starts(length, side, max(side - 2 * self.margin, 1))
                  if s <= first and last < s + side]
        centre = (first + last) / 2
        if starts:
            start = min(starts, key=lambda s: abs(s + side / 2 - centre))
        else:
            start = int(np.clip(round(centre - side / 2), 0, length - side))
        return start, start + side


class ZoomSource:
    """What zooming needs of the current image: its 8-bit RGB pixels, its grid, and the
    crop embeddings encoded so far (at most :data:`ZOOM_CACHE`)."""

    def __init__(self, rgb: np.ndarray, grid: ZoomGrid) -> None:
        self.rgb, self.grid = rgb, grid
        self._cache: OrderedDict[tuple[Window, int, str], Any] = OrderedDict()
        self.encoded = 0  # crops encoded (a count for tests and benchmarks)

    def embedding(self, window: Window, predictor: Any) -> Any:
        """The crop's :class:`~napari_samscope.core.predict.embedding.ImageEmbedding`,
        encoded on first use with the predictor's present flips and precision."""
        key = (window, predictor.flips, str(predictor.dtype))
        if key not in self._cache:
            y0, y1, x0, x1 = window
            crop = np.ascontiguousarray(self.rgb[y0:y1, x0:x1])
            (emb,) = predictor.encode([crop], scale=self.grid.magnification)
            self.encoded += 1
            self._cache[key] = emb
            while len(self._cache) > ZOOM_CACHE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]


class ZoomSetting:
    """The :attr:`zoom` setting of a predictor and the :class:`ZoomSource` of its current
    image (a base of :class:`~napari_samscope.core.predict.predictor.Predictor`)."""

    _zoom: float
    _zoom_rgb: np.ndarray | None
    _zoom_source: ZoomSource | None

    def _init_zoom(self, model: Any, zoom: Any, spec: Any = None) -> None:
        self._zoom = declared_zoom(model, spec) if zoom is None else check_zoom(zoom)
        self._zoom_rgb, self._zoom_source = None, None

    @property
    def zoom(self) -> float:
        """How many times more than the whole image a crop is magnified to decode one
        object (module docstring); 1: off. Settable, checked."""
        return self._zoom

    @zoom.setter
    def zoom(self, value: Any) -> None:
        self._zoom = check_zoom(value)

    def _zoom_from(self, rgb: np.ndarray | None) -> None:
        """Keep the current image's 8-bit RGB pixels (None: an embedding without them,
        which is not zoomed). The crops encoded so far are kept when these are the same
        pixels (the same array: an embedding set again), else forgotten."""
        if rgb is None or rgb is not self._zoom_rgb:
            self._zoom_rgb, self._zoom_source = rgb, None

    def zoom_source(self, emb: Any) -> ZoomSource | None:
        """The current image's :class:`ZoomSource` at the present :attr:`zoom`, or None
        (zoom off, an image set without its pixels, or nothing to magnify)."""
        if self._zoom_rgb is None or self._zoom == 1 or emb.magnification is None:
            return None
        grid = ZoomGrid.plan(emb.original_size, self.img_size, emb.magnification, self._zoom)  # type: ignore[attr-defined]
        if grid is None:
            return None
        if self._zoom_source is None or self._zoom_source.grid != grid:
            self._zoom_source = ZoomSource(self._zoom_rgb, grid)  # a new zoom: new crops
        return self._zoom_source


def blend_scales(whole: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """The weighted mean of the whole image's and the crop's values (logits or predicted
    IoUs, the same shape and frame): the crop weighs :data:`ZOOM_CROP_WEIGHT`."""
    return (1.0 - ZOOM_CROP_WEIGHT) * whole + ZOOM_CROP_WEIGHT * crop


def resample_logits(
    low: torch.Tensor, source: tuple[Any, tuple[int, int]], target: tuple[Any, tuple[int, int]],
    img_size: int,
) -> torch.Tensor:
    """``(K, L, L)`` low-resolution logits moved from one frame to another (bilinear), e.g.
    from a crop into the whole image's frame, so that a result can be fed back as a mask
    prompt, or from the whole image into a crop, to decode a mask prompt there.

    Args:
        low: ``(K, L, L)`` logits in the ``source`` frame.
        source, target: ``(embedding, (y0, x0))``: an embedding's ``original_size`` and
            ``input_size`` say how its image fills the model input, and ``(y0, x0)`` is
            where that image's top-left pixel lies in the whole image.
        img_size: ``S``, the model input side.

    Target cells whose pixels lie outside the source image get :data:`OUTSIDE_LOGIT`.
    """
    (src, src_at), (dst, dst_at) = source, target
    lowres = int(low.shape[-1])
    centres = (torch.arange(lowres, dtype=torch.float32, device=low.device) + 0.5) * img_size / lowres
    axes, inside = [], []
    for axis in (0, 1):
        pixels = centres * dst.original_size[axis] / dst.input_size[axis] + dst_at[axis] - src_at[axis]
        src_input = pixels * src.input_size[axis] / src.original_size[axis]
        axes.append(src_input / img_size * 2 - 1)  # grid_sample's [-1, 1], align_corners=False
        inside.append((pixels >= 0) & (pixels < src.original_size[axis]))
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack((gx, gy), dim=-1)[None].expand(low.shape[0], -1, -1, -1)
    out = torch.nn.functional.grid_sample(
        low[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[:, 0]
    out[:, ~(inside[0][:, None] & inside[1][None, :])] = OUTSIDE_LOGIT
    return out
