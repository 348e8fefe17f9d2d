"""core.image: every kind of microscope image -> 8-bit RGB, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samscope.core.predict.image import load_image, to_rgb_uint8

RNG = np.random.default_rng(0)


def _ramp(h: int = 20, w: int = 30, dtype=np.float64) -> np.ndarray:
    return np.arange(h * w, dtype=np.float64).reshape(h, w).astype(dtype)


# ----------------------------------------------------------------------------- 8-bit


def test_uint8_rgb_passes_through_unchanged():
    img = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3)
    np.testing.assert_array_equal(out, img)
    assert out.flags.c_contiguous


def test_uint8_rgb_non_contiguous_is_made_contiguous():
    img = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)[:, ::2]
    out = to_rgb_uint8(img)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)


def test_uint8_rgba_drops_alpha():
    img = RNG.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(img), img[..., :3])


def test_uint8_grey_is_replicated_without_stretching():
    img = RNG.integers(40, 90, (12, 13), dtype=np.uint8)
    out = to_rgb_uint8(img)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], img)


def test_uint8_with_contrast_limits_is_stretched():
    img = np.array([[0, 50, 100]], dtype=np.uint8)
    out = to_rgb_uint8(img, contrast_limits=(0, 100))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    # the napari default limits of an 8-bit RGB layer keep the values exactly
    rgb = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgb, contrast_limits=(0, 255)), rgb)


# ----------------------------------------------------------------------------- other dtypes


@pytest.mark.parametrize(
    "dtype", [np.uint16, np.int32, np.int64, np.float32, np.float64, np.float16]
)
def test_grey_any_dtype_minmax_maps_to_full_range(dtype):
    img = _ramp(8, 8, dtype) - (10 if np.issubdtype(dtype, np.signedinteger) else 0)
    out = to_rgb_uint8(img, normalization="minmax")
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    expected = np.rint((img.astype(np.float64) - img.min()) / np.ptp(img) * 255)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1


def test_default_percentile_clips_outliers():
    img = _ramp(100, 100, np.uint16)
    img[0, 0] = 60000  # a hot pixel must not squash the rest
    out = to_rgb_uint8(img)
    lo, hi = np.percentile(img, [0.5, 99.5])
    expected = np.clip(np.rint((img.astype(np.float64) - lo) / (hi - lo) * 255), 0, 255)
    assert np.abs(out[..., 1].astype(int) - expected).max() <= 1
    assert out[0, 0, 0] == 255
    assert (out[..., 0] == 0).sum() >= 50  # the lowest 0.5% clip to black


def test_custom_percentiles():
    img = _ramp(10, 10)
    a = to_rgb_uint8(img, percentiles=(10, 90))
    b = to_rgb_uint8(img, contrast_limits=tuple(np.percentile(img, [10, 90])))
    np.testing.assert_array_equal(a, b)


def test_sparse_spots_fall_back_to_minmax():
    img = np.zeros((100, 100), dtype=np.uint16)
    img[5, 5] = 1000  # 0.01% of the pixels: both percentiles are 0
    out = to_rgb_uint8(img)
    assert out[5, 5, 0] == 255 and out[0, 0, 0] == 0


def test_bool_maps_to_0_and_255():
    img = np.zeros((6, 7), dtype=bool)
    img[2:4, 3] = True
    out = to_rgb_uint8(img)
    assert set(np.unique(out)) == {0, 255}
    np.testing.assert_array_equal(out[..., 2] == 255, img)


def test_float_rgb_last_axis_normalised_per_channel():
    img = np.stack([_ramp(), 10 * _ramp() + 5, -_ramp()], axis=-1)
    out = to_rgb_uint8(img, normalization="minmax")
    for c in range(3):
        assert out[..., c].min() == 0 and out[..., c].max() == 255
    assert out[0, 0, 0] == 0 and out[0, 0, 2] == 255  # the negated channel is reversed


def test_nan_and_inf_are_ignored_then_zero():
    img = _ramp(10, 10)
    img[0, 0], img[1, 1], img[2, 2] = np.nan, np.inf, -np.inf
    out = to_rgb_uint8(img, normalization="minmax")
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 0 and out[2, 2, 0] == 0
    assert out.max() == 255  # the finite maximum still maps to 255
    assert out[9, 9, 0] == 255


# ----------------------------------------------------------------------------- channels


def test_two_channels_map_to_red_and_green():
    img = np.stack([_ramp(), _ramp().max() - _ramp()], axis=0).astype(np.uint16)
    out = to_rgb_uint8(img, channel_axis=0, normalization="minmax")
    assert out.shape == (20, 30, 3)
    assert out[..., 0].max() == 255 and out[..., 1].max() == 255
    assert not out[..., 2].any()
    assert out[0, 0, 0] == 0 and out[0, 0, 1] == 255


def test_three_channels_with_channel_axis():
    img = RNG.random((3, 10, 12)).astype(np.float32)
    out = to_rgb_uint8(img, channel_axis=0, normalization="minmax")
    for c in range(3):
        ref = to_rgb_uint8(img[c], normalization="minmax")[..., 0]
        np.testing.assert_array_equal(out[..., c], ref)


def test_uint8_three_channels_first_are_kept_unchanged():
    img = RNG.integers(0, 256, (3, 8, 9), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(img, channel_axis=0), np.moveaxis(img, 0, -1))


def test_more_than_three_channels_need_a_choice():
    img = RNG.random((10, 12, 5))
    with pytest.raises(ValueError, match="channels=\\(i, j, k\\)"):
        to_rgb_uint8(img, channel_axis=-1)
    out = to_rgb_uint8(img, channel_axis=-1, channels=(4, 0, 2), normalization="minmax")
    np.testing.assert_array_equal(
        out[..., 0], to_rgb_uint8(img[..., 4], normalization="minmax")[..., 0]
    )
    np.testing.assert_array_equal(
        out[..., 2], to_rgb_uint8(img[..., 2], normalization="minmax")[..., 0]
    )


def test_one_chosen_channel_is_replicated():
    img = RNG.random((4, 10, 12))
    out = to_rgb_uint8(img, channel_axis=0, channels=(2,))
    np.testing.assert_array_equal(out, to_rgb_uint8(img[2]))


def test_contrast_limits_per_channel_and_per_input_channel():
    img = np.stack([_ramp(), _ramp() * 2, _ramp() * 3, _ramp() * 4], axis=0)
    top = img.max()
    limits = [(0, top / 4), (0, top / 2), (0, top), (0, top * 2)]
    # one pair per input channel, picked with channels
    out = to_rgb_uint8(img, channel_axis=0, channels=(0, 1, 2), contrast_limits=limits)
    assert out[..., 0].max() == 255 and out[..., 1].max() == 255
    assert out[..., 2].max() == np.rint(255 * 3 / 4)
    # one pair per selected channel
    same = to_rgb_uint8(img, channel_axis=0, channels=(0, 1, 2), contrast_limits=limits[:3])
    np.testing.assert_array_equal(out, same)
    # a single pair for all channels
    one = to_rgb_uint8(img[:3], channel_axis=0, contrast_limits=(0, top))
    assert one[-1, -1, 0] == np.rint(255 * img[0].max() / top)


def test_constant_image_with_contrast_limits_is_accepted():
    out = to_rgb_uint8(np.full((5, 5), 7, dtype=np.uint16), contrast_limits=(0, 28))
    assert (out == 64).all()


def test_allow_constant_converts_constant_images():
    assert not to_rgb_uint8(np.full((5, 5), 3.0), allow_constant=True).any()
    rgb = np.full((4, 6, 3), 17, dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgb, allow_constant=True), rgb)
    grey = np.zeros((4, 6), dtype=np.uint8)
    assert to_rgb_uint8(grey, allow_constant=True).shape == (4, 6, 3)


def test_constant_channel_among_others_becomes_zero():
    img = np.stack([_ramp(), np.full((20, 30), 3.0)], axis=0)
    out = to_rgb_uint8(img, channel_axis=0)
    assert out[..., 0].max() == 255 and not out[..., 1].any()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.full((5, 5), np.nan), {}, "only NaN or infinite"),
        (np.full((5, 5), np.inf), {}, "only NaN or infinite"),
        (np.full((5, 5), 3.0), {}, "constant"),
        (np.full((5, 5), 3, dtype=np.uint16), {"normalization": "minmax"}, "constant"),
        (np.full((5, 5), 9, dtype=np.uint8), {}, "constant"),
        (np.full((5, 5, 3), 9, dtype=np.uint8), {}, "constant"),
        (np.zeros((5, 5), dtype=bool), {}, "constant"),
        (np.arange(10.0), {}, "must be 2D"),
        (np.float64(3.0), {}, "must be 2D"),
        (np.zeros((0, 5)), {}, "empty"),
        (np.zeros((5, 0, 3), dtype=np.uint8), {}, "empty"),
        (np.ones((4, 4), dtype=np.complex64), {}, "Complex"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "numeric"),
        (RNG.random((5, 6, 7)), {}, "channel_axis"),
        (RNG.random((2, 5, 6, 7)), {}, "channel_axis"),
        (RNG.random((5, 6, 3)), {"channel_axis": 3}, "out of range"),
        (RNG.random((5, 6, 3)), {"channel_axis": -4}, "out of range"),
        (RNG.random((5, 6, 3)), {"channel_axis": 1.5}, "integer"),
        (RNG.random((5, 6)), {"channel_axis": 0}, "3 axes"),
        (RNG.random((2, 5, 6, 3)), {"channel_axis": -1}, "3 axes"),
        (RNG.random((5, 6)), {"channels": (0, 1, 2)}, "needs channel_axis"),
        (RNG.random((5, 6, 4)), {"channel_axis": 2, "channels": (0, 9, 1)}, "does not exist"),
        (RNG.random((5, 6, 4)), {"channel_axis": 2, "channels": (0, 1, 2, 3)}, "1 to 3"),
        (RNG.random((5, 6)), {"normalization": "zscore"}, "normalization"),
        (RNG.random((5, 6)), {"percentiles": (99, 1)}, "percentiles"),
        (RNG.random((5, 6)), {"percentiles": "low"}, "percentiles"),
        (RNG.random((5, 6)), {"contrast_limits": (5, 5)}, "low < high"),
        (RNG.random((5, 6)), {"contrast_limits": (0, np.nan)}, "low < high"),
        (RNG.random((5, 6)), {"contrast_limits": (0, 1, 2)}, "contrast_limits"),
        (RNG.random((3, 5, 6)), {"channel_axis": 0, "contrast_limits": [(0, 1)] * 2}, "pairs"),
    ],
)
def test_bad_input_raises_a_clear_value_error(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(image, **kwargs)


def test_bad_input_leaves_the_input_untouched():
    img = _ramp()
    img[0, 0] = np.nan
    copy = img.copy()
    to_rgb_uint8(img)
    np.testing.assert_array_equal(img, copy)


# ----------------------------------------------------------------------------- files


def test_load_png_rgb_and_grey(tmp_path):
    from PIL import Image

    rgb = RNG.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    grey = RNG.integers(0, 256, (10, 14), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=100)
    out = load_image(str(tmp_path / "g.jpg"))
    assert out.shape == (10, 14) and out.dtype == np.uint8


def test_load_palette_png_becomes_rgb(tmp_path):
    from PIL import Image

    rgb = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8


def test_load_tiff_uint16(tmp_path):
    import tifffile

    img = RNG.integers(0, 65535, (9, 8), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", img)
    loaded = load_image(tmp_path / "x.tif")
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, img)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No image file"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("name", ["bad.png", "bad.tif", "bad.xyz"])
def test_load_unreadable_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="Could not read"):
        load_image(tmp_path / name)


def test_load_folder(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        load_image(tmp_path)
