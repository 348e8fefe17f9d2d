"""The ``Sam`` container: image encoder, prompt encoder and mask decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from napari_samscope.core.modeling.mask_decoder import MaskDecoder
from napari_samscope.core.modeling.prompt_encoder import PromptEncoder

if TYPE_CHECKING:
    from napari_samscope.core.modeling.config import SamConfig

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything model (SAM ViT-B/L/H, MobileSAM, or a tiny configuration).

    Attributes:
        image_encoder: ``(B, 3, S, S)`` normalised float image -> ``(B, C, S/16, S/16)``.
        prompt_encoder: :class:`PromptEncoder`.
        mask_decoder: :class:`MaskDecoder`.
        pixel_mean, pixel_std: ``(3, 1, 1)`` float32 buffers (RGB, 0..255 scale); not
            part of the state dict, exactly as in the official model.
        mask_threshold: logit threshold that turns mask logits into masks.
        config: the :class:`~napari_samscope.core.modeling.build.SamConfig` the model was built from.

    The model has no end-to-end ``forward``: callers run the three parts (the
    expensive image encoding once, the cheap prompt decoding many times).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        config: SamConfig,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = config
        self.register_buffer("pixel_mean", torch.empty(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.empty(3, 1, 1), persistent=False)
        self.reset_constant_buffers()

    @torch.no_grad()
    def reset_constant_buffers(self, device: torch.device | None = None) -> None:
        """(Re)fill the non-persistent constant buffers (after building on the meta device)."""
        if device is None:
            device = self.pixel_mean.device
        if device.type == "meta":
            device = torch.device("cpu")
        self.pixel_mean = torch.tensor(PIXEL_MEAN, device=device).view(-1, 1, 1)
        self.pixel_std = torch.tensor(PIXEL_STD, device=device).view(-1, 1, 1)

    @property
    def img_size(self) -> int:
        """Side ``S`` of the square encoder input (1024 for the official models)."""
        return int(self.image_encoder.img_size)

    @property
    def embedding_size(self) -> int:
        """Side ``E = S // 16`` of the image embedding."""
        return self.img_size // 16

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.pixel_mean.device
