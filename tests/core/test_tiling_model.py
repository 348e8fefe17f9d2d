"""The tiled predictor with a real (tiny, random) SAM: store round trip and tiled
segment-everything through the real MaskGenerator."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.tiling import TiledPredictor, segment_everything_tiled

pytest.importorskip("zarr")


@pytest.fixture
def image():
    from napari_samscope.core.synthetic import make_nuclei_2d

    return make_nuclei_2d((150, 130), seed=1, dtype="uint16")[0]


def test_store_round_trip_with_a_real_model(tmp_path, image, tiny_sam_factory):
    make_tiny_sam = tiny_sam_factory
    predictor = Predictor(make_tiny_sam(img_size=64))
    first = TiledPredictor(predictor)
    first.set_image(image, tile_shape=64, halo=8, embeddings=tmp_path / "e.zarr")
    first.precompute_all()
    in_memory = first.predict(points=[[[70, 60]], [[20, 130]]], multimask_output=True)
    spec = first.store.spec
    assert spec.model_key == predictor.model_key
    second = TiledPredictor(predictor)
    second.set_image(image, tile_shape=64, halo=8, embeddings=tmp_path / "e.zarr")
    from_store = second.predict(points=[[[70, 60]], [[20, 130]]], multimask_output=True)
    assert second.encoded_tiles == 0
    assert from_store.masks.shape == in_memory.masks.shape == (2, 150, 130)
    np.testing.assert_allclose(from_store.scores, in_memory.scores, atol=2e-2)
    other = TiledPredictor(Predictor(make_tiny_sam(img_size=64, seed=5)))
    with pytest.raises(ValueError, match="another model"):
        other.set_image(image, tile_shape=64, halo=8, embeddings=tmp_path / "e.zarr")


def test_tiled_everything_through_the_mask_generator(image, tiny_sam_factory):
    make_tiny_sam = tiny_sam_factory
    tiled = TiledPredictor(Predictor(make_tiny_sam(img_size=64)))
    tiled.set_image(image, tile_shape=64, halo=8)
    result = segment_everything_tiled(
        tiled, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert result.image_shape == (150, 130) and len(result) > 0
    assert tiled.encoded_tiles == len(tiled.grid)
    for record in result:
        x, y, w, h = record.bbox
        assert 0 <= x and x + w < 130 and 0 <= y and y + h < 150
        assert record.mask.sum() == record.area


def test_for_predictor_shares_the_model_and_leaves_its_image_alone(image, tiny_sam_factory):
    make_tiny_sam = tiny_sam_factory
    predictor = Predictor(make_tiny_sam(img_size=64))
    predictor.set_image(image[:64, :64])
    before = predictor.get_embedding().features.clone()
    tiled = TiledPredictor.for_predictor(predictor)
    assert tiled.predictor is not predictor and tiled.predictor.model is predictor.model
    assert tiled.predictor.model_key == predictor.model_key
    tiled.set_image(image, tile_shape=64, halo=8)
    tiled.predict(points=[100, 120])
    assert predictor.get_embedding().features.equal(before)
    with pytest.raises(TypeError, match="needs a Predictor"):
        TiledPredictor.for_predictor(object())


def test_predictor_set_image_with_tiles_delegates_to_a_tiled_predictor(
    tmp_path, image, tiny_sam_factory
):
    predictor = Predictor(tiny_sam_factory(img_size=64))
    reference = TiledPredictor.for_predictor(predictor)
    reference.set_image(image, tile_shape=64, halo=8)
    expected = reference.predict(points=[[70, 60]], labels=[1])

    predictor.set_image(image, tile_shape=64, halo=8)
    assert predictor.is_image_set and predictor.tiled is not None
    got = predictor.predict(points=[[70, 60]], labels=[1])
    assert got.masks.shape == (1, 150, 130)  # pixels of the whole image
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tiled image"):
        predictor.get_embedding()

    predictor.set_image(image[:64, :64])  # a plain image leaves tiled mode
    assert predictor.tiled is None and predictor.original_size == (64, 64)
    predictor.set_image(image, halo=8, embeddings=tmp_path / "p.zarr")
    predictor.tiled.precompute_all()
    predictor.reset_image()
    assert not predictor.is_image_set and predictor.tiled is None

    reopened = Predictor(predictor.model)
    reopened.set_image(image, halo=8, embeddings=tmp_path / "p.zarr")
    reopened.predict(bboxes=[10, 10, 60, 50])
    assert reopened.tiled.encoded_tiles == 0  # every tile came from the store


def test_tiles_refuse_a_channel_axis(image, tiny_sam_factory):
    predictor = Predictor(tiny_sam_factory(img_size=64))
    with pytest.raises(ValueError, match="channels last"):
        predictor.set_image(np.stack([image, image]), channel_axis=0, tile_shape=64, halo=8)
    with pytest.raises(TypeError, match="Predictor or a SAM"):
        TiledPredictor("vit_b")
