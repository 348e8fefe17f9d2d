"""What a predictor keeps of an encoded image (:class:`ImageEmbedding`), the fingerprint
that ties it to its model (:func:`model_key`), and what a predictor needs of a model
wrapper (:class:`SamHolder`)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from napari_samscope.core.device import autocast
from napari_samscope.core.modeling.sam import Sam
from napari_samscope.core.predict.flips import FLIPS, check_flips, flip_image
from napari_samscope.core.predict.input_scale import resolve_magnification, scaled_size
from napari_samscope.core.predict.transforms import (
    preprocess_batch,
    resize_longest_side_shape,
    resize_rgb_to,
)
from napari_samscope.core.weights.spec import InputScale

__all__ = [
    "ImageEmbedding",
    "SamHolder",
    "checked_embedding",
    "encode_rgb",
    "model_key",
]


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
        magnification: how much the image was magnified into the model input
            (:mod:`~napari_samscope.core.predict.input_scale`); None for an embedding made
            without it, which then has SAM's "fill" geometry.
        flipped: the ``(1, C, E, E)`` embeddings of the flipped model input, in the order
            of :data:`~napari_samscope.core.predict.flips.FLIPS` after the first (empty
            unless the image was encoded with ``flips`` > 1); prompts are decoded on every
            orientation and averaged.
        pixels: the ``(H, W, 3)`` uint8 RGB image it was encoded from (None for features
            read from a store); a predictor cuts the crops of ``zoom`` from it
            (:mod:`~napari_samscope.core.predict.zoom`).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_key: str
    magnification: float | None = None
    flipped: tuple[torch.Tensor, ...] = ()
    pixels: np.ndarray | None = None

    @property
    def flips(self) -> int:
        """The number of orientations encoded (1, 2 or 4)."""
        return 1 + len(self.flipped)

    @property
    def all_features(self) -> tuple[torch.Tensor, ...]:
        """``features`` and then ``flipped``: one embedding per orientation."""
        return (self.features, *self.flipped)

    @property
    def nbytes(self) -> int:
        """Memory held by the features of every orientation and by the pixels."""
        pixels = 0 if self.pixels is None else self.pixels.nbytes
        return pixels + sum(f.numel() * f.element_size() for f in self.all_features)

    def converted(self, **to: Any) -> ImageEmbedding:
        """A copy whose features (every orientation) are ``tensor.to(**to)``."""
        features, *flipped = (f.to(**to) for f in self.all_features)
        return dataclasses.replace(self, features=features, flipped=tuple(flipped))


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


def checked_embedding(embedding: ImageEmbedding, sam: Sam, key: str) -> ImageEmbedding:
    """``embedding`` if it fits ``sam`` (whose :func:`model_key` is ``key``), with its sizes
    as int tuples.

    Raises:
        ValueError: it was made by another model, or its shapes do not fit this model.
    """
    if embedding.model_key != key:
        raise ValueError(
            "This embedding was computed by a different model (or different weights); "
            "encode the image again with this model."
        )
    channels = sam.prompt_encoder.embed_dim
    side = sam.embedding_size
    flipped = tuple(embedding.flipped)
    if len(flipped) not in (0, 1, 3):
        raise ValueError(f"An embedding holds 1, 2 or 4 orientations, not {len(flipped) + 1}.")
    for features in (embedding.features, *flipped):
        if tuple(features.shape) != (1, channels, side, side):
            raise ValueError(
                f"The embedding has shape {tuple(features.shape)}, but this model "
                f"needs (1, {channels}, {side}, {side})."
            )
    h, w = (int(v) for v in embedding.original_size)
    magnification = embedding.magnification
    if magnification is None:
        expected = resize_longest_side_shape(h, w, sam.img_size)
    else:
        expected = scaled_size((h, w), float(magnification))
    if tuple(embedding.input_size) != expected or max(expected) > sam.img_size:
        raise ValueError(
            f"The embedding's input_size {tuple(embedding.input_size)} does not match its "
            f"original_size {(h, w)} (expected {expected}, at most {sam.img_size})."
        )
    pixels = embedding.pixels
    if pixels is not None and (pixels.dtype != np.uint8 or pixels.shape != (h, w, 3)):
        raise ValueError(
            f"The embedding's pixels must be the (H, W, 3) uint8 image of its original_size "
            f"{(h, w)}, not {pixels.dtype} of shape {pixels.shape}."
        )
    return ImageEmbedding(
        embedding.features, (h, w), expected, embedding.model_key, magnification, flipped, pixels
    )


def encode_rgb(
    sam: Sam,
    rgbs: list[np.ndarray],
    batch_size: int,
    device: Any,
    dtype: Any,
    key: str,
    scale: Any = "fill",
    declared: InputScale | None = None,
    flips: int = 1,
) -> list[ImageEmbedding]:
    """Encode 8-bit RGB images ``(H, W, 3)``: images of one size together, ``batch_size``
    at a time, each resized by the magnification ``scale`` resolves to for its size
    (:func:`~napari_samscope.core.predict.input_scale.resolve_magnification`; ``"fill"``:
    the longest side to ``S``, as the official preprocessing), zero-padded and normalised
    as the official preprocessing does. Returns one float32 :class:`ImageEmbedding` per
    image, in order. Every image's scale is checked before anything is encoded.
    ``flips`` > 1 also encodes the flipped inputs (:mod:`~napari_samscope.core.predict.flips`)
    in the same encoder batch, which then holds ``batch_size // flips`` images (at least
    one), so that a batch stays within ``max(batch_size, flips)`` inputs."""
    flips = check_flips(flips)
    out: list[ImageEmbedding | None] = [None] * len(rgbs)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, rgb in enumerate(rgbs):
        by_size.setdefault(rgb.shape[:2], []).append(i)
    magnifications = {
        size: resolve_magnification(size, sam.img_size, scale, declared) for size in by_size
    }
    for size, indices in by_size.items():
        magnification = magnifications[size]
        input_size = scaled_size(size, magnification)
        per_batch = max(1, batch_size // flips)
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            resized = [resize_rgb_to(rgbs[i], input_size) for i in chunk]
            batch = preprocess_batch(resized, sam.pixel_mean, sam.pixel_std, sam.img_size)
            if flips > 1:
                batch = torch.cat([flip_image(batch, flip) for flip in FLIPS[:flips]])
            with autocast(device, dtype):
                features = sam.image_encoder(batch).float()
            n = len(chunk)
            for j, i in enumerate(chunk):
                views = [features[j + k * n : j + k * n + 1].clone() for k in range(flips)]
                out[i] = ImageEmbedding(
                    views[0], size, input_size, key, magnification, tuple(views[1:]), rgbs[i]
                )
    return out  # type: ignore[return-value]
