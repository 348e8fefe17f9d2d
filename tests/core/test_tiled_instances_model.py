"""Tiled AIS and APG through ``SAM.segment_instances(..., tile_shape=, halo=, embeddings=)``
on a tiny random model with a tiny random instance decoder."""

from __future__ import annotations

import numpy as np
import pytest

from _decoder_model import blob_image, count_encodings, tiny_sam_with_decoder
from napari_samscope.core.store import StoreMismatch


@pytest.mark.parametrize("mode", ["ais", "apg"])
def test_one_tile_equals_untiled(mode):
    model = tiny_sam_with_decoder()
    image = blob_image((64, 64))
    untiled = model.segment_instances(image, mode=mode)
    tiled = model.segment_instances(image, mode=mode, tile_shape=64, halo=8)
    assert untiled.max() > 0
    np.testing.assert_array_equal(tiled, untiled)


@pytest.mark.parametrize("mode", ["ais", "apg"])
def test_tiled_modes_on_a_large_image_reuse_the_store(tmp_path, mode):
    model = tiny_sam_with_decoder()
    image = blob_image((150, 170), seed=1)
    store = tmp_path / "tiles.zarr"
    calls = count_encodings(model)
    first = model.segment_instances(image, mode=mode, tile_shape=64, halo=12, embeddings=store)
    assert first.shape == image.shape and first.dtype == np.uint32
    assert sum(calls) >= 9  # every tile was encoded once
    calls.clear()
    again = model.segment_instances(image, mode=mode, tile_shape=64, halo=12, embeddings=store)
    assert calls == []  # the store's tiles, nothing encoded
    assert again.shape == image.shape and again.max() > 0
    # the store keeps float16 features: a run from the store is reproducible
    np.testing.assert_array_equal(
        model.segment_instances(image, mode=mode, tile_shape=64, halo=12, embeddings=store), again)
    maps = model.instance_maps(image, tile_shape=64, halo=12, embeddings=store)
    assert maps.shape == (3, *image.shape) and calls == []


def test_store_of_another_model_or_image_is_refused(tmp_path):
    image = blob_image((100, 100))
    store = tmp_path / "tiles.zarr"
    tiny_sam_with_decoder().segment_instances(image, tile_shape=64, halo=8, embeddings=store)
    other = tiny_sam_with_decoder(name="other", seed=5)
    with pytest.raises(StoreMismatch, match="another model"):
        other.segment_instances(image, tile_shape=64, halo=8, embeddings=store)
    with pytest.raises(StoreMismatch):
        tiny_sam_with_decoder().segment_instances(image[::-1].copy(), tile_shape=64, halo=8,
                                                  embeddings=store)


def test_bad_tiling_and_inputs():
    model = tiny_sam_with_decoder()
    image = blob_image((100, 100))
    with pytest.raises(ValueError, match="less than half the tile"):
        model.segment_instances(image, tile_shape=64, halo=32)
    with pytest.raises(ValueError, match="smaller than its halo"):
        model.segment_instances(image, tile_shape=16, halo=20)
    with pytest.raises(ValueError, match="larger than the model input"):
        model.segment_instances(image, tile_shape=128, halo=8)
    with pytest.raises(ValueError, match="select the channels"):
        model.segment_instances(image, tile_shape=64, halo=8, channel_axis=0)
    emb = model.predictor()
    emb.set_image(image)
    with pytest.raises(ValueError, match="cannot be tiled"):
        model.segment_instances(emb.get_embedding(), tile_shape=64, halo=8)
    with pytest.raises(TypeError, match="Unknown"):
        model.segment_instances(image, tile_shape=64, halo=8, points_per_side=3)
