"""The input scale in napari: one compact choice on the model line, shared by the docks
of a viewer through the session, reaching every predictor; masks stay where the objects
are at every scale."""

import numpy as np
import pytest
from qtpy.QtCore import Qt
from segmenting_model import SegmentingPredictor, disk_image
from widget_helpers import add_points, unfold_options, wait_idle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _disk(shape, r, c, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - r) ** 2 + (cc - c) ** 2 <= radius**2


def test_the_scale_box_is_on_the_model_line_and_shared_by_the_docks(viewer, main_widget, qtbot):
    _, every = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment everything")
    panel, other = main_widget.model_panel, every.model_panel
    session = main_widget.session
    unfold_options(qtbot, panel)
    assert session.scale == "auto" and panel.scale_box.currentText() == "auto"
    assert panel.scale_box.parent() is panel.options  # in the model line's option row
    assert [panel.scale_box.itemText(i) for i in range(panel.scale_box.count())][:2] == ["auto", "fill"]
    assert "magnification" in panel.scale_box.toolTip()

    panel.scale_box.lineEdit().clear()
    qtbot.keyClicks(panel.scale_box.lineEdit(), "2x")
    qtbot.keyClick(panel.scale_box.lineEdit(), Qt.Key.Key_Return)
    assert session.scale == 2.0
    assert session.sam.scale == 2.0 and session.predictor.scale == 2.0
    assert session.new_predictor().scale == 2.0
    assert other.scale_box.currentText() == "2.0"  # every dock shows the session's choice

    panel.scale_box.setCurrentIndex(1)  # "fill", chosen from the list
    panel.scale_box.activated.emit(1)
    assert session.scale == "fill" and session.predictor.scale == "fill"


def test_a_bad_scale_is_a_notification_and_changes_nothing(viewer, main_widget, qtbot, notifications):
    panel, session = main_widget.model_panel, main_widget.session
    unfold_options(qtbot, panel)
    for bad in ("big", "0", "-2"):
        panel.scale_box.lineEdit().clear()
        qtbot.keyClicks(panel.scale_box.lineEdit(), bad)
        qtbot.keyClick(panel.scale_box.lineEdit(), Qt.Key.Key_Return)
        assert session.scale == "auto" and panel.scale_box.currentText() == "auto"
    errors = notifications.errors()
    assert len(errors) == 3 and all("scale must be 'auto', 'fill' or a magnification" in e for e in errors)
    with pytest.raises(ValueError, match="scale must be"):
        session.set_scale(float("nan"))


def test_a_model_loaded_later_takes_the_sessions_scale(viewer, segmenting_sam):
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.session.set_scale("fill")
    widget.set_model(segmenting_sam, predictor_factory=SegmentingPredictor)
    assert segmenting_sam.scale == "fill" and widget.session.predictor.scale == "fill"


@pytest.mark.parametrize("scale", ["auto", "fill", "2", "1"])
def test_points_segment_the_object_under_them_at_every_scale(viewer, main_widget, qtbot, scale):
    main_widget.session.set_scale(scale)
    image = viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    add_points(main_widget.points_layer, [[30, 40]], ["positive"])
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"].data
    disk = _disk(image.data.shape, 30, 40, 12)
    assert (preview[disk] > 0).mean() > 0.9
    assert np.count_nonzero((preview > 0) & ~disk) < 0.15 * disk.sum()
    assert preview[60, 95] == 0  # the other disk is left out
    expected = {"auto": 2.0, "fill": 2.0, "2": 2.0, "1": 1.0}[scale]  # 256 input, 128 wide
    assert main_widget.session.predictor.magnification == expected
