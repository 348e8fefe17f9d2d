"""3D stacks and time series, one 2D plane at a time (core only, no napari).

- :class:`EmbeddingCache`, :class:`StackNormalizer`, :func:`encode_planes_iter`
  (from :mod:`.stack`): cached, consistently normalised, batched plane encoding.
- :func:`propagate_iter` (from :mod:`.propagation`): grow seeded 2D masks into a 3D object.
- :func:`segment_volume_everything_iter` and :func:`link_labels`: segment everything on
  every plane and give each object one id through the stack.

Volumes are ``(Z, H, W)`` or ``(Z, H, W, C)`` (channels last); masks are ``bool``,
label volumes ``uint32`` with 0 as background.
"""

from napari_samscope.core.volume.everything import link_labels, segment_volume_everything_iter
from napari_samscope.core.volume.propagation import (
    PROPAGATION_MODES,
    PropagationMode,
    mask_to_lowres_logits,
    points_inside,
    propagate_iter,
)
from napari_samscope.core.volume.stack import (
    EmbeddingCache,
    StackNormalizer,
    encode_planes_iter,
    plane_embedding,
    plane_indices,
)

__all__ = [
    "PROPAGATION_MODES",
    "EmbeddingCache",
    "PropagationMode",
    "StackNormalizer",
    "encode_planes_iter",
    "link_labels",
    "mask_to_lowres_logits",
    "plane_embedding",
    "plane_indices",
    "points_inside",
    "propagate_iter",
    "segment_volume_everything_iter",
]
