"""Tile geometry and the tiled predictor."""

from __future__ import annotations

import numpy as np
import pytest
from _tiling_helpers import LocalPredictor, NoWholeRead, disc_image

from napari_samscope.core.progress import Progress
from napari_samscope.core.tiling import TiledPredictor, TileGrid, check_tiling


@pytest.mark.parametrize("shape", [(300, 300), (257, 1000), (64, 64), (30, 500), (1, 1)])
@pytest.mark.parametrize("tile,halo", [((64, 64), (8, 8)), ((64, 48), (0, 10)), ((100, 100), (49, 0))])
def test_inner_regions_partition_the_image_with_halo_context(shape, tile, halo):
    grid = TileGrid(shape, tile, halo)
    owner = np.zeros(shape, int)
    for t in grid:
        y0, y1, x0, x1 = t.inner
        owner[y0:y1, x0:x1] += 1
        oy0, oy1, ox0, ox1 = t.outer
        assert 0 <= oy0 <= y0 < y1 <= oy1 <= shape[0] and 0 <= ox0 <= x0 < x1 <= ox1 <= shape[1]
        assert t.shape == (min(tile[0], shape[0]), min(tile[1], shape[1]))  # never cut short
        # context of at least the halo on every side inside the image
        assert y0 == 0 or y0 - oy0 >= halo[0]
        assert x0 == 0 or x0 - ox0 >= halo[1]
        assert y1 == shape[0] or oy1 - y1 >= halo[0]
        assert x1 == shape[1] or ox1 - x1 >= halo[1]
    assert (owner == 1).all()


def test_grid_counts_and_stride():
    grid = TileGrid((1000, 1000), (256, 256), (28, 28))
    assert grid.grid_shape == (5, 5)  # stride 200: starts 0, 200, 400, 600, 744
    assert [t.outer[2] for t in grid][:5] == [0, 200, 400, 600, 744]


@pytest.mark.parametrize(
    "tile,halo,match",
    [
        ((32, 32), (40, 40), "smaller than its halo"),
        ((64, 64), (32, 0), "less than half the tile"),
        ((64, 64), (0, 40), "less than half the tile"),
        ((0, 64), (0, 0), "at least 1 pixel"),
        ((64, 64), (-1, 0), "0 or more"),
    ],
)
def test_bad_geometry_is_refused_with_a_sentence(tile, halo, match):
    with pytest.raises(ValueError, match=match):
        check_tiling(tile, halo)


def test_bad_geometry_types():
    with pytest.raises(TypeError, match="pair of integers"):
        TileGrid((100, 100), "big", 4)


def test_best_tile_has_the_most_margin_and_boxes_too_large_get_a_fitted_window():
    grid = TileGrid((300, 300), (100, 100), (10, 10))
    tile = grid.best_tile((85, 86, 85, 86))  # a pixel in the overlap of four tiles
    others = [t for t in grid if grid.margin(t, (85, 86, 85, 86)) >= 0]
    assert len(others) > 1
    assert all(grid.margin(tile, (85, 86, 85, 86)) >= grid.margin(t, (85, 86, 85, 86)) for t in others)
    assert grid.best_tile((10, 200, 10, 20)) is None  # taller than a tile
    y0, y1, x0, x1 = grid.fitted_window((10, 200, 10, 20))
    assert y0 <= 10 and y1 >= 200 and x0 <= 10 and x1 >= 20 and (x1 - x0) == 100
    assert 0 <= y0 and y1 <= 300


def _tiled(image, **kwargs):
    tp = TiledPredictor(LocalPredictor())
    tp.set_image(image, **kwargs)
    return tp


def _untiled(image, point=None, box=None):
    local = LocalPredictor()
    (emb,) = local.encode([np.repeat(image[..., None], 3, axis=-1)])
    local.set_embedding(emb)
    return local.predict(points=point, bboxes=box).masks


def test_tiled_equals_untiled_for_objects_inside_a_tile_interior():
    centres = [(20, 20), (100, 40), (150, 150), (31, 180), (230, 90)]
    image = disc_image((256, 256), centres, radius=6)
    tp = _tiled(image, tile_shape=64, halo=12)
    for cy, cx in centres:
        tiled = tp.predict(points=[cx, cy])
        assert tiled.masks.shape == (1, 256, 256)
        np.testing.assert_array_equal(tiled.masks, _untiled(image, point=[cx, cy]))
    # several objects at once, each routed to its own tile, returned in prompt order
    pts = np.array([[cx, cy] for cy, cx in centres], float)[:, None]
    many = tp.predict(points=pts)
    for k, (cy, cx) in enumerate(centres):
        np.testing.assert_array_equal(many.masks[k], _untiled(image, point=[cx, cy])[0])


