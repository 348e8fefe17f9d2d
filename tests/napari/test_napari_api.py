"""Console functions: layers in, Labels data out (no widget, no worker)."""

import numpy as np
import pytest
from napari.layers import Image, Points, Shapes
from segmenting_model import disk_image
from widget_helpers import box_corners

from napari_samscope._napari.api import segment_everything_layer, segment_image_layer


def _image(**kwargs):
    return Image(disk_image(), name="disks", **kwargs)


def test_segment_image_layer_with_layers(segmenting_predictor):
    image = _image()
    points = Points([[30, 40], [88, 10]], features={"label": ["positive", "negative"]})
    boxes = Shapes([box_corners(45, 80, 75, 110)], shape_type="rectangle")
    labels = segment_image_layer(image, points, boxes, model=segmenting_predictor, viewer=None)
    assert labels.dtype == np.uint32 and labels.shape == (96, 128)
    assert labels[60, 100] == 1 and labels[30, 40] == 2 and labels[5, 5] == 0


def test_segment_image_layer_with_world_coordinate_arrays(segmenting_predictor):
    image = _image(scale=(2.0, 0.5), translate=(5.0, 1.0))
    world = np.array([[60 * 2.0 + 5.0, 95 * 0.5 + 1.0]])
    labels = segment_image_layer(image, world, model=segmenting_predictor)
    assert labels[60, 95] == 1 and labels[30, 40] == 0


def test_segment_image_layer_without_prompts_on_the_image_says_so(segmenting_predictor):
    with pytest.raises(ValueError, match="No prompt lies on image 'disks'"):
        segment_image_layer(_image(), [[500.0, 500.0]], model=segmenting_predictor)
    with pytest.raises(ValueError, match="normalization must be one of"):
        segment_image_layer(_image(), [[30.0, 40.0]], model=segmenting_predictor, normalization="x")


def test_segment_everything_layer_2d(segmenting_predictor):
    labels = segment_everything_layer(_image(), segmenting_predictor, points_per_side=8)
    assert labels.dtype == np.uint32
    assert len(np.unique(labels[labels > 0])) == 2
    assert labels[30, 40] != labels[60, 95] and labels[30, 40] > 0 and labels[60, 95] > 0


def test_segment_everything_layer_stack_needs_a_stack(segmenting_predictor):
    with pytest.raises(ValueError, match="single plane"):
        segment_everything_layer(_image(), segmenting_predictor, stack=True)


def test_multichannel_and_rgb_layers(segmenting_predictor):
    grey = disk_image()
    channels = np.stack([grey, np.zeros_like(grey), grey // 2, np.full_like(grey, 7)])  # (4, H, W)
    layer = Image(channels, name="4ch")
    with pytest.raises(ValueError, match="choose up to 3"):
        segment_image_layer(layer, [[0, 30.0, 40.0]], model=segmenting_predictor, channel_axis=0)
    labels = segment_image_layer(layer, [[0, 30.0, 40.0]], model=segmenting_predictor, channel_axis=0,
                                 channels=(0, 2))
    assert labels.shape == grey.shape and labels[30, 40] == 1 and labels[60, 95] == 0
    rgb = Image(np.repeat(grey[..., None], 3, axis=2), rgb=True, name="rgb")
    labels = segment_image_layer(rgb, [[60.0, 95.0]], model=segmenting_predictor)
    assert labels.shape == grey.shape and labels[60, 95] == 1 and labels[30, 40] == 0
