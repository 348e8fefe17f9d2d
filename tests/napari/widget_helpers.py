"""Helpers for the widget tests: waiting on workers, adding prompts, and driving the
canvas as a person does (real Qt mouse clicks and key presses on napari's canvas)."""

import time

import numpy as np


def wait_idle(qtbot, widget, timeout=30_000):
    """Wait until every runner of the widget is idle."""
    runners = [r for r in (getattr(widget, "preview_runner", None), getattr(widget, "runner", None),
                           widget.model_panel.runner) if r is not None]

    def idle():
        return not any(r.busy for r in runners)

    # Twice: the first events processed may start a run (the dock schedules a preview on
    # the next turn of the event loop after a prompt layer changes).
    for _ in range(2):
        qtbot.waitUntil(idle, timeout=timeout)
        qtbot.wait(10)  # let queued result signals and zero-delay timers land


def add_points(layer, rows_cols, polarity=None):
    """Add points as a click would: data coordinates of ``layer``; polarity per point."""
    for i, rc in enumerate(np.atleast_2d(rows_cols)):
        if polarity is not None:
            layer.feature_defaults = {"label": polarity[i]}
        layer.add(np.asarray(rc, dtype=float)[None])


def box_corners(r0, c0, r1, c1, lead=()):
    lead = list(lead)
    return np.array([[*lead, r0, c0], [*lead, r1, c0], [*lead, r1, c1], [*lead, r0, c1]], float)


def spin(qtbot, predicate, timeout=10.0):
    end = time.time() + timeout
    while not predicate() and time.time() < end:
        qtbot.wait(10)
    return predicate()


def canvas_position(viewer, layer, data_coords):
    """The canvas pixel (a ``QPoint``) where ``layer``'s data coordinates are drawn."""
    from qtpy.QtCore import QPoint

    world = np.asarray(layer.data_to_world(np.asarray(data_coords, float)), float)
    canvas = viewer.window._qt_viewer.canvas
    scene = [world[d] for d in reversed(viewer.dims.displayed)]  # vispy: x = column, y = row
    x, y = canvas.view.scene.transform.map([*scene, 0, 1])[:2]
    return QPoint(int(round(x)), int(round(y)))


def click(qtbot, viewer, layer, data_coords, wait_ms=20):
    """A left click of the mouse on the canvas where ``data_coords`` of ``layer`` lie."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    native = viewer.window._qt_viewer.canvas.native
    position = canvas_position(viewer, layer, data_coords)
    QTest.mouseMove(native, position)
    QTest.mouseClick(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, position)
    qtbot.wait(wait_ms)


def press(qtbot, viewer, key, shift=False, wait_ms=20):
    """A key press on the canvas (``key``: a letter such as ``"T"``), as a person types it."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    modifier = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    native = viewer.window._qt_viewer.canvas.native
    QTest.keyClick(native, getattr(Qt.Key, f"Key_{key.upper()}"), modifier)
    qtbot.wait(wait_ms)


def unfold_options(qtbot, panel):
    """Press a model line's "options" button, as a user does, so that its option row
    (device, scale, flips, zoom) shows."""
    from qtpy.QtCore import Qt

    if not panel.options_button.isChecked():
        qtbot.mouseClick(panel.options_button, Qt.MouseButton.LeftButton)
    assert not panel.options.isHidden()
