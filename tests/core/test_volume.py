"""Stacks plane by plane (``core.volume``): cache, stack encoding, propagation, 3D everything.

Propagation and 3D everything use a *model that segments by design*:
:class:`BrightRegionPredictor` is the real :class:`Predictor` (real resizing, padding,
coordinate transforms, prompt parsing, mask upsampling) with two doubles:

- the image encoder marks the pixels brighter than the mean (normalised red > 0),
  averages them to the ``L x L`` low-resolution grid and packs the map into the
  embedding's first 16 channels;
- ``decode`` labels the connected bright regions of that map and returns, for each
  prompt, the region that best matches it: the one overlapping the mask prompt most,
  else the one overlapping the box most, else the one under the first point (logits
  +60 inside, -60 outside; predicted IoU 0.95). No match gives an empty mask.

So on a stack of bright ellipsoids, the "right" answer of every step is the ellipsoid's
cross-section, and propagation must follow it and stop where it ends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label

from napari_samscope.core.everything.generator import MaskGenerator
from napari_samscope.core.predict.predictor import ImageEmbedding, Predictor
from napari_samscope.core.progress import run
from napari_samscope.core.volume import (
    EmbeddingCache,
    StackNormalizer,
    encode_planes_iter,
    link_labels,
    mask_to_lowres_logits,
    points_inside,
    propagate_iter,
    segment_volume_everything_iter,
)

F = torch.nn.functional


class BrightMapEncoder(torch.nn.Module):
    def __init__(self, img_size: int, channels: int) -> None:
        super().__init__()
        self.img_size, self.channels = img_size, channels
        self.register_buffer("unused", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fraction = F.adaptive_avg_pool2d((x[:, :1] > 0).float(), self.img_size // 4)
        packed = F.pixel_unshuffle(fraction, 4)
        return F.pad(packed, (0, 0, 0, 0, 0, self.channels - packed.shape[1]))


class BrightRegionPredictor(Predictor):
    decoder_runner = None  # segment-everything decodes through decode() below

    def __init__(self, sam) -> None:
        sam.image_encoder = BrightMapEncoder(sam.img_size, sam.prompt_encoder.embed_dim)
        super().__init__(sam)
        self.encoded = 0

    def encode(self, images, **kwargs):
        self.encoded += len(images)
        return super().encode(images, **kwargs)

    @torch.no_grad()
    def decode(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output=True,
    ):
        bright = F.pixel_shuffle(self.features[:, :16], 4)[0, 0].numpy() > 0.5
        regions = label(bright, connectivity=1)
        s = self.lowres_size / self.img_size
        batch = next(t for t in (point_coords, boxes, mask_input) if t is not None).shape[0]
        lows, ious = [], []
        for b in range(batch):
            if mask_input is not None:
                votes = regions[mask_input[b, 0].numpy() > 0]
            elif boxes is not None:
                x0, y0, x1, y1 = (boxes[b].numpy() * s).round().astype(int)
                votes = regions[max(y0, 0) : y1, max(x0, 0) : x1].ravel()
            else:
                x, y = point_coords[b, 0].numpy() * s
                votes = regions[min(int(y), bright.shape[0] - 1), min(int(x), bright.shape[1] - 1)]
            votes = np.atleast_1d(votes)
            votes = votes[votes > 0]
            chosen = np.bincount(votes).argmax() if votes.size else -1
            lows.append(np.where(regions == chosen, 60.0, -60.0))
            ious.append(0.95 if chosen > 0 else 0.1)
        k = 3 if multimask_output else 1
        low = torch.tensor(np.stack(lows), dtype=torch.float32)[:, None].repeat(1, k, 1, 1)
        return low, torch.tensor(ious, dtype=torch.float32)[:, None].repeat(1, k)


def ellipsoids(shape=(15, 64, 80), objects=((7, 30, 34, 5, 16, 20),)):
    """uint16 stack with bright ellipsoids ``(z, y, x, rz, ry, rx)`` and their masks."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    truth = np.stack(
        [
            ((zz - z) / rz) ** 2 + ((yy - y) / ry) ** 2 + ((xx - x) / rx) ** 2 < 1
            for z, y, x, rz, ry, rx in objects
        ]
    )
    rng = np.random.default_rng(0)
    volume = rng.normal(1000, 30, shape) + 3000 * truth.any(0)
    return volume.astype(np.uint16), truth


@pytest.fixture
def bright(tiny_sam_factory):
    return BrightRegionPredictor(tiny_sam_factory("vit", 128))


def _emb(shape=(1, 256, 64, 64), key="m", dtype=torch.float32) -> ImageEmbedding:
    return ImageEmbedding(torch.randn(shape, dtype=dtype), (100, 120), (107, 128), key)


def _iou(a, b) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


# --------------------------------------------------------------------------- cache


