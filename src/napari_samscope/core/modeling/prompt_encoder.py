"""SAM's prompt encoder: points, boxes and low-resolution masks -> embeddings.

Coordinates are ``(x, y)`` pixels in the model's input frame (the resized,
padded ``S x S`` image). Point labels: ``1`` foreground, ``0`` background,
``-1`` padding ("not a point"), ``2`` / ``3`` top-left / bottom-right box corner
(as in SAM's ONNX model; the official PyTorch encoder gives such points no
label embedding, which is never a meaningful input).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_samscope.core.modeling.common import LayerNorm2d


class PromptEncoder(nn.Module):
    """Encode prompts into sparse ``(B, T, C)`` and dense ``(B, C, E, E)`` embeddings.

    Args:
        embed_dim: ``C``, the prompt embedding width.
        image_embedding_size: ``(E_h, E_w)`` of the image embedding.
        input_image_size: ``(S_h, S_w)`` of the padded encoder input.
        mask_in_chans: hidden channels of the mask downscaling network.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(
            [nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)]
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, ``(1, C, E_h, E_w)`` float32."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``(B, N, 2)`` coords + ``(B, N)`` labels -> ``(B, N (+1 if pad), C)``."""
        points = points + 0.5  # centre of the pixel
        if pad:
            padding_point = torch.zeros(
                (points.shape[0], 1, 2), device=points.device, dtype=points.dtype
            )
            padding_label = -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)
            points = torch.cat([points, padding_point], dim=1)
            labels = torch.cat([labels, padding_label], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        for index, point_embed in enumerate(self.point_embeddings):
            embedding = embedding + (labels == index).to(embedding.dtype) * point_embed.weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` XYXY boxes -> ``(B, 2, C)`` corner embeddings."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)  # centre of the pixel
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat(
            [self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0
        )
        return embedding + corner_embed

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 4E, 4E)`` logits -> ``(B, C, E, E)``."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts of ``B`` objects.

        Args:
            points: ``(coords (B, N, 2) float (x, y) input-frame pixels, labels (B, N))``
                or None. A padding point is appended when ``boxes`` is None.
            boxes: ``(B, 4)`` XYXY input-frame pixels, or None.
            masks: ``(B, 1, 4E, 4E)`` low-resolution mask logits, or None.

        Returns:
            sparse ``(B, T, C)`` float32 and dense ``(B, C, E, E)`` embeddings.
        """
        batch = self._batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((batch, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], 1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch, -1, self.image_embedding_size[0], self.image_embedding_size[1]
            )
        return sparse, dense


class PositionEmbeddingRandom(nn.Module):
    """Fourier-feature positional encoding with a fixed random Gaussian matrix.

    The buffer ``positional_encoding_gaussian_matrix`` ``(2, num_pos_feats)`` is part
    of the state dict. Encodings are always computed in float32 (also under autocast).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coords normalised to [0, 1] -> ``(..., 2 * num_pos_feats)``."""
        gaussian = self.positional_encoding_gaussian_matrix
        with torch.autocast(device_type=coords.device.type, enabled=False):
            coords = 2 * coords.float() - 1
            coords = coords @ gaussian.float()
            coords = 2 * math.pi * coords
            return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an ``(h, w)`` grid: ``(C, h, w)``."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(
            [x[None, :].expand(height, width), y[:, None].expand(height, width)], dim=-1
        )
        return self._pe_encoding(grid).permute(2, 0, 1)  # H,W,C -> C,H,W

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode ``(B, N, 2)`` ``(x, y)`` pixel coords of an ``(h, w)`` image: ``(B, N, C)``."""
        coords = coords_input.float()
        coords = torch.stack(
            [coords[..., 0] / image_size[1], coords[..., 1] / image_size[0]], dim=-1
        )
        return self._pe_encoding(coords)
