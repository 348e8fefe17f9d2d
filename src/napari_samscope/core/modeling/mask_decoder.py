"""SAM's mask decoder: image embedding + prompt embeddings -> mask logits and IoU scores."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from napari_samscope.core.modeling.common import LayerNorm2d
from napari_samscope.core.modeling.image_memo import ImageMemo, PreparedImage
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
        self._image_memo = ImageMemo()

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        *,
        min_iou: float | None = None,
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
            min_iou: only prompt sets with a returned candidate whose predicted IoU is
                above ``min_iou`` get mask logits; the others get zeros, and the mask
                upscaling (about 40% of the decoder's work) is skipped for them. For
                callers that drop every candidate at or below ``min_iou`` anyway
                (segment-everything's ``pred_iou_thresh``). None: every mask.

        Returns:
            low-resolution mask logits ``(B, K, 4E, 4E)`` and IoU predictions ``(B, K)``,
            ``K = num_multimask_outputs`` if ``multimask_output`` else 1.
        """
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        wanted = None
        if min_iou is not None:
            threshold = float(min_iou)

            def wanted(iou: torch.Tensor) -> torch.Tensor:
                return (iou[:, mask_slice] > threshold).any(dim=1)

        masks, iou_pred = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            wanted_rows=wanted,
        )
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        *,
        wanted_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, M, 4E, 4E)`` and IoU scores ``(B, M)``.

        ``wanted_rows`` maps the IoU scores to a ``(B,)`` bool tensor of the prompt sets
        whose masks are computed; the other rows are zeros. None: all of them.

        CPU inference decodes a few prompt sets at a time from start to end (see
        ``_CHUNK_BYTES``), so the image-sized tokens of the whole batch are never gathered.
        """
        batch = sparse_prompt_embeddings.shape[0]
        step = _inference_chunk(
            image_embeddings.shape[-2] * image_embeddings.shape[-1] * sparse_prompt_embeddings.shape[-1],
            image_pe,
        )
        if batch > step:
            inputs = (image_embeddings, image_pe, dense_prompt_embeddings)
            for x, name in zip(inputs, ("image_embeddings", "image_pe", "dense_prompt_embeddings")):
                _broadcast_batch(x, batch, name)  # checks the batch sizes
            masks = iou = None
            for start in range(0, batch, step):
                rows = slice(start, start + step)
                image, pe, dense = (x if x.shape[0] == 1 else x[rows] for x in inputs)
                part_masks, part_iou = self.predict_masks(
                    image, pe, sparse_prompt_embeddings[rows], dense, wanted_rows=wanted_rows
                )
                if masks is None or iou is None:
                    masks = part_masks.new_empty((batch, *part_masks.shape[1:]))
                    iou = part_iou.new_empty((batch, *part_iou.shape[1:]))
                masks[rows], iou[rows] = part_masks, part_iou
            return masks, iou
        iou_pred, mask_tokens, keys, (height, width) = self.transform(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        if wanted_rows is None:
            return self.upscale_masks(keys, mask_tokens, height, width), iou_pred
        batch = iou_pred.shape[0]
        rows = wanted_rows(iou_pred).nonzero()[:, 0]
        size = (4 * height, 4 * width)
        if rows.numel() == 0:
            return keys.new_zeros((batch, self.num_mask_tokens, *size)), iou_pred
        chosen = self.upscale_masks(keys[rows], mask_tokens[rows], height, width)
        masks = chosen.new_zeros((batch, self.num_mask_tokens, *size))
        masks[rows] = chosen
        return masks, iou_pred

    def transform(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        *,
        low_precision: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The first stage: the two-way transformer and the IoU head.

        The IoU scores do not depend on the mask stage, so a caller that filters
        candidates by predicted IoU can run :meth:`upscale_masks` only for the survivors.
        Arguments as in :meth:`forward`.

        For inference under autocast this stage runs in float32 unless
        ``low_precision``: its attention of a few prompt tokens over thousands of image
        tokens is sensitive to bfloat16 rounding (mask IoU against float32 down to 0.89
        on the default model, against >= 0.97 with this stage in float32), and it is
        cheap for interactive prompts. The image encoder and the mask upscaling keep
        the autocast dtype. Training (autograd on) follows the caller's autocast.

        Returns:
            ``iou_pred (B, M)``, mask tokens ``(B, M, C)``, image tokens ``(B, h*w, C)``
            and the embedding grid ``(h, w)``.
        """
        device = image_embeddings.device.type
        if not low_precision and not torch.is_grad_enabled() and _autocast_enabled(device):
            with torch.autocast(device_type=device, enabled=False):
                return self.transform(
                    image_embeddings.float(),
                    image_pe.float(),
                    sparse_prompt_embeddings.float(),
                    dense_prompt_embeddings.float(),
                    low_precision=True,
                )
        batch = sparse_prompt_embeddings.shape[0]
        height, width = image_embeddings.shape[-2:]
        step = _inference_chunk(height * width * sparse_prompt_embeddings.shape[-1], image_pe)
        if batch > step:  # inference on many prompt sets: a few at a time (see _CHUNK_BYTES)
            parts = []
            for start in range(0, batch, step):
                rows = slice(start, start + step)
                parts.append(
                    self.transform(
                        image_embeddings if image_embeddings.shape[0] == 1 else image_embeddings[rows],
                        image_pe if image_pe.shape[0] == 1 else image_pe[rows],
                        sparse_prompt_embeddings[rows],
                        dense_prompt_embeddings
                        if dense_prompt_embeddings.shape[0] == 1
                        else dense_prompt_embeddings[rows],
                        low_precision=low_precision,
                    )
                )
            iou, tokens, keys, grid = zip(*parts)
            return torch.cat(iou), torch.cat(tokens), torch.cat(keys), grid[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings), dim=1)

        prepared = self._prepared_image(image_embeddings, image_pe, dense_prompt_embeddings)
        outputs = 1 + self.num_mask_tokens  # the IoU and mask tokens
        image_embeddings = _broadcast_batch(image_embeddings, batch, "image_embeddings")
        pos_src = _broadcast_batch(image_pe, batch, "image_pe")
        if prepared is not None:
            hs, keys = self.transformer.forward_prepared(prepared, tokens, outputs=outputs)
            iou_pred = self.iou_prediction_head(hs[:, 0, :])
            return iou_pred, hs[:, 1 : 1 + self.num_mask_tokens, :], keys, (height, width)
        if not torch.is_grad_enabled() and _is_shared(image_embeddings) and _is_shared(
            dense_prompt_embeddings
        ):
            # One image and no mask prompts: the image tokens are the same for every
            # prompt set, so the transformer works on them once until they diverge.
            src = image_embeddings[:1] + dense_prompt_embeddings[:1]
        else:
            src = image_embeddings + dense_prompt_embeddings
        if _is_shared(pos_src):
            pos_src = pos_src[:1]
        hs, keys = self.transformer(src, pos_src, tokens, outputs=outputs)  # keys: B, HW, C
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        return iou_pred, hs[:, 1 : 1 + self.num_mask_tokens, :], keys, (height, width)

    def transform_step(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
    ) -> int:
        """The most prompt sets :meth:`transform` (default precision) decodes in one step.

        CPU inference decodes a larger batch a few prompt sets at a time and concatenates
        the results (see ``_CHUNK_BYTES``); a caller with many prompt sets (e.g.
        segment-everything) that passes batches of at most this size avoids copying the
        image tokens into one tensor. Arguments as in :meth:`forward`; no limit (a huge
        number) in training or on a GPU.
        """
        elements = image_embeddings.shape[-2] * image_embeddings.shape[-1]
        elements *= sparse_prompt_embeddings.shape[-1]
        device = image_pe.device.type
        if not torch.is_grad_enabled() and _autocast_enabled(device):  # transform runs float32
            with torch.autocast(device_type=device, enabled=False):
                return _inference_chunk(elements, image_pe.float())
        return _inference_chunk(elements, image_pe)

    @torch.no_grad()
    def prepare_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> PreparedImage | None:
        """Do (and keep) the prompt-independent work of decoding prompts on one image now,
        e.g. right after encoding it, so that the first prompt is as fast as the next.

        Arguments as in :meth:`forward`, with the dense embedding of "no mask prompt".
        Returns the prepared image, or None where decoding does not use one (see
        ``_prepared_image``). Decoding prepares it by itself anyway when needed.
        """
        with torch.autocast(device_type=image_embeddings.device.type, enabled=False):
            return self._prepared_image(image_embeddings, image_pe, dense_prompt_embeddings)

    def _prepared_image(
        self, image: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor
    ) -> PreparedImage | None:
        """The transformer's prepared image for inference on one image without a mask
        prompt (the dense embedding is one vector everywhere), kept while the inputs stay
        the same; None when this does not apply (training, autocast, per-prompt images or
        mask prompts)."""
        if (
            torch.is_grad_enabled()
            or _autocast_enabled(image.device.type)
            or not (_is_shared(image) and _is_shared(image_pe) and _is_shared(dense))
            or dense.stride(-1) != 0
            or dense.stride(-2) != 0
        ):
            return None
        # the callers' own tensors (not views made here), so that their identity is kept
        image = image if image.shape[0] == 1 else image[:1]
        image_pe = image_pe if image_pe.shape[0] == 1 else image_pe[:1]
        vector = dense[0, :, 0, 0]
        block = self.transformer.layers[0] if self.transformer.depth else None
        weights = [] if block is None else [
            block.cross_attn_token_to_image.k_proj.weight,
            block.cross_attn_token_to_image.k_proj.bias,
            block.cross_attn_token_to_image.v_proj.weight,
            block.cross_attn_token_to_image.v_proj.bias,
            block.cross_attn_image_to_token.q_proj.weight,
            block.cross_attn_image_to_token.q_proj.bias,
        ]

        def prepare() -> PreparedImage:
            return self.transformer.prepare_image(image + vector[None, :, None, None], image_pe)

        return self._image_memo.get((image, image_pe, vector), weights, prepare)

    def upscale_masks(
        self, keys: torch.Tensor, mask_tokens: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """The mask stage: ``(B, h*w, C)`` image tokens and ``(B, M, C)`` mask tokens (from
        :meth:`transform`, any subset of rows) -> low-resolution logits ``(B, M, 4h, 4w)``."""
        batch, _, channels = keys.shape
        if not torch.is_grad_enabled() and keys.device.type == "cpu":
            return self._upscale_masks_in_bands(keys, mask_tokens, height, width)
        upscaled_size = (channels // 8) * 16 * height * width
        step = _inference_chunk(upscaled_size, keys)
        if batch > step:
            return torch.cat(
                [
                    self.upscale_masks(keys[i : i + step], mask_tokens[i : i + step], height, width)
                    for i in range(0, batch, step)
                ]
            )
        # B,HW,C is the channels-last layout of B,C,H,W: a view, no copy
        src = keys.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        upscaled = self.output_upscaling(src)  # B, C/8, 4H, 4W (channels last)
        hyper_in = self._hypernetwork(mask_tokens)  # B, M, C/8
        _, up_channels, up_height, up_width = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(batch, up_height * up_width, up_channels)
        masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).contiguous()  # B, M, 4H*4W
        return masks.reshape(batch, -1, up_height, up_width)

    def _hypernetwork(self, mask_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, M, C)`` mask tokens -> ``(B, M, C/8)`` weights of the upscaled channels."""
        return torch.stack(
            [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )

    def _upscale_masks_in_bands(
        self, keys: torch.Tensor, mask_tokens: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """:meth:`upscale_masks` for CPU inference, one prompt set and a band of embedding
        rows at a time (the upscaling works on each 2x2 block independently): the band's
        upscaled activations (about ``_BAND_BYTES``) stay in the CPU cache and the GELUs
        run in place, so no image-sized buffer is allocated (fresh pages of those cost
        about as much as the arithmetic)."""
        conv1, norm, gelu1, conv2, gelu2 = self.output_upscaling
        batch, _, channels = keys.shape
        hyper_in = self._hypernetwork(mask_tokens)  # B, M, C/8
        src = keys.reshape(batch, height, width, channels).permute(0, 3, 1, 2)  # channels last
        per_row = (channels // 8) * 16 * width * keys.element_size()
        rows = max(1, _BAND_BYTES // per_row)
        out: torch.Tensor | None = None
        for b in range(batch):
            for top in range(0, height, rows):
                x = norm(conv1(src[b : b + 1, :, top : top + rows]))
                x = torch.ops.aten.gelu_(x, approximate=gelu1.approximate)
                x = torch.ops.aten.gelu_(conv2(x), approximate=gelu2.approximate)
                _, up_channels, up_rows, up_width = x.shape
                pixels = x.permute(0, 2, 3, 1).reshape(up_rows * up_width, up_channels)
                band = (hyper_in[b] @ pixels.transpose(0, 1)).view(-1, up_rows, up_width)
                if out is None:
                    out = band.new_empty((batch, band.shape[0], 4 * height, up_width))
                out[b, :, 4 * top : 4 * top + up_rows] = band
        if out is None:  # an empty embedding grid
            return keys.new_zeros((batch, hyper_in.shape[1], 0, 4 * width))
        return out


#: Inference decodes a batch of prompt sets a few at a time, so that the image-sized
#: tensors of one step (about this many bytes) stay in the CPU cache: the decoder is
#: limited by memory traffic, and this makes it up to twice as fast for segment-everything.
_CHUNK_BYTES = 8 << 20

#: CPU inference upscales the masks in bands of embedding rows of about this many bytes
#: of upscaled activations (see ``MaskDecoder._upscale_masks_in_bands``).
_BAND_BYTES = 1 << 20


def _inference_chunk(elements_per_prompt: int, like: torch.Tensor) -> int:
    """Prompt sets per step for tensors of ``elements_per_prompt`` (CPU inference only:
    no limit in training or on a GPU, which wants large batches)."""
    if torch.is_grad_enabled() or like.device.type != "cpu":
        return 1 << 62
    low = _autocast_enabled("cpu") or like.dtype in (torch.float16, torch.bfloat16)
    size = 2 if low else 4
    return max(1, _CHUNK_BYTES // (elements_per_prompt * size))


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return False


def _is_shared(x: torch.Tensor) -> bool:
    """Whether every batch entry of ``x`` is the same memory (batch 1 or an expanded view)."""
    return x.shape[0] == 1 or x.stride(0) == 0


def _broadcast_batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
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
