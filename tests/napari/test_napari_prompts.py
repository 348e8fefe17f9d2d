"""Points and Shapes layers -> SAM prompts per plane."""

import numpy as np
import pandas as pd
import pytest
from napari.layers import Image, Points, Shapes

from napari_samscope._napari.coords import current_geometry
from napari_samscope._napari.prompts import (
    POINT_COLOURS,
    collect_prompts,
    mask_to_prompt_logits,
    point_polarities,
)

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, 4.0, -2.0)


def _image():
    return Image(np.zeros((5, 40, 60), np.float32), name="img", scale=SCALE, translate=TRANSLATE)


def _points(data, labels, **kwargs):
    features = pd.DataFrame({"label": pd.Categorical(labels, categories=list(POINT_COLOURS))})
    return Points(np.asarray(data, float), ndim=3, features=features, name="pts", **kwargs)


def _box(z, r0, c0, r1, c1):
    """Four cyclic corners of a rectangle on plane z, starting at (r0, c0)."""
    return np.array([[z, r0, c0], [z, r1, c0], [z, r1, c1], [z, r0, c1]], float)


def _geometry(image, point=(14.0, 4.0, -2.0)):
    return current_geometry(image, (0, 1, 2), point), point


def test_points_in_world_and_in_the_image_frame_give_the_same_prompts():
    image = _image()
    g, point = _geometry(image)
    data_rcz = np.array([[2, 10.0, 20.0], [2, 30.0, 5.0]])  # image data (z, row, col)
    world = data_rcz * SCALE + TRANSLATE
    in_world = collect_prompts(image, g, point, _points(world, ["positive", "negative"]))
    in_frame = collect_prompts(
        image, g, point,
        _points(data_rcz, ["positive", "negative"], scale=SCALE, translate=TRANSLATE),
    )
    for prompts in (in_world, in_frame):
        plane = prompts.on((2,))
        np.testing.assert_allclose(plane.points, [[20.0, 10.0], [5.0, 30.0]], atol=1e-5)
        np.testing.assert_array_equal(plane.labels, [1, 0])
        assert list(prompts.planes) == [(2,)] and not prompts.skipped


def test_boxes_are_normalised_whatever_the_drawing_direction():
    image = _image()
    g, point = _geometry(image)
    shapes = Shapes(ndim=3, scale=SCALE, translate=TRANSLATE)
    shapes.add_rectangles(_box(1, 30.0, 40.0, 10.0, 12.0))  # drawn up-left
    box, mask = collect_prompts(image, g, point, shapes_layer=shapes).on((1,)).boxes[0]
    np.testing.assert_allclose(box, [12.0, 10.0, 40.0, 30.0])
    assert mask is None and box.dtype == np.float32


def test_polygons_and_ellipses_become_a_box_and_a_mask():
    image = _image()
    g, point = _geometry(image)
    shapes = Shapes(ndim=3, scale=SCALE, translate=TRANSLATE)
    shapes.add_polygons([np.array([[0, 5.0, 5.0], [0, 5.0, 25.0], [0, 25.0, 5.0]])])
    shapes.add_ellipses(_box(3, 10.0, 30.0, 30.0, 50.0))
    prompts = collect_prompts(image, g, point, shapes_layer=shapes)
    (tri_box, tri), (ell_box, ell) = prompts.on((0,)).boxes[0], prompts.on((3,)).boxes[0]
    np.testing.assert_allclose(tri_box, [5, 5, 25, 25])
    assert tri[6, 6] and tri[20, 7] and not tri[20, 20] and tri.shape == (40, 60)
    np.testing.assert_allclose(ell_box, [30, 10, 50, 30], atol=0.1)
    assert ell[20, 40] and not ell[11, 31] and ell.sum() == pytest.approx(np.pi * 100, rel=0.1)