def test_lazy_encoding_only_touches_needed_tiles_and_precompute_reports_progress():
    image = disc_image((256, 256), [(100, 100)], radius=6)
    tp = _tiled(image, tile_shape=64, halo=8)
    assert tp.encoded_tiles == 0
    tp.predict(points=[100, 100])
    assert tp.encoded_tiles == 1
    reports = []
    done = tp.precompute_all(progress=reports.append)
    assert done == len(tp.grid) - 1 and tp.encoded_tiles == len(tp.grid)
    assert all(isinstance(r, Progress) for r in reports) and reports[-1].done == reports[-1].total
    tp.predict(points=[10, 10])
    assert tp.encoded_tiles == len(tp.grid)  # nothing encoded after precompute


def test_precompute_of_chosen_tiles_encodes_only_those_and_refuses_bad_indices():
    image = disc_image((256, 256), [(100, 100)], radius=6)
    tp = _tiled(image, tile_shape=64, halo=8)
    assert tp.precompute_all(tiles=[0, 3]) == 2 and tp.encoded_tiles == 2
    assert tp.precompute_all(tiles=[3, 4]) == 1 and tp.encoded_tiles == 3  # tile 3 was kept
    with pytest.raises(ValueError, match=f"tile {len(tp.grid)} does not exist"):
        tp.precompute_all(tiles=[1, len(tp.grid)])
    assert tp.encoded_tiles == 3  # nothing encoded before the check


def test_a_box_larger_than_a_tile_is_decoded_in_a_fitted_window():
    image = np.zeros((256, 256), np.uint8)
    image[40:200, 100:130] = 200  # 160 px tall: larger than a 64 px tile
    tp = _tiled(image, tile_shape=64, halo=8)
    windows = tp.predict_windows(bboxes=[98, 38, 132, 202])
    (part,) = windows
    y0, y1, x0, x1 = part.window
    assert y1 - y0 >= 160 + 16 and x1 - x0 == 64
    np.testing.assert_array_equal(part.full_masks()[0], image > 0)
    np.testing.assert_array_equal(tp.predict(bboxes=[98, 38, 132, 202]).masks[0], image > 0)


def test_prompts_outside_or_missing_and_no_image():
    tp = TiledPredictor(LocalPredictor())
    with pytest.raises(ValueError, match="No image is set"):
        tp.predict(points=[1, 1])
    tp.set_image(np.zeros((100, 100), np.uint8), tile_shape=64, halo=8)
    with pytest.raises(ValueError, match="outside the image"):
        tp.predict(points=[150, 10])


def test_a_tile_larger_than_the_model_input_is_refused():
    tp = TiledPredictor(LocalPredictor())  # model input 64
    with pytest.raises(ValueError, match="would be shrunk"):
        tp.set_image(np.zeros((300, 300), np.uint8), tile_shape=128, halo=8)


def test_tiles_are_read_lazily_never_the_whole_array():
    image = disc_image((320, 320), [(160, 160), (40, 300)], radius=6)
    lazy = NoWholeRead(image, max_fraction=0.1)
    tp = _tiled(lazy, tile_shape=64, halo=8)
    tp.precompute_all()
    expected = disc_image((320, 320), [(160, 160)], radius=6) > 0
    np.testing.assert_array_equal(tp.predict(points=[160, 160]).masks[0], expected)
    assert 0 < lazy.largest <= 64 * 64


def test_planes_of_a_dask_stack_are_read_one_window_at_a_time():
    da = pytest.importorskip("dask.array")
    planes = np.stack([disc_image((128, 128), [(30 + 20 * z, 60)], radius=5) for z in range(3)])
    stack = da.from_array(planes, chunks=(1, 32, 32))
    tp = TiledPredictor(LocalPredictor())
    for z in range(3):
        tp.set_image(stack, tile_shape=64, halo=8, plane=z)
        mask = tp.predict(points=[60, 30 + 20 * z]).masks[0]
        np.testing.assert_array_equal(mask, planes[z] == 200)
    with pytest.raises(ValueError, match="say which plane"):
        tp.set_image(stack, tile_shape=64, halo=8)


def test_a_multiscale_pyramid_uses_its_full_resolution_level():
    image = disc_image((256, 256), [(100, 120)], radius=6)
    pyramid = [NoWholeRead(image, 0.1), NoWholeRead(image[::2, ::2], 0.0)]  # level 1 unread
    tp = _tiled(pyramid, tile_shape=64, halo=8)
    assert tp.image_shape == (256, 256)
    np.testing.assert_array_equal(tp.predict(points=[120, 100]).masks[0], image > 0)


def test_cancelling_precompute_keeps_the_tiles_done():
    from napari_samscope.core.progress import Cancelled, run

    image = disc_image((256, 256), [(100, 120)], radius=6)
    tp = _tiled(image, tile_shape=64, halo=8)
    reports = []
    with pytest.raises(Cancelled):
        run(tp.precompute(), progress=reports.append, should_stop=lambda: len(reports) >= 4)
    assert tp.encoded_tiles == 3
    tp.precompute_all()
    assert tp.encoded_tiles == len(tp.grid)
