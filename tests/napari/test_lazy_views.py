"""``_napari.lazy_layers``: the lazy views of layer data equal the in-memory path."""

import dask.array as da
import numpy as np
import pytest

from napari_samscope._napari.coords import PlaneGeometry
from napari_samscope._napari.images import ImageSettings, PlaneSource, plane_array
from napari_samscope._napari.lazy_layers import LayerView, LazyStack


def _geometry(shape, row, col, channel=None, stack=None):
    keys = tuple(a for a in range(len(shape)) if a not in (row, col, channel))
    return PlaneGeometry(len(shape), tuple(shape), row, col, channel, (0,) * len(keys), stack)


@pytest.mark.parametrize("layout", ["zcyx", "yxz displayed as z,x", "tzyx"])
def test_a_layer_view_reads_the_same_planes_as_the_numpy_path(layout):
    rng = np.random.default_rng(0)
    if layout == "zcyx":
        data, g = rng.integers(0, 999, (3, 4, 10, 12)), _geometry((3, 4, 10, 12), 2, 3, 1, 0)
    elif layout == "yxz displayed as z,x":  # the viewer shows axes 2 (rows) and 1 (columns)
        data, g = rng.integers(0, 999, (10, 12, 5)), _geometry((10, 12, 5), 2, 1, None, 0)
    else:
        data, g = rng.integers(0, 999, (2, 3, 10, 12)), _geometry((2, 3, 10, 12), 2, 3, None, 1)
    view = LayerView(da.from_array(data, chunks=2), g, rgb=False)
    keys = list(np.ndindex(*[g.shape[a] for a in g.key_axes]))
    for key in keys:
        np.testing.assert_array_equal(view[key], plane_array(data, g, key, False))
        np.testing.assert_array_equal(view[key + (slice(2, 7), slice(3, 9))],
                                      plane_array(data, g, key, False)[2:7, 3:9])
    assert view.shape[: len(g.key_axes)] == tuple(g.shape[a] for a in g.key_axes)
    with pytest.raises(IndexError):
        view[slice(None)]


def test_a_layer_view_keeps_the_chosen_channels_in_order():
    data = np.arange(2 * 5 * 6 * 7).reshape(2, 5, 6, 7)
    g = _geometry(data.shape, 2, 3, 1, 0)
    view = LayerView(data, g, rgb=False, channels=(4, 0, 2))
    assert view.shape == (2, 6, 7, 3)
    np.testing.assert_array_equal(view[(1,)], np.moveaxis(data[1], 0, -1)[..., [4, 0, 2]])


def test_a_lazy_stack_reads_only_the_plane_it_converts_and_normalises_it_alone():
    reads = []
    stack = np.full((4, 16, 16), 100, np.uint16)
    stack[2, 4:8, 4:8] = 5000
    stack[3] = 7  # a blank plane is converted, not refused

    class Counting:
        shape, dtype, ndim = stack.shape, stack.dtype, stack.ndim

        def __getitem__(self, index):
            reads.append(index[0])
            return stack[index]

    g = _geometry(stack.shape, 1, 2, None, 0)
    source = PlaneSource("s", Counting(), False, g, ImageSettings(), ("u", 1), (), {}, lazy=True)
    lazy = source.stack((2,))
    assert isinstance(lazy, LazyStack) and len(lazy) == 4 and reads == []
    rgb = lazy.plane(2)
    assert reads == [2] and rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert rgb[5, 5, 0] == 255 and rgb[0, 0, 0] == 0
    assert lazy.plane(3).shape == (16, 16, 3)
    assert lazy.signature() == source.stack((2,)).signature()