def test_cache_stores_float16_at_two_mib_per_plane():
    cache = EmbeddingCache(max_bytes=10 << 20)
    stored = cache.put(("img", 0, "m"), _emb())
    assert stored.features.dtype == torch.float16
    assert stored.nbytes == 2 * 1024 * 1024 == cache.nbytes
    assert stored.original_size == (100, 120) and stored.model_key == "m"
    assert cache.get(("img", 0, "m")) is stored and ("img", 0, "m") in cache
    assert cache.get(("img", 1, "m")) is None
    f32 = EmbeddingCache(max_bytes=10 << 20, dtype=torch.float32)
    assert f32.put("k", _emb()).nbytes == 4 << 20


def test_cache_evicts_least_recently_used_by_bytes():
    cache = EmbeddingCache(max_bytes=5 << 20)  # room for two 2 MiB planes
    for z in range(3):
        cache.put(("img", z, "m"), _emb())
    assert len(cache) == 2 and cache.keys() == [("img", 1, "m"), ("img", 2, "m")]
    cache.get(("img", 1, "m"))  # now most recently used
    cache.put(("img", 3, "m"), _emb())
    assert cache.keys() == [("img", 1, "m"), ("img", 3, "m")]
    cache.put(("img", 3, "m"), _emb())  # replacing does not double count
    assert cache.nbytes == 4 << 20
    cache.max_bytes = 3 << 20  # shrinking evicts at once
    assert cache.keys() == [("img", 3, "m")] and cache.nbytes == 2 << 20
    kept = cache.put("huge", _emb((1, 256, 128, 128)))  # larger than the bound: not kept
    assert kept.features.dtype == torch.float16 and "huge" not in cache
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        cache.max_bytes = -1
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(max_bytes=1.5)


def test_float16_embeddings_give_nearly_the_same_masks(random_state_sam):
    """Masks from float16-cached features vs float32 (tiny random model; see report)."""
    predictor = Predictor(random_state_sam)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    (emb,) = predictor.encode([image])
    points = rng.uniform(0, 60, (8, 1, 2))
    predictor.set_embedding(emb)
    full = predictor.predict(points=points, multimask_output=False)
    predictor.set_embedding(EmbeddingCache().put("k", emb))
    half = predictor.predict(points=points, multimask_output=False)
    agreement = (full.masks == half.masks).mean()
    assert agreement > 0.995, agreement
    np.testing.assert_allclose(half.scores, full.scores, atol=1e-2)


# --------------------------------------------------------------------------- normalisation


def test_stack_normaliser_uses_one_set_of_limits():
    volume = np.zeros((3, 20, 20), np.uint16)
    volume[0, :10] = 1000
    volume[1, :10] = 500  # half as bright: must stay half as bright
    stack = StackNormalizer(volume, normalization="minmax")
    assert stack.contrast_limits == [[0.0, 1000.0]]
    p0, p1, p2 = stack.plane(0), stack.plane(1), stack.plane(2)
    assert p0.shape == (20, 20, 3) and p0.dtype == np.uint8
    assert p0[0, 0, 0] == 255 and p1[0, 0, 0] == 128 and p2.max() == 0  # blank plane works
    rgb = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 4), dtype=np.uint8)
    np.testing.assert_array_equal(StackNormalizer(rgb).plane(1), rgb[1, ..., :3])
    chw = np.moveaxis(rgb, -1, 1)  # (Z, C, H, W)
    np.testing.assert_array_equal(StackNormalizer(chw, channel_axis=1).plane(1), rgb[1, ..., :3])
    given = StackNormalizer(volume, contrast_limits=(0, 500))
    assert given.plane(1)[0, 0, 0] == 255
    assert len(given) == 3 and given.plane_shape == (20, 20)
    assert given.signature() != StackNormalizer(volume).signature()


def test_stack_normaliser_bad_input():
    with pytest.raises(ValueError, match="constant"):
        StackNormalizer(np.full((2, 5, 5), 7.0))
    with pytest.raises(ValueError, match=r"\(Z, H, W\)"):
        StackNormalizer(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="channels"):
        StackNormalizer(np.ones((2, 5, 5, 6)))
    with pytest.raises(ValueError, match="empty"):
        StackNormalizer(np.zeros((0, 5, 5)))
    with pytest.raises(ValueError, match="normalization"):
        StackNormalizer(np.ones((2, 5, 5)), normalization="zscore")
    with pytest.raises(ValueError, match="NaN"):
        StackNormalizer(np.full((2, 5, 5), np.nan))


# --------------------------------------------------------------------------- encoding


