"""Modes as string enums: Normalization (core.predict.image) and PropagationMode, and
numpy masked arrays in to_rgb_uint8."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samscope.core.predict.image import NORMALIZATIONS, Normalization, to_rgb_uint8


def test_normalization_members_are_their_strings():
    assert Normalization.MINMAX == "minmax" and Normalization("percentile") is Normalization.PERCENTILE
    assert Normalization.parse("contrast limits") is Normalization.CONTRAST
    assert NORMALIZATIONS == ("percentile", "minmax")
    assert str(Normalization.MINMAX) == "minmax"
    with pytest.raises(ValueError, match=r"normalization must be one of \['percentile'"):
        to_rgb_uint8(np.arange(16.0).reshape(4, 4), normalization="zscore")


def test_enum_and_string_give_the_same_image():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (16, 16))
    for member in Normalization:
        limits = (80.0, 120.0) if member is Normalization.CONTRAST else None
        by_member = to_rgb_uint8(image, normalization=member, contrast_limits=limits)
        by_string = to_rgb_uint8(image, normalization=member.value, contrast_limits=limits)
        np.testing.assert_array_equal(by_member, by_string)
    np.testing.assert_array_equal(
        to_rgb_uint8(image, normalization="contrast limits", contrast_limits=(80, 120)),
        to_rgb_uint8(image, contrast_limits=(80, 120)),
    )
    with pytest.raises(ValueError, match="needs contrast_limits"):
        to_rgb_uint8(image, normalization=Normalization.CONTRAST)


def test_the_napari_adapters_use_the_core_enum():
    from napari_samscope._napari import images

    assert images.Normalization is Normalization


def test_stack_normalizer_takes_the_enum():
    from napari_samscope.core.volume import StackNormalizer

    volume = np.random.default_rng(1).normal(100, 20, (3, 8, 8))
    a = StackNormalizer(volume, normalization=Normalization.MINMAX)
    b = StackNormalizer(volume, normalization="minmax")
    assert a.contrast_limits == b.contrast_limits
    with pytest.raises(ValueError, match="normalization must be one of"):
        StackNormalizer(volume, normalization="bad")
    with pytest.raises(ValueError, match="needs contrast_limits"):
        StackNormalizer(volume, normalization="contrast limits")


def test_propagation_modes_are_an_enum_that_accepts_strings():
    from napari_samscope.core.volume import PROPAGATION_MODES, PropagationMode, propagate_iter

    assert PROPAGATION_MODES == ("mask", "box", "points")
    assert PropagationMode.parse("box") is PropagationMode.BOX
    job = propagate_iter(object(), np.zeros((2, 4, 4)), {0: np.ones((4, 4), bool)}, mode="boxes")
    with pytest.raises(ValueError, match=r"mode must be one of \['mask', 'box', 'points'\]"):
        next(job)


# --- numpy masked arrays --------------------------------------------------------------


def test_masked_pixels_are_background_and_left_out_of_the_limits():
    data = np.tile(np.linspace(0.0, 100.0, 32), (32, 1))
    data[:4, :4] = 1e6  # a masked-out hot spot must not set the limits
    mask = np.zeros(data.shape, bool)
    mask[:4, :4] = True
    masked = np.ma.MaskedArray(data, mask=mask)
    rgb = to_rgb_uint8(masked, normalization="minmax")
    assert (rgb[:4, :4] == 0).all()
    unmasked = to_rgb_uint8(np.where(mask, 0.0, data), normalization="minmax")
    np.testing.assert_array_equal(rgb[4:], unmasked[4:])
    assert rgb.max() == 255  # stretched over the visible 0..100, not up to 1e6


def test_masked_uint8_keeps_its_values_elsewhere():
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = np.zeros(rgb.shape, bool)
    mask[2, 3, :] = True
    out = to_rgb_uint8(np.ma.MaskedArray(rgb, mask=mask))
    assert (out[2, 3] == 0).all()
    keep = ~mask.any(axis=-1)
    np.testing.assert_array_equal(out[keep], rgb[keep])
    grey = np.ma.MaskedArray(rgb[..., 0], mask=mask[..., 0])
    out = to_rgb_uint8(grey)
    assert (out[2, 3] == 0).all() and out[0, 0, 0] == rgb[0, 0, 0]
    # nothing masked: the same as the plain array
    np.testing.assert_array_equal(to_rgb_uint8(np.ma.MaskedArray(rgb)), rgb)


def test_a_fully_masked_image_is_refused():
    with pytest.raises(ValueError, match="Every pixel of the masked array is masked"):
        to_rgb_uint8(np.ma.masked_all((4, 4), dtype=np.float32))
