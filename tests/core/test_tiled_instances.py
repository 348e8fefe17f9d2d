"""AIS and APG on tiled images: each tile's maps, stitched, AIS once on the whole image."""

from __future__ import annotations

import numpy as np
import pytest
from _tiling_helpers import LocalPredictor, disc_image
from scipy import ndimage

from napari_samscope.core.instances.apg import merge_masks
from napari_samscope.core.instances.postprocess import instances_from_maps
from napari_samscope.core.instances.targets import maps_from_labels
from napari_samscope.core.tiling import TiledPredictor, TileGrid, segment_instances_tiled
from napari_samscope.core.tiling.instances import (
    CroppedMask,
    merge_cropped_masks,
    tiled_instance_maps,
)

SHAPE, TILE, HALO = (300, 300), 96, 20


def tile_maps(tile, emb):
    """Maps rendered from the tile's own pixels: each bright region of the *tile* is one
    object, so an object cut by the tile's edge gets wrong (truncated) distances there,
    as a decoder that sees only the tile would."""
    pixels = emb.features[0, 0].numpy()
    regions, _ = ndimage.label(pixels > 127)
    return maps_from_labels(regions)


def _centres(grid: TileGrid):
    ys = sorted({t.inner[0] for t in grid} - {0})
    xs = sorted({t.inner[2] for t in grid} - {0})
    centres = [(y, x) for y in ys for x in xs]  # tile corners
    centres += [(y, 40) for y in ys] + [(40, x) for x in xs]  # on one boundary
    centres += [(150 + 3, xs[0] - 2), (12, 12), (SHAPE[0] - 10, SHAPE[1] - 10)]
    return centres


def _tiled(image):
    tp = TiledPredictor(LocalPredictor())
    tp.predictor.img_size = TILE
    tp.set_image(image, tile_shape=TILE, halo=HALO)
    return tp


def test_objects_across_tile_borders_are_one_object_with_the_untiled_pixels():
    grid = TileGrid(SHAPE, (TILE, TILE), (HALO, HALO))
    image = disc_image(SHAPE, _centres(grid), radius=7)
    truth, count = ndimage.label(image > 127)
    untiled = instances_from_maps(maps_from_labels(truth))
    tp = _tiled(image)
    maps = tiled_instance_maps(tp, maps_of=tile_maps)
    np.testing.assert_array_equal(maps, maps_from_labels(truth))  # halo garbage dropped
    tiled = segment_instances_tiled(tp, maps_of=tile_maps)
    assert tiled.dtype == np.uint32 and tiled.max() == count == untiled.max()
    np.testing.assert_array_equal(tiled, untiled)
    for value in range(1, count + 1):  # each disc is exactly one object
        inside = tiled[truth == value]
        assert len(np.unique(inside[inside > 0])) == 1


def test_per_tile_ais_would_split_border_objects():
    """What the stitching avoids: AIS on each tile alone cuts a border disc in two."""
    grid = TileGrid(SHAPE, (TILE, TILE), (HALO, HALO))
    y = grid[0].inner[1]
    image = disc_image(SHAPE, [(y, 40)], radius=7)
    pieces = np.zeros(SHAPE, np.uint32)
    for tile in grid:
        y0, y1, x0, x1 = tile.inner
        labels = instances_from_maps(maps_from_labels(ndimage.label(image[y0:y1, x0:x1] > 127)[0]))
        pieces[y0:y1, x0:x1] = np.where(labels > 0, labels + tile.index * 100, 0)
    assert len(np.unique(pieces)) - 1 == 2
    tiled = segment_instances_tiled(_tiled(image), maps_of=tile_maps)
    assert tiled.max() == 1


