"""Console functions with ``embeddings=`` (a zarr store reused by the next call) and
``tile_shape=`` / ``halo=``, on a tiny random SAM with a tiny instance decoder."""

import numpy as np
import pytest
from napari.layers import Image

from _decoder_model import blob_image, count_encodings, tiny_sam_with_decoder
from napari_samscope import segment_everything_layer, segment_image_layer, segment_stack_layer
from napari_samscope.core.store import StoreMismatch


def test_a_second_call_with_the_same_store_encodes_nothing(tmp_path):
    sam = tiny_sam_with_decoder()
    calls = count_encodings(sam)
    data = blob_image((96, 128), seed=4)
    store = str(tmp_path / "blobs.emb.zarr")
    first = segment_everything_layer(Image(data, name="a"), sam, mode="ais", embeddings=store)
    assert first.shape == data.shape and sum(calls) == 6  # 64 px tiles, halo 8: 2 x 3
    calls.clear()
    # new layers of the same image (as in a new session): the store's tiles, no encoding
    again = segment_everything_layer(Image(data, name="b"), sam, mode="ais", embeddings=store)
    points = segment_image_layer(Image(data, name="c"), [[20.0, 25.0]], model=sam, embeddings=store)
    assert calls == []
    assert points.shape == data.shape and points.max() == 1
    np.testing.assert_array_equal(
        segment_everything_layer(Image(data, name="d"), sam, mode="ais", embeddings=store), again)
    assert calls == []


def test_a_store_of_another_image_or_model_is_refused(tmp_path):
    sam = tiny_sam_with_decoder()
    data = blob_image((96, 128), seed=4)
    store = str(tmp_path / "blobs.emb.zarr")
    segment_image_layer(Image(data), [[20.0, 25.0]], model=sam, embeddings=store)
    with pytest.raises(StoreMismatch, match="other image data"):
        segment_image_layer(Image(data[::-1].copy()), [[20.0, 25.0]], model=sam, embeddings=store)
    with pytest.raises(StoreMismatch, match="another model"):
        segment_everything_layer(Image(data), tiny_sam_with_decoder("other", seed=9), mode="ais",
                                 embeddings=store)


def test_tile_shape_and_halo_from_the_console(tmp_path):
    sam = tiny_sam_with_decoder()
    calls = count_encodings(sam)
    data = blob_image((96, 128), seed=4)
    labels = segment_everything_layer(Image(data), sam, mode="ais", tile_shape=48, halo=6)
    assert sum(calls) == 12  # 48 px tiles, halo 6: 3 x 4, no store needed
    np.testing.assert_array_equal(labels, sam.segment_instances(data, tile_shape=48, halo=6))
    with pytest.raises(ValueError, match="less than half the tile"):
        segment_everything_layer(Image(data), sam, mode="ais", tile_shape=48, halo=24)
    with pytest.raises(ValueError, match="halo must be 0 or more"):
        segment_image_layer(Image(data), [[20.0, 25.0]], model=sam, halo=-2)
    with pytest.raises(TypeError, match="integer or a pair"):
        segment_stack_layer(Image(data), [[20.0, 25.0]], model=sam, tile_shape="big")
