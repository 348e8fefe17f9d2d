"""The "Segment everything" widget: a plane, cancel, a layer deleted mid-run."""

import time

import numpy as np
import pytest
from segmenting_model import disk_image
from widget_helpers import wait_idle


@pytest.fixture
def slow_decoder(monkeypatch):
    """Make every decoder batch of segment-everything take 40 ms (cancellable runs)."""
    from napari_samscope.core.everything import MaskGenerator

    original = MaskGenerator._decode

    def slow(self, points):
        time.sleep(0.04)
        return original(self, points)

    monkeypatch.setattr(MaskGenerator, "_decode", slow)


def test_everything_on_a_plane(viewer, everything_widget, qtbot):
    viewer.add_image(disk_image(), name="disks")
    everything_widget.reset_choices()
    everything_widget.points_per_side.setValue(8)
    with qtbot.waitSignal(everything_widget.finished, timeout=20_000):
        everything_widget.run()
    labels = viewer.layers["SAM everything"].data
    assert labels.dtype == np.uint32 and labels.shape == (96, 128)
    assert labels[30, 40] > 0 and labels[60, 95] > 0 and labels[30, 40] != labels[60, 95]
    assert labels[5, 5] == 0


def test_cancel_stops_between_batches(viewer, everything_widget, qtbot, slow_decoder):
    viewer.add_image(disk_image(), name="disks")
    everything_widget.reset_choices()
    everything_widget.points_per_side.setValue(32)  # 16 batches of 64 points
    everything_widget.run()
    qtbot.waitUntil(lambda: "decoding" in everything_widget.progress.label.text(), timeout=10_000)
    assert everything_widget.progress.cancel_button.isEnabled()
    everything_widget.progress.cancel_button.click()
    wait_idle(qtbot, everything_widget, timeout=5_000)
    assert "SAM everything" not in viewer.layers
    assert not everything_widget.progress.cancel_button.isEnabled()
    everything_widget.points_per_side.setValue(4)  # a run after a cancel works
    with qtbot.waitSignal(everything_widget.finished, timeout=20_000):
        everything_widget.run()


def test_image_deleted_mid_run_notifies_instead_of_crashing(
    viewer, everything_widget, qtbot, slow_decoder, notifications
):
    image = viewer.add_image(disk_image(), name="disks")
    everything_widget.reset_choices()
    everything_widget.points_per_side.setValue(16)
    everything_widget.run()
    qtbot.waitUntil(lambda: everything_widget.runner.busy, timeout=5_000)
    viewer.layers.remove(image)
    wait_idle(qtbot, everything_widget, timeout=20_000)
    assert any("was removed" in m for m in notifications.errors())
    assert "SAM everything" not in viewer.layers


def test_no_image_and_single_plane_stack_are_explained(viewer, everything_widget, notifications):
    everything_widget.run()
    assert any("Choose an image layer" in m for m in notifications.errors())
    viewer.add_image(disk_image(), name="disks")
    everything_widget.reset_choices()
    everything_widget.run(scope="stack")
    assert any("single plane" in m for m in notifications.errors())
    with pytest.raises(ValueError, match="scope must be"):
        everything_widget.run(scope="volume")
