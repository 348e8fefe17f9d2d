"""Architecture configurations of the SAM family (plain frozen dataclasses).

``SamConfig.to_dict()`` / ``from_dict()`` give the JSON-able form stored in the
project's own checkpoints. ``napari_samscope.core.modeling.build`` re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from napari_samscope.core.modeling.image_encoder import ImageEncoderViT
from napari_samscope.core.modeling.tiny_vit import TinyViT

EMBEDDING_STRIDE = 16


@dataclass(frozen=True)
class ViTConfig:
    """SAM ViT image encoder (``ImageEncoderViT``)."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256
    use_rel_pos: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_attn_indexes", tuple(self.global_attn_indexes))
        if self.patch_size != EMBEDDING_STRIDE:
            raise ValueError(
                f"patch_size must be {EMBEDDING_STRIDE}: SAM's prompt encoder and decoder "
                f"expect a stride-16 image embedding (got {self.patch_size})."
            )
        if self.img_size <= 0 or self.img_size % EMBEDDING_STRIDE:
            raise ValueError(f"img_size must be a positive multiple of 16, got {self.img_size}.")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}."
            )
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError(
                f"global_attn_indexes {self.global_attn_indexes} must lie in [0, depth={self.depth})."
            )

    def build(self) -> ImageEncoderViT:
        return ImageEncoderViT(
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            out_chans=self.out_chans,
            use_rel_pos=self.use_rel_pos,
            window_size=self.window_size,
            global_attn_indexes=self.global_attn_indexes,
        )


@dataclass(frozen=True)
class TinyViTConfig:
    """MobileSAM TinyViT image encoder (4 stages; stage 0 is convolutional)."""

    img_size: int = 1024
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    out_chans: int = 256

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != 4:
                raise ValueError(f"TinyViT {name} needs 4 entries (one per stage), got {value}.")
        if self.img_size <= 0 or self.img_size % EMBEDDING_STRIDE:
            raise ValueError(f"img_size must be a positive multiple of 16, got {self.img_size}.")
        for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:]):
            if dim % heads:
                raise ValueError(f"TinyViT stage width {dim} is not divisible by {heads} heads.")

    def build(self) -> TinyViT:
        return TinyViT(
            img_size=self.img_size,
            embed_dims=self.embed_dims,
            depths=self.depths,
            num_heads=self.num_heads,
            window_sizes=self.window_sizes,
            mlp_ratio=self.mlp_ratio,
            out_chans=self.out_chans,
        )


@dataclass(frozen=True)
class DecoderConfig:
    """Two-way-transformer mask decoder."""

    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


_ENCODER_TYPES: dict[str, type[ViTConfig] | type[TinyViTConfig]] = {
    "vit": ViTConfig,
    "tiny_vit": TinyViTConfig,
}


@dataclass(frozen=True)
class SamConfig:
    """A whole SAM-family model: image encoder, prompt width, decoder."""

    encoder: ViTConfig | TinyViTConfig
    prompt_embed_dim: int = 256
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, (ViTConfig, TinyViTConfig)):
            raise TypeError(f"encoder must be a ViTConfig or TinyViTConfig, got {type(self.encoder)}.")
        if self.encoder.out_chans != self.prompt_embed_dim:
            raise ValueError(
                f"encoder.out_chans ({self.encoder.out_chans}) must equal prompt_embed_dim "
                f"({self.prompt_embed_dim})."
            )
        if (self.prompt_embed_dim // 2) % self.decoder.transformer_heads:
            raise ValueError(
                f"decoder.transformer_heads ({self.decoder.transformer_heads}) must divide "
                f"prompt_embed_dim // 2 ({self.prompt_embed_dim // 2})."
            )

    @property
    def img_size(self) -> int:
        """Side of the square encoder input."""
        return self.encoder.img_size

    @property
    def encoder_type(self) -> str:
        """``"vit"`` or ``"tiny_vit"``."""
        return "vit" if isinstance(self.encoder, ViTConfig) else "tiny_vit"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); inverse of :meth:`from_dict`."""
        encoder = {"type": self.encoder_type, **_jsonable(asdict(self.encoder))}
        return {
            "encoder": encoder,
            "prompt_embed_dim": self.prompt_embed_dim,
            "decoder": _jsonable(asdict(self.decoder)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamConfig:
        """Rebuild a config from :meth:`to_dict` output; ``ValueError`` on unknown content."""
        if not isinstance(data, Mapping) or "encoder" not in data:
            raise ValueError("A SAM config dict needs an 'encoder' entry (see SamConfig.to_dict()).")
        _check_keys(data, {"encoder", "prompt_embed_dim", "decoder"}, "config")
        encoder_data = dict(data["encoder"])
        kind = encoder_data.pop("type", "vit")
        if kind not in _ENCODER_TYPES:
            raise ValueError(f"Unknown encoder type {kind!r}; expected one of {sorted(_ENCODER_TYPES)}.")
        encoder_cls = _ENCODER_TYPES[kind]
        _check_keys(encoder_data, {f.name for f in fields(encoder_cls)}, "encoder config")
        decoder_data = dict(data.get("decoder", {}))
        _check_keys(decoder_data, {f.name for f in fields(DecoderConfig)}, "decoder config")
        return cls(
            encoder=encoder_cls(**_tuplify(encoder_data)),
            prompt_embed_dim=int(data.get("prompt_embed_dim", 256)),
            decoder=DecoderConfig(**decoder_data),
        )


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def _tuplify(data: dict[str, Any]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}


def _check_keys(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"Unknown {what} entries {unknown}; allowed: {sorted(allowed)}.")


ARCHITECTURES: dict[str, SamConfig] = {
    "vit_b": SamConfig(encoder=ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))),
    "vit_l": SamConfig(encoder=ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))),
    "vit_h": SamConfig(encoder=ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))),
    "vit_t": SamConfig(encoder=TinyViTConfig()),
}


def tiny_config(encoder: str = "vit", img_size: int = 64, **overrides: Any) -> SamConfig:
    """A small, fast configuration of the real architecture, for tests and tiny models.

    Args:
        encoder: ``"vit"`` (SAM ViT) or ``"tiny_vit"`` (MobileSAM TinyViT; ``"vit_t"`` too).
        img_size: square input side, any positive multiple of 16.
        **overrides: fields of the encoder config (e.g. ``depth=3``), or
            ``prompt_embed_dim`` / ``decoder`` (a :class:`DecoderConfig`).

    Returns:
        A config with prompt width 32 and a 2-layer decoder of MLP width 64.
    """
    prompt_dim = int(overrides.pop("prompt_embed_dim", 32))
    decoder = overrides.pop(
        "decoder",
        DecoderConfig(transformer_mlp_dim=64, transformer_heads=2, iou_head_hidden_dim=32),
    )
    if encoder == "vit":
        base = ViTConfig(
            img_size=img_size, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
            window_size=3, out_chans=prompt_dim,
        )
    elif encoder in ("tiny_vit", "vit_t"):
        base = TinyViTConfig(
            img_size=img_size, embed_dims=(16, 24, 32, 40), depths=(1, 1, 2, 1),
            num_heads=(1, 2, 2, 2), window_sizes=(3, 3, 3, 2), out_chans=prompt_dim,
        )
    else:
        raise ValueError(f"Unknown encoder {encoder!r}; use 'vit' or 'tiny_vit'.")
    try:
        enc = replace(base, **overrides)
    except TypeError as exc:
        raise ValueError(f"Unknown tiny_config override: {exc}") from None
    return SamConfig(encoder=enc, prompt_embed_dim=prompt_dim, decoder=decoder)
