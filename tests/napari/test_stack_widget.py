"""3D stacks in the main widget: per-plane prompts, the cache, propagation, everything."""

import numpy as np
from segmenting_model import ball_stack
from widget_helpers import add_points, box_corners, wait_idle

from napari_samscope._napari.api import segment_everything_layer, segment_stack_layer


def _stack_viewer(viewer, qtbot, widget, z=4, scale=(2.0, 1.0, 1.0)):
    stack, truth = ball_stack()
    image = viewer.add_image(stack, name="ball", scale=scale)
    viewer.dims.set_point(0, z * scale[0])
    qtbot.waitUntil(lambda: widget.points_layer is not None)
    return image, truth


def test_prompts_apply_to_their_plane_and_embeddings_are_cached(viewer, main_widget, qtbot):
    _, truth = _stack_viewer(viewer, qtbot, main_widget, z=4)
    add_points(main_widget.points_layer, [[4, 32, 30]])
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"].data
    assert preview.shape == truth.shape
    assert preview[4, 32, 30] == 1 and preview[3].max() == 0 and preview[5].max() == 0
    iou = ((preview[4] > 0) & truth[4]).sum() / ((preview[4] > 0) | truth[4]).sum()
    assert iou > 0.8
    cache = main_widget.session.cache
    assert len(cache) == 1 and cache.nbytes > 0
    assert "embeddings:" in main_widget.ui.cache_label.text()
    assert main_widget.ui.cache_label.text() != "embeddings: 0 MB"


def test_precompute_encodes_the_whole_stack_and_the_bound_is_settable(viewer, main_widget, qtbot):
    _stack_viewer(viewer, qtbot, main_widget)
    main_widget.precompute()
    wait_idle(qtbot, main_widget)
    cache = main_widget.session.cache
    assert len(cache) == 9
    per_plane = cache.nbytes // 9
    main_widget.ui.cache_mb.setValue(0)  # bound 0: everything is dropped
    assert len(cache) == 0 and per_plane > 0
    assert "of 0 MB" in main_widget.ui.cache_label.text()


def test_segment_all_slices_follows_the_object_and_commits_one_id(viewer, main_widget, qtbot):
    image, truth = _stack_viewer(viewer, qtbot, main_widget, z=4)
    add_points(main_widget.points_layer, [[4, 32, 30]])
    wait_idle(qtbot, main_widget)
    main_widget.segment_all_slices()
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"].data > 0
    planes = sorted(set(np.nonzero(preview)[0]))
    assert planes == list(range(9))  # both ways, to the stack's edges
    assert (preview & truth).sum() / (preview | truth).sum() > 0.8
    assert main_widget.commit() == [1]
    labels = viewer.layers["SAM labels"].data
    assert set(np.unique(labels)) == {0, 1} and (labels[truth] == 1).mean() > 0.9
    np.testing.assert_allclose(viewer.layers["SAM labels"].scale, image.scale)


def test_a_single_negative_point_stops_propagation(viewer, main_widget, qtbot):
    _stack_viewer(viewer, qtbot, main_widget, z=4)
    points = main_widget.points_layer
    add_points(points, [[4, 32, 30], [6, 2, 2]], ["positive", "negative"])
    main_widget.ui.mode.setCurrentText("box")
    wait_idle(qtbot, main_widget)
    main_widget.segment_all_slices()
    wait_idle(qtbot, main_widget)
    planes = sorted(set(np.nonzero(viewer.layers["SAM preview"].data)[0]))
    assert planes == [0, 1, 2, 3, 4, 5]  # stopped before plane 6


def test_two_prompted_planes_fill_between_them(viewer, main_widget, qtbot):
    _stack_viewer(viewer, qtbot, main_widget, z=4)
    add_points(main_widget.points_layer, [[2, 32, 30], [6, 32, 30], [7, 2, 2]],
               ["positive", "positive", "negative"])
    wait_idle(qtbot, main_widget)
    main_widget.segment_all_slices()
    wait_idle(qtbot, main_widget)
    planes = sorted(set(np.nonzero(viewer.layers["SAM preview"].data)[0]))
    assert planes == [0, 1, 2, 3, 4, 5, 6]  # filled between 2 and 6, stopped at 7


def test_propagation_needs_one_object_per_plane(viewer, main_widget, qtbot, notifications):
    _stack_viewer(viewer, qtbot, main_widget, z=4)
    main_widget.shapes_layer.add_rectangles(box_corners(10, 10, 50, 50, lead=(4,)))
    main_widget.shapes_layer.add_rectangles(box_corners(0, 0, 5, 5, lead=(4,)))
    wait_idle(qtbot, main_widget)
    main_widget.segment_all_slices()
    wait_idle(qtbot, main_widget)
    assert any("follows one object" in m for m in notifications.errors())


def test_everything_on_a_stack_links_ids_through_z(viewer, everything_widget, qtbot):
    stack, truth = ball_stack()
    viewer.add_image(stack, name="ball")
    everything_widget.reset_choices()
    everything_widget.points_per_side.setValue(4)
    everything_widget.scope.setCurrentIndex(1)
    with qtbot.waitSignal(everything_widget.finished, timeout=30_000):
        everything_widget.run()
    labels = viewer.layers["SAM everything"].data
    assert labels.shape == truth.shape
    ids = np.unique(labels[truth])
    assert len(ids) == 1 and ids[0] > 0  # one object, one id through z


def test_console_functions_on_a_stack(segmenting_predictor):
    from napari.layers import Image, Points

    stack, truth = ball_stack()
    image = Image(stack, name="ball")
    labels = segment_stack_layer(image, Points([[4, 32, 30]]), model=segmenting_predictor)
    assert labels.shape == truth.shape and labels.dtype == np.uint32
    assert ((labels > 0) & truth).sum() / ((labels > 0) | truth).sum() > 0.8
    every = segment_everything_layer(image, segmenting_predictor, stack=True, points_per_side=4)
    assert len(np.unique(every[truth])) == 1 and every[truth].min() > 0
