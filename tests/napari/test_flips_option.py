"""Flip averaging in napari: one choice on the model line, shared by the docks of a
viewer through the session, reaching every predictor and the embeddings it makes."""

import numpy as np
import pytest
from qtpy.QtCore import Qt
from segmenting_model import SegmentingPredictor, disk_image
from widget_helpers import add_points, unfold_options, wait_idle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_the_flips_box_is_on_the_model_line_and_shared_by_the_docks(viewer, main_widget, qtbot):
    _, every = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment everything")
    panel, other, session = main_widget.model_panel, every.model_panel, main_widget.session
    unfold_options(qtbot, panel)
    box = panel.flips_box
    assert box.parent() is panel.options and "flipped copies" in box.toolTip()
    assert [box.itemText(i) for i in range(box.count())] == ["flips auto", "flips 1", "flips 2", "flips 4"]
    assert session.flips is None and box.currentText() == "flips auto"
    assert session.predictor.flips == 1  # the test double declares none: the plain computation

    text_width = box.fontMetrics().horizontalAdvance("flips auto")
    assert box.width() >= text_width + 26  # the whole text beside napari's drop-down arrow
    box.setFocus()
    for _ in range(3):  # the keys a user presses on the closed box: auto -> 1 -> 2 -> 4
        qtbot.keyClick(box, Qt.Key.Key_Down)
    assert box.currentText() == "flips 4"
    assert session.flips == 4 and session.sam.flips == 4 and session.predictor.flips == 4
    assert session.new_predictor().flips == 4
    assert other.flips_box.currentText() == "flips 4"  # every dock shows the session's choice

    box.setCurrentIndex(0)
    box.activated.emit(0)
    assert session.flips is None and session.predictor.flips == 1


def test_a_click_with_flips_encodes_every_orientation_and_segments_the_object(viewer, main_widget, qtbot):
    session = main_widget.session
    session.set_flips("4")
    image = viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    add_points(main_widget.points_layer, [[30, 40]], ["positive"])
    wait_idle(qtbot, main_widget)
    assert session.predictor.get_embedding().flips == 4
    preview = viewer.layers["SAM preview"].data
    rr, cc = np.mgrid[: image.data.shape[0], : image.data.shape[1]]
    disk = (rr - 30) ** 2 + (cc - 40) ** 2 <= 144
    assert (preview[disk] > 0).mean() > 0.9 and preview[60, 95] == 0


def test_a_bad_flips_value_changes_nothing(viewer, main_widget):
    session = main_widget.session
    session.set_flips(2)
    for bad in ("3", 0, "many"):
        with pytest.raises((ValueError, TypeError), match="flips must be 1, 2 or 4"):
            session.set_flips(bad)
    assert session.flips == 2 and session.predictor.flips == 2


def test_a_model_loaded_later_takes_the_sessions_flips(viewer, segmenting_sam):
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.session.set_flips(4)
    widget.set_model(segmenting_sam, predictor_factory=SegmentingPredictor)
    assert segmenting_sam.flips == 4 and widget.session.predictor.flips == 4