def test_encode_planes_only_missing_and_batched_equals_single(tiny_sam):
    predictor = Predictor(tiny_sam)
    volume = np.random.default_rng(0).integers(0, 4000, (5, 40, 50), dtype=np.uint16)
    cache = EmbeddingCache()
    calls = []
    encode = predictor.encode
    predictor.encode = lambda images, **kw: calls.append(len(images)) or encode(images, **kw)
    first = run(encode_planes_iter(predictor, volume, [1, 3], batch_size=2, cache=cache))
    assert sorted(first) == [1, 3] and calls == [2] and len(cache) == 2
    assert all(e.features.dtype == torch.float16 for e in first.values())
    again = run(encode_planes_iter(predictor, volume, None, batch_size=2, cache=cache))
    assert calls == [2, 2, 1] and sorted(again) == [0, 1, 2, 3, 4]  # only 0, 2, 4 encoded
    assert again[1] is first[1]
    single = run(encode_planes_iter(predictor, volume, None, batch_size=1))  # no cache
    batched = run(encode_planes_iter(predictor, volume, None, batch_size=3))
    for z in range(5):
        assert single[z].features.dtype == torch.float32
        torch.testing.assert_close(batched[z].features, single[z].features, atol=1e-4, rtol=1e-4)
    assert not predictor.is_image_set


def test_encode_planes_cancel_keeps_finished_batches(tiny_sam):
    predictor = Predictor(tiny_sam)
    volume = np.random.default_rng(0).random((6, 30, 30)).astype(np.float32)
    cache = EmbeddingCache()
    job = encode_planes_iter(predictor, volume, batch_size=2, cache=cache)
    reports = [next(job), next(job)]
    assert [(p.done, p.total) for p in reports] == [(0, 6), (2, 6)]
    job.close()
    assert len(cache) == 2
    with pytest.raises(ValueError, match="outside the stack"):
        run(encode_planes_iter(predictor, volume, [6]))
    with pytest.raises(ValueError, match="batch_size"):
        run(encode_planes_iter(predictor, volume, batch_size=0))


# --------------------------------------------------------------------------- propagation


def _expected_planes(truth: np.ndarray, start: int, threshold: float = 0.5) -> set[int]:
    """Planes reached from ``start`` by following the true cross-sections."""
    planes = {start}
    for step in (-1, 1):
        z = start
        while (
            0 <= z + step < len(truth)
            and truth[z + step].any()
            and _iou(truth[z], truth[z + step]) >= threshold
        ):
            z += step
            planes.add(z)
    return planes


@pytest.mark.parametrize("mode", ["mask", "box", "points"])
def test_propagation_follows_the_ellipsoid_and_stops_where_it_ends(bright, mode):
    volume, truth = ellipsoids()
    obj = truth[0]
    cache = EmbeddingCache()
    result = run(propagate_iter(bright, volume, {7: obj[7]}, mode=mode, cache=cache))
    assert result.shape == obj.shape and result.dtype == bool
    filled = {z for z in range(len(obj)) if result[z].any()}
    assert filled == _expected_planes(obj, 7) == set(range(3, 12))
    for z in filled:
        assert _iou(result[z], obj[z]) > 0.8
    assert bright.encoded == len(filled) - 1 + 2  # each visited plane once, the seed's not
    assert not bright.is_image_set


def test_propagation_stops_at_stop_planes_and_fills_between_seeds(bright):
    volume, truth = ellipsoids()
    obj = truth[0]
    result = run(propagate_iter(bright, volume, {7: obj[7]}, stop_planes={5}, mode="box"))
    assert {z for z in range(15) if result[z].any()} == set(range(6, 12))
    # two seeds: the planes between are filled from both sides, the outer ones too
    seeds = {4: obj[4], 10: obj[10]}
    bright.encoded = 0
    result = run(propagate_iter(bright, volume, seeds, mode="mask"))
    assert {z for z in range(15) if result[z].any()} == set(range(3, 12))
    assert bright.encoded == 9 - 2 + 2  # every plane once, plus the two that stop
    np.testing.assert_array_equal(result[4], obj[4])  # seeds are kept as given


def test_propagation_between_seeds_when_one_side_stops(bright):
    volume, truth = ellipsoids()
    obj = truth[0]
    # a stop plane next to the lower seed: the upper seed fills the rest of the gap
    result = run(propagate_iter(bright, volume, {4: obj[4], 10: obj[10]}, stop_planes={5, 6}))
    assert {z for z in range(15) if result[z].any()} == {3, 4, 7, 8, 9, 10, 11}


def test_propagation_does_not_jump_to_another_object(bright):
    volume, truth = ellipsoids(objects=((4, 20, 20, 3, 10, 10), (10, 44, 60, 3, 12, 12)))
    result = run(propagate_iter(bright, volume, {4: truth[0][4]}, mode="box"))
    assert not (result & truth[1]).any() and (result & truth[0]).sum() > 0.8 * truth[0].sum()


