"""What a predictor keeps of an encoded image (:class:`ImageEmbedding`), the fingerprint
that ties it to its model (:func:`model_key`), and what a predictor needs of a model
wrapper (:class:`SamHolder`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from napari_samscope.core.modeling.sam import Sam

__all__ = ["ImageEmbedding", "SamHolder", "model_key"]


class SamHolder(Protocol):
    """What a ``Predictor`` needs of a model wrapper such as
    :class:`~napari_samscope.core.predict.sam_api.SAM`: the module, its autocast dtype
    and its registry entry (or None)."""

    model: Sam
    dtype: Any
    spec: Any


@dataclass
class ImageEmbedding:
    """The encoder's output for one image, with what is needed to decode prompts on it.

    Attributes:
        features: ``(1, C, E, E)`` image embedding (float32, or float16 in a cache).
        original_size: ``(H, W)`` of the original image.
        input_size: ``(h, w)`` of the resized image inside the ``S x S`` model input.
        model_key: :func:`model_key` of the model that made it; an embedding is only
            valid for that model.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_key: str

    @property
    def nbytes(self) -> int:
        """Memory held by ``features``."""
        return self.features.numel() * self.features.element_size()


def model_key(sam: Sam) -> str:
    """A short fingerprint of the image-encoder weights and the input size.

    It changes when the architecture or the weights change, so embeddings of one
    model are never decoded with another. It samples a few values of every encoder
    tensor (one device transfer), so it costs well under a millisecond on CPU.
    """
    digest = hashlib.sha1(f"S={sam.img_size};E={sam.embedding_size}".encode())
    samples = []
    for name, tensor in sam.image_encoder.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            samples.append(torch.cat([flat[:4], flat[-4:]]).float())
    if samples:
        digest.update(torch.cat(samples).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
