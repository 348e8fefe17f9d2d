"""The main widget driven as a person drives it: real mouse clicks and key presses on
napari's canvas (Qt events, through napari's own mouse and key bindings), with the
widget loaded through the plugin's manifest."""

import numpy as np
import pytest
from segmenting_model import SegmentingPredictor, disk_image
from widget_helpers import click, press, wait_idle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def shown(make_napari_viewer, segmenting_sam, qtbot):
    """A shown viewer with the disks image and the main widget (segmenting double)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    image = viewer.add_image(disk_image(), name="disks")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(segmenting_sam, predictor_factory=SegmentingPredictor)
    qtbot.waitUntil(lambda: widget.points_layer is not None, timeout=10_000)
    viewer.reset_view()
    qtbot.wait(50)
    return viewer, widget, image


def test_click_t_click_gives_a_positive_and_a_negative_point(shown, qtbot):
    viewer, widget, image = shown
    points = widget.points_layer
    assert viewer.layers.selection.active is points and points.mode == "add"
    click(qtbot, viewer, image, (30, 40))  # disk A
    press(qtbot, viewer, "T")  # the next point is negative
    click(qtbot, viewer, image, (60, 95))  # disk B
    assert len(points.data) == 2
    assert list(points.features["label"]) == ["positive", "negative"]
    np.testing.assert_allclose(points.face_color[:, :3], [[0, 1, 0], [1, 0, 0]])
    assert widget.ui.status.text() == "next point: negative"
    wait_idle(qtbot, widget)
    preview = viewer.layers["SAM preview"].data
    assert preview[30, 40] > 0  # the positive point's object
    assert preview[60, 95] == 0  # the negative point's object is left out
    press(qtbot, viewer, "T")  # back to positive for the next point
    click(qtbot, viewer, image, (60, 100))
    assert list(points.features["label"]) == ["positive", "negative", "positive"]


def test_t_after_commit_or_clear_does_nothing_harmful(shown, qtbot, notifications):
    viewer, widget, image = shown
    click(qtbot, viewer, image, (30, 40))
    wait_idle(qtbot, widget)
    press(qtbot, viewer, "C")  # commit
    wait_idle(qtbot, widget)
    assert viewer.layers["SAM labels"].data[30, 40] == 1
    viewer.layers.selection.active = widget.points_layer
    press(qtbot, viewer, "T")
    click(qtbot, viewer, image, (60, 95))
    press(qtbot, viewer, "C", shift=True)  # clear prompts
    press(qtbot, viewer, "T")
    press(qtbot, viewer, "T")
    assert notifications.errors() == []
    assert len(widget.points_layer.data) == 0


def test_commit_keeps_the_prompt_layer_active_and_the_next_click_adds_a_prompt(shown, qtbot):
    viewer, widget, image = shown
    points = widget.points_layer
    click(qtbot, viewer, image, (30, 40))
    wait_idle(qtbot, widget)
    press(qtbot, viewer, "C")
    wait_idle(qtbot, widget)
    assert "SAM labels" in viewer.layers
    assert viewer.layers.selection.active is points and points.mode == "add"
    click(qtbot, viewer, image, (60, 95))  # the next nucleus
    assert len(points.data) == 1
    wait_idle(qtbot, widget)
    press(qtbot, viewer, "C")
    wait_idle(qtbot, widget)
    labels = viewer.layers["SAM labels"].data
    assert labels[30, 40] == 1 and labels[60, 95] == 2


def test_the_preview_has_one_colour_that_committed_labels_do_not_share(shown, qtbot):
    from napari.utils.colormaps.standardize_color import transform_color

    viewer, widget, image = shown
    click(qtbot, viewer, image, (30, 40))
    wait_idle(qtbot, widget)
    press(qtbot, viewer, "C")
    wait_idle(qtbot, widget)
    viewer.layers.selection.active = widget.points_layer
    click(qtbot, viewer, image, (30, 40))
    click(qtbot, viewer, image, (60, 95))  # one object over two disks
    widget.shapes_layer.add_rectangles(np.array([[44, 79], [44, 111], [76, 111], [76, 79]], float))
    wait_idle(qtbot, widget)
    preview, labels = viewer.layers["SAM preview"], viewer.layers["SAM labels"]
    assert preview.data.max() == 2  # two preview objects...
    magenta = transform_color("magenta")[0]
    for label in (1, 2):  # ...drawn in the same one colour
        np.testing.assert_allclose(preview.get_color(label), magenta)
    assert not np.allclose(labels.get_color(1), magenta)  # committed: another colour


def test_click_t_click_feeds_the_first_mask_back_with_the_negative_click(shown, qtbot):
    """The second click refines the preview the user saw: the predictor gets both points
    and, as its mask prompt, the low-resolution logits of the first click's mask."""
    viewer, widget, image = shown
    predictor = widget.session.predictor
    calls, original = [], predictor.predict

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((kwargs, result))
        return result

    predictor.predict = spy
    click(qtbot, viewer, image, (30, 40))
    wait_idle(qtbot, widget)
    assert len(calls) == 1 and calls[0][0].get("masks") is None
    first_logits = calls[0][1].logits[0]
    press(qtbot, viewer, "T")
    click(qtbot, viewer, image, (60, 95))
    wait_idle(qtbot, widget)
    kwargs, _ = calls[-1]
    np.testing.assert_array_equal(kwargs["labels"], [1, 0])
    assert kwargs["multimask_output"] is False
    np.testing.assert_array_equal(kwargs["masks"], first_logits)
    assert viewer.layers["SAM preview"].data[60, 95] == 0
    press(qtbot, viewer, "S")  # the same prompts again: the same mask prompt, the same mask
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(calls[-1][0]["masks"], first_logits)
    press(qtbot, viewer, "C")  # after a commit a new click starts afresh
    wait_idle(qtbot, widget)
    press(qtbot, viewer, "T")
    click(qtbot, viewer, image, (60, 95))
    wait_idle(qtbot, widget)
    assert calls[-1][0].get("masks") is None