def test_propagation_bad_input(bright):
    volume, truth = ellipsoids()
    with pytest.raises(ValueError, match="mode"):
        run(propagate_iter(bright, volume, {7: truth[0][7]}, mode="lasso"))
    with pytest.raises(ValueError, match="non-empty dict"):
        run(propagate_iter(bright, volume, {}))
    with pytest.raises(ValueError, match="empty"):
        run(propagate_iter(bright, volume, {7: np.zeros((64, 80), bool)}))
    with pytest.raises(ValueError, match="shape"):
        run(propagate_iter(bright, volume, {7: np.ones((10, 10), bool)}))
    with pytest.raises(TypeError, match="bool"):
        run(propagate_iter(bright, volume, {7: truth[0][7].astype(np.uint8)}))
    with pytest.raises(ValueError, match="outside the stack"):
        run(propagate_iter(bright, volume, {15: truth[0][7]}))
    with pytest.raises(ValueError, match="iou_threshold"):
        run(propagate_iter(bright, volume, {7: truth[0][7]}, iou_threshold=2))


def test_prompt_helpers(tiny_sam_factory):
    mask = np.zeros((50, 100), bool)
    mask[10:30, 20:60] = True
    pts = points_inside(mask, 3)
    assert pts.shape == (3, 2) and all(mask[int(y), int(x)] for x, y in pts)
    assert len({tuple(p) for p in pts}) == 3
    logits = mask_to_lowres_logits(Predictor(tiny_sam_factory("vit", 256)), mask)
    assert logits.shape == (64, 64) and logits.dtype == np.float32
    # x2.56 into the 256 frame, /4 to low-res: rows 10..30 -> 6.4..19.2, cols 20..60 -> 12.8..38.4
    assert logits[10, 20] == pytest.approx(20.0) and logits[0, 0] == pytest.approx(-20.0)
    assert logits[40, 20] == pytest.approx(-20.0)  # the padding below the image
    with pytest.raises(ValueError, match="n_points"):
        points_inside(mask, 0)


# --------------------------------------------------------------------------- linking and 3D everything


def test_link_labels_keeps_ids_through_z():
    planes = np.zeros((4, 10, 12), np.uint16)
    planes[0, 1:4, 1:4], planes[0, 6:9, 6:9] = 5, 9
    planes[1, 1:4, 2:5], planes[1, 6:9, 6:9] = 2, 1  # ids swapped, first object moved
    planes[2, 6:9, 7:10] = 3  # first object gone, a new one appears...
    planes[2, 0:2, 9:12] = 4
    planes[3, 1:4, 1:4] = 1  # ...and the first object comes back: a new id (no bridging)
    linked = link_labels(planes)
    assert linked.dtype == np.uint32
    a, b = linked[0, 2, 2], linked[0, 7, 7]
    assert (a, b) == (1, 2)
    assert linked[1, 2, 3] == a and linked[1, 7, 7] == b
    assert linked[2, 7, 8] == b and linked[2, 0, 10] == 3
    assert linked[3, 2, 2] == 4
    assert ((linked > 0) == (planes > 0)).all()


def test_link_labels_one_to_one_and_thresholds():
    planes = np.zeros((2, 10, 10), np.int32)
    planes[0, 2:8, 2:8] = 1
    planes[1, 2:8, 2:5], planes[1, 2:8, 5:8] = 1, 2  # a split: only one half keeps the id
    linked = link_labels(planes)
    assert sorted(np.unique(linked[1]).tolist()) == [0, 1, 2]
    strict = link_labels(planes, link_iou=0.9)
    assert set(np.unique(strict[1]).tolist()) == {0, 2, 3}
    full = np.ones((2, 4, 4), np.uint8)  # no background at all
    assert (link_labels(full) == 1).all()
    with pytest.raises(ValueError, match="Z, H, W"):
        link_labels(np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="non-negative integer"):
        link_labels(np.zeros((2, 4, 4), float))
    with pytest.raises(ValueError, match="link_iou"):
        link_labels(planes, link_iou=0)


def test_segment_volume_everything_links_objects(bright):
    volume, truth = ellipsoids(objects=((5, 20, 22, 4, 12, 14), (8, 44, 58, 5, 13, 15)))
    gen = MaskGenerator(bright, points_per_side=10)
    cache = EmbeddingCache()
    run(encode_planes_iter(bright, volume, cache=cache))
    bright.encoded = 0
    labels = run(segment_volume_everything_iter(gen, volume, cache=cache))
    assert bright.encoded == 0  # the cached embeddings were used
    assert labels.dtype == np.uint32 and labels.shape == volume.shape
    ids = [set(np.unique(labels[t])) - {0} for t in truth]
    assert all(len(i) == 1 for i in ids) and ids[0] != ids[1]  # one id per object through z
    for t, i in zip(truth, ids):
        assert _iou(labels == i.pop(), t) > 0.7
