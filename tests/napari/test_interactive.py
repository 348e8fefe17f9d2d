"""The interactive controller (``_napari.interactive``) driven headless on a viewer,
and the click memory that feeds the last mask back into the next click."""

import numpy as np
import pytest
from segmenting_model import SegmentingPredictor, disk_image
from widget_helpers import add_points

from napari_samscope._napari.interactive import InteractiveSegmentation
from napari_samscope._napari.prompts import ObjectPrompt
from napari_samscope._napari.refinement import ClickMemory, Decoded
from napari_samscope.core.volume import EmbeddingCache


def _controller(viewer):
    state = {"points": None, "shapes": None}
    image = viewer.add_image(disk_image(), name="disks")
    controller = InteractiveSegmentation(viewer, image=lambda: image, points=lambda: state["points"],
                                         shapes=lambda: state["shapes"])
    state["points"], state["shapes"] = controller.make_prompt_layers(True, True)
    return controller, image


def _preview(controller, predictor, cache):
    import threading

    from napari_samscope.core.progress import run

    snap = controller.snapshot()
    lock = threading.Lock()
    seg = controller.decode_inline(snap, predictor, cache, lock)
    if seg is None:
        seg = run(controller.preview_job(snap, predictor, cache, lock))
    controller.show_preview(seg, snap.image)
    return seg


def test_prompts_preview_and_commit_with_undo(viewer, segmenting_sam):
    controller, image = _controller(viewer)
    points = controller.points_layer
    assert points.mode == "add" and viewer.layers.selection.active is points
    with pytest.raises(ValueError, match="Nothing to commit"):
        controller.commit(None)
    predictor, cache = SegmentingPredictor(segmenting_sam), EmbeddingCache()
    add_points(points, [[30, 40]])
    _preview(controller, predictor, cache)  # encodes in the job
    assert viewer.layers["SAM preview"].data[30, 40] > 0
    assert viewer.layers.selection.active is points  # the preview did not take the focus
    add_points(points, [[60, 95]], ["negative"])
    _preview(controller, predictor, cache)  # now decoded at once, the plane is cached
    assert controller.decode_ms < float("inf")
    result = controller.commit(None)
    labels = viewer.layers["SAM labels"]
    assert result.created and result.target is labels and result.ids == [1]
    assert labels.data[30, 40] == 1 and labels.data[60, 95] == 0
    assert "committed [1]" in result.message
    assert len(points.data) == 0 and controller.preview is None and len(controller.memory) == 0
    assert viewer.layers.selection.active is points  # the next click adds a prompt
    names = [layer.name for layer in viewer.layers]  # bottom to top
    assert names.index("SAM labels") < names.index("SAM preview") < names.index(points.name)
    assert max(names.index("SAM labels"), names.index("SAM preview")) < min(
        names.index(points.name), names.index(controller.shapes_layer.name))
    labels.undo()
    assert labels.data.max() == 0


def test_toggle_polarity_and_no_image(viewer):
    controller = InteractiveSegmentation(viewer, image=lambda: None, points=lambda: None,
                                         shapes=lambda: None)
    assert controller.toggle_polarity() is None
    with pytest.raises(ValueError, match="Choose an image layer"):
        controller.snapshot()
    controller, _ = _controller(viewer)
    assert controller.toggle_polarity() == "next point: negative"
    add_points(controller.points_layer, [[30, 40]])
    assert list(controller.points_layer.features["label"]) == ["negative"]


def _obj(points, labels, box=None):
    return ObjectPrompt(np.asarray(points, np.float32), np.asarray(labels, np.int32),
                        None if box is None else np.asarray(box, np.float32))


def test_click_memory_feeds_back_the_last_mask_of_an_extended_object():
    memory = ClickMemory()
    first, logits1, logits2 = _obj([[5, 5]], [1]), np.ones((8, 8), np.float32), np.full((8, 8), 2, np.float32)
    assert memory.mask_input("plane", first) is None
    memory.remember("plane", [Decoded(first, None, logits1)])
    second = _obj([[5, 5], [9, 9]], [1, 0])
    np.testing.assert_array_equal(memory.mask_input("plane", second), logits1)  # a click added
    assert memory.mask_input("plane", first) is None  # the same prompts: the same mask prompt
    assert memory.mask_input("other plane", second) is None
    assert memory.mask_input("plane", _obj([[6, 5], [9, 9]], [1, 0])) is None  # a point moved
    assert memory.mask_input("plane", _obj([[5, 5], [9, 9]], [0, 0])) is None  # a point flipped
    memory.remember("plane", [Decoded(second, logits1, logits2)])
    np.testing.assert_array_equal(memory.mask_input("plane", second), logits1)
    np.testing.assert_array_equal(memory.mask_input("plane", _obj([[5, 5], [9, 9], [1, 1]], [1, 0, 0])),
                                  logits2)
    boxed = _obj([[5, 5]], [1], box=[0, 0, 10, 10])
    assert memory.mask_input("plane", boxed) is None  # another box: another object
    memory.switch("another image")
    assert len(memory) == 0 and memory.mask_input("plane", second) is None