def test_objects_inside_a_tile_interior_equal_untiled_with_other_objects_truncated():
    """Where the maps of a tile disagree with the untiled maps (an object larger than the
    halo, cut by a tile edge), only the objects near it can differ: objects inside one
    tile's interior come out the same."""
    grid = TileGrid(SHAPE, (TILE, TILE), (HALO, HALO))
    inner = grid[4].inner
    small = [((inner[0] + inner[1]) // 2, (inner[2] + inner[3]) // 2)]
    image = disc_image(SHAPE, small, radius=6)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    image[(yy > 250) & (xx < 200)] = 200  # a large object across several tiles
    truth = ndimage.label(image > 127)[0]
    untiled = instances_from_maps(maps_from_labels(truth))
    tiled = segment_instances_tiled(_tiled(image), maps_of=tile_maps)
    y, x = small[0]
    ours = tiled == tiled[y, x]
    theirs = untiled == untiled[y, x]
    np.testing.assert_array_equal(ours, theirs)


def test_out_array_and_bad_input(tmp_path):
    image = disc_image(SHAPE, [(50, 50)], radius=6)
    tp = _tiled(image)
    out = np.lib.format.open_memmap(tmp_path / "maps.npy", "w+", np.float32, (3, *SHAPE))
    labels = segment_instances_tiled(tp, maps_of=tile_maps, out=out)
    assert labels.max() == 1 and float(out[0, 50, 50]) == 1.0
    with pytest.raises(ValueError, match="out must be"):
        tiled_instance_maps(tp, maps_of=tile_maps, out=np.zeros((3, 10, 10), np.float32))
    with pytest.raises(ValueError, match="Unknown instance segmentation mode"):
        segment_instances_tiled(tp, mode="amg", maps_of=tile_maps)
    with pytest.raises(TypeError, match="Unknown"):
        segment_instances_tiled(tp, maps_of=tile_maps, points_per_side=4)
    with pytest.raises(ValueError, match="instance decoder"):
        segment_instances_tiled(tp)
    with pytest.raises(ValueError, match="halo"):
        tp.set_image(image, tile_shape=64, halo=32)
    with pytest.raises(ValueError, match="No image is set"):
        tiled_instance_maps(TiledPredictor(LocalPredictor()), maps_of=tile_maps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_of_cropped_masks_equals_apg_merge(seed):
    rng = np.random.default_rng(seed)
    shape = (120, 150)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    full, cropped = [], []
    for _ in range(25):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(2, 15)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        if rng.random() < 0.3 and full:  # near-duplicates for the NMS
            mask = full[-1].copy()
            mask[:, : int(rng.integers(0, shape[1]))] &= rng.random() < 0.5
        full.append(mask)
        y0, x0 = int(rng.integers(0, 20)), int(rng.integers(0, 20))
        window = np.zeros((shape[0] + 40, shape[1] + 40), bool)  # masks come in tile windows
        window[20:-20, 20:-20] = mask
        cropped.append(CroppedMask(window[20 - y0 :, 20 - x0 :], -y0, -x0))
    scores = rng.random(len(full)).astype(np.float32)
    expected = merge_masks(np.stack(full), scores, 10, 0.7, shape)
    got = merge_cropped_masks(cropped, scores, 10, 0.7, shape)
    np.testing.assert_array_equal(got, expected)


def test_route_and_frame_of_pick_the_tile_with_most_margin():
    grid = TileGrid(SHAPE, (TILE, TILE), (HALO, HALO))
    for x, y in ((5.0, 5.0), (150.0, 140.0), (299.0, 10.0)):
        window = grid.route([x], [y])
        assert window == grid.best_tile((int(y), int(y) + 1, int(x), int(x) + 1)).outer
    big = grid.route([10.0, 200.0], [10.0, 200.0])  # larger than a tile: a fitted window
    assert big not in {t.outer for t in grid} and big[1] - big[0] >= 190
    with pytest.raises(ValueError, match="outside the image"):
        grid.route([301.0], [5.0])
    tp = _tiled(np.zeros(SHAPE, np.uint8))
    assert tp.frame_of(points=[[150.0, 140.0]], labels=[1]) == grid.route([150.0], [140.0])
    assert tp.frame_of(bboxes=[10, 10, 200, 200]) == big
    with pytest.raises(ValueError, match="one object"):
        tp.frame_of(bboxes=[[10, 10, 20, 20], [30, 30, 40, 40]])
