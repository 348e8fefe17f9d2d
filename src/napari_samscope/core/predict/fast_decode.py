"""Prompt decoding for inference: the mask decoder's fast paths and the state they keep.

:class:`DecoderRunner` runs a model's prompt encoder and
:class:`~napari_samscope.core.modeling.mask_decoder.MaskDecoder` on one image at a time
(a :class:`~napari_samscope.core.predict.predictor.Predictor` owns one). The module
computes; the runner decides how, with the same results up to float rounding:

- **Prepared image.** With one image and no mask prompt, the first transformer block's
  image side is projected once per image (``prepared_image``) and kept while the inputs
  stay the same (``image_memo.ImageMemo``); :meth:`DecoderRunner.prepare` does it right
  after encoding, so the first prompt is as fast as the next.
- **Chunks.** CPU inference decodes a batch a few prompt sets at a time (about
  ``_CHUNK_BYTES`` of image-sized tensors per step, which stay in the CPU cache) and
  upscales the masks in bands of embedding rows (``_BAND_BYTES``), so no image-sized
  buffer of the whole batch is allocated.
- **Precision.** Under a low-precision autocast the transformer stage runs in float32:
  its attention of a few prompt tokens over thousands of image tokens is sensitive to
  bfloat16 rounding (mask IoU against float32 down to 0.89 on the default model, against
  >= 0.97 with this stage in float32), and it is cheap for interactive prompts. The mask
  upscaling keeps the autocast dtype.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from napari_samscope.core.device import autocast
from napari_samscope.core.modeling.mask_decoder import MaskDecoder, broadcast_batch, is_shared
from napari_samscope.core.modeling.sam import Sam
from napari_samscope.core.predict.image_memo import ImageMemo
from napari_samscope.core.predict.prepared_image import (
    PreparedImage,
    first_block_weights,
    forward_prepared,
    prepare_image,
)

__all__ = ["DecoderRunner"]

#: Inference decodes a batch of prompt sets a few at a time, so that the image-sized
#: tensors of one step (about this many bytes) stay in the CPU cache: the decoder is
#: limited by memory traffic, and this makes it up to twice as fast for segment-everything.
_CHUNK_BYTES = 8 << 20

#: CPU inference upscales the masks in bands of embedding rows of about this many bytes
#: of upscaled activations (see ``DecoderRunner._upscale_masks_in_bands``).
_BAND_BYTES = 1 << 20


class DecoderRunner:
    """Inference of a :class:`Sam`'s prompt encoder and mask decoder, with its fast paths.

    Args:
        model: the module (its decoder is used as it is when not a :class:`MaskDecoder`).
        device: where the inputs live.
        dtype: autocast dtype of decoding (None: float32).
        lock: the re-entrant lock every call holds (a predictor passes its own).

    Attributes:
        model, device, dtype, lock: as given; ``device`` and ``dtype`` may be changed.
    """

    def __init__(
        self, model: Sam, device: torch.device, dtype: Any = None, lock: Any = None
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.lock = threading.RLock() if lock is None else lock
        self._memo = ImageMemo(capacity=4)  # one per orientation (core.predict.flips)
        self._pe_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None

    @property
    def supports_stages(self) -> bool:
        """Whether :meth:`transform` / :meth:`upscale_masks` apply (a :class:`MaskDecoder`)."""
        return isinstance(self.model.mask_decoder, MaskDecoder)

    @property
    def prepared_image(self) -> PreparedImage | None:
        """The kept prepared image (of the last image decoded without a mask prompt)."""
        return self._memo.value

    def dense_pe(self) -> torch.Tensor:
        """``prompt_encoder.get_dense_pe()``, recomputed only when its Gaussian matrix
        changes (the same tensor each time, so the prepared image is found at once)."""
        with self.lock:
            gaussian = self.model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
            stamp = (gaussian.data_ptr(), gaussian._version, gaussian.device)
            if self._pe_cache is None or self._pe_cache[0] != stamp:
                with torch.autocast(device_type=gaussian.device.type, enabled=False):
                    self._pe_cache = (stamp, self.model.prompt_encoder.get_dense_pe())
            return self._pe_cache[1]

    def clear(self) -> None:
        """Forget the prepared image (frees its memory)."""
        with self.lock:
            self._memo.clear()

    @torch.no_grad()
    def prepare(self, features: torch.Tensor) -> PreparedImage | None:
        """Do (and keep) the prompt-independent decoder work on ``(1, C, E, E)`` image
        features now, e.g. right after encoding, so that the first prompt is as fast as
        the next. None where decoding does not use a prepared image (a decoder that is
        not a ``MaskDecoder``, or decoding under bf16/fp16 autocast)."""
        with self.lock:
            if not self.supports_stages or self.dtype not in (None, torch.float32):
                return None  # decoding under autocast does not use a prepared image
            encoder = self.model.prompt_encoder
            dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            dense = dense.expand(1, -1, *features.shape[-2:])
            with torch.autocast(device_type=features.device.type, enabled=False):
                return self._prepared_image(features, self.dense_pe(), dense)

    @torch.no_grad()
    def warm_up(self, embedding: Any, upsampler: Any) -> None:
        """Decode one point on ``embedding`` (an ``ImageEmbedding``) and discard it: after
        the encoder has filled the CPU caches with its own data, this brings the decoder's
        weights and buffers back, so the user's first prompt is as fast as the next."""
        height, width = embedding.input_size
        coords = torch.tensor([[[width / 2, height / 2]]], device=self.device)
        labels = torch.ones((1, 1), dtype=torch.int, device=self.device)
        low, _ = self.decode(embedding.features, coords, labels, None, None, True)
        upsampler.masks(low[0], threshold=self.model.mask_threshold)

    @torch.no_grad()
    def decode(
        self,
        features: torch.Tensor,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        *,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder and mask decoder on ``features`` (see ``Predictor.decode``).

        ``min_iou``: only prompt sets with a returned candidate whose predicted IoU is above
        it get mask logits; the others get zeros and their mask upscaling (about 40% of the
        decoder's work) is skipped. None: every mask.

        Returns:
            low-resolution logits ``(B, K, L, L)`` and predicted IoU ``(B, K)``, float32.
        """
        points = None if point_coords is None else (point_coords, point_labels)
        with self.lock, autocast(self.device, self.dtype):
            encoder = self.model.prompt_encoder
            sparse, dense = encoder(points=points, boxes=boxes, masks=mask_input)
            if not self.supports_stages:
                low, iou = self.model.mask_decoder(
                    image_embeddings=features,
                    image_pe=self.dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask_output,
                )
            else:
                low, iou = self._decode_embedded(
                    features, sparse, dense, multimask_output, min_iou
                )
        return low.float(), iou.float()

    def _decode_embedded(
        self,
        features: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask_output: bool,
        min_iou: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder.forward`` with the fast paths and the ``min_iou`` selection."""
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        wanted = None
        if min_iou is not None:
            threshold = float(min_iou)

            def wanted(iou: torch.Tensor) -> torch.Tensor:
                return (iou[:, mask_slice] > threshold).any(dim=1)

        masks, iou_pred = self._predict_masks(features, self.dense_pe(), sparse, dense, wanted)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def _predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        wanted_rows: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder.predict_masks``, from start to end a few prompt sets at a time on
        the CPU (so the image-sized tokens of the whole batch are never gathered).

        ``wanted_rows`` maps the IoU scores to a ``(B,)`` bool tensor of the prompt sets
        whose masks are computed; the other rows are zeros. None: all of them."""
        batch = sparse.shape[0]
        step = _inference_chunk(
            image_embeddings.shape[-2] * image_embeddings.shape[-1] * sparse.shape[-1], image_pe
        )
        if batch > step:
            inputs = (image_embeddings, image_pe, dense)
            for x, name in zip(inputs, ("image_embeddings", "image_pe", "dense_prompt_embeddings")):
                broadcast_batch(x, batch, name)  # checks the batch sizes
            masks = iou = None
            for start in range(0, batch, step):
                rows = slice(start, start + step)
                image, pe, part_dense = (x if x.shape[0] == 1 else x[rows] for x in inputs)
                part_masks, part_iou = self._predict_masks(
                    image, pe, sparse[rows], part_dense, wanted_rows
                )
                if masks is None or iou is None:
                    masks = part_masks.new_empty((batch, *part_masks.shape[1:]))
                    iou = part_iou.new_empty((batch, *part_iou.shape[1:]))
                masks[rows], iou[rows] = part_masks, part_iou
            return masks, iou
        iou_pred, mask_tokens, keys, (height, width) = self.transform(
            image_embeddings, image_pe, sparse, dense
        )
        if wanted_rows is None:
            return self.upscale_masks(keys, mask_tokens, height, width), iou_pred
        rows = wanted_rows(iou_pred).nonzero()[:, 0]
        size = (4 * height, 4 * width)
        masks_per_set = self.model.mask_decoder.num_mask_tokens
        if rows.numel() == 0:
            return keys.new_zeros((batch, masks_per_set, *size)), iou_pred
        chosen = self.upscale_masks(keys[rows], mask_tokens[rows], height, width)
        masks = chosen.new_zeros((batch, masks_per_set, *size))
        masks[rows] = chosen
        return masks, iou_pred

    @torch.no_grad()
    def transform(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        *,
        low_precision: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``MaskDecoder.transform`` (arguments and returns as there) with the fast paths:
        float32 under autocast unless ``low_precision``, a few prompt sets at a time on the
        CPU, the prepared image where it applies."""
        decoder = self.model.mask_decoder
        device = image_embeddings.device.type
        if not low_precision and _autocast_enabled(device):
            with torch.autocast(device_type=device, enabled=False):
                return self.transform(
                    image_embeddings.float(), image_pe.float(), sparse.float(), dense.float(),
                    low_precision=True,
                )
        batch = sparse.shape[0]
        height, width = image_embeddings.shape[-2:]
        step = _inference_chunk(height * width * sparse.shape[-1], image_pe)
        if batch > step:  # a few prompt sets at a time (see _CHUNK_BYTES)
            parts = []
            for start in range(0, batch, step):
                rows = slice(start, start + step)
                parts.append(
                    self.transform(
                        image_embeddings if image_embeddings.shape[0] == 1 else image_embeddings[rows],
                        image_pe if image_pe.shape[0] == 1 else image_pe[rows],
                        sparse[rows],
                        dense if dense.shape[0] == 1 else dense[rows],
                        low_precision=low_precision,
                    )
                )
            iou, tokens, keys, grid = zip(*parts)
            return torch.cat(iou), torch.cat(tokens), torch.cat(keys), grid[0]
        prepared = self._prepared_image(image_embeddings, image_pe, dense)
        if prepared is None:
            return decoder.transform(image_embeddings, image_pe, sparse, dense)
        broadcast_batch(image_embeddings, batch, "image_embeddings")  # checks the batch sizes
        broadcast_batch(image_pe, batch, "image_pe")
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens.to(sparse.dtype), sparse), dim=1)
        outputs = 1 + decoder.num_mask_tokens  # the IoU and mask tokens
        hs, keys = forward_prepared(decoder.transformer, prepared, tokens, outputs=outputs)
        iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
        return iou_pred, hs[:, 1 : 1 + decoder.num_mask_tokens, :], keys, (height, width)

    def transform_step(self, image_embeddings: torch.Tensor, sparse: torch.Tensor) -> int:
        """The most prompt sets :meth:`transform` (default precision) decodes in one step.

        CPU inference decodes a larger batch a few prompt sets at a time and concatenates
        the results; a caller with many prompt sets (segment-everything) that passes
        batches of at most this size avoids copying the image tokens into one tensor.
        No limit (a huge number) off the CPU or with autograd on.
        """
        elements = image_embeddings.shape[-2] * image_embeddings.shape[-1] * sparse.shape[-1]
        if torch.is_grad_enabled() or image_embeddings.device.type != "cpu":
            return 1 << 62
        return max(1, _CHUNK_BYTES // (elements * 4))  # transform runs in float32

    @torch.no_grad()
    def upscale_masks(
        self, keys: torch.Tensor, mask_tokens: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``MaskDecoder.upscale_masks``, in bands of rows on the CPU and in chunks of
        prompt sets elsewhere (arguments and returns as there)."""
        decoder = self.model.mask_decoder
        batch, _, channels = keys.shape
        if keys.device.type == "cpu":
            return self._upscale_masks_in_bands(keys, mask_tokens, height, width)
        step = _inference_chunk((channels // 8) * 16 * height * width, keys)
        if batch > step:
            return torch.cat(
                [
                    decoder.upscale_masks(keys[i : i + step], mask_tokens[i : i + step], height, width)
                    for i in range(0, batch, step)
                ]
            )
        return decoder.upscale_masks(keys, mask_tokens, height, width)

    def _upscale_masks_in_bands(
        self, keys: torch.Tensor, mask_tokens: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """:meth:`upscale_masks` for the CPU, one prompt set and a band of embedding rows at
        a time (the upscaling works on each 2x2 block independently): the band's upscaled
        activations (about ``_BAND_BYTES``) stay in the CPU cache and the GELUs run in
        place, so no image-sized buffer is allocated (fresh pages of those cost about as
        much as the arithmetic)."""
        decoder = self.model.mask_decoder
        conv1, norm, gelu1, conv2, gelu2 = decoder.output_upscaling
        batch, _, channels = keys.shape
        hyper_in = decoder.hypernetwork(mask_tokens)  # B, M, C/8
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

    def _prepared_image(
        self, image: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor
    ) -> PreparedImage | None:
        """The transformer's prepared image for one image without a mask prompt (the
        dense embedding is one vector everywhere), kept while the inputs stay the same;
        None when this does not apply (autocast, per-prompt images or mask prompts)."""
        if (
            torch.is_grad_enabled()
            or _autocast_enabled(image.device.type)
            or not (is_shared(image) and is_shared(image_pe) and is_shared(dense))
            or dense.stride(-1) != 0
            or dense.stride(-2) != 0
        ):
            return None
        # the callers' own tensors (not views made here), so that their identity is kept
        image = image if image.shape[0] == 1 else image[:1]
        image_pe = image_pe if image_pe.shape[0] == 1 else image_pe[:1]
        vector = dense[0, :, 0, 0]
        transformer = self.model.mask_decoder.transformer

        def prepare() -> PreparedImage:
            return prepare_image(transformer, image + vector[None, :, None, None], image_pe)

        return self._memo.get((image, image_pe, vector), first_block_weights(transformer), prepare)


def _inference_chunk(elements_per_prompt: int, like: torch.Tensor) -> int:
    """Prompt sets per step for tensors of ``elements_per_prompt`` (no limit off the CPU,
    which wants large batches)."""
    if like.device.type != "cpu":
        return 1 << 62
    low = _autocast_enabled("cpu") or like.dtype in (torch.float16, torch.bfloat16)
    size = 2 if low else 4
    return max(1, _CHUNK_BYTES // (elements_per_prompt * size))


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return False
