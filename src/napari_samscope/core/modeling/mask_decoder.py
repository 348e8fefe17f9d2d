"""SAM's mask decoder: image embedding + prompt embeddings -> mask logits and IoU scores.

The computation is the official one, in two stages (:meth:`MaskDecoder.transform`, then
:meth:`MaskDecoder.upscale_masks`) so that a caller can upscale the masks of some prompt
sets only. Inference fast paths that keep state (a prepared image, chunks of prompt sets,
precision switches) are the predict layer's (``core.predict.fast_decode``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_samscope.core.modeling.common import LayerNorm2d
from napari_samscope.core.modeling.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predict ``K`` low-resolution masks and their IoU scores per prompt set.

    Args:
        transformer_dim: ``C``, width of the prompt / image embeddings.
        transformer: the :class:`TwoWayTransformer`.
        num_multimask_outputs: candidate masks in multimask mode (3 for SAM).
        iou_head_depth: layers of the IoU prediction MLP.
        iou_head_hidden_dim: hidden width of the IoU prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks for ``B`` prompt sets.

        Args:
            image_embeddings: ``(1, C, E, E)`` (shared by all prompt sets) or ``(B, C, E, E)``
                (one image per prompt set, e.g. batched training).
            image_pe: ``(1, C, E, E)`` or ``(B, C, E, E)`` positional encoding.
            sparse_prompt_embeddings: ``(B, T, C)``.
            dense_prompt_embeddings: ``(B, C, E, E)`` (or ``(1, C, E, E)``).
            multimask_output: return the ``num_multimask_outputs`` candidates instead of
                the single-mask output.

        Returns:
            low-resolution mask logits ``(B, K, 4E, 4E)`` and IoU predictions ``(B, K)``,
            ``K = num_multimask_outputs`` if ``multimask_output`` else 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, M, 4E, 4E)`` and IoU scores ``(B, M)``
        (arguments as in :meth:`forward`)."""
        iou_pred, mask_tokens, keys, (height, width) = self.transform(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return self.upscale_masks(keys, mask_tokens, height, width), iou_pred

    def transform(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The first stage: the two-way transformer and the IoU head.

        The IoU scores do not depend on the mask stage, so a caller that filters
        candidates by predicted IoU can run :meth:`upscale_masks` only for the survivors.
        Arguments as in :meth:`forward`.

        Returns:
            ``iou_pred (B, M)``, mask tokens ``(B, M, C)``, image tokens ``(B, h*w, C)``
            and the embedding grid ``(h, w)``.
        """
        batch = sparse_prompt_embeddings.shape[0]
        height, width = image_embeddings.shape[-2:]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings), dim=1)

        image_embeddings = broadcast_batch(image_embeddings, batch, "image_embeddings")
        pos_src = broadcast_batch(image_pe, batch, "image_pe")
        if not torch.is_grad_enabled() and is_shared(image_embeddings) and is_shared(
            dense_prompt_embeddings
        ):
            # One image and no mask prompts: the image tokens are the same for every
            # prompt set, so the transformer works on them once until they diverge.
            src = image_embeddings[:1] + dense_prompt_embeddings[:1]
        else:
            src = image_embeddings + dense_prompt_embeddings
        if is_shared(pos_src):
            pos_src = pos_src[:1]
        outputs = 1 + self.num_mask_tokens  # the IoU and mask tokens
        hs, keys = self.transformer(src, pos_src, tokens, outputs=outputs)  # keys: B, HW, C
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        return iou_pred, hs[:, 1 : 1 + self.num_mask_tokens, :], keys, (height, width)

    def upscale_masks(
        self, keys: torch.Tensor, mask_tokens: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """The mask stage: ``(B, h*w, C)`` image tokens and ``(B, M, C)`` mask tokens (from
        :meth:`transform`, any subset of rows) -> low-resolution logits ``(B, M, 4h, 4w)``."""
        batch, _, channels = keys.shape
        # B,HW,C is the channels-last layout of B,C,H,W: a view, no copy
        src = keys.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        upscaled = self.output_upscaling(src)  # B, C/8, 4H, 4W (channels last)
        hyper_in = self.hypernetwork(mask_tokens)  # B, M, C/8
        _, up_channels, up_height, up_width = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(batch, up_height * up_width, up_channels)
        masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).contiguous()  # B, M, 4H*4W
        return masks.reshape(batch, -1, up_height, up_width)

    def hypernetwork(self, mask_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, M, C)`` mask tokens -> ``(B, M, C/8)`` weights of the upscaled channels."""
        return torch.stack(
            [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )


def is_shared(x: torch.Tensor) -> bool:
    """Whether every batch entry of ``x`` is the same memory (batch 1 or an expanded view)."""
    return x.shape[0] == 1 or x.stride(0) == 0


def broadcast_batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Expand a batch-1 tensor to ``batch``; a batch-``batch`` tensor passes unchanged."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ValueError(
        f"{name} has batch size {x.shape[0]} but there are {batch} prompt sets; "
        "pass one embedding shared by all prompt sets or one per prompt set."
    )


class MLP(nn.Module):
    """Plain MLP with ReLU between ``num_layers`` linear layers (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip([input_dim] + hidden, hidden + [output_dim])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., input_dim) -> (..., output_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x
