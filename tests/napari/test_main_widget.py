"""The "Segment Anything" widget in a real viewer: prompts -> preview -> commit -> undo."""

import numpy as np
from segmenting_model import disk_image
from widget_helpers import add_points, box_corners, wait_idle


def _disk(shape, r, c, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - r) ** 2 + (cc - c) ** 2 <= radius**2


def test_widgets_load_through_the_manifest_and_share_one_session(viewer):
    from napari_samscope._widgets.everything_widget import SegmentEverythingWidget
    from napari_samscope._widgets.main_widget import SegmentAnythingWidget

    _, main = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    _, every = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment everything")
    assert isinstance(main, SegmentAnythingWidget) and isinstance(every, SegmentEverythingWidget)
    assert main.session is every.session
    labels = [main.model_panel.model_box.itemText(i) for i in range(main.model_panel.model_box.count())]
    assert labels[0].startswith("samscope_nuclei (default)")
    assert any(t.startswith("vit_b - not cached (downloads 375 MB)") for t in labels)
    tips = " ".join(b.toolTip() for b in (main.ui.segment, main.ui.commit, main.ui.clear,
                                          main.ui.propagate))
    assert all(k in tips for k in ("[S]", "[C]", "[Shift+C]", "[Shift+S]"))


def test_points_and_box_preview_commit_and_undo(viewer, main_widget, qtbot):
    image = viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    points, shapes = main_widget.points_layer, main_widget.shapes_layer
    assert (points.name, shapes.name) == ("SAM points", "SAM boxes")
    existing = np.zeros(image.data.shape, np.uint32)
    existing[58:62, 93:97] = 9  # a label already inside the second disk
    target = viewer.add_labels(existing.copy(), name="mine")
    main_widget.ui.target.value = target

    add_points(points, [[30, 40], [88, 10]], ["positive", "negative"])
    shapes.add_rectangles(box_corners(75, 110, 45, 80))  # around disk 2, drawn bottom-up
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"].data
    assert preview[30, 40] > 0 and preview[60, 95] > 0
    assert preview[30, 40] != preview[60, 95]  # a point object and a box object
    first = _disk(image.data.shape, 30, 40, 12)
    assert (preview[first] > 0).mean() > 0.9 and (preview[~first & (preview > 0)]).size < 800

    ids = main_widget.commit()
    assert ids == [10, 11]
    assert (target.data[existing == 9] == 9).all()  # existing label untouched
    assert target.data[60, 100] == 10 and target.data[30, 40] == 11  # boxes first, then points
    assert len(points.data) == 0 and len(shapes.data) == 0  # prompts cleared
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data.max() == 0
    target.undo()
    np.testing.assert_array_equal(target.data, existing)


def test_commit_creates_sam_labels_and_waits_for_a_running_preview(viewer, main_widget, qtbot):
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    add_points(main_widget.points_layer, [[30, 40]])
    assert main_widget.commit() == []  # preview not there yet: commit when it arrives
    with qtbot.waitSignal(main_widget.committed, timeout=10_000) as blocker:
        pass
    assert blocker.args[0] == [1]
    assert viewer.layers["SAM labels"].data[30, 40] == 1


def test_overwrite_only_when_ticked(viewer, main_widget, qtbot):
    image = viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    target = viewer.add_labels(np.full(image.data.shape, 4, np.uint8), name="full")
    main_widget.ui.target.value = target
    add_points(main_widget.points_layer, [[30, 40]])
    wait_idle(qtbot, main_widget)
    assert main_widget.commit() == []
    assert (target.data == 4).all()
    add_points(main_widget.points_layer, [[30, 40]])
    wait_idle(qtbot, main_widget)
    main_widget.ui.overwrite.setChecked(True)
    assert main_widget.commit() == [5]
    assert target.data[30, 40] == 5 and target.data[0, 0] == 4


def test_scaled_and_translated_layers_with_prompts_in_world_coordinates(viewer, main_widget, qtbot):
    from napari.layers import Points

    scale, translate = np.array([0.5, 0.25]), np.array([10.0, -4.0])
    viewer.add_image(disk_image(), name="disks", scale=scale, translate=translate)
    qtbot.waitUntil(lambda: main_widget.shapes_layer is not None)
    world = np.array([[30, 40]]) * scale + translate  # disk 1's centre in world coordinates
    user_points = viewer.add_layer(Points(world, name="world points"))  # identity transform
    main_widget.ui.points.value = user_points
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"]
    assert preview.data[30, 40] > 0 and preview.data[60, 95] == 0
    np.testing.assert_allclose(preview.scale, scale)
    np.testing.assert_allclose(preview.translate, translate)
    np.testing.assert_allclose(viewer.layers["disks"].scale, scale)  # never changed
    np.testing.assert_allclose(viewer.layers["disks"].translate, translate)


