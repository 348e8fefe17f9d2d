"""Errors become notifications, napari keeps working, closing stops workers."""

import threading

import numpy as np
import torch
from segmenting_model import disk_image
from widget_helpers import add_points, wait_idle


def test_wrong_checkpoint_notifies_and_a_later_run_works(
    viewer, main_widget, qtbot, tmp_path, notifications, segmenting_sam
):
    bad = tmp_path / "not_a_sam.pt"
    torch.save({"weight": torch.zeros(3)}, bad)
    main_widget.set_model(bad)
    wait_idle(qtbot, main_widget)
    assert any("not_a_sam.pt" in m for m in notifications.errors())
    assert main_widget.session.sam is segmenting_sam  # the previous model stays
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    add_points(main_widget.points_layer, [[30, 40]])
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data[30, 40] > 0


def test_a_missing_file_and_an_unknown_name_notify(viewer, main_widget, qtbot, notifications):
    main_widget.set_model("/nowhere/sam.pt")
    wait_idle(qtbot, main_widget)
    main_widget.set_model("no-such-model")
    wait_idle(qtbot, main_widget)
    errors = " ".join(notifications.errors())
    assert "/nowhere/sam.pt" in errors and "Unknown model 'no-such-model'" in errors


def test_offline_download_notifies_where_to_put_the_file(viewer, main_widget, qtbot,
                                                         monkeypatch, notifications):
    from napari_samscope.core.weights import loader
    from napari_samscope.core.weights.download import DownloadError

    def offline(model, device="auto", dtype=None):
        yield from ()
        raise DownloadError(f"Cannot download {model}: no network. Put the file at /cache/x.pth.")

    monkeypatch.setattr(loader, "load_sam_iter", offline)
    main_widget.set_model("vit_b")
    wait_idle(qtbot, main_widget)
    assert any(m.startswith("Cannot download vit_b") and "Put the file at" in m
               for m in notifications.errors())
    assert main_widget.model_panel.load_button.isEnabled()


def test_loading_a_checkpoint_file_in_the_worker(viewer, main_widget, qtbot, tmp_path,
                                                 tiny_sam_factory):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_sam_factory("vit", 64, seed=5).state_dict(), path)
    seen = []
    main_widget.session.model_changed.connect(seen.append)
    main_widget.set_model(path, device="cpu")
    wait_idle(qtbot, main_widget)
    assert main_widget.session.sam.name == "tiny.pt" and seen
    assert "tiny.pt" in main_widget.model_panel.status.text()


def test_add_model_shows_in_every_dropdown(viewer, main_widget, everything_widget, tmp_path):
    from napari_samscope.core.weights.registry import unregister_local_model

    path = tmp_path / "mine.pt"
    path.write_bytes(b"weights")
    main_widget.session.add_model("my-nuclei", path)
    try:
        for widget in (main_widget, everything_widget):
            box = widget.model_panel.model_box
            names = [box.itemData(i) for i in range(box.count())]
            assert "my-nuclei" in names
    finally:
        unregister_local_model("my-nuclei")


def test_deleting_the_image_mid_preview_notifies(viewer, main_widget, qtbot, monkeypatch,
                                                 notifications):
    from napari_samscope._napari import engine

    image = viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    release, original = threading.Event(), engine.decode_objects

    def slow(*args, **kwargs):
        release.wait(5)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "decode_objects", slow)
    add_points(main_widget.points_layer, [[30, 40]])
    qtbot.waitUntil(lambda: main_widget.preview_runner.busy, timeout=5_000)
    viewer.layers.remove(image)
    release.set()
    wait_idle(qtbot, main_widget)
    assert any("'disks' was removed" in m for m in notifications.errors())
    assert "SAM preview" not in viewer.layers or viewer.layers["SAM preview"].data.max() == 0


def test_closing_the_widget_mid_run_stops_its_workers(viewer, qtbot, segmenting_sam, monkeypatch):
    from segmenting_model import SegmentingPredictor

    from napari_samscope._napari import engine

    dock, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(segmenting_sam, predictor_factory=SegmentingPredictor)
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: widget.points_layer is not None)
    release, original = threading.Event(), engine.decode_objects

    def slow(*args, **kwargs):
        release.wait(5)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "decode_objects", slow)
    add_points(widget.points_layer, [[30, 40]])
    qtbot.waitUntil(lambda: widget.preview_runner.busy, timeout=5_000)
    runner = widget.preview_runner
    viewer.window.remove_dock_widget(dock)
    release.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    assert runner._closed
    viewer.layers["SAM points"].add(np.array([[60.0, 95.0]]))  # no callbacks into a dead widget
    qtbot.wait(50)


def test_an_error_in_an_inline_decode_notifies_and_the_next_run_works(viewer, main_widget, qtbot,
                                                                       monkeypatch, notifications):
    from napari_samscope._napari import engine

    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    points = main_widget.points_layer
    add_points(points, [[30, 40]])
    wait_idle(qtbot, main_widget)  # the plane is encoded now: the next preview is inline
    original = engine.decode_objects

    def broken(*args, **kwargs):
        raise ValueError("These prompts cannot be decoded; remove the last one.")

    monkeypatch.setattr(engine, "decode_objects", broken)
    add_points(points, [[60, 95]])
    assert any("cannot be decoded" in m for m in notifications.errors())
    assert not main_widget.preview_runner.busy and not main_widget.session.decode_lock.locked()
    monkeypatch.setattr(engine, "decode_objects", original)
    add_points(points, [[62, 97]])
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data[60, 95] > 0


def test_removing_every_layer_with_a_preview_on_the_canvas_notifies_nothing(viewer, main_widget, qtbot,
                                                                           notifications):
    """What closing napari does with prompts and a preview on the canvas: the layers go one
    by one (the preview first). Nothing may start segmenting on the way out, so no
    "removed while it was being segmented" error is shown."""
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    main_widget.inline_decode_ms = 0  # every preview in the worker, as with the default model
    add_points(main_widget.points_layer, [[30, 40]])
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data[30, 40] > 0
    viewer.layers.clear()
    wait_idle(qtbot, main_widget)
    assert notifications.errors() == []


def test_deleting_the_preview_layer_does_not_bring_it_back_until_the_prompts_change(
    viewer, main_widget, qtbot
):
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    add_points(main_widget.points_layer, [[30, 40]])
    wait_idle(qtbot, main_widget)
    viewer.layers.remove("SAM preview")
    wait_idle(qtbot, main_widget)
    assert "SAM preview" not in viewer.layers
    add_points(main_widget.points_layer, [[60, 95]])  # a new prompt: a new preview layer
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data[60, 95] > 0
