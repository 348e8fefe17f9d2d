"""A polygon (or ellipse) prompt on a tiled plane is its box plus a mask prompt, as on an
untiled plane: the box picks the window, the filled shape cropped to it is the mask."""

import numpy as np
import pytest
from napari.layers import Image, Shapes
from segmenting_model import disk_image

from napari_samscope import segment_image_layer
from napari_samscope._napari.prompts import mask_to_prompt_logits
from napari_samscope.core.predict.predictor import Predictor

CENTRES = ((300, 400, 20), (100, 90, 25), (250, 250, 18))


@pytest.fixture
def mask_prompts(monkeypatch):
    """The ``masks`` argument of every ``Predictor.predict`` call (None when absent)."""
    seen = []
    original = Predictor.predict

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("masks"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", spy)
    return seen


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _filled(polygon, shape):
    from skimage.draw import polygon as fill

    mask = np.zeros(shape, bool)
    rr, cc = fill(polygon[:, 0], polygon[:, 1], shape)
    mask[rr, cc] = True
    return mask


@pytest.mark.parametrize("kind", ["polygon", "ellipse"])
def test_a_polygon_on_a_tiled_plane_is_box_and_mask_in_its_tile(segmenting_predictor, mask_prompts, kind):
    image = disk_image((512, 512), centres=CENTRES)
    if kind == "polygon":
        shape = np.array([[278, 380], [300, 425], [324, 405], [318, 378]], float)
    else:
        shape = np.array([[276, 376], [276, 424], [324, 424], [324, 376]], float)
    layer = Shapes([shape], shape_type=kind)
    tiled = segment_image_layer(Image(image), None, layer, model=segmenting_predictor,
                                tile_shape=256, halo=32)
    untiled = segment_image_layer(Image(image), None, layer, model=segmenting_predictor)
    tiled_prompt, untiled_prompt = mask_prompts
    assert tiled_prompt is not None and untiled_prompt is not None  # not just the box
    # the tile that holds the shape with the most margin: rows 224..480, cols 256..512
    from napari_samscope.core.tiling import TileGrid

    grid = TileGrid((512, 512), (256, 256), (32, 32))
    y0, y1, x0, x1 = grid.best_tile((276, 325, 376, 425)).outer
    filled = layer.to_masks((512, 512))[0].astype(bool) if kind == "ellipse" else _filled(shape, (512, 512))
    expected = mask_to_prompt_logits(filled[y0:y1, x0:x1], segmenting_predictor.lowres_size)
    np.testing.assert_array_equal(np.asarray(tiled_prompt).reshape(expected.shape), expected)
    # the same object as on the untiled plane (sharper: the tile is not shrunk to the input)
    truth = disk_image((512, 512), centres=CENTRES[:1], value=255) == 255
    assert _iou(tiled == 1, truth) > 0.9 and _iou(tiled == 1, untiled == 1) > 0.8
    assert tiled[100, 90] == 0 and tiled[250, 250] == 0


def test_a_polygon_larger_than_a_tile_gets_a_fitted_window(segmenting_predictor, mask_prompts):
    image = disk_image((512, 512), centres=((256, 256, 150),))
    polygon = np.array([[90, 256], [256, 420], [420, 256], [256, 90]], float)
    labels = segment_image_layer(Image(image), None, Shapes([polygon], shape_type="polygon"),
                                 model=segmenting_predictor, tile_shape=256, halo=32)
    (prompt,) = mask_prompts
    assert prompt is not None
    truth = disk_image((512, 512), centres=((256, 256, 150),), value=255) == 255
    assert _iou(labels == 1, truth) > 0.85
