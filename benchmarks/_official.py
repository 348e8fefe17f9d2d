"""The official implementations, when they are importable here (never in our package).

Meta's ``segment_anything`` builds SAM ViT models; MobileSAM's ``mobile_sam`` builds
TinyViT ones. Both are given *our* model's state dict, so both sides compute with the
same weights. Only the benchmark imports this module, and only after
:func:`available` said yes.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import partial
from typing import Any

import torch


def available() -> str | None:
    """A short description of the official packages found, or None if there are none."""
    found = []
    for module in ("segment_anything", "mobile_sam"):
        if importlib.util.find_spec(module) is not None:
            found.append(module)
    return " + ".join(found) if found else None


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _package(encoder_type: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if encoder_type == "vit":
            import segment_anything as package
        else:
            import mobile_sam as package
    return package


def supports(config: Any) -> bool:
    """Whether the official code can build this architecture: MobileSAM's TinyViT is
    hard-wired to 1024-pixel inputs and a 256-channel neck."""
    enc = config.to_dict()["encoder"]
    if enc["type"] == "vit":
        return has_module("segment_anything")
    return has_module("mobile_sam") and enc["img_size"] == 1024 and enc["out_chans"] == 256


def build_official(config: Any, state_dict: dict[str, torch.Tensor]) -> Any:
    """The official ``Sam`` for our ``SamConfig``, loaded strictly with ``state_dict``
    (None when :func:`supports` says the official code cannot build it)."""
    if not supports(config):
        return None
    cfg = config.to_dict()
    enc, dec, dim = cfg["encoder"], cfg["decoder"], cfg["prompt_embed_dim"]
    package = _package(enc["type"])
    modeling = package.modeling
    size = enc["img_size"]
    if enc["type"] == "vit":
        image_encoder = modeling.ImageEncoderViT(
            depth=enc["depth"], embed_dim=enc["embed_dim"], img_size=size,
            mlp_ratio=enc["mlp_ratio"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=enc["num_heads"], patch_size=enc["patch_size"], qkv_bias=True,
            use_rel_pos=enc["use_rel_pos"], global_attn_indexes=enc["global_attn_indexes"],
            window_size=enc["window_size"], out_chans=enc["out_chans"],
        )
    else:
        image_encoder = modeling.TinyViT(
            img_size=size, in_chans=3, num_classes=1000, embed_dims=enc["embed_dims"],
            depths=enc["depths"], num_heads=enc["num_heads"], window_sizes=enc["window_sizes"],
            mlp_ratio=enc["mlp_ratio"], drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
            mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
        )
    side = size // 16
    sam = modeling.Sam(
        image_encoder=image_encoder,
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=dim, image_embedding_size=(side, side), input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=dec["num_multimask_outputs"],
            transformer=modeling.TwoWayTransformer(
                depth=dec["transformer_depth"], embedding_dim=dim,
                mlp_dim=dec["transformer_mlp_dim"], num_heads=dec["transformer_heads"],
            ),
            transformer_dim=dim, iou_head_depth=dec["iou_head_depth"],
            iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    expected = set(sam.state_dict())
    state = {k: v for k, v in state_dict.items() if k in expected}
    # MobileSAM's classifier head is not in our model; the official one keeps its init.
    extra = {k: v for k, v in sam.state_dict().items() if k not in state}
    if enc["type"] == "vit" and extra:
        raise ValueError(f"official model has keys ours lacks: {sorted(extra)[:5]}")
    sam.load_state_dict({**extra, **state}, strict=True)
    return sam.eval()  # after loading: MobileSAM caches its attention biases in eval()


def predictor(sam: Any, encoder_type: str) -> Any:
    """The official ``SamPredictor`` for ``sam`` (None for None)."""
    return None if sam is None else _package(encoder_type).SamPredictor(sam)


def mask_generator(sam: Any, encoder_type: str, **params: Any) -> Any:
    """The official ``SamAutomaticMaskGenerator`` for ``sam`` (None for None)."""
    return None if sam is None else _package(encoder_type).SamAutomaticMaskGenerator(sam, **params)
