"""Helpers for the widget tests (waiting on workers, adding prompts as a user would)."""

import time

import numpy as np


def wait_idle(qtbot, widget, timeout=30_000):
    """Wait until every runner of the widget is idle."""
    runners = [r for r in (getattr(widget, "preview_runner", None), getattr(widget, "runner", None),
                           widget.model_panel.runner) if r is not None]

    def idle():
        return not any(r.busy for r in runners)

    qtbot.waitUntil(idle, timeout=timeout)
    qtbot.wait(10)  # let queued result signals land


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
