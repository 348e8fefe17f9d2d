"""Synthetic microscopy generators: shapes, dtypes, labels, reproducibility, bad input."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_samscope.core.synthetic import (
    SyntheticStyle,
    make_membrane_cells_2d,
    make_nuclei_2d,
    make_nuclei_3d,
    random_style,
    render_nuclei_2d,
)


def _assert_instances(labels: np.ndarray, min_count: int) -> None:
    assert labels.dtype == np.uint32
    ids = np.unique(labels)
    assert ids[0] == 0
    # ids are exactly 1..N, each object is one connected piece
    np.testing.assert_array_equal(ids[1:], np.arange(1, len(ids)))
    assert len(ids) - 1 >= min_count
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        _, pieces = ndi.label(labels[box] == index)
        assert pieces == 1


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_nuclei_2d_shape_dtype_and_labels(dtype):
    image, labels = make_nuclei_2d((128, 160), dtype=dtype, radius_range=(6, 10), seed=3)
    assert image.shape == labels.shape == (128, 160)
    assert image.dtype == np.dtype(dtype)
    _assert_instances(labels, min_count=10)
    # nuclei are brighter than the background
    assert image[labels > 0].mean() > image[labels == 0].mean()


def test_nuclei_2d_is_reproducible_and_seed_dependent():
    a = make_nuclei_2d((96, 96), seed=1)
    b = make_nuclei_2d((96, 96), seed=1)
    c = make_nuclei_2d((96, 96), seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_nuclei_2d_controls_count_size_and_touching():
    _, labels = make_nuclei_2d((256, 256), n=12, radius_range=(10, 12), touching=False, seed=0)
    assert 1 <= labels.max() <= 12
    areas = np.bincount(labels.ravel())[1:]
    interior = areas[areas > 0.9 * np.pi * 10 * 7]
    assert len(interior) >= 1 and interior.max() <= np.pi * 12 * 12 + 20
    # without touching no two objects share a border
    grown = ndi.grey_dilation(labels, size=3)
    assert not np.any((grown != labels) & (labels > 0))
    _, touching = make_nuclei_2d((256, 256), radius_range=(10, 12), touching=0.9, seed=0)
    grown = ndi.grey_dilation(touching, size=3)
    assert np.any((grown != touching) & (touching > 0))


def test_low_snr_is_noisier():
    clean, labels = make_nuclei_2d((128, 128), dtype="uint16", snr=40, seed=4)
    noisy, labels2 = make_nuclei_2d((128, 128), dtype="uint16", snr=2, seed=4)
    np.testing.assert_array_equal(labels, labels2)

    def contrast(img, lab):
        img = img.astype(float)
        return (img[lab > 0].mean() - img[lab == 0].mean()) / img[lab == 0].std()

    assert contrast(noisy, labels) < contrast(clean, labels) / 3


def test_membrane_cells_have_bright_rings():
    image, labels = make_membrane_cells_2d((192, 192), seed=0)
    _assert_instances(labels, min_count=5)
    inner = ndi.binary_erosion(labels > 0, iterations=4)
    ring = (labels > 0) & ~ndi.binary_erosion(labels > 0, iterations=1)
    assert image[ring].mean() > image[inner].mean()


def test_nuclei_3d_stack():
    volume, labels = make_nuclei_3d((12, 96, 96), radius_range=(6, 9), z_anisotropy=2.0, seed=1)
    assert volume.shape == labels.shape == (12, 96, 96)
    assert volume.dtype == np.uint16
    _assert_instances(labels, min_count=3)
    # ellipsoids extend over several planes but are flatter in z than in xy (anisotropy)
    extents = [
        (box[0].stop - box[0].start, box[1].stop - box[1].start) for box in ndi.find_objects(labels)
    ]
    assert max(z for z, _ in extents) >= 3
    assert np.median([z / y for z, y in extents]) < 1


def test_random_style_varies_widely_and_renders():
    rng = np.random.default_rng(0)
    styles = [random_style(rng) for _ in range(40)]
    assert {s.dtype for s in styles} == {"uint8", "uint16"}
    assert max(s.snr for s in styles) > 5 * min(s.snr for s in styles)
    assert max(s.radius_range[0] for s in styles) > 2.5 * min(s.radius_range[0] for s in styles)
    assert max(s.blur for s in styles) - min(s.blur for s in styles) > 1.5
    image, labels = render_nuclei_2d(styles[0], (96, 96), rng)
    assert image.shape == labels.shape == (96, 96)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"radius_range": (0.5, 3)},
        {"radius_range": (8, 4)},
        {"dtype": "float32"},
        {"snr": 0},
        {"blur": -1},
        {"n_objects": -2},
    ],
)
def test_bad_style_is_refused(kwargs):
    with pytest.raises(ValueError):
        SyntheticStyle(**kwargs)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        make_nuclei_2d((4, 4))
    with pytest.raises(ValueError, match="shape"):
        make_nuclei_2d((64, 64, 64))
    with pytest.raises(ValueError, match="shape"):
        make_nuclei_3d((64, 64))
    with pytest.raises(ValueError, match="z_anisotropy"):
        make_nuclei_3d((4, 64, 64), z_anisotropy=0)
