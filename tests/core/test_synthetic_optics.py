"""The realistic image formation: PSF tail, defocus, chromatin, half-contrast outlines."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_samscope.core.synthetic import (
    SyntheticStyle,
    make_nuclei_2d,
    realistic_nuclei_style,
    render_nuclei_2d,
)
from napari_samscope.core.synthetic.optics import half_contrast_labels, psf_blur


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def test_psf_without_a_tail_is_the_plain_gaussian_and_the_tail_spreads_light():
    signal = np.zeros((64, 64), np.float32)
    signal[30:34, 30:34] = 1
    style = SyntheticStyle()
    np.testing.assert_array_equal(psf_blur(signal, style, (1.5, 1.5)), ndi.gaussian_filter(signal, 1.5))
    tailed = psf_blur(signal, replace(style, psf_tail=0.3, psf_tail_sigma=4.0), (1.5, 1.5))
    assert tailed.sum() == pytest.approx(signal.sum(), rel=1e-3)  # light is conserved
    assert tailed[32, 44] > 10 * ndi.gaussian_filter(signal, 1.5)[32, 44]  # far light
    assert tailed[32, 32] < ndi.gaussian_filter(signal, 1.5)[32, 32]  # dimmer core


def test_half_contrast_outline_of_a_domed_blurred_disk_is_inside_the_drawn_disk():
    labels = _disk((80, 80), (40, 40), 15).astype(np.uint32)
    yy, xx = np.mgrid[:80, :80]
    dist2 = ((yy - 40) ** 2 + (xx - 40) ** 2) / 15.0**2
    signal = np.where(labels > 0, 1.0 - 0.5 * dist2, 0.0).astype(np.float32)  # strong dome
    blurred = ndi.gaussian_filter(signal, 2.0)
    tight = half_contrast_labels(labels, blurred, min_area=10)
    assert tight.max() == 1 and tight[40, 40] == 1
    assert 0.6 * labels.sum() < tight.sum() < 0.95 * labels.sum()  # tighter than the ellipse
    # a flat disk: the half-contrast outline is the drawn one within a pixel ring
    flat = ndi.gaussian_filter((labels > 0).astype(np.float32), 1.0)
    same = half_contrast_labels(labels, flat, min_area=10)
    ring = ndi.binary_dilation(labels > 0) & ~ndi.binary_erosion(labels > 0)
    assert np.all((same > 0) == (labels > 0)) or np.all(((same > 0) ^ (labels > 0)) <= ring)


def test_half_contrast_keeps_touching_objects_apart_and_drops_tiny_ones():
    labels = np.zeros((60, 90), np.uint32)
    labels[_disk(labels.shape, (30, 30), 12)] = 1
    labels[_disk(labels.shape, (30, 53), 12) & (labels == 0)] = 2
    labels[5, 85] = 3  # one pixel: below min_area
    blurred = ndi.gaussian_filter((labels > 0).astype(np.float32) * np.array([0, 1, 3, 1])[labels], 1.5)
    out = half_contrast_labels(labels, blurred, min_area=15)  # the blurred dot spans ~10 px
    assert out.max() == 2
    # the dim object keeps its own side: no pixel of the bright one is given to it
    assert not np.any((out == 1) & (labels == 2)) and not np.any((out == 2) & (labels == 1))


def test_the_default_style_renders_exactly_as_before_the_new_knobs():
    style = SyntheticStyle()
    assert style.psf_tail == 0 and style.defocus_fraction == 0 and style.chromatin == 0
    assert style.boundary == "geometric"
    a = render_nuclei_2d(style, (96, 96), 3)
    b = make_nuclei_2d((96, 96), seed=3)
    np.testing.assert_array_equal(a[0], b[0])


def test_realistic_style_renders_annotator_outlines_with_touching_nuclei():
    rng = np.random.default_rng(0)
    for _ in range(3):
        style = realistic_nuclei_style(rng)
        assert style.boundary == "half_contrast"
        image, labels = render_nuclei_2d(style, (128, 128), rng)
        assert image.shape == labels.shape == (128, 128) and labels.max() >= 1
        assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))  # renumbered


@pytest.mark.parametrize(
    "kwargs",
    [dict(psf_tail=1.0), dict(psf_tail=-0.1), dict(defocus_fraction=1.5), dict(psf_tail_sigma=0),
     dict(defocus_blur=0.5), dict(chromatin=-1), dict(boundary="outline")],
)
def test_bad_optics_are_refused(kwargs):
    with pytest.raises(ValueError):
        SyntheticStyle(**kwargs)


def test_touching_pairs_are_found_and_scored_through_the_predictor():
    from napari_samscope.core.modeling.build import build_sam, tiny_config
    from napari_samscope.core.training.touching_pairs import evaluate_touching_pairs, touching_pairs

    labels = np.zeros((64, 64), np.int32)
    labels[_disk(labels.shape, (30, 20), 9)] = 1
    labels[_disk(labels.shape, (30, 38), 9) & (labels == 0)] = 2
    labels[_disk(labels.shape, (55, 55), 5)] = 3  # alone
    assert touching_pairs(labels, min_area=30) == [(1, 2), (2, 1)]
    image = (labels > 0).astype(np.uint8) * 200
    import torch

    torch.manual_seed(0)
    result = evaluate_touching_pairs(build_sam(tiny_config("vit", img_size=64)), [image], [labels])
    assert result.pairs == 2 and len(result.positive_ious) == 2
    assert all(0.0 <= v <= 1.0 for v in result.pair_ious + result.positive_ious)
    with pytest.raises(ValueError, match="labels are"):
        evaluate_touching_pairs(build_sam(tiny_config("vit", img_size=64)), [image], [labels[:10]])
