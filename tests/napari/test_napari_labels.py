"""Masks -> Labels: next free id, no silent overwrite, one undo step per commit."""

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_samscope._napari.coords import current_geometry
from napari_samscope._napari.labels import (
    Segmentation,
    commit,
    next_free_id,
    write_planes,
    write_preview,
)


def _geometry(shape=(4, 10, 12)):
    return current_geometry(Image(np.zeros(shape)), tuple(range(len(shape))), (1.0,) * len(shape))


def _disk_objects():
    a = np.zeros((10, 12), bool)
    a[2:6, 2:6] = True
    b = np.zeros((10, 12), bool)
    b[4:9, 4:10] = True
    return a, b


def test_next_free_id():
    assert next_free_id(np.zeros((3, 3), np.uint8)) == 1
    assert next_free_id(np.array([[0, 7], [2, 0]])) == 8


def test_commit_takes_new_ids_keeps_existing_labels_and_undoes_in_one_step():
    g = _geometry()
    existing = np.zeros((4, 10, 12), np.uint32)
    existing[1, 5, 5] = 3
    layer = Labels(existing.copy(), name="labels")
    a, b = _disk_objects()
    seg = Segmentation(g, [{(1,): a}, {(1,): b, (2,): b}])
    ids = commit(layer, seg)
    assert ids == [4, 5]
    assert layer.data[1, 5, 5] == 3  # untouched
    assert layer.data[1, 2, 2] == 4 and layer.data[2, 8, 9] == 5 and layer.data[1, 8, 9] == 5
    assert layer.data[1, 4, 4] == 4  # an earlier object keeps what it wrote
    layer.undo()
    np.testing.assert_array_equal(layer.data, existing)


def test_commit_overwrites_only_when_asked():
    g = _geometry()
    layer = Labels(np.full((4, 10, 12), 2, np.uint16))
    a, _ = _disk_objects()
    assert commit(layer, Segmentation(g, [{(1,): a}])) == []
    assert commit(layer, Segmentation(g, [{(1,): a}]), overwrite=True) == [3]
    assert (layer.data[1][a] == 3).all() and (layer.data[0] == 2).all()


def test_commit_refuses_a_mismatched_layer_and_a_too_small_dtype():
    g = _geometry()
    a, _ = _disk_objects()
    with pytest.raises(ValueError, match="has shape"):
        commit(Labels(np.zeros((10, 12), np.uint8)), Segmentation(g, [{(1,): a}]))
    full = np.zeros((4, 10, 12), np.uint8)
    full[0, 0, 0] = 255
    layer = Labels(full, name="u8")
    with pytest.raises(ValueError, match="cannot hold label 256"):
        commit(layer, Segmentation(g, [{(1,): a}]))
    assert layer.data.sum() == 255  # nothing written


def test_preview_draws_small_objects_on_top_and_clears_previous_planes():
    g = _geometry()
    preview = Labels(np.zeros((4, 10, 12), np.uint8))
    a, b = _disk_objects()
    drawn = write_preview(preview, Segmentation(g, [{(1,): b, (3,): b}, {(1,): a}]))
    assert preview.data[1, 4, 4] == 2  # the smaller object a stays visible
    assert preview.data[3, 8, 9] == 1 and len(drawn) == 2
    drawn = write_preview(preview, Segmentation(g, [{(0,): a}]), drawn)
    assert preview.data[1].max() == 0 and preview.data[3].max() == 0
    assert preview.data[0, 2, 2] == 1 and len(drawn) == 1
    write_preview(preview, None, drawn)
    assert preview.data.max() == 0
    assert not preview.undo_history if hasattr(preview, "undo_history") else True


def _reference(seg, shape):
    out = np.zeros(shape, np.uint8)
    for key in seg.planes:
        plane = seg.label_plane(key)
        flipped = seg.geometry.row_axis > seg.geometry.col_axis
        out[seg.geometry.labels_index(key)] = plane.T if flipped else plane
    return out


@pytest.mark.parametrize("side", [8, 40], ids=["small change (partial)", "large change (refresh)"])
def test_preview_updates_match_whole_plane_drawing_and_leave_no_undo(side):
    shape = (64, 64)
    g = _geometry(shape)
    preview = Labels(np.zeros(shape, np.uint8))
    drawn = []
    for r, c in [(2, 3), (10, 20), (12, 22), (20, 1)]:
        a = np.zeros(shape, bool)
        a[r:r + side, c:c + side] = True
        b = np.zeros(shape, bool)
        b[r + 2:r + 5, c + 2:c + 6] = True  # smaller: drawn on top
        seg = Segmentation(g, [{(): a}, {(): b}])
        drawn = write_preview(preview, seg, drawn)
        np.testing.assert_array_equal(preview.data, _reference(seg, shape))
    before = preview.data.copy()
    preview.undo()  # the preview keeps no history: nothing to undo
    np.testing.assert_array_equal(preview.data, before)
    write_preview(preview, None, drawn)
    assert preview.data.max() == 0


def test_preview_in_a_transposed_view_writes_rows_and_columns_right():
    layer = Image(np.zeros((3, 10, 12)))
    g = current_geometry(layer, (0, 2, 1), (1.0, 1.0, 1.0))  # displayed: columns, rows
    assert g.row_axis > g.col_axis
    preview = Labels(np.zeros((3, 10, 12), np.uint8))
    mask = np.zeros(g.plane_shape, bool)
    mask[1:3, 4:9] = True
    drawn = write_preview(preview, Segmentation(g, [{(2,): mask}]))
    np.testing.assert_array_equal(preview.data, _reference(Segmentation(g, [{(2,): mask}]),
                                                           (3, 10, 12)))
    write_preview(preview, None, drawn)
    assert preview.data.max() == 0
    plane = np.arange(120, dtype=np.uint8).reshape(g.plane_shape)  # (12, 10): rows, columns
    write_planes(preview, g, {(1,): plane})
    np.testing.assert_array_equal(preview.data[1], plane.T)
