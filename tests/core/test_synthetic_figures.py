"""Mitotic and apoptotic figures in the synthetic nuclei generator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_samscope.core.synthetic import SyntheticStyle, make_nuclei_2d, render_nuclei_2d
from napari_samscope.core.synthetic.figures import cell_cycle_figures
from napari_samscope.core.synthetic.render import object_signal, place_ellipses, rasterise


def _drawn(style: SyntheticStyle, shape=(256, 256), seed=0):
    """Interphase labels and signal as render_nuclei_2d draws them before the figures."""
    rng = np.random.default_rng(seed)
    objects = place_ellipses(shape, style, rng, ndim=2)
    labels, dist = rasterise(shape, objects, rng, min_area=20)
    return labels, object_signal(labels, dist, style, rng), rng


def _elongation(mask: np.ndarray) -> float:
    rows, cols = np.nonzero(mask)
    values = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]).astype(float)))
    return float(np.sqrt(values[1] / max(values[0], 1e-6)))


def test_zero_fractions_leave_everything_untouched_and_use_no_randomness():
    style = SyntheticStyle(radius_range=(8, 14))
    assert style.mitotic_fraction == 0 and style.apoptotic_fraction == 0
    labels, signal, rng = _drawn(style)
    state = rng.bit_generator.state
    out_labels, out_signal, kinds = cell_cycle_figures(labels, signal, style, rng)
    assert out_labels is labels and out_signal is signal and kinds == {}
    assert rng.bit_generator.state == state
    # the public generator with the fractions spelled out as 0 renders the same bits
    a = make_nuclei_2d((96, 96), seed=5, boundary="half_contrast")
    b = make_nuclei_2d((96, 96), seed=5, boundary="half_contrast", mitotic_fraction=0.0,
                       apoptotic_fraction=0.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_mitotic_figures_are_bright_bars_or_pairs_inside_their_former_nucleus():
    style = SyntheticStyle(radius_range=(12, 18), mitotic_fraction=1.0, elongation=0.2)
    labels, signal, rng = _drawn(style, seed=1)
    out, bright, kinds = cell_cycle_figures(labels, signal, style, rng)
    assert kinds and set(kinds.values()) <= {"metaphase", "anaphase"}
    assert set(kinds.values()) == {"metaphase", "anaphase"}  # both stages occur
    assert np.all((out > 0) <= (labels > 0))  # condensed chromatin stays in the nucleus
    assert out[labels > 0].astype(bool).mean() < 0.5  # most of a former nucleus is dark
    for index, kind in kinds.items():
        mask = out == index
        if index <= labels.max():  # ids keep their order; a second anaphase half comes last
            assert bright[mask].mean() > 1.5 * signal[labels == index].mean()  # condensed
        if kind == "metaphase":
            assert _elongation(mask) > 1.8  # a plate seen edge-on: an elongated bar
    # an anaphase figure is two objects, one per sister chromatin set: every nucleus
    # became a figure, so there are as many objects as plates plus anaphase halves
    n_anaphase = sum(k == "anaphase" for k in kinds.values())
    n_metaphase = sum(k == "metaphase" for k in kinds.values())
    assert n_anaphase % 2 == 0
    assert out.max() == n_metaphase + n_anaphase
    assert labels.max() == n_metaphase + n_anaphase // 2


def test_apoptotic_nuclei_are_small_bright_and_a_fragmented_one_is_one_object():
    style = SyntheticStyle(radius_range=(12, 18), apoptotic_fraction=1.0)
    labels, signal, rng = _drawn(style, seed=2)
    out, bright, kinds = cell_cycle_figures(labels, signal, style, rng)
    assert set(kinds.values()) == {"pyknotic", "fragmented"}
    assert out.max() == len(kinds) == labels.max()  # one object per apoptotic nucleus
    former = {int(i): int(np.sum(labels == i)) for i in range(1, labels.max() + 1)}
    pieces_of_fragmented = []
    for index, kind in kinds.items():
        mask = out == index
        assert mask.sum() < 0.5 * former[index]  # shrunken (ids keep their order)
        assert bright[mask].mean() > 2.0 * signal[labels == index].mean()
        _, pieces = ndi.label(mask)
        if kind == "pyknotic":
            assert pieces == 1 and _elongation(mask) < 1.4  # round
        else:
            pieces_of_fragmented.append(pieces)
    assert max(pieces_of_fragmented) >= 2  # bright bodies apart, still one id


@pytest.mark.parametrize("boundary", ["geometric", "half_contrast"])
def test_rendered_figures_have_consistent_labels_and_honour_the_fractions(boundary):
    style = SyntheticStyle(radius_range=(7, 12), density=0.35, mitotic_fraction=0.2,
                           apoptotic_fraction=0.15, boundary=boundary, blur=1.5)
    image, labels = render_nuclei_2d(style, (384, 384), 3)
    assert image.shape == labels.shape == (384, 384) and labels.dtype == np.uint32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # 0 and 1..N, no gaps
    # the fractions: count figures before the outline step on the same drawing
    drawn, signal, rng = _drawn(style, (384, 384), seed=3)
    n = int(drawn.max())
    assert n > 100
    _, _, kinds = cell_cycle_figures(drawn, signal, style, rng)
    mitotic_nuclei = sum(k == "metaphase" for k in kinds.values()) + sum(
        k == "anaphase" for k in kinds.values()) / 2
    apoptotic_nuclei = sum(k in ("pyknotic", "fragmented") for k in kinds.values())
    sd = np.sqrt(n * 0.25)  # binomial standard deviation, generous
    assert abs(mitotic_nuclei - 0.2 * n) < 3 * sd
    assert abs(apoptotic_nuclei - 0.15 * n) < 3 * sd


def test_fractions_are_honoured_over_many_nuclei():
    style = SyntheticStyle(radius_range=(6, 9), density=0.4, mitotic_fraction=0.1,
                           apoptotic_fraction=0.3)
    counts, total = {"mitotic": 0, "apoptotic": 0}, 0
    for seed in range(4):
        labels, signal, rng = _drawn(style, (320, 320), seed=seed)
        total += int(labels.max())
        _, _, kinds = cell_cycle_figures(labels, signal, style, rng)
        counts["mitotic"] += sum(k == "metaphase" for k in kinds.values())
        counts["mitotic"] += sum(k == "anaphase" for k in kinds.values()) / 2
        counts["apoptotic"] += sum(k in ("pyknotic", "fragmented") for k in kinds.values())
    assert total > 400
    assert counts["mitotic"] / total == pytest.approx(0.1, abs=0.04)
    assert counts["apoptotic"] / total == pytest.approx(0.3, abs=0.06)


def test_figures_are_deterministic_by_seed():
    style = replace(SyntheticStyle(), mitotic_fraction=0.3, apoptotic_fraction=0.3,
                    boundary="half_contrast")
    a = render_nuclei_2d(style, (160, 160), 11)
    b = render_nuclei_2d(style, (160, 160), 11)
    c = render_nuclei_2d(style, (160, 160), 12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    plain = render_nuclei_2d(SyntheticStyle(), (160, 160), 11)
    assert not np.array_equal(a[0], plain[0])  # the figures change the image


@pytest.mark.parametrize(
    "kwargs",
    [dict(mitotic_fraction=-0.1), dict(apoptotic_fraction=1.2),
     dict(mitotic_fraction=0.6, apoptotic_fraction=0.6)],
)
def test_bad_fractions_are_refused(kwargs):
    with pytest.raises(ValueError, match="fraction"):
        SyntheticStyle(**kwargs)


def test_half_contrast_outline_keeps_every_body_of_a_whole_object():
    from napari_samscope.core.synthetic.optics import half_contrast_labels

    labels = np.zeros((48, 64), np.uint32)
    yy, xx = np.mgrid[:48, :64]
    labels[(yy - 24) ** 2 + (xx - 20) ** 2 < 16] = 1  # two small bodies of one object
    labels[(yy - 24) ** 2 + (xx - 32) ** 2 < 9] = 1
    blurred = ndi.gaussian_filter((labels > 0).astype(np.float32), 0.8)
    largest_only = half_contrast_labels(labels, blurred, min_area=60)
    assert largest_only.max() == 0  # one body alone is below min_area: dropped
    kept = half_contrast_labels(labels, blurred, min_area=60, whole=(1,))
    assert kept.max() == 1 and ndi.label(kept > 0)[1] == 2
