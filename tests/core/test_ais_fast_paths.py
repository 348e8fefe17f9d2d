"""The faster AIS paths give what the plain ones give: the decoder's channels-last
normalisation, the row-band smoothing and the split watershed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.segmentation import watershed

from napari_samscope.core.instances import postprocess
from napari_samscope.core.instances.decoder import UNETRDecoder, image_norm
from napari_samscope.core.instances.postprocess import instances_from_maps
from napari_samscope.core.instances.targets import maps_from_labels
from napari_samscope.core.synthetic import make_nuclei_2d


@pytest.fixture(scope="module")
def noisy_maps() -> np.ndarray:
    """Maps of a 512x512 synthetic nuclei image (hundreds of touching objects), with noise
    so that thresholds and flooding have real work to do."""
    _image, labels = make_nuclei_2d((512, 512), seed=31)
    maps = maps_from_labels(labels)
    rng = np.random.default_rng(0)
    maps += rng.normal(0, 0.08, maps.shape).astype(np.float32)
    return np.clip(maps, 0, 1)


@pytest.mark.parametrize("features", [(32, 16, 8, 4), (64, 32, 16, 8)])
def test_channels_last_decoder_matches_instance_norm(features):
    torch.manual_seed(0)
    decoder = UNETRDecoder(embed_dim=32, features=features).eval()
    for p in decoder.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 32, 8, 12) * 3 + 1  # a large mean: precision of the statistics
    with torch.no_grad():
        plain = decoder(x)  # contiguous: F.instance_norm throughout
        fast = decoder(x.contiguous(memory_format=torch.channels_last))
        truth = decoder.double()(x.double()).float()
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert float((plain - truth).abs().max()) < 1e-5
    assert float((fast - truth).abs().max()) < 1e-5


def test_image_norm_is_instance_norm():
    x = torch.randn(1, 6, 20, 24) * 5 + 3
    weight, bias = torch.rand(6) + 0.5, torch.randn(6)
    expected = torch.nn.functional.instance_norm(x.double(), None, None, weight.double(), bias.double())
    for layout in (torch.contiguous_format, torch.channels_last):
        out = image_norm(x.contiguous(memory_format=layout), weight, bias, 1e-5)
        assert out.is_contiguous(memory_format=layout)
        assert float((out.double() - expected).abs().max()) < 1e-5
    two = torch.randn(2, 6, 20, 24).contiguous(memory_format=torch.channels_last)
    each = torch.cat([image_norm(two[i : i + 1].contiguous(), None, None, 1e-5) for i in range(2)])
    assert float((image_norm(two, None, None, 1e-5) - each).abs().max()) < 1e-5
    # bf16 activations (autocast): channels-last statistics, still within bf16's rounding
    half = x.bfloat16().contiguous(memory_format=torch.channels_last)
    assert float((image_norm(half, None, None, 1e-5).double() - expected.sub(bias.double()[:, None, None])
                  .div(weight.double()[:, None, None])).abs().max()) < 0.05


@pytest.mark.parametrize("threads", [2, 3])
def test_row_band_smoothing_is_identical(noisy_maps, threads):
    sigmas = (1.0, 1.6, 0.0)
    whole = [postprocess._smooth(m, s) for m, s in zip(noisy_maps, sigmas)]
    banded = postprocess._smooth_all(noisy_maps, sigmas, threads)
    for a, b in zip(whole, banded):
        np.testing.assert_array_equal(a, b)
    assert np.shares_memory(banded[2], noisy_maps)  # sigma 0: not copied


def test_split_watershed_is_skimage_watershed(noisy_maps):
    boundary = ndimage.gaussian_filter(noisy_maps[2], 1.6)
    mask = ndimage.gaussian_filter(noisy_maps[0], 1.0) > 0.5
    seeds = (ndimage.gaussian_filter(noisy_maps[1], 1.6) < 0.5) & (boundary < 0.5) & mask
    markers, count = ndimage.label(seeds, structure=np.ones((3, 3), dtype=bool))
    assert count > 100 and ndimage.label(mask)[1] > 2
    expected = watershed(boundary, markers=markers, mask=mask, connectivity=1)
    split = postprocess._watershed(boundary, markers, mask, threads=2)
    np.testing.assert_array_equal(split, expected)
    # one component (or none): the plain watershed
    one = np.zeros_like(mask)
    one[100:300, 100:300] = True
    np.testing.assert_array_equal(
        postprocess._watershed(boundary, markers, one, threads=2),
        watershed(boundary, markers=markers, mask=one, connectivity=1),
    )


def test_instances_from_maps_same_on_one_and_two_threads(noisy_maps, monkeypatch):
    monkeypatch.setattr(postprocess, "_threads", lambda: 1)
    single = instances_from_maps(noisy_maps, min_size=10)
    monkeypatch.setattr(postprocess, "_threads", lambda: 2)
    double = instances_from_maps(noisy_maps, min_size=10)
    assert single.max() > 100
    np.testing.assert_array_equal(single, double)
