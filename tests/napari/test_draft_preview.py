"""The live preview's draft: with a model whose full decode takes several decoder passes
(flip averaging, refined clicks), a click on an encoded plane draws a one-pass draft on
the GUI thread at once, the worker's full result replaces it, and a draft is never
committed - not by ``C`` while the full result is on its way, not after a failure, a
Cancel or the image's removal."""

from __future__ import annotations

import numpy as np
import pytest
from segmenting_model import disk_image
from widget_helpers import add_points, wait_idle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def drafting(viewer, tiny_sam_factory, qtbot):
    """The "Segment Anything" dock with a tiny random model that averages 2 flips and
    refines clicks, full decodes forced into the worker (a tiny model is quick enough to
    be decoded inline), and the disk image with its plane encoded. Every call of the
    session predictor's ``predict`` is recorded as ``(draft, masks)``."""
    from napari_samscope import SAM

    model = SAM.from_sam(tiny_sam_factory("vit", 64, seed=3), "tiny-random")
    model.flips, model.refine_points = 2, True
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(model)
    widget.inline_decode_ms = 0
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: widget.points_layer is not None)
    add_points(widget.points_layer, [[30, 40]])  # not encoded yet: no draft, the worker encodes
    wait_idle(qtbot, widget)
    assert widget.preview is not None and not widget.preview.draft
    widget.clear_prompts()
    wait_idle(qtbot, widget)

    predictor = widget.session.predictor
    calls = []
    stock = predictor.predict

    def recorded(*args, **kwargs):
        result = stock(*args, **kwargs)
        calls.append((kwargs.get("draft", False), result.masks.copy()))
        return result

    predictor.predict = recorded
    widget.calls = calls
    return widget


def _hold_full_results(widget):
    """Make the widget's full decodes wait for the returned event (without holding the
    predictor, so that drafts are still drawn)."""
    import threading

    from napari_samscope.core.progress import Progress

    gate = threading.Event()
    stock = widget.interactive.preview_job

    def held(*args, **kwargs):
        yield Progress("waiting", 0, 1)
        gate.wait(30)
        return (yield from stock(*args, **kwargs))

    widget.interactive.preview_job = held
    return gate


def _preview(viewer):
    return viewer.layers["SAM preview"].data > 0


def test_a_click_on_an_encoded_plane_shows_a_draft_then_the_full_result(viewer, drafting, qtbot):
    drafts, updates = [], []
    drafting.preview_drafted.connect(lambda: drafts.append(1))
    drafting.preview_updated.connect(lambda: updates.append(1))
    add_points(drafting.points_layer, [[60, 95]])
    # the draft is drawn before add() returns; the full result is still in the worker
    assert drafts == [1] and updates == [] and drafting.preview_runner.busy
    assert drafting.preview.draft
    assert [draft for draft, _ in drafting.calls] == [True]
    np.testing.assert_array_equal(_preview(viewer), drafting.calls[0][1][0])
    wait_idle(qtbot, drafting)
    assert updates == [1] and not drafting.preview.draft
    assert [draft for draft, _ in drafting.calls] == [True, False]
    full = drafting.calls[1][1][0]
    np.testing.assert_array_equal(_preview(viewer), full)
    assert not np.array_equal(full, drafting.calls[0][1][0])  # the draft was another mask


def test_commit_while_the_full_result_is_coming_commits_the_full_result(viewer, drafting, qtbot):
    add_points(drafting.points_layer, [[60, 95]])
    assert drafting.preview.draft
    assert drafting.commit() == []  # deferred until the full result arrives
    wait_idle(qtbot, drafting)
    full = drafting.calls[-1][1][0]
    assert drafting.calls[-1][0] is False
    committed = viewer.layers["SAM labels"].data > 0
    np.testing.assert_array_equal(committed, full)


def test_a_draft_drawn_after_a_deferred_commit_is_not_committed(viewer, drafting, qtbot):
    """``C`` pressed while the full result is coming, then another click whose draft is
    drawn before that result: the commit still waits, and takes the newest full result."""
    gate = _hold_full_results(drafting)
    add_points(drafting.points_layer, [[60, 95]])
    assert drafting.commit() == []  # deferred
    add_points(drafting.points_layer, [[30, 40]])
    assert drafting.preview.draft and [d for d, _ in drafting.calls] == [True, True]
    assert "SAM labels" not in viewer.layers
    shown = []  # the preview layer when a full result is shown (the commit follows)
    drafting.preview_updated.connect(lambda: shown.append((drafting.preview, _preview(viewer))))
    gate.set()
    wait_idle(qtbot, drafting)
    (segmentation, full), = shown[:1]
    assert not segmentation.draft and len(segmentation.objects) >= 1 and full.any()
    np.testing.assert_array_equal(viewer.layers["SAM labels"].data > 0, full)


def test_cancel_takes_a_draft_and_a_waiting_commit_away(viewer, drafting, qtbot):
    gate = _hold_full_results(drafting)
    add_points(drafting.points_layer, [[60, 95]])
    assert drafting.preview.draft and drafting.commit() == []  # deferred
    drafting.cancel()
    gate.set()
    wait_idle(qtbot, drafting)
    assert drafting.preview is None and not _preview(viewer).any()
    assert "SAM labels" not in viewer.layers
    add_points(drafting.points_layer, [[30, 40]])  # the next full result is shown, not committed
    wait_idle(qtbot, drafting)
    assert drafting.preview is not None and not drafting.preview.draft and _preview(viewer).any()
    assert "SAM labels" not in viewer.layers


