"""A box too small for the model at the image's scale becomes a napari notification."""

from __future__ import annotations

import numpy as np

from napari_samscope._napari import engine
from napari_samscope._napari.prompts import ObjectPrompt
from napari_samscope.core.predict.predictor import Predictor


def _box(x0, y0, x1, y1) -> ObjectPrompt:
    return ObjectPrompt(np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                        box=np.array([x0, y0, x1, y1], np.float32))


def test_a_small_box_is_notified_once_and_a_large_one_not(tiny_sam_factory) -> None:
    from napari.utils.notifications import notification_manager

    predictor = Predictor(tiny_sam_factory(img_size=64))
    (embedding,) = predictor.encode([np.random.default_rng(0).integers(0, 255, (256, 256))])
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        masks = engine.decode_objects(predictor, embedding, [_box(10, 10, 30, 30), _box(40, 40, 50, 50)])
        assert len(masks) == 2 and masks[0].shape == (256, 256)
        notices = [n for n in seen if "model-input pixels" in str(n.message)]
        assert len(notices) == 1 and "2 boxes" in str(notices[0].message)
        seen.clear()
        engine.decode_objects(predictor, embedding, [_box(0, 0, 200, 200)])
        assert not [n for n in seen if "model-input pixels" in str(n.message)]
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
