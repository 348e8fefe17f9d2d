"""End to end, as a microscopist would: open the sample, open every samscope dock,
click on a nucleus (a real mouse click on the canvas), draw a box around another, press
``C`` to commit, click the next nucleus, and look at the viewer.

The model is the shipped default ``samscope_nuclei`` when it is installed, else the
segmenting test double of ``tests/napari/segmenting_model.py`` (at 1024 input, so its
rule works at the sample's scale). ``SAMSCOPE_WRITE_SCREENSHOT_TO=path.png`` keeps the
final screenshot. The README's picture, ``docs/screenshot.png``, is made by
``scripts/make_screenshot.py``.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "napari"))
from segmenting_model import SegmentingPredictor, make_segmenting_sam  # noqa: E402
from widget_helpers import box_corners, click, press, wait_idle  # noqa: E402

DOCKS = ("Segment Anything", "Segment everything", "Auto-annotate", "Fine-tune SAM")


def _model():
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, list_models

    if any(m.name == DEFAULT_MODEL and m.cached for m in list_models()):
        return SAM(DEFAULT_MODEL, device="cpu"), None
    return SAM.from_sam(make_segmenting_sam(1024), "segmenting-double"), SegmentingPredictor


def _isolated_nuclei(truth, n=2, margin=4):
    """The ``n`` largest ground-truth nuclei with ``margin`` pixels of background around
    them: ``[(label, centre (row, col), box (r0, c0, r1, c1)), ...]``."""
    from scipy import ndimage

    found = []
    for label in np.argsort(np.bincount(truth.ravel()))[::-1]:
        if label == 0:
            continue
        mask = truth == label
        ring = ndimage.binary_dilation(mask, iterations=margin) & ~mask
        if truth[ring].any():
            continue
        rows, cols = np.nonzero(mask)
        centre = ndimage.distance_transform_edt(mask).argmax()
        found.append((int(label), np.unravel_index(centre, mask.shape),
                      (rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3)))
        if len(found) == n:
            return found
    raise AssertionError("the sample has too few isolated nuclei")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_click_commit_and_screenshot(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    viewer.open_sample("napari-samscope", "nuclei_2d")
    truth = viewer.layers["nuclei ground truth"].data
    widget, *others = [viewer.window.add_plugin_dock_widget("napari-samscope", name)[1]
                       for name in DOCKS]
    model, factory = _model()
    widget.set_model(model, predictor_factory=factory)
    qtbot.waitUntil(lambda: widget.points_layer is not None, timeout=10_000)
    viewer.layers["nuclei ground truth"].visible = False
    viewer.reset_view()
    qtbot.wait(100)
    image = viewer.layers[0]
    (label_a, centre_a, _), (label_b, _, box_b), (label_c, centre_c, _) = _isolated_nuclei(truth, 3)

    click(qtbot, viewer, image, centre_a)  # a click on the canvas
    assert len(widget.points_layer.data) == 1
    widget.shapes_layer.add_rectangles(box_corners(*box_b))
    wait_idle(qtbot, widget, timeout=120_000)
    press(qtbot, viewer, "C")
    wait_idle(qtbot, widget, timeout=120_000)
    labels = viewer.layers["SAM labels"].data
    assert len(np.unique(labels)) == 3
    for committed, truth_id in zip((1, 2), (label_b, label_a)):  # boxes first, then points
        mask, true = labels == committed, truth == truth_id
        assert (mask & true).sum() / (mask | true).sum() > 0.7

    assert viewer.layers.selection.active is widget.points_layer  # the next click adds a prompt
    click(qtbot, viewer, image, centre_c)
    wait_idle(qtbot, widget, timeout=120_000)
    preview = viewer.layers["SAM preview"].data
    mask, true = preview > 0, truth == label_c
    assert (mask & true).sum() / (mask | true).sum() > 0.7  # shown, not committed
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 400 and shot.shape[1] > 800
    assert shot[..., :3].std() > 20  # not a blank window
    if os.environ.get("SAMSCOPE_WRITE_SCREENSHOT_TO"):
        from PIL import Image

        Image.fromarray(shot).save(os.environ["SAMSCOPE_WRITE_SCREENSHOT_TO"])
    assert len(np.unique(shot[..., :3].reshape(-1, 3), axis=0)) > 200
