"""Training a UNETR instance decoder on a frozen SAM image encoder.

The decoder (:class:`~napari_samscope.core.instances.decoder.UNETRDecoder`) reads the image
embedding only, so with the encoder frozen every training plane is encoded **once**
(bfloat16 autocast, as inference runs it) and its embedding cached in bfloat16; the steps
then run the decoder alone. Recipe, after micro-sam's decoder training:

1. targets: foreground, centre distance and boundary distance of each plane's labels in the
   model's input frame (:func:`~napari_samscope.core.instances.targets.maps_from_labels`),
   stored as uint8;
2. augmentation: each plane is encoded in one of the 8 flips/transposes, drawn from the seed
   (the encoder is not flip-equivariant, so flipping the embedding instead would train on
   embeddings inference never produces);
3. a step takes ``batch_images`` planes and, per plane, a random ``crop_tokens`` square of the
   embedding with the matching ``16 x`` square of the targets (the decoder is convolutional;
   a crop costs a fraction of the full 1024x1024 output);
4. loss: torch_em's dice-based distance loss as micro-sam uses it: ``1 - dice`` of the
   foreground, plus ``1 - dice`` of each distance map with prediction and target both
   multiplied by the foreground target (distances are not trained in the background);
5. AdamW, linear warm-up then cosine decay, bfloat16 autocast, gradient clipping.

:func:`train_decoder_iter` is a progress job (``Progress.info`` holds ``loss`` and ``lr``)
returning a :class:`DecoderTrainResult`; :func:`save_decoder` writes the file
:func:`~napari_samscope.core.instances.load.read_decoder` reads.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.instances.targets import maps_from_labels
from napari_samscope.core.progress import Progress
from napari_samscope.core.training.data import PreparedSample

__all__ = [
    "DecoderTrainConfig",
    "DecoderTrainResult",
    "distance_dice_loss",
    "save_decoder",
    "train_decoder_iter",
]

#: Output pixels per embedding token side (SAM's patch size).
_PATCH = 16


@dataclass(frozen=True)
class DecoderTrainConfig:
    """Options of :func:`train_decoder_iter` (all JSON-able; stored with the decoder).

    Attributes:
        steps: optimisation steps.
        batch_images: planes (crops) per step.
        crop_tokens: side, in embedding tokens, of the square each plane is cropped to per
            step (the target crop is 16x larger); None trains on the whole frame.
        features: the decoder's four widths, each half the one before (e.g. ``(64, 32, 16, 8)``).
        conv_transpose: 2x2 transposed-conv upsampling (micro-sam's) instead of bilinear + 1x1.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up length (capped at a tenth of the run).
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        grad_clip: maximum gradient norm (0 disables clipping).
        augment: encode each plane in a random flip/transpose (drawn from ``seed``).
        autocast: ``"bfloat16"`` or None (float32), for encoding and for the decoder.
        seed: seeds the decoder's initialisation and every random draw.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` ...
    """

    steps: int = 1500
    batch_images: int = 2
    crop_tokens: int | None = 32
    features: tuple[int, int, int, int] = (64, 32, 16, 8)
    conv_transpose: bool = True
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    augment: bool = True
    autocast: str | None = "bfloat16"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, not {value!r}.")
        if self.crop_tokens is not None and (
            isinstance(self.crop_tokens, bool) or not isinstance(self.crop_tokens, int)
            or self.crop_tokens < 2
        ):
            raise ValueError(f"crop_tokens must be None or a whole number >= 2, not {self.crop_tokens!r}.")
        feats = tuple(self.features)
        if (
            len(feats) != 4 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in feats)
            or any(a != 2 * b for a, b in zip(feats[:-1], feats[1:]))
        ):
            raise ValueError(
                f"features must be 4 whole numbers, each half the one before (e.g. (64, 32, 16, 8)), "
                f"not {self.features!r}."
            )
        object.__setattr__(self, "features", feats)
        numbers = {"lr": self.lr, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip}
        for name, value in numbers.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}.")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, not {self.lr}.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}.")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a whole number >= 0, not {self.warmup_steps!r}.")
        if self.autocast not in (None, "bfloat16"):
            raise ValueError(f"autocast must be None or 'bfloat16', not {self.autocast!r}.")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features)
        return data


@dataclass
class DecoderTrainResult:
    """What :func:`train_decoder_iter` returns.

    Attributes:
        decoder: the trained decoder (eval mode, on the training device).
        config: the options used.
        losses: the loss of every step.
        planes: how many training planes were encoded.
        seconds: ``{"encode": ..., "train": ...}`` wall-clock times.
    """

    decoder: UNETRDecoder
    config: DecoderTrainConfig
    losses: list[float] = field(default_factory=list)
    planes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def recent_loss(self, n: int = 50) -> float:
        """Mean loss of the last ``n`` steps."""
        return float(np.mean(self.losses[-n:])) if self.losses else float("nan")


def _dice_error(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``1 - 2 sum(p t) / (sum(p^2) + sum(t^2))`` over the whole batch (torch_em's dice)."""
    num = (pred * target).sum()
    den = (pred * pred).sum() + (target * target).sum()
    return 1.0 - 2.0 * num / den.clamp(min=eps)


def distance_dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """micro-sam's decoder loss on ``(B, 3, H, W)`` maps in [0, 1] (foreground, centre distance,
    boundary distance): dice error of the foreground plus dice error of each distance map with
    both sides masked by the foreground target."""
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"pred and target must both be (B, 3, H, W), not {tuple(pred.shape)} and {tuple(target.shape)}."
        )
    pred, target = pred.float(), target.float()
    mask = target[:, 0:1]
    loss = _dice_error(pred[:, 0:1], mask)
    for channel in (1, 2):
        loss = loss + _dice_error(pred[:, channel:channel + 1] * mask, target[:, channel:channel + 1] * mask)
    return loss


