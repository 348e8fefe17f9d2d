"""World (row, col) -> image data -> SAM (x, y): the one conversion path."""

import numpy as np
import pytest
from napari.layers import Image

from napari_samscope._napari.coords import (
    current_geometry,
    layer_data_to_world,
    plane_key_of,
    rowcol_to_xy,
    world_to_layer_data,
)


def _stack(**kwargs):
    return Image(np.zeros((6, 20, 30), np.uint16), name="stack", **kwargs)


def test_world_to_data_respects_scale_and_translate_without_touching_them():
    layer = _stack(scale=(2.0, 0.5, 0.25), translate=(10.0, 5.0, -3.0))
    world = np.array([[14.0, 7.5, -2.0], [10.0, 5.0, -3.0]])
    data = world_to_layer_data(layer, world)
    np.testing.assert_allclose(data, [[2.0, 5.0, 4.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(layer_data_to_world(layer, data), world)
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (10.0, 5.0, -3.0))


def test_world_to_data_uses_trailing_world_axes_and_rejects_short_input():
    layer = Image(np.zeros((20, 30)), scale=(2.0, 2.0))
    np.testing.assert_allclose(world_to_layer_data(layer, [[7.0, 4.0, 6.0]]), [[2.0, 3.0]])
    with pytest.raises(ValueError, match="full world coordinates"):
        world_to_layer_data(_stack(), [[1.0, 2.0]])


def test_current_geometry_of_a_scaled_stack():
    layer = _stack(scale=(2.0, 0.5, 0.5), translate=(10.0, 0.0, 0.0))
    g = current_geometry(layer, dims_order=(0, 1, 2), dims_point=(16.2, 3.0, 3.0))
    assert (g.row_axis, g.col_axis, g.stack_axis, g.current) == (1, 2, 0, (3,))
    assert g.plane_shape == (20, 30) and g.labels_shape == (6, 20, 30)
    assert g.image_index((4,)) == (4, slice(None), slice(None))
    assert g.with_stack_index((3,), 5) == (5,)


def test_current_geometry_follows_a_transposed_view_and_a_wider_world():
    layer = _stack()
    g = current_geometry(layer, dims_order=(0, 1, 3, 2), dims_point=(7.0, 2.0, 0.0, 0.0))
    assert (g.row_axis, g.col_axis, g.current, g.stack_axis) == (2, 1, (2,), 0)
    assert g.plane_order() == (1, 0)
    mask = np.zeros((30, 20), bool)
    mask[4, 7] = True  # row 4 of the displayed plane = axis 2, column 7 = axis 1
    idx = g.labels_indices((2,), mask)
    assert [int(a[0]) for a in idx] == [2, 7, 4]


def test_current_geometry_with_a_channel_axis():
    layer = Image(np.zeros((4, 5, 20, 30)), name="ch")
    g = current_geometry(layer, (0, 1, 2, 3), (1.0, 3.0, 0.0, 0.0), channel_axis=0)
    assert g.key_axes == (1,) and g.current == (3,) and g.stack_axis == 1
    assert g.labels_shape == (5, 20, 30)
    assert g.plane_order() == (1, 2, 0)
    assert g.labels_index((3,)) == (3, slice(None), slice(None))


@pytest.mark.parametrize(
    ("order", "point", "channel_axis", "message"),
    [
        ((0, 1, 2), (9.0, 0.0, 0.0), None, "outside layer"),
        ((0, 1, 2), (-1.0, 0.0, 0.0), None, "outside layer"),
        ((1, 2, 0), (0.0, 0.0, 0.0), 0, "channel axis"),
        ((0, 1, 2), (0.0, 0.0, 0.0), 3, "does not exist"),
    ],
)
def test_current_geometry_rejects_bad_states(order, point, channel_axis, message):
    with pytest.raises(ValueError, match=message):
        current_geometry(_stack(), order, point, channel_axis=channel_axis)


def test_current_geometry_rejects_displayed_axes_the_layer_lacks():
    layer = Image(np.zeros((20, 30)), name="flat")
    with pytest.raises(ValueError, match="not axes of layer"):
        current_geometry(layer, (1, 2, 0), (0.0, 0.0, 0.0))


def test_plane_keys_round_like_napari_and_flag_points_outside():
    g = current_geometry(_stack(), (0, 1, 2), (0.0, 0.0, 0.0))
    keys = plane_key_of(g, [[2.4, 1, 1], [2.6, 1, 1], [-3, 1, 1], [6.0, 1, 1]])
    assert keys == [(2,), (3,), None, None]


def test_rowcol_to_xy_swaps_to_sam_order():
    g = current_geometry(_stack(), (0, 1, 2), (0.0, 0.0, 0.0))
    xy = rowcol_to_xy(g, [[0, 5.0, 7.5]])
    assert xy.dtype == np.float32
    np.testing.assert_allclose(xy, [[7.5, 5.0]])


def test_stack_lines_are_views_in_display_order():
    from napari_samscope._napari.images import ImageSettings, PlaneSource

    data = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)  # T, Z, Y, X
    layer = Image(data, name="tzyx")
    g = current_geometry(layer, (0, 1, 3, 2), (1.0, 0.0, 0.0, 0.0))  # X shown as rows
    source = PlaneSource.from_layer(layer, g, ImageSettings())
    line = source.line_volume(g.current)
    assert line.shape == (3, 5, 4) and np.shares_memory(line, data)
    np.testing.assert_array_equal(line, data[1].transpose(0, 2, 1))
    np.testing.assert_array_equal(source.plane((1, 2)), data[1, 2].T)
    flat = Image(data[0, 0], name="yx")
    g2 = current_geometry(flat, (0, 1), (0.0, 0.0))
    assert PlaneSource.from_layer(flat, g2, ImageSettings()).line_volume(()).shape == (1, 4, 5)
