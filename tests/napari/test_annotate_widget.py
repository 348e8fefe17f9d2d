"""The "Auto-annotate" widget: blobs or Shapes boxes -> Labels, plane or stack, errors."""

import numpy as np
import pytest
from segmenting_model import ball_stack, disk_image
from widget_helpers import box_corners, wait_idle

from napari_samscope._widgets.annotate_widget import ANNOTATE_NAME


@pytest.fixture
def annotate_widget(viewer, segmenting_sam):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Auto-annotate")
    widget.session.set_model(segmenting_sam)
    return widget


def test_loaded_through_the_manifest_with_the_shared_session(viewer, annotate_widget):
    from napari_samscope._napari.session import get_session

    assert type(annotate_widget).__name__ == "AutoAnnotateWidget"
    assert annotate_widget.session is get_session(viewer)


def test_blob_detector_on_the_current_plane(viewer, annotate_widget, qtbot, notifications):
    viewer.add_image(disk_image(), name="disks")
    annotate_widget.reset_choices()
    with qtbot.waitSignal(annotate_widget.finished, timeout=20_000):
        annotate_widget.run("blobs", "plane")
    labels = viewer.layers[ANNOTATE_NAME].data
    assert labels.dtype == np.uint32 and labels.shape == (96, 128)
    assert labels[30, 40] > 0 and labels[60, 95] > 0 and labels[30, 40] != labels[60, 95]
    assert labels[5, 5] == 0 and labels.max() == 2
    disk = labels == labels[30, 40]
    assert 0.8 * np.pi * 12**2 < disk.sum() < 1.3 * np.pi * 12**2
    assert any("2 objects" in m for m in notifications())


def test_boxes_from_a_shapes_layer(viewer, annotate_widget, qtbot):
    viewer.add_image(disk_image(), name="disks")
    viewer.add_shapes([box_corners(14, 24, 46, 56)], shape_type="rectangle", name="my boxes")
    annotate_widget.reset_choices()
    annotate_widget.shapes.value = viewer.layers["my boxes"]
    with qtbot.waitSignal(annotate_widget.finished, timeout=20_000):
        annotate_widget.run("shapes", "plane")
    labels = viewer.layers[ANNOTATE_NAME].data
    assert labels[30, 40] == 1 and labels[60, 95] == 0  # only the boxed disk


def test_whole_stack_with_the_blob_detector(viewer, annotate_widget, qtbot):
    stack, truth = ball_stack()
    viewer.add_image(stack, name="ball")
    viewer.dims.set_point(0, 4)
    annotate_widget.reset_choices()
    with qtbot.waitSignal(annotate_widget.finished, timeout=30_000):
        annotate_widget.run("blobs", "stack")
    labels = viewer.layers[ANNOTATE_NAME].data
    assert labels.shape == stack.shape
    found = labels > 0
    assert found[4, 32, 30] and found[2, 32, 30] and found[6, 32, 30]
    inter = (found & truth).sum()
    assert inter / (found | truth).sum() > 0.6


def test_errors_become_notifications(viewer, annotate_widget, qtbot, notifications):
    annotate_widget.run("blobs", "plane")
    assert any("Choose an image layer" in m for m in notifications.errors())
    viewer.add_image(disk_image(), name="disks")
    annotate_widget.reset_choices()
    annotate_widget.run("shapes", "plane")
    assert any("Shapes layer" in m for m in notifications.errors())
    annotate_widget.run("blobs", "stack")
    assert any("single plane" in m for m in notifications.errors())
    viewer.add_shapes([box_corners(200, 200, 220, 220)], shape_type="rectangle", name="far away")
    annotate_widget.reset_choices()
    annotate_widget.shapes.value = viewer.layers["far away"]
    annotate_widget.run("shapes", "plane")
    assert any("no rectangle" in m for m in notifications.errors())
    wait_idle(qtbot, annotate_widget)
    assert ANNOTATE_NAME not in viewer.layers
    with pytest.raises(ValueError, match="source"):
        annotate_widget.run("yolo", "plane")


def test_overlapping_objects_keep_the_small_one_visible(viewer, annotate_widget, qtbot):
    """Boxes around a big disk and a small one inside it: the small one is painted last."""
    image = np.full((96, 128), 20, np.uint8)
    rr, cc = np.mgrid[:96, :128]
    image[(rr - 48) ** 2 + (cc - 60) ** 2 <= 30**2] = 200
    viewer.add_image(image, name="big")
    viewer.add_shapes([box_corners(16, 28, 80, 92), box_corners(40, 52, 56, 68)],
                      shape_type="rectangle", name="boxes")
    annotate_widget.reset_choices()
    annotate_widget.shapes.value = viewer.layers["boxes"]
    with qtbot.waitSignal(annotate_widget.finished, timeout=20_000):
        annotate_widget.run("shapes", "plane")
    labels = viewer.layers[ANNOTATE_NAME].data
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[48, 60] == 2 and labels[48, 35] == 1  # the inner box's object on top