def _learning_rate(config: DecoderTrainConfig, step: int) -> float:
    warmup = min(config.warmup_steps, max(config.steps // 10, 1))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(config.steps - warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def _orient(array: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/transposes of the first two axes (``code`` 0 = unchanged)."""
    if code & 4:
        array = np.swapaxes(array, 0, 1)
    if code & 1:
        array = array[::-1]
    if code & 2:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


class _Plane:
    """One encoded plane: bf16 embedding ``(C, E, E)``, uint8 targets ``(3, S, S)`` and how
    many tokens per side hold image (the rest is padding)."""

    def __init__(self, embedding: torch.Tensor, targets: np.ndarray, valid: tuple[int, int]) -> None:
        self.embedding = embedding
        self.targets = targets
        self.valid = valid


def _encode_planes(
    sam: Any, samples: Sequence[PreparedSample], config: DecoderTrainConfig,
    rng: np.random.Generator, device: torch.device,
) -> Generator[Progress, None, list[_Plane]]:
    from napari_samscope.core.predict.transforms import preprocess

    size = int(sam.img_size)
    planes = []
    for i, sample in enumerate(samples):
        code = int(rng.integers(8)) if config.augment else 0
        image, labels = _orient(sample.image, code), _orient(sample.labels, code)
        x = preprocess(image, sam.pixel_mean, sam.pixel_std, size)
        with torch.no_grad(), torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=config.autocast is not None
        ):
            feat = sam.image_encoder(x)
        padded = np.zeros((size, size), dtype=labels.dtype)
        padded[: labels.shape[0], : labels.shape[1]] = labels
        targets = np.round(maps_from_labels(padded) * 255).astype(np.uint8)
        valid = tuple(max(1, math.ceil(n / _PATCH)) for n in labels.shape)
        planes.append(_Plane(feat[0].detach().to(torch.bfloat16).cpu(), targets, valid))
        yield Progress("encoding training planes", i + 1, len(samples))
    return planes


def _batch(
    planes: list[_Plane], picks: Sequence[int], crop: int | None, rng: np.random.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    feats, targets = [], []
    for index in picks:
        plane = planes[index]
        side = plane.embedding.shape[-1]
        c = side if crop is None else min(crop, side)
        top = int(rng.integers(0, max(plane.valid[0] - c, 0) + 1))
        left = int(rng.integers(0, max(plane.valid[1] - c, 0) + 1))
        feats.append(plane.embedding[:, top:top + c, left:left + c])
        p = plane.targets.shape[-1] // side  # output pixels per token (16)
        targets.append(torch.from_numpy(
            plane.targets[:, top * p:(top + c) * p, left * p:(left + c) * p].astype(np.float32) / 255.0
        ))
    return torch.stack(feats).float().to(device), torch.stack(targets).to(device)


def train_decoder_iter(
    sam: Any,
    samples: Sequence[PreparedSample],
    config: DecoderTrainConfig | None = None,
    decoder: UNETRDecoder | None = None,
) -> Generator[Progress, None, DecoderTrainResult]:
    """Train an instance decoder for ``sam``'s frozen image encoder (see the module docstring).

    Args:
        sam: a ``Sam`` module (``core.modeling``); its weights are not changed.
        samples: training planes from :func:`~napari_samscope.core.training.data.prepare_pair`
            at ``sam.img_size`` (image and labels in the model's input frame).
        config: the options (default :class:`DecoderTrainConfig`).
        decoder: a decoder to train further (trained in place; its widths must be
            ``config.features``), or None for a new one initialised from ``config.seed``.

    Yields:
        ``Progress("encoding training planes", i, n)`` then ``Progress("training decoder",
        step, steps, info={"loss", "lr"})``.

    Returns:
        A :class:`DecoderTrainResult` with the decoder in eval mode.

    Raises:
        TypeError: ``sam`` is not a SAM module or a sample is not a ``PreparedSample``.
        ValueError: no samples, samples not in the model's input frame, or a ``decoder``
            of other widths or for other embeddings.
    """
    from napari_samscope.core.device import select_device
    from napari_samscope.core.modeling.sam import Sam

    config = config or DecoderTrainConfig()
    if not isinstance(config, DecoderTrainConfig):
        raise TypeError(f"config must be a DecoderTrainConfig, not {type(config).__name__}.")
    if not isinstance(sam, Sam):
        raise TypeError(f"train_decoder_iter needs a Sam module, not {type(sam).__name__}.")
    samples = list(samples)
    if not samples:
        raise ValueError("train_decoder_iter needs at least one training plane.")
    for sample in samples:
        if not isinstance(sample, PreparedSample):
            raise TypeError(f"samples must be PreparedSample (see prepare_pair), not {type(sample).__name__}.")
        if max(sample.labels.shape) != sam.img_size:
            raise ValueError(
                f"{sample.name} is {sample.labels.shape} but the model's input is {sam.img_size}: "
                f"prepare the planes with prepare_pair(image, labels, {sam.img_size})."
            )
    device = select_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    sam.to(device).eval()
    start = time.perf_counter()
    planes = yield from _encode_planes(sam, samples, config, rng, device)
    encoded = time.perf_counter()
    embed_dim = int(planes[0].embedding.shape[0])
    if decoder is None:
        decoder = UNETRDecoder(
            embed_dim=embed_dim, features=config.features, conv_transpose=config.conv_transpose
        )
    elif not isinstance(decoder, UNETRDecoder):
        raise TypeError(f"decoder must be a UNETRDecoder or None, not {type(decoder).__name__}.")
    elif decoder.embed_dim != embed_dim or decoder.features != config.features:
        raise ValueError(
            f"The decoder reads {decoder.embed_dim}-channel embeddings with widths {decoder.features}, "
            f"but this model gives {embed_dim} channels and the config asks for {config.features}."
        )
    decoder = decoder.to(device).train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = DecoderTrainResult(decoder=decoder, config=config, planes=len(planes))
    order: list[int] = []
    for step in range(config.steps):
        picks = []
        for _ in range(config.batch_images):
            if not order:
                order = [int(i) for i in rng.permutation(len(planes))]
            picks.append(order.pop())
        feats, targets = _batch(planes, picks, config.crop_tokens, rng, device)
        lr = _learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.autocast is not None):
            pred = decoder(feats)
        loss = distance_dice_loss(pred, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), config.grad_clip)
        optimizer.step()
        result.losses.append(float(loss.detach()))
        yield Progress("training decoder", step + 1, config.steps, info={"loss": result.losses[-1], "lr": lr})
    result.seconds = {"encode": encoded - start, "train": time.perf_counter() - encoded}
    decoder.eval()
    return result


def save_decoder(
    path: str | os.PathLike[str], decoder: UNETRDecoder, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``decoder`` as ``{"decoder_state": ..., "config": ..., "meta": ...}`` (float32
    tensors, JSON-able config and meta), the format ``core.instances.load.read_decoder``
    reads with ``weights_only=True``; returns the path."""
    if not isinstance(decoder, UNETRDecoder):
        raise TypeError(f"save_decoder needs a UNETRDecoder, not {type(decoder).__name__}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in decoder.state_dict().items()
    }
    config = {
        "embed_dim": decoder.embed_dim, "features": list(decoder.features),
        "out_channels": decoder.out_channels, "conv_transpose": decoder.conv_transpose,
    }
    torch.save({"decoder_state": state, "config": config, "meta": dict(meta or {})}, path)
    return path
