"""Training and fine-tuning SAM-family models on instance-labelled images.

One step, following SAM's own recipe:

1. pick ``batch_images`` training planes (random dihedral augmentation) and encode them
   (in the inference preprocessing; the embeddings are cached when the encoder is frozen);
2. pick up to ``objects_per_image`` instances per plane and give each a first prompt:
   a positive point, a jittered box, or a box plus a point (one kind per step);
3. decode; the loss is focal + dice on the best of the multimask candidates plus on the
   single-mask output, and MSE between predicted and real IoU (``losses.sam_loss``);
4. ``corrective_rounds`` more rounds: a click in each object's error region is added and
   the previous low-resolution logits are fed back as the mask prompt;
5. AdamW step with a linear warm-up and a cosine decay of the learning rate.

:func:`train_iter` is a progress job (``Progress.info`` holds ``loss``, ``iou`` and
``lr``) that returns a :class:`TrainResult`; :func:`train` runs it headless.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_samscope.core.progress import Progress, run
from napari_samscope.core.training.data import PreparedSample, TrainingData
from napari_samscope.core.training.losses import LOSS_RESOLUTIONS, sam_loss
from napari_samscope.core.training.prompts import (
    PromptKind,
    corrective_points,
    initial_prompts,
    pair_prompts,
    touching_neighbours,
)

__all__ = ["TRAINABLE_PARTS", "TrainConfig", "TrainResult", "train_iter", "train"]

#: Accepted values of ``TrainConfig.trainable``.
TRAINABLE_PARTS = ("decoder", "decoder+prompt", "all")

ModelSource = Any  # Sam | SamConfig | registry name | checkpoint path


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (all JSON-able; stored in the checkpoint).

    Attributes:
        steps: optimisation steps; ignored when ``epochs`` is set.
        epochs: passes over the training planes (``ceil(epochs * planes / batch_images)``
            steps), or None to use ``steps``.
        batch_images: planes per step.
        objects_per_image: instances prompted per plane and step (at most).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up length (capped at a tenth of the run).
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        trainable: ``"decoder"``, ``"decoder+prompt"`` or ``"all"``.
        corrective_rounds: clicks added in the error region after the first prompt.
        prompt_weights: probabilities of a first prompt being point, box, box+point.
        negative_pair_fraction: probability that a step's first prompts are instead a
            positive point plus a negative point in a touching neighbour (no mask prompt).
        feedback_mask_p: probability that a corrective round also gets the previous
            round's logits as mask prompt (1.0 as SAM; lower trains clicks without it,
            which is how the napari plugin prompts).
        augment: random flips and transposes of the planes.
        loss_resolution: ``"lowres"`` (soft targets at the logits' resolution, fast) or
            ``"input"`` (logits upsampled to the input frame); see ``losses.sam_loss``.
        focal_alpha: focal-loss foreground weight (SAM: 0.25; -1 for none).
        grad_clip: maximum gradient norm (0 disables clipping).
        autocast: None (float32) or ``"bfloat16"`` (much faster on CPUs with AMX/AVX512-BF16).
        cache_embeddings_mb: memory for cached embeddings when the encoder is frozen.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` ...
        seed: seeds the model initialisation (fresh configs) and all sampling.
    """

    steps: int = 500
    epochs: float | None = None
    batch_images: int = 4
    objects_per_image: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    trainable: str = "decoder"
    corrective_rounds: int = 2
    prompt_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)
    negative_pair_fraction: float = 0.0
    feedback_mask_p: float = 1.0
    augment: bool = True
    loss_resolution: str = "lowres"
    focal_alpha: float = 0.25
    grad_clip: float = 1.0
    autocast: str | None = None
    cache_embeddings_mb: int = 2048
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE_PARTS:
            raise ValueError(f"trainable must be one of {TRAINABLE_PARTS}, not {self.trainable!r}.")
        if self.steps < 1 and self.epochs is None:
            raise ValueError(f"steps must be >= 1, not {self.steps}.")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, not {self.epochs}.")
        if self.batch_images < 1 or self.objects_per_image < 1:
            raise ValueError("batch_images and objects_per_image must be >= 1.")
        if self.lr <= 0 or self.corrective_rounds < 0:
            raise ValueError("lr must be > 0 and corrective_rounds >= 0.")
        weights = np.asarray(self.prompt_weights, dtype=float)
        if weights.shape != (3,) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("prompt_weights must be 3 non-negative numbers (point, box, box+point).")
        if not 0.0 <= self.negative_pair_fraction <= 1.0 or not 0.0 <= self.feedback_mask_p <= 1.0:
            raise ValueError("negative_pair_fraction and feedback_mask_p must be in [0, 1].")
        if self.loss_resolution not in LOSS_RESOLUTIONS:
            raise ValueError(
                f"loss_resolution must be one of {LOSS_RESOLUTIONS}, not {self.loss_resolution!r}."
            )
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', not {self.autocast!r}.")

    def total_steps(self, n_planes: int) -> int:
        """Number of optimisation steps for ``n_planes`` training planes."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_planes / self.batch_images))


@dataclass
class TrainResult:
    """What :func:`train_iter` returns.

    Attributes:
        sam: the trained model (eval mode, on the training device).
        history: one ``{"step", "loss", "iou", "lr"}`` dict per step (``iou`` is the mean
            IoU of the first-round prediction, before corrective clicks).
        checkpoint: the written checkpoint path, or None.
        config: the :class:`TrainConfig` used.
        seconds: wall time of the optimisation.
    """

    sam: Any
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    config: TrainConfig | None = None
    seconds: float = 0.0

    def recent(self, key: str, n: int = 20) -> float:
        """Mean of ``key`` over the last ``n`` steps (nan when nothing was recorded)."""
        values = [h[key] for h in self.history[-n:]]
        return float(np.mean(values)) if values else float("nan")


def _resolve_model(model: ModelSource, device: torch.device, seed: int) -> tuple[Any, str]:
    from napari_samscope.core.modeling.build import SamConfig, build_sam
    from napari_samscope.core.modeling.sam import Sam

    if isinstance(model, Sam):
        return model.to(device), "given model"
    if isinstance(model, SamConfig):
        torch.manual_seed(seed)
        return build_sam(model).to(device), "fresh " + model.encoder_type
    if isinstance(model, (str, os.PathLike)):
        from napari_samscope.core.weights.loader import load_sam

        loaded = load_sam(model, device=device)
        return loaded.sam, str(loaded.name)
    raise TypeError(
        "model must be a Sam module, a SamConfig, a registry name or a checkpoint path, "
        f"not {type(model).__name__}."
    )


def _trainable_parameters(sam: Any, trainable: str) -> list[torch.nn.Parameter]:
    parts = {"decoder": ["mask_decoder"], "decoder+prompt": ["mask_decoder", "prompt_encoder"]}
    names = parts.get(trainable, ["image_encoder", "prompt_encoder", "mask_decoder"])
    params = []
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        for p in getattr(sam, part).parameters():
            p.requires_grad_(part in names)
            if part in names:
                params.append(p)
    return params


def _learning_rate(config: TrainConfig, step: int, total: int) -> float:
    warmup = min(config.warmup_steps, max(total // 10, 1))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def _augment(sample: PreparedSample, code: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/transposes of a plane (``code`` 0 = unchanged)."""
    image, labels = sample.image, sample.labels
    if code & 4:
        image, labels = image.transpose(1, 0, 2), labels.T
    if code & 1:
        image, labels = image[::-1], labels[::-1]
    if code & 2:
        image, labels = image[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


class _Stepper:
    """Holds the state of one run and performs steps (keeps train_iter readable)."""

    def __init__(self, sam: Any, samples: Sequence[PreparedSample], config: TrainConfig) -> None:
        self.sam, self.samples, self.config = sam, list(samples), config
        self.device = sam.device
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.encoder_trained = config.trainable == "all"
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        self.cache_bytes = 0
        self.order: list[int] = []
        self.amp_dtype = getattr(torch, config.autocast) if config.autocast else None
        kinds = np.asarray(config.prompt_weights, dtype=float)
        self.kind_p = kinds / kinds.sum()
        self.loss_options = {"resolution": config.loss_resolution, "focal_alpha": config.focal_alpha}

    def _next_indices(self) -> list[int]:
        picked = []
        while len(picked) < min(self.config.batch_images, len(self.samples)):
            if not self.order:
                self.order = list(self.rng.permutation(len(self.samples)))
            index = int(self.order.pop())
            if index not in picked:
                picked.append(index)
        return picked

    def _autocast(self) -> Any:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        )

    def _encode(self, images: list[np.ndarray], keys: list[tuple[int, int]]) -> torch.Tensor:
        from napari_samscope.core.predict.transforms import preprocess

        sam = self.sam
        if not self.encoder_trained and all(k in self.cache for k in keys):
            return torch.cat([self.cache[k] for k in keys]).float()
        x = torch.cat([preprocess(im, sam.pixel_mean, sam.pixel_std, sam.img_size) for im in images])
        with self._autocast(), torch.set_grad_enabled(self.encoder_trained):
            features = sam.image_encoder(x)
        if not self.encoder_trained:
            features = features.detach().float()
            limit = self.config.cache_embeddings_mb * 2**20
            for key, feat in zip(keys, features.split(1)):
                size = feat.numel() * 2
                if key not in self.cache and self.cache_bytes + size <= limit:
                    self.cache[key] = feat.to(torch.bfloat16)
                    self.cache_bytes += size
        return features

    def step(self, lr: float, optimizer: torch.optim.Optimizer, params: list[Any]) -> dict[str, float]:
        cfg, sam, size = self.config, self.sam, self.sam.img_size
        images, keys, targets, owners, near = [], [], [], [], []
        pairs = cfg.negative_pair_fraction > 0 and self.rng.random() < cfg.negative_pair_fraction
        for slot, index in enumerate(self._next_indices()):
            code = int(self.rng.integers(8)) if cfg.augment else 0
            image, labels = _augment(self.samples[index], code)
            ids = self.samples[index].ids
            chosen = self.rng.choice(ids, size=min(cfg.objects_per_image, len(ids)), replace=False)
            padded = np.zeros((size, size), dtype=labels.dtype)
            padded[: labels.shape[0], : labels.shape[1]] = labels
            targets.append(torch.from_numpy(padded[None] == chosen[:, None, None]))
            if pairs:
                near.append(torch.from_numpy(touching_neighbours(padded, chosen)))
            owners += [slot] * len(chosen)
            images.append(image)
            keys.append((index, code))
        targets_t = torch.cat(targets).to(self.device)
        sam.image_encoder.train(self.encoder_trained)
        features = self._encode(images, keys)[torch.as_tensor(owners, device=self.device)]
        if pairs:
            prompts = pair_prompts(targets_t.cpu(), torch.cat(near), self.generator)
        else:
            kind = list(PromptKind)[int(self.rng.choice(3, p=self.kind_p))]
            prompts = initial_prompts(kind, targets_t.cpu(), self.generator, bounds=(size, size))
        prompts = _to(prompts, self.device)
        image_pe = sam.prompt_encoder.get_dense_pe()
        total, first_iou = 0.0, 0.0
        rounds = 1 + cfg.corrective_rounds
        for r in range(rounds):
            with self._autocast():
                sparse, dense = sam.prompt_encoder(prompts.point_tuple, prompts.boxes, prompts.masks)
                low, iou_pred = sam.mask_decoder.predict_masks(features, image_pe, sparse, dense)
            single = sam_loss(low[:, :1], iou_pred[:, :1], targets_t, **self.loss_options)
            loss = single.loss
            if r == 0:
                multi = sam_loss(low[:, 1:], iou_pred[:, 1:], targets_t, **self.loss_options)
                loss = loss + multi.loss
                first_iou = float(multi.iou.mean() + single.iou.mean()) / 2
            total = total + loss
            if r + 1 < rounds:
                coords, labels = corrective_points(single.masks.cpu(), targets_t.cpu(), self.generator)
                prompts = prompts.with_point(coords.to(self.device), labels.to(self.device))
                feed = cfg.feedback_mask_p >= 1.0 or self.rng.random() < cfg.feedback_mask_p
                prompts = replace(prompts, masks=low[:, :1].detach().float() if feed else None)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        (total / rounds).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        return {"loss": float(total.detach()) / rounds, "iou": first_iou, "lr": lr}