def test_points_join_the_box_that_contains_them():
    image = _image()
    g, point = _geometry(image)
    shapes = Shapes(ndim=3, scale=SCALE, translate=TRANSLATE)
    shapes.add_rectangles(_box(2, 0.0, 0.0, 20.0, 20.0))
    shapes.add_rectangles(_box(2, 0.0, 30.0, 20.0, 50.0))
    shapes.add_rectangles(_box(2, 25.0, 30.0, 35.0, 50.0))
    pts = np.array([[2, 5.0, 5.0], [2, 10.0, 40.0], [2, 38.0, 2.0], [2, 39.0, 3.0]])
    points = _points(pts, ["positive", "negative", "positive", "negative"],
                     scale=SCALE, translate=TRANSLATE)
    objects = collect_prompts(image, g, point, points, shapes).on((2,)).objects()
    assert len(objects) == 4  # three boxes, plus the free points with a positive among them
    np.testing.assert_array_equal(objects[0].labels, [1])
    np.testing.assert_array_equal(objects[1].labels, [0])
    assert len(objects[2].points) == 0 and objects[2].box is not None
    np.testing.assert_allclose(objects[3].points, [[2, 38], [3, 39]])
    assert objects[3].box is None


def test_a_single_negative_point_is_a_stop_plane_and_not_an_object():
    image = _image()
    g, point = _geometry(image)
    pts = _points([[1, 5.0, 5.0], [4, 5.0, 5.0]], ["positive", "negative"],
                  scale=SCALE, translate=TRANSLATE)
    prompts = collect_prompts(image, g, point, pts)
    assert prompts.stop_planes == [(4,)] and prompts.prompted_planes == [(1,)]
    assert prompts.on((4,)).objects() == []


def test_a_2d_prompt_layer_prompts_the_current_plane():
    image = _image()
    g, point = _geometry(image, point=(16.0, 4.0, -2.0))  # plane 3
    pts = Points(np.array([[3.0 * 0.5 + 4.0, 8.0 * 0.5 - 2.0]]), scale=(1, 1))
    prompts = collect_prompts(image, g, point, pts)
    np.testing.assert_allclose(prompts.on((3,)).points, [[8.0, 3.0]])
    np.testing.assert_array_equal(prompts.on((3,)).labels, [1])  # no feature: positive


def test_prompts_on_a_layer_with_more_dims_are_refused():
    image = _image()
    g, point = _geometry(image)
    pts = Points(np.zeros((1, 4)), ndim=4, name="4d")
    with pytest.raises(ValueError, match="has 4 dimensions"):
        collect_prompts(image, g, point, pts)


def test_prompts_outside_the_image_are_skipped_and_reported():
    image = _image()
    g, point = _geometry(image)
    pts = _points([[2, 500.0, 5.0], [40, 5.0, 5.0]], ["positive", "positive"],
                  scale=SCALE, translate=TRANSLATE)
    shapes = Shapes(ndim=3, scale=SCALE, translate=TRANSLATE)
    shapes.add_rectangles(_box(2, -50.0, -50.0, -10.0, -10.0))
    shapes.add_lines(np.array([[2, 0.0, 0.0], [2, 5.0, 5.0]]))
    prompts = collect_prompts(image, g, point, pts, shapes)
    assert prompts.planes == {}
    assert len(prompts.skipped) == 3
    assert any("line" in s for s in prompts.skipped)


def test_point_polarities_accept_user_layers_and_reject_nonsense():
    np.testing.assert_array_equal(
        point_polarities(Points(np.zeros((3, 2)), features={"label": [1, 0, True]})), [1, 0, 1]
    )
    np.testing.assert_array_equal(point_polarities(Points(np.zeros((2, 2)))), [1, 1])
    with pytest.raises(ValueError, match="use 'positive' or 'negative'"):
        point_polarities(Points(np.zeros((1, 2)), features={"label": ["maybe"]}, name="p"))


def test_mask_prompt_follows_sam_geometry():
    mask = np.zeros((50, 100), bool)
    mask[:, :50] = True
    logits = mask_to_prompt_logits(mask, 64)
    assert logits.shape == (64, 64) and logits.dtype == np.float32
    assert logits[10, 10] > 0 and logits[10, 40] < 0
    assert np.all(logits[32:] < 0)  # padding below the 32 resized rows
    with pytest.raises(ValueError, match="non-empty"):
        mask_to_prompt_logits(np.zeros((0, 3), bool), 64)
