"""Running the instance decoder on an image embedding: the three maps at the original size."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from napari_samscope.core.device import autocast
from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.predict.predictor import ImageEmbedding

__all__ = ["MAP_NAMES", "instance_maps_from_embedding"]

#: What the three channels of the maps are.
MAP_NAMES = ("foreground", "center_distance", "boundary_distance")


@torch.no_grad()
def instance_maps_from_embedding(
    decoder: UNETRDecoder, embedding: ImageEmbedding, img_size: int, dtype: torch.dtype | None = None
) -> np.ndarray:
    """The decoder's maps for one encoded image, as micro-sam computes them.

    The ``(1, 3, S, S)`` output (at the model input size ``S = img_size``) is cropped to the
    part that holds the image (``embedding.input_size``) and resized bilinearly to
    ``embedding.original_size``.

    Args:
        decoder: the instance decoder (its device is used).
        embedding: an :class:`ImageEmbedding` of the SAM model the decoder belongs to.
        img_size: ``S``, the side of the SAM model's square input.
        dtype: autocast dtype for the decoder's convolutions (None: float32), as the
            model wrapper's ``dtype``.

    Returns:
        ``(3, H, W)`` float32: foreground probability, centre distance, boundary distance.
    """
    param = next(decoder.parameters())
    features = embedding.features.to(device=param.device, dtype=torch.float32)
    # channels-last activations: the same sums, with fewer layout copies around the convs
    features = features.contiguous(memory_format=torch.channels_last)
    with autocast(param.device, dtype):
        out = decoder(features)
    if tuple(out.shape[-2:]) != (img_size, img_size):
        out = F.interpolate(out.float(), (img_size, img_size), mode="bilinear", align_corners=False)
    h, w = (int(v) for v in embedding.input_size)
    out = out[..., :h, :w]
    original = tuple(int(v) for v in embedding.original_size)
    if (h, w) != original:
        out = F.interpolate(out.float(), original, mode="bilinear", align_corners=False)
    # one copy into float32 (3, H, W) in C order, whatever the decoder's dtype and layout
    maps = torch.empty(tuple(out.shape[1:]), dtype=torch.float32)
    return maps.copy_(out[0]).numpy()