def _to(prompts: Any, device: torch.device) -> Any:
    return replace(
        prompts,
        **{k: v.to(device) for k, v in vars(prompts).items() if isinstance(v, torch.Tensor)},
    )


def train_iter(
    model: ModelSource,
    data: TrainingData | Sequence[PreparedSample],
    config: TrainConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    meta: dict[str, Any] | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train ``model`` on ``data``; a progress job returning a :class:`TrainResult`.

    Args:
        model: a ``Sam`` module (trained in place), a ``SamConfig`` (fresh model, seeded),
            a registry name (``"vit_t"``) or a checkpoint path.
        data: a :class:`TrainingData` (prepared here for the model's input size) or
            already prepared samples of the model's input size.
        config: hyper-parameters (default :class:`TrainConfig`).
        out: checkpoint file to write at the end (project format + JSON sidecar), or None.
        meta: extra JSON-able information stored in the checkpoint.

    Yields:
        ``Progress("preparing training images", ...)`` then ``Progress("training", step,
        steps, info={"loss", "iou", "lr"})`` after every step. Closing the generator
        between two yields stops training; nothing is written then.
    """
    config = config or TrainConfig()
    from napari_samscope.core.device import select_device

    device = select_device(config.device)
    sam, source = _resolve_model(model, device, config.seed)
    if isinstance(data, TrainingData):
        summary = data.summary()
        samples = yield from data.prepare(sam.img_size)
    else:
        samples = list(data)
        if not samples:
            raise ValueError("No training samples were given.")
        bad = [s.name for s in samples if max(s.image.shape[:2]) != sam.img_size]
        if bad:
            raise ValueError(
                f"Samples {bad[:3]} were prepared for another input size than the model's "
                f"{sam.img_size}; prepare them with img_size={sam.img_size}."
            )
        summary = {"planes": len(samples), "objects": int(sum(len(s.ids) for s in samples))}
    torch.manual_seed(config.seed)
    params = _trainable_parameters(sam, config.trainable)
    sam.train()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    stepper = _Stepper(sam, samples, config)
    total = config.total_steps(len(samples))
    result = TrainResult(sam=sam, config=config)
    start = time.perf_counter()
    try:
        for step in range(total):
            record = stepper.step(_learning_rate(config, step, total), optimizer, params)
            result.history.append({"step": step + 1, **record})
            yield Progress("training", step + 1, total, info=dict(record))
    finally:
        for p in sam.parameters():
            p.requires_grad_(True)
        sam.eval()
    result.seconds = time.perf_counter() - start
    if out is not None:
        from napari_samscope.core.weights.checkpoint import save_checkpoint

        info = {
            "base_model": source,
            "training": _jsonable(asdict(config)),
            "data": summary,
            "metrics": {"final_loss": result.recent("loss"), "final_iou": result.recent("iou")},
            "seconds": round(result.seconds, 1),
            **(meta or {}),
        }
        result.checkpoint = save_checkpoint(out, sam, meta=info)
    return result


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def train(
    model: ModelSource,
    data: TrainingData | Sequence[PreparedSample],
    config: TrainConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    meta: dict[str, Any] | None = None,
    progress: Callable[[Progress], Any] | str | None = None,
) -> TrainResult:
    """Headless :func:`train_iter`; ``progress`` is None, ``"tqdm"`` or a callback."""
    return run(train_iter(model, data, config, out, meta=meta), progress=progress)