def test_t_toggles_polarity_on_the_plugin_layers_only(viewer, main_widget, qtbot):
    image = viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    points = main_widget.points_layer
    keys = viewer.window._qt_viewer._key_map_handler
    viewer.layers.selection.active = points
    assert keys.press_key("T")
    add_points(points, [[30, 40]])
    assert list(points.features["label"]) == ["negative"]
    np.testing.assert_allclose(points.face_color[0], [1, 0, 0, 1])  # drawn red
    points.mode = "select"  # in select mode T flips the selected points
    points.selected_data = {0}
    keys.press_key("T")
    assert list(points.features["label"]) == ["positive"]
    np.testing.assert_allclose(points.face_color[0], [0, 1, 0, 1])  # drawn green
    viewer.layers.selection.active = image
    assert not keys.press_key("T")  # not bound on the user's layers or globally
    viewer.layers.selection.active = points
    points.mode = "add"
    keys.press_key("S")  # bound to 'segment' here, not napari's select mode
    assert points.mode == "add"


def test_shift_c_clears_prompts_and_c_commits(viewer, main_widget, qtbot):
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    points = main_widget.points_layer
    keys = viewer.window._qt_viewer._key_map_handler
    viewer.layers.selection.active = points
    add_points(points, [[30, 40]])
    keys.press_key("Shift-C")
    assert len(points.data) == 0
    add_points(points, [[60, 95]])
    wait_idle(qtbot, main_widget)
    keys.press_key("C")
    assert viewer.layers["SAM labels"].data[60, 95] == 1


def test_stale_results_are_never_shown(viewer, main_widget, qtbot, monkeypatch):
    """A slow first run is superseded by a second prompt; only the newest is shown."""
    import threading

    from napari_samscope._napari import engine

    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    release, original = threading.Event(), engine.decode_objects
    calls = []

    def slow_decode(predictor, embedding, objects, *args, **kwargs):
        calls.append(len(objects[0].points))
        if len(calls) == 1:
            release.wait(5)
        return original(predictor, embedding, objects, *args, **kwargs)

    monkeypatch.setattr(engine, "decode_objects", slow_decode)
    shown = []
    main_widget.preview_updated.connect(
        lambda: shown.append(None if main_widget.preview is None
                             else int(sum(len(o) for o in main_widget.preview.objects))))
    points = main_widget.points_layer
    add_points(points, [[30, 40]])
    qtbot.waitUntil(lambda: len(calls) == 1)
    add_points(points, [[29, 41]])  # supersedes the run in flight
    qtbot.wait(50)
    release.set()
    wait_idle(qtbot, main_widget)
    assert calls == [1, 2] and len(shown) == 1  # the first run's result was dropped
    assert main_widget.preview.objects[0]


def test_clearing_prompts_makes_a_run_in_flight_stale(viewer, main_widget, qtbot, monkeypatch):
    import threading

    from napari_samscope._napari import engine

    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    release, original = threading.Event(), engine.decode_objects

    def slow_decode(*args, **kwargs):
        release.wait(5)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "decode_objects", slow_decode)
    add_points(main_widget.points_layer, [[30, 40]])
    qtbot.waitUntil(lambda: main_widget.preview_runner.busy)
    main_widget.clear_prompts()
    release.set()
    wait_idle(qtbot, main_widget)
    assert main_widget.preview is None
    assert "SAM preview" not in viewer.layers or viewer.layers["SAM preview"].data.max() == 0


def test_prompts_on_a_layer_with_other_dims_notify(viewer, main_widget, qtbot, notifications):
    from napari.layers import Points

    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    sam_points = main_widget.points_layer
    main_widget.ui.points.value = viewer.add_layer(Points(np.zeros((1, 3)), ndim=3, name="3d"))
    main_widget.segment()
    assert any("has 3 dimensions" in m for m in notifications.errors())
    main_widget.ui.points.value = sam_points  # a run after the error works
    add_points(sam_points, [[30, 40]])
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data[30, 40] > 0


def test_an_encoded_plane_is_decoded_inline_and_the_same_as_in_the_worker(viewer, main_widget,
                                                                          qtbot):
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    points = main_widget.points_layer
    add_points(points, [[30, 40]])  # the plane is not encoded yet: the worker encodes it
    assert main_widget.preview_runner.busy
    wait_idle(qtbot, main_widget)
    updates = []
    main_widget.preview_updated.connect(lambda: updates.append(1))
    add_points(points, [[60, 95]])  # encoded: the preview is there when add() returns
    assert updates == [1] and not main_widget.preview_runner.busy
    inline = viewer.layers["SAM preview"].data.copy()
    assert inline[30, 40] > 0 and inline[60, 95] > 0

    main_widget.inline_decode_ms = 0  # never inline: the same result from the worker
    main_widget.clear_prompts()
    wait_idle(qtbot, main_widget)
    add_points(points, [[30, 40]])
    add_points(points, [[60, 95]])
    assert main_widget.preview_runner.busy
    wait_idle(qtbot, main_widget)
    np.testing.assert_array_equal(viewer.layers["SAM preview"].data, inline)
