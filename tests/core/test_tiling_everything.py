"""Tiled segment-everything: objects on tile borders are neither lost nor duplicated."""

from __future__ import annotations

import numpy as np
import pytest
from _tiling_helpers import ComponentsGenerator, LocalPredictor, disc_image
from scipy import ndimage

from napari_samscope.core.tiling import TiledPredictor, TileGrid, segment_everything_tiled


def _border_centres(grid: TileGrid) -> list[tuple[int, int]]:
    """Centres on every inner boundary, on tile corners, in overlaps and in interiors."""
    ys = sorted({t.inner[0] for t in grid} - {0})
    xs = sorted({t.inner[2] for t in grid} - {0})
    centres = [(y, x) for y in ys for x in xs]  # corners of four tiles
    centres += [(y, 30) for y in ys] + [(30, x) for x in xs]  # on one boundary
    centres += [(y + 2, x + 32) for y in ys for x in xs[:1]]  # just off a boundary
    centres += [(grid.image_shape[0] - 8, grid.image_shape[1] - 8), (100, 100)]
    return centres


def test_objects_on_tile_borders_are_found_once_each():
    grid = TileGrid((400, 400), (96, 96), (16, 16))
    centres = _border_centres(grid)
    image = disc_image(grid.image_shape, centres, radius=6)
    truth, count = ndimage.label(image > 0)
    assert count == len(set(centres))
    tp = TiledPredictor(LocalPredictor())
    tp.predictor.img_size = 96
    tp.set_image(image, tile_shape=96, halo=16)
    result = segment_everything_tiled(tp, generator=ComponentsGenerator())
    assert len(result) == count
    found = sorted(int(np.bincount(truth[r.mask]).argmax()) for r in result)
    assert found == list(range(1, count + 1))  # every object once
    for r in result:  # each mask whole, never a truncated piece
        label = np.bincount(truth[r.mask]).argmax()
        np.testing.assert_array_equal(r.mask, truth == label)


def test_without_dedup_border_objects_would_be_duplicated():
    grid = TileGrid((200, 200), (64, 64), (12, 12))
    y = next(t.inner[1] for t in grid if t.inner[1] < 200)
    image = disc_image(grid.image_shape, [(y, 100)], radius=5)
    tp = TiledPredictor(LocalPredictor())
    tp.set_image(image, tile_shape=64, halo=12)
    assert len(segment_everything_tiled(tp, generator=ComponentsGenerator())) == 1
    loose = segment_everything_tiled(tp, generator=ComponentsGenerator(), dedup_overlap=1.0)
    assert len(loose) == 2  # both neighbours kept it; the overlap rule merges them


def test_bad_dedup_and_params_with_generator():
    tp = TiledPredictor(LocalPredictor())
    tp.set_image(np.zeros((100, 100), np.uint8), tile_shape=64, halo=8)
    with pytest.raises(ValueError, match="dedup_overlap"):
        segment_everything_tiled(tp, dedup_overlap=0.0, generator=ComponentsGenerator())
    with pytest.raises(ValueError, match="not both"):
        segment_everything_tiled(tp, generator=ComponentsGenerator(), points_per_side=8)
