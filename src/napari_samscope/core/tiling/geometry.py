"""Overlapping tiles of a large 2D image (names as in micro-sam: ``tile_shape``, ``halo``).

Conventions:

- ``tile_shape`` ``(th, tw)`` is the whole tile that is read and encoded, halo included,
  so a tile never has to be shrunk to fit the model input (``tile_shape <= S``).
- ``halo`` ``(hy, hx)`` is the overlap kept on each side of a tile's *inner* region.
  Inner regions partition the image: every pixel belongs to exactly one tile's inner
  region, and that tile sees at least ``halo`` pixels of context around it (except at the
  image border). Tiles advance by ``tile_shape - 2 * halo``; the last tile of a row or
  column is moved back inside the image, so every tile has the same shape (unless the
  image is smaller than a tile along an axis, then the tile is the image extent).
- Windows are ``(y0, y1, x0, x1)``, half-open, in pixels of the original image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Tile", "TileGrid", "Window", "check_tiling"]

Window = tuple[int, int, int, int]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        a, b = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an integer or a pair of integers, not {value!r}.") from None
    return a, b


def check_tiling(
    tile_shape: int | Sequence[int], halo: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate ``tile_shape`` and ``halo`` and return them as ``(y, x)`` pairs.

    Raises:
        TypeError: not integers or pairs of integers.
        ValueError: a tile side below 1, a negative halo, a tile smaller than its halo,
            or a halo of half the tile or more (the tile would own no pixels).
    """
    tile = _pair(tile_shape, "tile_shape")
    hal = _pair(halo, "halo")
    for t, h, axis in zip(tile, hal, "yx"):
        if t < 1:
            raise ValueError(f"tile_shape must be at least 1 pixel, not {t} along {axis}.")
        if h < 0:
            raise ValueError(f"halo must be 0 or more pixels, not {h} along {axis}.")
        if t < h:
            raise ValueError(
                f"The tile ({t} px along {axis}) is smaller than its halo ({h} px): make the "
                f"tile larger or the halo smaller."
            )
        if 2 * h >= t:
            raise ValueError(
                f"The halo ({h} px along {axis}) must be less than half the tile ({t} px), "
                f"otherwise a tile owns no pixels: use a halo below {(t + 1) // 2}."
            )
    return tile, hal


def _axis_tiles(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, inner_start, inner_stop)`` of the tiles along one axis."""
    if length <= tile:
        return [(0, length, 0, length)]
    step = tile - 2 * halo
    count = math.ceil((length - tile) / step) + 1
    starts = [min(k * step, length - tile) for k in range(count)]
    # the boundary between two neighbours is the middle of their overlap
    bounds = [0] + [(starts[k + 1] + starts[k] + tile) // 2 for k in range(count - 1)] + [length]
    return [(s, s + tile, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


@dataclass(frozen=True)
class Tile:
    """One tile: its ``index`` in the grid (row-major), the ``outer`` window that is
    encoded and the ``inner`` window it owns (both ``(y0, y1, x0, x1)``)."""

    index: int
    outer: Window
    inner: Window

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the outer window."""
        y0, y1, x0, x1 = self.outer
        return y1 - y0, x1 - x0


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an ``image_shape`` ``(H, W)`` image (see the module docstring).

    Raises:
        ValueError / TypeError: see :func:`check_tiling`, or an empty image.
    """

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: tuple[int, int]

    def __post_init__(self) -> None:
        tile, halo = check_tiling(self.tile_shape, self.halo)
        shape = _pair(self.image_shape, "image_shape")
        if min(shape) < 1:
            raise ValueError(f"The image must have at least one pixel, not shape {shape}.")
        object.__setattr__(self, "tile_shape", tile)
        object.__setattr__(self, "halo", halo)
        object.__setattr__(self, "image_shape", shape)
        rows = _axis_tiles(shape[0], tile[0], halo[0])
        cols = _axis_tiles(shape[1], tile[1], halo[1])
        tiles = [
            Tile(i * len(cols) + j, (r[0], r[1], c[0], c[1]), (r[2], r[3], c[2], c[3]))
            for i, r in enumerate(rows)
            for j, c in enumerate(cols)
        ]
        object.__setattr__(self, "_tiles", tuple(tiles))
        object.__setattr__(self, "grid_shape", (len(rows), len(cols)))

    def __len__(self) -> int:
        return len(self._tiles)  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> Tile:
        return self._tiles[index]  # type: ignore[attr-defined]

    def __iter__(self):
        return iter(self._tiles)  # type: ignore[attr-defined]

    def margin(self, tile: Tile, window: Window) -> float:
        """Distance in pixels from ``window`` to the nearest *cut* edge of ``tile`` (an edge
        inside the image); ``-1`` when the window is not inside the tile, ``inf`` when the
        tile is the whole image."""
        y0, y1, x0, x1 = window
        ty0, ty1, tx0, tx1 = tile.outer
        if y0 < ty0 or x0 < tx0 or y1 > ty1 or x1 > tx1:
            return -1.0
        height, width = self.image_shape
        gaps = []
        if ty0 > 0:
            gaps.append(y0 - ty0)
        if tx0 > 0:
            gaps.append(x0 - tx0)
        if ty1 < height:
            gaps.append(ty1 - y1)
        if tx1 < width:
            gaps.append(tx1 - x1)
        return float(min(gaps)) if gaps else math.inf

    def best_tile(self, window: Window) -> Tile | None:
        """The tile that holds ``window`` with the most margin (the lowest index on ties),
        or None when no tile holds it whole."""
        best, best_margin = None, -1.0
        for tile in self._tiles:  # type: ignore[attr-defined]
            m = self.margin(tile, window)
            if m > best_margin:
                best, best_margin = tile, m
        return best

    def route(self, xs: Sequence[float], ys: Sequence[float]) -> Window:
        """The window that prompts at ``(x, y)`` pixels (one object's points and box
        corners) are decoded in: the outer window of the tile that holds their bounding
        window with the most margin, else :meth:`fitted_window` around it.

        Raises:
            ValueError: a prompt outside the image.
        """
        height, width = self.image_shape
        if min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height:
            raise ValueError(
                f"A prompt lies outside the image ({width} x {height} pixels, x then y)."
            )
        wy0, wx0 = int(math.floor(min(ys))), int(math.floor(min(xs)))
        window = (wy0, min(height, int(math.floor(max(ys))) + 1), wx0,
                  min(width, int(math.floor(max(xs))) + 1))
        tile = self.best_tile(window)
        return tile.outer if tile is not None else self.fitted_window(window)

    def fitted_window(self, window: Window) -> Window:
        """A window of at least ``tile_shape`` centred on ``window`` and moved inside the
        image: the frame used for a prompt that no tile holds whole (for example a box
        larger than a tile). It is larger than a tile only when ``window`` itself is,
        plus a margin of ``halo`` on each side."""
        out = []
        for lo, hi, tile, halo, length in (
            (window[0], window[1], self.tile_shape[0], self.halo[0], self.image_shape[0]),
            (window[2], window[3], self.tile_shape[1], self.halo[1], self.image_shape[1]),
        ):
            size = min(length, max(tile, hi - lo + 2 * halo))
            start = (lo + hi) // 2 - size // 2
            start = max(0, min(start, length - size))
            out.append((start, start + size))
        return out[0][0], out[0][1], out[1][0], out[1][1]
