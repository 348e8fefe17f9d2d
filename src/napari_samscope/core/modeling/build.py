"""Model configurations, builders and strict state-dict loading for the SAM family.

``SamConfig`` describes an architecture (the four official ones live in
``ARCHITECTURES``); ``build_sam`` makes a randomly initialised model from it,
``detect_config`` infers it from the tensor shapes of a state dict and
``sam_from_state_dict`` loads a state dict strictly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from napari_samscope.core.modeling.config import (
    ARCHITECTURES,
    EMBEDDING_STRIDE,
    DecoderConfig,
    SamConfig,
    TinyViTConfig,
    ViTConfig,
    tiny_config,
)
from napari_samscope.core.modeling.mask_decoder import MaskDecoder
from napari_samscope.core.modeling.prompt_encoder import PromptEncoder
from napari_samscope.core.modeling.sam import Sam
from napari_samscope.core.modeling.transformer import TwoWayTransformer

__all__ = [
    "ARCHITECTURES",
    "DecoderConfig",
    "SamConfig",
    "TinyViTConfig",
    "ViTConfig",
    "build_sam",
    "detect_config",
    "parameter_count",
    "sam_from_state_dict",
    "tiny_config",
]

MASK_IN_CHANS = 16
# MobileSAM checkpoints carry TinyViT's unused ImageNet classifier.
MOBILE_SAM_UNUSED_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")

def _resolve(config: SamConfig | str) -> SamConfig:
    if isinstance(config, str):
        if config not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {config!r}; choose one of {sorted(ARCHITECTURES)}.")
        return ARCHITECTURES[config]
    if not isinstance(config, SamConfig):
        raise TypeError(f"Expected a SamConfig or an architecture name, got {type(config).__name__}.")
    return config


def build_sam(config: SamConfig | str) -> Sam:
    """Build a randomly initialised float32 model in eval mode (as the official builders do).

    Args:
        config: a :class:`SamConfig` or an ``ARCHITECTURES`` name (``"vit_b"`` ...).
    """
    return _construct(_resolve(config)).eval()


def _construct(config: SamConfig) -> Sam:
    embed_side = config.img_size // EMBEDDING_STRIDE
    dec = config.decoder
    return Sam(
        image_encoder=config.encoder.build(),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(embed_side, embed_side),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=MASK_IN_CHANS,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=dec.transformer_heads,
                mlp_dim=dec.transformer_mlp_dim,
            ),
            num_multimask_outputs=dec.num_multimask_outputs,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        config=config,
    )


def parameter_count(config: SamConfig | str) -> int:
    """Number of parameters of an architecture, counted without allocating its weights."""
    with torch.device("meta"):
        model = _construct(_resolve(config))
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------
# Shape-based architecture detection and strict loading


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"Expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}.")
    shapes = {}
    for key, value in state_dict.items():
        shape = getattr(value, "shape", None)
        if not isinstance(key, str) or shape is None:
            raise ValueError(
                f"Not a SAM state dict: entry {key!r} is not a named tensor. "
                "Pass the model's state dict (checkpoint.py unwraps common wrappers)."
            )
        shapes[key] = tuple(int(n) for n in shape)
    return shapes


def _need(shapes: dict[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"Cannot detect the SAM architecture: the state dict lacks {key!r}.")
    return shapes[key]


def _count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    """Number of consecutive numbered children ``prefix0.``, ``prefix1.``, ..."""
    indexes = {int(key[len(prefix):].split(".", 1)[0]) for key in shapes
               if key.startswith(prefix) and key[len(prefix):].split(".", 1)[0].isdigit()}
    count = 0
    while count in indexes:
        count += 1
    return count


def _detect_vit(shapes: dict[str, tuple[int, ...]]) -> ViTConfig:
    embed_dim, _, patch, _ = _need(shapes, "image_encoder.patch_embed.proj.weight")
    grid = _need(shapes, "image_encoder.pos_embed")[1]
    depth = _count(shapes, "image_encoder.blocks.")
    if depth == 0:
        raise ValueError("Cannot detect the SAM ViT: the state dict has no image_encoder.blocks.")
    mlp_ratio = _need(shapes, "image_encoder.blocks.0.mlp.lin1.weight")[0] / embed_dim
    out_chans = _need(shapes, "image_encoder.neck.0.weight")[0]
    if "image_encoder.blocks.0.attn.rel_pos_h" not in shapes:
        raise ValueError(
            "This ViT has no relative-position tables, so its attention windows cannot be "
            "read from the tensor shapes; pass its config explicitly."
        )
    head_dim = shapes["image_encoder.blocks.0.attn.rel_pos_h"][1]
    global_blocks, windows = [], set()
    for i in range(depth):
        table_len = _need(shapes, f"image_encoder.blocks.{i}.attn.rel_pos_h")[0]
        if table_len == 2 * grid - 1:
            global_blocks.append(i)
        else:
            windows.add((table_len + 1) // 2)
    if len(windows) > 1:
        raise ValueError(f"Unsupported ViT: blocks use different window sizes {sorted(windows)}.")
    return ViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=max(1, embed_dim // head_dim),
        global_attn_indexes=tuple(global_blocks),
        window_size=windows.pop() if windows else ViTConfig.window_size,
        mlp_ratio=mlp_ratio,
        out_chans=out_chans,
        use_rel_pos=True,
    )


def _detect_tiny_vit(shapes: dict[str, tuple[int, ...]]) -> TinyViTConfig:
    dims = [_need(shapes, "image_encoder.patch_embed.seq.2.c.weight")[0]]
    for i in range(3):
        dims.append(_need(shapes, f"image_encoder.layers.{i}.downsample.conv1.c.weight")[0])
    depths = [_count(shapes, f"image_encoder.layers.{i}.blocks.") for i in range(4)]
    heads, windows = [], []
    for i in range(1, 4):
        n_heads, n_offsets = _need(shapes, f"image_encoder.layers.{i}.blocks.0.attn.attention_biases")
        heads.append(n_heads)
        windows.append(math.isqrt(n_offsets))
    hidden = _need(shapes, "image_encoder.layers.1.blocks.0.mlp.fc1.weight")[0]
    return TinyViTConfig(
        img_size=1024,  # invisible in the shapes; MobileSAM's input size
        embed_dims=tuple(dims),
        depths=tuple(depths),
        # stage 0 is convolutional: its heads/window are unused (MobileSAM: 2 and 7)
        num_heads=(max(1, dims[0] // 32), *heads),
        window_sizes=(windows[0], *windows),
        mlp_ratio=hidden / dims[1],
        out_chans=_need(shapes, "image_encoder.neck.0.weight")[0],
    )


def _detect_decoder(shapes: dict[str, tuple[int, ...]], prompt_dim: int) -> DecoderConfig:
    attention_width = prompt_dim // 2
    # heads are invisible in the shapes: SAM's 8 when they divide the width
    heads = next(h for h in (8, 4, 2, 1) if attention_width % h == 0)
    return DecoderConfig(
        transformer_depth=_count(shapes, "mask_decoder.transformer.layers."),
        transformer_mlp_dim=_need(shapes, "mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        transformer_heads=heads,
        num_multimask_outputs=_need(shapes, "mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=_count(shapes, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=_need(shapes, "mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )


def detect_config(state_dict: Mapping[str, Any]) -> SamConfig:
    """Infer the architecture of a SAM-family state dict from its tensor shapes only.

    What shapes cannot show falls back to documented defaults: ViT heads come from the
    relative-position tables; TinyViT ``img_size`` is 1024 and its stage-0 heads/window
    (unused) are ``dims[0] // 32`` and stage 1's window; decoder heads are 8 when they
    divide ``prompt_embed_dim // 2``. The project's own checkpoints carry their config.

    Args:
        state_dict: names -> tensors (or anything with ``.shape``, e.g. meta tensors).

    Raises:
        ValueError: if it is not a SAM / MobileSAM state dict.
    """
    shapes = _shapes(state_dict)
    for prefix in ("image_encoder.", "prompt_encoder.", "mask_decoder."):
        if not any(key.startswith(prefix) for key in shapes):
            raise ValueError(
                f"Not a SAM-family state dict: no '{prefix}*' entries "
                f"(first keys: {list(shapes)[:3]})."
            )
    prompt_dim = _need(shapes, "prompt_encoder.no_mask_embed.weight")[1]
    if "image_encoder.patch_embed.proj.weight" in shapes:
        encoder: ViTConfig | TinyViTConfig = _detect_vit(shapes)
    elif "image_encoder.patch_embed.seq.0.c.weight" in shapes:
        encoder = _detect_tiny_vit(shapes)
    else:
        raise ValueError("Not a SAM-family state dict: the image encoder is neither SAM's ViT nor TinyViT.")
    try:
        return SamConfig(encoder=encoder, prompt_embed_dim=prompt_dim,
                         decoder=_detect_decoder(shapes, prompt_dim))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The state dict's shapes do not form a consistent SAM model: {exc}") from None


def _describe(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def sam_from_state_dict(
    state_dict: Mapping[str, Any], config: SamConfig | Mapping[str, Any] | str | None = None
) -> Sam:
    """Build a model and load ``state_dict`` strictly (returns float32, eval mode).

    Floating tensors are converted to float32 and become the model's parameters (no
    random initialisation happens). Only MobileSAM's unused ``image_encoder.head.*`` and
    ``image_encoder.norm_head.*`` entries are dropped.

    Args:
        state_dict: plain state dict with ``image_encoder.``, ``prompt_encoder.`` and
            ``mask_decoder.`` entries (unwrap ``{"model": sd}`` etc. first).
        config: the architecture (``SamConfig``, its ``to_dict()``, or an architecture
            name); detected from the shapes when None. A given config is checked against
            the shapes.

    Raises:
        ValueError: not a SAM state dict, or missing / unexpected keys or shape mismatches
            (the message lists the first few).
    """
    if config is None:
        config = detect_config(state_dict)
    elif isinstance(config, Mapping):
        config = SamConfig.from_dict(config)
    config = _resolve(config)
    _shapes(state_dict)  # type check
    tensors = dict(state_dict)
    if config.encoder_type == "tiny_vit":
        tensors = {k: v for k, v in tensors.items() if not k.startswith(MOBILE_SAM_UNUSED_PREFIXES)}
    with torch.device("meta"):
        model = _construct(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(tensors[key].shape)} vs model {expected[key]}"
        for key in expected
        if key in tensors and tuple(tensors[key].shape) != expected[key]
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {_describe(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {_describe(mismatched, 3)}")
        raise ValueError(
            "The state dict does not match the SAM architecture "
            f"({config.encoder_type}, img_size {config.img_size}): " + "; ".join(problems) + "."
        )
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor) or value.device.type == "meta":
            raise TypeError(f"State dict entry {key!r} holds no data ({type(value).__name__}).")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    device = next(model.parameters()).device
    for module in model.modules():
        reset = getattr(module, "reset_constant_buffers", None)
        if reset is not None:
            reset(device)
    return model.eval()
