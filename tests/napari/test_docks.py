"""What the docks share: one model choice, loading the chosen model for any action,
the screen they fit on, cancelling that says so, and the progress row's time left."""

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt
from widget_helpers import unfold_options, wait_idle

from napari_samscope.core.progress import Progress

PLUGIN = "napari-samscope"
DOCKS = ("Segment Anything", "Segment everything", "Auto-annotate", "Fine-tune SAM")


@pytest.fixture
def local_model(viewer, tmp_path, tiny_sam_factory):
    """A tiny checkpoint registered as 'tiny-local' (so it shows in the model lines)."""
    from napari_samscope._napari.session import get_session
    from napari_samscope.core.weights.registry import unregister_local_model

    path = tmp_path / "tiny.pt"
    torch.save(tiny_sam_factory("vit", 64, seed=5).state_dict(), path)
    get_session(viewer).add_model("tiny-local", path)
    yield "tiny-local"
    unregister_local_model("tiny-local")


def _choose(widget, name):
    box = widget.model_panel.model_box
    box.setCurrentIndex(box.findData(name))


def test_one_model_choice_for_every_dock(viewer, local_model):
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    _, every = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    _choose(main, local_model)
    assert every.model_panel.selected_model() == local_model
    _, annotate = viewer.window.add_plugin_dock_widget(PLUGIN, "Auto-annotate")
    assert annotate.model_panel.selected_model() == local_model  # a dock opened later too


def test_commit_target_says_what_an_empty_choice_does(viewer):
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    assert main.ui.target.value is None
    assert main.ui.target.native.currentText() == "new layer 'SAM labels'"


def test_precompute_loads_the_chosen_model_and_shows_the_cache_growing(viewer, local_model, qtbot,
                                                                       notifications):
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (5, 40, 48), np.uint8), name="stack")
    _choose(main, local_model)
    assert main.session.sam is None
    seen = []
    main.session.cache_changed.connect(lambda nbytes, _limit: seen.append((nbytes, main.runner.busy)))
    qtbot.mouseClick(main.ui.stack_section.header, Qt.MouseButton.LeftButton)  # unfold
    assert main.ui.stack_section.expanded and main.ui.precompute.isVisibleTo(main)
    qtbot.mouseClick(main.ui.precompute, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: main.session.sam is not None, timeout=30_000)
    wait_idle(qtbot, main, timeout=60_000)
    assert main.session.sam.name == local_model
    assert main.ui.status.text() == "5 plane(s) encoded and cached"
    assert notifications.errors() == []
    assert any(nbytes > 0 and busy for nbytes, busy in seen)  # updated while encoding


def test_everything_and_annotate_load_the_chosen_model_too(viewer, local_model, qtbot):
    from segmenting_model import disk_image

    viewer.add_image(disk_image(), name="disks")
    _, every = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    _choose(every, local_model)
    every.points_per_side.setValue(4)
    with qtbot.waitSignal(every.finished, timeout=60_000):
        qtbot.mouseClick(every.run_button, Qt.MouseButton.LeftButton)
    assert every.session.sam.name == local_model


def test_cancelling_says_what_stopped(viewer, qtbot, notifications, monkeypatch, segmenting_sam):
    from napari_samscope._napari import engine

    def endless(*_args, **_kwargs):
        while True:
            yield Progress("encoding planes", 0, 5)

    monkeypatch.setattr(engine, "precompute_iter", endless)
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    main.set_model(segmenting_sam)
    viewer.add_image(np.zeros((3, 32, 32), np.uint8), name="stack")
    main.precompute()
    qtbot.waitUntil(lambda: main.progress.cancel_button.isEnabled(), timeout=10_000)
    qtbot.mouseClick(main.progress.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, main)
    assert any(m.startswith("Cancelled: precomputing embeddings") for m in notifications())


def test_every_dock_fits_a_1080_pixel_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in DOCKS]
    qtbot.wait(50)
    assert window.minimumSizeHint().height() <= 1040  # a 1080-px screen less a title bar
    window.resize(1920, 1040)
    qtbot.wait(100)
    main, every, annotate, finetune = docks
    for button in (main.ui.segment, main.ui.commit, every.run_button, annotate.run_button,
                   finetune.train_button):
        assert button.isVisible() and not button.visibleRegion().isEmpty(), button.text()
        assert button.mapTo(window, button.rect().bottomLeft()).y() <= 1040
    for dock in docks:  # one model line each, no repeated model panel
        assert dock.model_panel.sizeHint().height() <= 70


def test_the_model_options_fold_under_one_button_that_names_them(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    _, every = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    qtbot.wait(50)
    panel, other = main.model_panel, every.model_panel
    boxes = (panel.device_box, panel.scale_box, panel.flips_box, panel.zoom_box)
    assert not panel.options.isVisible() and not any(box.isVisible() for box in boxes)
    folded = panel.minimumSizeHint().width()
    assert folded < sum(box.minimumSizeHint().width() for box in boxes)  # narrower than the options alone
    tip = panel.options_button.toolTip()
    assert "device auto" in tip and "scale auto" in tip and "flips auto" in tip and "zoom off" in tip

    unfold_options(qtbot, other)  # a choice in one dock shows in the folded tooltip of another
    other.zoom_box.setCurrentIndex(2)
    other.zoom_box.activated.emit(2)
    assert main.session.zoom == 2 and "zoom 2" in panel.options_button.toolTip()
    assert not panel.options.isVisible()  # each dock folds on its own

    unfold_options(qtbot, panel)
    assert all(box.isVisible() for box in boxes) and panel.zoom_box.currentText() == "zoom 2"
    assert panel.minimumSizeHint().width() > folded
    assert panel.sizeHint().height() <= 70
    qtbot.mouseClick(panel.options_button, Qt.MouseButton.LeftButton)  # fold again
    assert not panel.options.isVisible() and panel.minimumSizeHint().width() == folded


def test_progress_row_shows_the_time_left(monkeypatch):
    from napari_samscope._widgets import panels

    clock = iter([100.0, 110.0, 120.0])
    monkeypatch.setattr(panels, "monotonic", lambda: next(clock))
    row = panels.ProgressRow()
    row.show_progress(Progress("training", 0, 20))
    assert row.label.text() == "training"
    row.show_progress(Progress("training", 1, 20))
    assert row.label.text() == "training - about 3 min left"  # 10 s a step, 19 to go
    row.show_progress(Progress("training", 2, 20))
    assert row.label.text() == "training - about 3 min left"
    assert panels.time_left(42) == "about 40 s left" and panels.time_left(7200) == "about 2.0 h left"
