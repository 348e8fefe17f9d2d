"""The "Segment everything" widget: a plane, cancel, a layer deleted mid-run."""

import time

import numpy as np
import pytest
from segmenting_model import disk_image
from widget_helpers import wait_idle


@pytest.fixture
def slow_decoder(monkeypatch):
    """Make every decoder batch of segment-everything take 40 ms (cancellable runs)."""
    from napari_samscope.core.everything import generator

    original = generator.decode_points

    def slow(*args):
        time.sleep(0.04)
        return original(*args)

    monkeypatch.setattr(generator, "decode_points", slow)


def test_everything_on_a_plane(viewer, everything_widget, qtbot, notifications):
    viewer.add_image(disk_image(), name="disks")
    everything_widget.reset_choices()
    everything_widget.points_per_side.setValue(8)
    with qtbot.waitSignal(everything_widget.finished, timeout=20_000):
        everything_widget.run()
    labels = viewer.layers["SAM everything"].data
    assert labels.dtype == np.uint32 and labels.shape == (96, 128)
    assert labels[30, 40] > 0 and labels[60, 95] > 0 and labels[30, 40] != labels[60, 95]
    assert labels[5, 5] == 0
    count = len(np.unique(labels)) - 1
    assert f"segment everything: {count} objects on 1 plane(s) of 'disks'" in notifications()


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


# --- per-model recommended defaults --------------------------------------------------


def _with_spec(sam, **everything):
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.weights.registry import ModelSpec

    spec = ModelSpec(name="mine", arch="custom", filename="mine.pt",
                     everything_defaults=tuple(everything.items()))
    return SAM.from_sam(sam.model, "mine", spec=spec)


def test_shown_official_defaults_match_the_generator():
    from napari_samscope._widgets.everything_widget import OFFICIAL_SHOWN
    from napari_samscope.core.everything.generator import EVERYTHING_DEFAULTS

    for name, value in OFFICIAL_SHOWN.items():
        assert EVERYTHING_DEFAULTS[name] == value, name


def test_recommended_params_of_loaded_and_registry_models(segmenting_sam):
    from napari_samscope._widgets.everything_widget import recommended_params
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, lookup

    assert recommended_params() == lookup(DEFAULT_MODEL).everything_params() != {}
    assert recommended_params(model_name="vit_b") == {}
    assert recommended_params(model_name="no such model") == {}
    assert recommended_params(segmenting_sam) == {}  # no registry entry
    assert recommended_params(_with_spec(segmenting_sam, pred_iou_thresh=0.4)) == {
        "pred_iou_thresh": 0.4}


def test_fields_follow_the_model_unless_edited(everything_widget, segmenting_sam):
    w = everything_widget
    session = w.session
    # the segmenting double has no registry entry: the official values
    assert (w.pred_iou.value(), w.stability.value(), w.points_per_side.value()) == (0.88, 0.95, 32)
    session.set_model(_with_spec(segmenting_sam, pred_iou_thresh=0.5, stability_score_thresh=0.85,
                                 points_per_batch=16))
    assert (w.pred_iou.value(), w.stability.value()) == (0.5, 0.85)
    params = w.params()
    assert params["pred_iou_thresh"] == 0.5 and params["stability_score_thresh"] == 0.85
    assert params["points_per_batch"] == 16  # a recommended value without a field
    # the user edits one field; the next model changes the others only
    w.stability.setValue(0.9)
    session.set_model(segmenting_sam)
    assert w.pred_iou.value() == 0.88 and w.stability.value() == 0.9
    assert "points_per_batch" not in w.params()
    # "Model defaults" puts every field back to the current model's values
    w.defaults_button.click()
    assert w.stability.value() == 0.95
    session.set_model(_with_spec(segmenting_sam, stability_score_thresh=0.8))
    assert w.stability.value() == 0.8


def test_session_predictors_carry_the_models_registry_entry(everything_widget, segmenting_sam):
    from napari_samscope.core.everything.generator import MaskGenerator

    session = everything_widget.session
    model = _with_spec(segmenting_sam, pred_iou_thresh=0.5)
    session.set_model(model)
    for predictor in (session.predictor, session.new_predictor()):
        assert predictor.spec is model.spec
        assert MaskGenerator(predictor).params["pred_iou_thresh"] == 0.5
    session.set_model(segmenting_sam)
    assert session.new_predictor().spec is None
    assert MaskGenerator(session.new_predictor()).params["pred_iou_thresh"] == 0.88
