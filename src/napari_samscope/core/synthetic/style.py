"""The statistics of a synthetic image (:class:`SyntheticStyle`) and a wide sampler of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Boundary", "Dtype", "SyntheticStyle", "random_style", "realistic_nuclei_style"]

Dtype = Literal["uint8", "uint16"]
Boundary = Literal["geometric", "half_contrast"]


@dataclass(frozen=True)
class SyntheticStyle:
    """The statistics of one synthetic image (all lengths in pixels of the image).

    Attributes:
        radius_range: (min, max) of an object's major semi-axis.
        elongation: maximum ``1 - minor/major`` of the ellipses (0 = circles).
        n_objects: number of objects to place, or None to fill ``density`` of the area.
        density: target fraction of the area covered by objects when ``n_objects`` is None.
        touching: probability that a new object is placed against an existing one.
        overlap: how far touching objects may interpenetrate, as a fraction of their radii.
        dtype: ``"uint8"`` or ``"uint16"``.
        snr: mean object amplitude / background noise standard deviation.
        background_photons: mean background level in photons (sets the Poisson regime).
        read_noise: camera read noise standard deviation, in photons.
        blur: standard deviation of the Gaussian PSF.
        background_gradient: relative change of the illumination across the image (0..~1.5).
        haze: mean level of smooth out-of-focus background light, relative to the object
            amplitude.
        texture: relative amplitude of the smooth intensity texture inside objects.
        dome: relative brightness drop from an object's centre to its edge.
        brightness_spread: log-normal sigma of the per-object brightness.
        dim_fraction: fraction of objects that are 3-6x dimmer than the others.
        uint8_range: fraction of 0..255 used by the brightest 0.1% of pixels (``uint8``).
        uint16_gain: counts per photon of the ``uint16`` camera (offset 100 counts).
        psf_tail: fraction of each object's light spread by a wide second Gaussian
            (scattering and out-of-focus light around real nuclei; 0 = one Gaussian).
        psf_tail_sigma: standard deviation of that wide Gaussian, as a multiple of
            ``max(blur, 1)``.
        defocus_fraction: fraction of objects lying out of the focal plane: their light is
            blurred ``defocus_blur`` times more and dimmed by the same spread.
        defocus_blur: extra blur factor of the out-of-focus objects.
        chromatin: relative amplitude of fine, speckled chromatin texture (a scale of about
            a tenth of the radius) inside objects.
        boundary: where the ground-truth outline lies. ``"geometric"``: the drawn ellipse.
            ``"half_contrast"``: where the noise-free, blurred image of the object falls to
            half of its interior level above the background, the convention human
            annotators of fluorescence images follow (outlines drawn at about half the local
            contrast); a blurred or domed nucleus gets a tighter outline than its ellipse.
        mitotic_fraction: fraction of nuclei drawn as mitotic figures (condensed chromatin:
            a bright metaphase plate, or two bright bars or blobs in anaphase; see
            :mod:`~napari_samscope.core.synthetic.figures` for how they are labelled).
        apoptotic_fraction: fraction of nuclei drawn as apoptotic (small, very bright and
            round, or fragmented into a few bright bodies that form one object).
    """

    radius_range: tuple[float, float] = (8.0, 18.0)
    elongation: float = 0.35
    n_objects: int | None = None
    density: float = 0.3
    touching: float = 0.3
    overlap: float = 0.15
    dtype: Dtype = "uint8"
    snr: float = 15.0
    background_photons: float = 20.0
    read_noise: float = 2.0
    blur: float = 1.0
    background_gradient: float = 0.3
    haze: float = 0.1
    texture: float = 0.15
    dome: float = 0.15
    brightness_spread: float = 0.25
    dim_fraction: float = 0.1
    uint8_range: float = 0.9
    uint16_gain: float = 2.0
    psf_tail: float = 0.0
    psf_tail_sigma: float = 4.0
    defocus_fraction: float = 0.0
    defocus_blur: float = 3.0
    chromatin: float = 0.0
    boundary: Boundary = "geometric"
    mitotic_fraction: float = 0.0
    apoptotic_fraction: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.radius_range
        if not 1.0 <= lo <= hi:
            raise ValueError(
                f"radius_range must be (min, max) with 1 <= min <= max, not {self.radius_range}"
            )
        if self.dtype not in ("uint8", "uint16"):
            raise ValueError(f"dtype must be 'uint8' or 'uint16', not {self.dtype!r}")
        if self.snr <= 0 or self.blur < 0 or self.background_photons < 0 or self.read_noise < 0:
            raise ValueError("snr must be > 0 and blur, background_photons, read_noise >= 0")
        if not 0.0 <= self.psf_tail < 1.0 or not 0.0 <= self.defocus_fraction <= 1.0:
            raise ValueError("psf_tail must be in [0, 1) and defocus_fraction in [0, 1]")
        if self.psf_tail_sigma <= 0 or self.defocus_blur < 1 or self.chromatin < 0:
            raise ValueError("psf_tail_sigma must be > 0, defocus_blur >= 1 and chromatin >= 0")
        if self.boundary not in ("geometric", "half_contrast"):
            raise ValueError(
                f"boundary must be 'geometric' or 'half_contrast', not {self.boundary!r}"
            )
        if (
            not 0.0 <= self.mitotic_fraction <= 1.0
            or not 0.0 <= self.apoptotic_fraction <= 1.0
            or self.mitotic_fraction + self.apoptotic_fraction > 1.0
        ):
            raise ValueError(
                "mitotic_fraction and apoptotic_fraction must be in [0, 1] and add up to at "
                f"most 1, not {self.mitotic_fraction} and {self.apoptotic_fraction}"
            )
        if self.n_objects is not None and self.n_objects < 0:
            raise ValueError(f"n_objects must be >= 0 or None, not {self.n_objects}")


def random_style(rng: np.random.Generator, *, size_scale: float = 1.0) -> SyntheticStyle:
    """Sample a widely varying :class:`SyntheticStyle` (contrast, size, blur, noise, texture).

    Args:
        rng: the random generator (the only source of randomness).
        size_scale: multiplies the sampled object radii (e.g. 0.5 for a 256x256 canvas).
    """
    lo = float(rng.uniform(5.0, 22.0)) * size_scale
    hi = lo * float(rng.uniform(1.1, 1.8))
    return SyntheticStyle(
        radius_range=(max(lo, 2.0), max(hi, 2.0)),
        elongation=float(rng.uniform(0.0, 0.5)),
        density=float(rng.uniform(0.08, 0.45)),
        touching=float(rng.choice([0.0, rng.uniform(0.1, 0.9)])),
        overlap=float(rng.uniform(0.0, 0.3)),
        dtype="uint16" if rng.random() < 0.5 else "uint8",
        snr=float(np.exp(rng.uniform(np.log(2.5), np.log(60.0)))),
        background_photons=float(np.exp(rng.uniform(np.log(1.0), np.log(300.0)))),
        read_noise=float(rng.uniform(0.5, 8.0)),
        blur=float(rng.uniform(0.0, 2.8)) * max(size_scale, 0.5),
        background_gradient=float(rng.uniform(0.0, 1.2)),
        haze=float(rng.uniform(0.0, 0.4)),
        texture=float(rng.uniform(0.0, 0.45)),
        dome=float(rng.uniform(-0.1, 0.5)),
        brightness_spread=float(rng.uniform(0.05, 0.6)),
        dim_fraction=float(rng.uniform(0.0, 0.3)),
        uint8_range=float(rng.uniform(0.25, 1.0)),
        uint16_gain=float(np.exp(rng.uniform(np.log(0.5), np.log(20.0)))),
    )


def realistic_nuclei_style(rng: np.random.Generator) -> SyntheticStyle:
    """Sample nuclei as real widefield/confocal images show them, outlined as annotated.

    Compared with :func:`random_style`: mostly clumped and touching nuclei with shared,
    blurred boundaries; a PSF with a wide tail (up to 35% of the light scattered several
    pixels out); some out-of-focus nuclei; fine chromatin texture; dim and bright nuclei
    side by side; and the ``"half_contrast"`` ground truth, so that a model trained on
    it draws outlines where annotators do rather than around the faint halo.
    """
    lo = float(rng.uniform(4.0, 13.0))
    return SyntheticStyle(
        radius_range=(lo, lo * float(rng.uniform(1.3, 2.2))),
        elongation=float(rng.uniform(0.0, 0.45)),
        density=float(rng.uniform(0.1, 0.45)),
        touching=float(rng.uniform(0.2, 0.85)),
        overlap=float(rng.uniform(0.0, 0.3)),
        dtype="uint16" if rng.random() < 0.5 else "uint8",
        snr=float(np.exp(rng.uniform(np.log(2.5), np.log(60.0)))),
        background_photons=float(np.exp(rng.uniform(np.log(1.0), np.log(200.0)))),
        read_noise=float(rng.uniform(0.5, 8.0)),
        blur=float(rng.uniform(0.5, 3.0)),
        background_gradient=float(rng.uniform(0.0, 1.0)),
        haze=float(rng.uniform(0.0, 0.4)),
        texture=float(rng.uniform(0.05, 0.4)),
        dome=float(rng.uniform(-0.1, 0.5)),
        brightness_spread=float(rng.uniform(0.1, 0.6)),
        dim_fraction=float(rng.uniform(0.0, 0.3)),
        uint8_range=float(rng.uniform(0.25, 1.0)),
        uint16_gain=float(np.exp(rng.uniform(np.log(0.5), np.log(20.0)))),
        psf_tail=float(rng.choice([0.0, rng.uniform(0.05, 0.35)])),
        psf_tail_sigma=float(rng.uniform(2.5, 6.0)),
        defocus_fraction=float(rng.choice([0.0, rng.uniform(0.05, 0.3)])),
        defocus_blur=float(rng.uniform(2.0, 4.0)),
        chromatin=float(rng.uniform(0.0, 0.35)),
        boundary="half_contrast",
    )
