"""The models the benchmark measures, with reproducible weights.

- ``vit_b``, ``vit_t``: the official architectures (SAM ViT-B, MobileSAM ViT-T) with
  seeded random weights (a fresh initialisation: weights do not change the timings).
  Official checkpoints are used instead when they are in the model cache.
- ``default``: the project's default model (``samscope_nuclei``) when its weights are
  installed; otherwise a stand-in of the same kind of architecture (a small TinyViT at
  512 px, prompt width 128), untrained, and the results say so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from napari_samscope.core.modeling.build import (
    ARCHITECTURES,
    DecoderConfig,
    SamConfig,
    TinyViTConfig,
    build_sam,
)
from napari_samscope.core.modeling.sam import Sam

#: Stand-in for the default model while its trained weights are not installed.
DEFAULT_STAND_IN = SamConfig(
    encoder=TinyViTConfig(
        img_size=512, embed_dims=(32, 64, 128, 160), depths=(1, 2, 2, 1),
        num_heads=(1, 2, 4, 5), window_sizes=(7, 8, 16, 16), out_chans=128,
    ),
    prompt_embed_dim=128,
    decoder=DecoderConfig(transformer_mlp_dim=512, transformer_heads=4, iou_head_hidden_dim=128),
)


@dataclass
class BenchModel:
    """One measured model: ours and the facts for the comparison table."""

    key: str
    name: str
    sam: Sam
    weights: str  # where the weights come from, in words
    file_bytes: int  # checkpoint size (registry size, or the serialised state dict)
    trained: bool

    @property
    def config(self) -> SamConfig:
        return self.sam.config

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.sam.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.sam.state_dict().items()}


def _serialised_bytes(sam: Sam) -> int:
    buffer = io.BytesIO()
    torch.save(sam.state_dict(), buffer)
    return buffer.tell()


def _cached_official(name: str) -> Any:
    """The loaded official checkpoint if it is in the model cache, else None."""
    from napari_samscope.core.weights.registry import list_models

    for status in list_models():
        if status.name == name and status.cached:
            from napari_samscope.core.weights.loader import load_sam

            return load_sam(name, device="cpu")
    return None


def load_model(key: str, seed: int = 0) -> BenchModel:
    """``"vit_b"``, ``"vit_t"`` or ``"default"`` (see the module docstring)."""
    if key in ("vit_b", "vit_t"):
        loaded = _cached_official(key)
        if loaded is not None:
            return BenchModel(key, key, loaded.sam.eval(), "official checkpoint",
                              loaded.path.stat().st_size, True)
        torch.manual_seed(seed)
        sam = build_sam(ARCHITECTURES[key]).eval()
        from napari_samscope.core.weights.registry import lookup

        size = lookup(key).size or _serialised_bytes(sam)
        return BenchModel(key, key, sam, f"random (seed {seed})", size, False)
    if key == "default":
        from napari_samscope.core.weights.registry import DEFAULT_MODEL

        loaded = _cached_official(DEFAULT_MODEL)
        if loaded is not None:
            return BenchModel(key, DEFAULT_MODEL, loaded.sam.eval(), "trained (shipped)",
                              loaded.path.stat().st_size, True)
        torch.manual_seed(seed)
        sam = build_sam(DEFAULT_STAND_IN).eval()
        return BenchModel(key, "default stand-in", sam,
                          f"untrained stand-in (weights of {DEFAULT_MODEL} not installed)",
                          _serialised_bytes(sam), False)
    raise ValueError(f"Unknown benchmark model {key!r}; use vit_b, vit_t or default.")
