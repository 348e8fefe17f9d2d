"""Zoom in napari: one choice on the model line (off by default), shared by the docks of
a viewer through the session, reaching every predictor; a zoomed box encodes a crop."""

from dataclasses import replace

import pytest
from qtpy.QtCore import Qt
from segmenting_model import SegmentingPredictor, disk_image
from widget_helpers import box_corners, unfold_options, wait_idle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _zooming_model(tiny_sam_factory):
    """A tiny random ``SAM`` whose registry entry declares zoom 2 (the default model's)."""
    from napari_samscope import SAM
    from napari_samscope.core.weights.registry import lookup

    spec = replace(lookup("samscope_nuclei"), input_scale=None)
    assert spec.zoom == 2
    return SAM.from_sam(tiny_sam_factory("vit", 64), "tiny", spec=spec)


def test_the_zoom_box_is_on_the_model_line_and_shared_by_the_docks(viewer, main_widget, qtbot):
    _, every = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment everything")
    panel, other, session = main_widget.model_panel, every.model_panel, main_widget.session
    unfold_options(qtbot, panel)
    box = panel.zoom_box
    assert box.parent() is panel.options and "crop" in box.toolTip() and "third of a second" in box.toolTip()
    assert [box.itemText(i) for i in range(box.count())] == ["zoom off", "zoom auto", "zoom 2", "zoom 4"]
    assert session.zoom == 1 and box.currentText() == "zoom off"
    assert session.predictor.zoom == 1 and session.new_predictor().zoom == 1

    text_width = box.fontMetrics().horizontalAdvance("zoom auto")
    assert box.width() >= text_width + 26  # the whole text beside napari's drop-down arrow
    box.setFocus()
    for _ in range(3):  # the keys a user presses on the closed box: off -> auto -> 2 -> 4
        qtbot.keyClick(box, Qt.Key.Key_Down)
    assert box.currentText() == "zoom 4"
    assert session.zoom == 4 and session.predictor.zoom == 4
    assert session.new_predictor().zoom == 4
    assert other.zoom_box.currentText() == "zoom 4"  # every dock shows the session's choice

    box.setCurrentIndex(1)  # "zoom auto": the test double declares none, so off
    box.activated.emit(1)
    assert session.zoom is None and session.predictor.zoom == 1
    assert other.zoom_box.currentText() == "zoom auto"


def test_auto_is_the_models_declared_zoom(viewer, tiny_sam_factory):
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    session = widget.session
    widget.set_model(_zooming_model(tiny_sam_factory))
    assert session.zoom == 1 and session.predictor.zoom == 1  # off until asked
    session.set_zoom("auto")
    assert session.zoom is None and widget.model_panel.zoom_box.currentText() == "zoom auto"
    assert session.predictor.zoom == 2 and session.new_predictor().zoom == 2
    session.set_zoom("off")
    assert session.zoom == 1 and session.predictor.zoom == 1
    session.set_zoom("4x")
    assert session.zoom == 4 and session.predictor.zoom == 4


def test_a_bad_zoom_value_changes_nothing(viewer, main_widget):
    session = main_widget.session
    session.set_zoom("2")
    for bad in ("abc", 0.5, float("nan"), "-1", True):
        with pytest.raises((ValueError, TypeError), match="zoom must be"):
            session.set_zoom(bad)
    assert session.zoom == 2 and session.predictor.zoom == 2
    assert main_widget.model_panel.zoom_box.currentText() == "zoom 2"


def test_a_model_loaded_later_takes_the_sessions_zoom(viewer, segmenting_sam, tiny_sam_factory):
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.session.set_zoom(4)
    widget.set_model(segmenting_sam, predictor_factory=SegmentingPredictor)
    assert widget.session.predictor.zoom == 4
    widget.session.set_zoom(None)
    widget.set_model(_zooming_model(tiny_sam_factory))
    assert widget.session.zoom is None and widget.session.predictor.zoom == 2


def test_a_model_told_to_zoom_in_the_console_sets_the_box(viewer, tiny_sam_factory):
    model = _zooming_model(tiny_sam_factory)
    model.zoom = 2.5
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(model)
    assert widget.session.zoom == 2.5 and widget.session.predictor.zoom == 2.5
    assert widget.model_panel.zoom_box.currentText() == "zoom 2.5"


def test_a_zoomed_box_encodes_a_crop_and_zoom_off_does_not(viewer, tiny_sam_factory, qtbot):
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    session, box = widget.session, widget.model_panel.zoom_box
    widget.set_model(_zooming_model(tiny_sam_factory))
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: widget.shapes_layer is not None)

    widget.shapes_layer.add_rectangles(box_corners(15, 25, 45, 55))  # around disk 1
    wait_idle(qtbot, widget)
    predictor = session.predictor
    assert viewer.layers["SAM preview"].data.shape == (96, 128)
    assert predictor.zoom_source(predictor.get_embedding()) is None  # zoom off: no crop

    box.setCurrentIndex(2)  # "zoom 2", as a user picks it
    box.activated.emit(2)
    widget.shapes_layer.add_rectangles(box_corners(45, 80, 75, 110))  # around disk 2
    wait_idle(qtbot, widget)
    source = predictor.zoom_source(predictor.get_embedding())
    assert source is not None and source.encoded >= 1
