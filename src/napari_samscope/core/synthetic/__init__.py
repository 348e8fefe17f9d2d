"""Synthetic fluorescence microscopy with known instance labels.

Three generators share one image-formation model:

- :func:`make_nuclei_2d` - textured elliptical nuclei (touching, overlapping, dim ones);
- :func:`make_membrane_cells_2d` - cells seen through a membrane stain (ring-like objects);
- :func:`make_nuclei_3d` - ellipsoidal nuclei in an anisotropic ``(Z, Y, X)`` stack.

Every generator returns ``(image, labels)``: ``image`` is ``uint8`` or ``uint16`` with the
same shape as ``labels``, which is ``uint32`` with 0 as background and ids ``1..N``.

Image formation (in photon units): each object gets a brightness, a smooth two-scale
texture and a slight dome profile; the signal is blurred by a Gaussian PSF; a background
with a linear gradient and a smooth haze is added; photon (Poisson) noise and camera
read (Gaussian) noise follow; a camera offset and gain (``uint16``) or a scaling with a
chosen dynamic-range use (``uint8``) give the final integers. With ``mitotic_fraction`` or
``apoptotic_fraction`` some nuclei are first redrawn as condensed-chromatin figures
(:mod:`~napari_samscope.core.synthetic.figures`, which also gives their labelling). ``snr`` is the mean object
amplitude divided by the noise standard deviation of the background.

:class:`SyntheticStyle` holds every knob; :func:`random_style` samples them widely so a
model trained on the output does not learn a single look. Everything is reproducible
from ``seed`` (or a ``numpy.random.Generator``).
"""

from napari_samscope.core.synthetic.generators import (
    make_membrane_cells_2d,
    make_nuclei_2d,
    make_nuclei_3d,
    render_nuclei_2d,
)
from napari_samscope.core.synthetic.style import (
    SyntheticStyle,
    random_style,
    realistic_nuclei_style,
)

__all__ = [
    "SyntheticStyle",
    "random_style",
    "realistic_nuclei_style",
    "render_nuclei_2d",
    "make_nuclei_2d",
    "make_membrane_cells_2d",
    "make_nuclei_3d",
]