def test_removing_the_image_under_a_draft_leaves_nothing_to_commit(viewer, drafting, qtbot, notifications):
    gate = _hold_full_results(drafting)
    add_points(drafting.points_layer, [[60, 95]])
    assert drafting.preview.draft and drafting.commit() == []
    viewer.layers.remove("disks")
    gate.set()
    wait_idle(qtbot, drafting)
    assert any("was removed while it was being segmented" in m for m in notifications.errors())
    assert drafting.preview is None and not _preview(viewer).any()
    assert "SAM labels" not in viewer.layers


def test_a_draft_left_alone_is_refused_by_commit(viewer, drafting, qtbot, notifications):
    add_points(drafting.points_layer, [[60, 95]])
    drafting.preview_runner.cancel()  # the full result will never be shown
    wait_idle(qtbot, drafting)
    assert drafting.preview.draft
    assert drafting.commit() == []
    assert any("still a quick draft" in m for m in notifications())
    assert "SAM labels" not in viewer.layers


def test_a_failed_full_decode_takes_the_draft_and_a_deferred_commit_away(viewer, drafting, qtbot,
                                                                        notifications):
    stock = drafting.interactive.preview_job

    def failing(*args, **kwargs):
        raise RuntimeError("decoder exploded")
        yield  # a generator, as jobs are

    drafting.interactive.preview_job = failing
    add_points(drafting.points_layer, [[60, 95]])
    assert drafting.preview.draft
    drafting.commit()  # deferred
    wait_idle(qtbot, drafting)
    assert any("decoder exploded" in m for m in notifications.errors())
    assert drafting.preview is None and not _preview(viewer).any()
    assert drafting.ui.status.text() == "nothing committed: the preview failed"
    assert "SAM labels" not in viewer.layers
    # the next click's full result is shown, not committed by the dropped request
    drafting.interactive.preview_job = stock
    add_points(drafting.points_layer, [[30, 40]])
    wait_idle(qtbot, drafting)
    assert drafting.preview is not None and not drafting.preview.draft
    assert "SAM labels" not in viewer.layers


def test_a_model_decoded_in_one_pass_gets_no_draft(viewer, tiny_sam_factory, qtbot):
    from napari_samscope import SAM

    model = SAM.from_sam(tiny_sam_factory("vit", 64, seed=3), "tiny-random")
    model.flips, model.refine_points, model.zoom = 1, False, 1
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(model)
    widget.inline_decode_ms = 0
    viewer.add_image(disk_image(), name="disks")
    qtbot.waitUntil(lambda: widget.points_layer is not None)
    drafts = []
    widget.preview_drafted.connect(lambda: drafts.append(1))
    for point in ([30, 40], [60, 95]):
        add_points(widget.points_layer, [point])
        wait_idle(qtbot, widget)
    assert drafts == [] and not widget.preview.draft


def test_drafts_can_be_turned_off_and_stop_on_a_slow_image(viewer, drafting, qtbot):
    drafts = []
    drafting.preview_drafted.connect(lambda: drafts.append(1))
    drafting.interactive.draft_decode_ms = 0  # off
    add_points(drafting.points_layer, [[60, 95]])
    wait_idle(qtbot, drafting)
    assert drafts == []
    drafting.interactive.draft_decode_ms = 80.0
    drafting.interactive.draft_ms = 81.0  # this image's last draft was slow
    add_points(drafting.points_layer, [[30, 40]])
    wait_idle(qtbot, drafting)
    assert drafts == [] and [d for d, _ in drafting.calls] == [False, False]


def test_real_clicks_with_the_default_model_show_its_draft_then_its_refined_mask(make_napari_viewer,
                                                                                qtbot):
    """Mouse clicks on the canvas with the shipped model: the first click encodes the
    plane; a click on another nucleus shows the one-pass draft at once, then the full
    (two orientations, refined) mask, each as the predictor gives it for that click."""
    from widget_helpers import click

    from napari_samscope import SAM
    from napari_samscope.core.predict.predictor import Predictor
    from napari_samscope.core.synthetic import make_nuclei_2d

    image, truth = make_nuclei_2d((256, 256), seed=4)
    ids, areas = np.unique(truth[truth > 0], return_counts=True)
    centres = []
    for i in ids[np.argsort(areas)[::-1][:2]]:  # the two largest nuclei
        rows, cols = np.nonzero(truth == i)
        k = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
        centres.append((int(rows[k]), int(cols[k])))

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    layer = viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(SAM())
    qtbot.waitUntil(lambda: widget.points_layer is not None, timeout=10_000)
    viewer.reset_view()
    qtbot.wait(50)
    click(qtbot, viewer, layer, centres[0])
    wait_idle(qtbot, widget, timeout=60_000)
    widget.clear_prompts()
    wait_idle(qtbot, widget)

    seen = []

    def record(kind):
        if "SAM preview" in viewer.layers:
            seen.append((kind, _preview(viewer)))

    widget.preview_drafted.connect(lambda: record("draft"))
    widget.preview_updated.connect(lambda: record("full"))
    click(qtbot, viewer, layer, centres[1], wait_ms=0)
    wait_idle(qtbot, widget, timeout=60_000)
    assert [kind for kind, _ in seen] == ["draft", "full"]

    row, col = centres[1]
    direct = Predictor(SAM(), zoom=1)  # napari does not zoom unless asked
    direct.set_image(image, contrast_limits=layer.contrast_limits)

    def iou(a, b):
        return (a & b).sum() / max((a | b).sum(), 1)

    draft = direct.predict(points=[[col, row]], draft=True).masks[0]
    full = direct.predict(points=[[col, row]]).masks[0]
    assert iou(seen[0][1], draft) > 0.97 and iou(seen[1][1], full) > 0.97
    assert iou(seen[1][1], truth == truth[row, col]) > 0.8
