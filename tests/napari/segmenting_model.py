"""A SAM stand-in that segments *by design*, for tests that assert on mask content.

A tiny random SAM gives arbitrary masks, so "the mask covers the clicked nucleus" or
"propagation follows the object through z" cannot be asserted with it. The stand-in
is the real :class:`~napari_samscope.core.predict.predictor.Predictor` (so preprocessing,
prompt transforms, upsampling, the widgets, the volume code and segment-everything all
run unchanged) with two parts replaced by transparent rules:

- **image encoder** (a module of a real ``Sam`` container): the mean intensity of the
  normalised input at the low-resolution grid ``L = S / 4``, packed 16 values per
  embedding pixel (``pixel_unshuffle``); SAM's zero padding is marked very dark.
- **prompt encoder and mask decoder** (``RawPromptEncoder`` writes the raw prompts
  into the tokens, ``ThresholdDecoder`` reads them back), and the same rules as the
  torch-level ``SegmentingPredictor.decode`` (what ``MaskGenerator`` calls for a
  stand-in predictor; use ``predictor_factory=SegmentingPredictor``): thresholds the
  intensity halfway between its 1st and 99th percentiles (bright = object) and
  returns, as +-10 logits, the largest bright region inside the box, else the bright
  connected components under the positive points, else the bright component that
  overlaps the mask prompt most; components under negative points are removed.
  Predicted IoU is 0.95 for a non-empty mask and 0.0 for an empty one.

So on images of bright objects on a dark background it returns the clicked object,
which is what the widget tests need. It is a test double, not a model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from napari_samscope.core.modeling.sam import Sam
from napari_samscope.core.predict.predictor import Predictor

CHANNELS = 32  # >= 16 packed intensities


class IntensityEncoder(nn.Module):
    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.register_buffer("tag", torch.tensor([float(img_size)]))  # for model_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        valid = (x != 0).any(dim=1, keepdim=True)
        grey = torch.where(valid, x.mean(dim=1, keepdim=True), torch.full_like(x[:, :1], -100.0))
        low = F.avg_pool2d(grey, 4)  # (B, 1, L, L)
        out = x.new_zeros(x.shape[0], CHANNELS, self.img_size // 16, self.img_size // 16)
        out[:, :16] = F.pixel_unshuffle(low, 4)
        return out


class _NoPositions(nn.Module):
    """Stands where SAM's positional encoding is (the predictor caches from its matrix)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.zeros(2, CHANNELS // 2))


class RawPromptEncoder(nn.Module):
    """Writes the raw prompts into the tokens: ``x, y, label`` (box corners: labels 2, 3);
    a mask prompt goes into the dense embedding (16 packed channels + a flag)."""

    embed_dim = CHANNELS

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.pe_layer = _NoPositions()
        e = img_size // 16
        self.image_embedding_size = (e, e)
        self.input_image_size = (img_size, img_size)
        self.mask_input_size = (4 * e, 4 * e)

    def get_dense_pe(self) -> torch.Tensor:
        e = self.image_embedding_size[0]
        return torch.zeros(1, CHANNELS, e, e)

    def forward(self, points=None, boxes=None, masks=None):
        tokens = []
        batch = next(t for t in (points and points[0], boxes, masks) if t is not None).shape[0]
        if points is not None:
            coords, labels = points
            tok = coords.new_zeros(*coords.shape[:2], CHANNELS)
            tok[..., :2] = coords
            tok[..., 2] = labels.float()
            tokens.append(tok)
        if boxes is not None:
            tok = boxes.new_zeros(boxes.shape[0], 2, CHANNELS)
            tok[:, :, :2] = boxes.reshape(-1, 2, 2)
            tok[:, 0, 2], tok[:, 1, 2] = 2.0, 3.0
            tokens.append(tok)
        sparse = torch.cat(tokens, 1) if tokens else torch.zeros(batch, 0, CHANNELS)
        e = self.image_embedding_size[0]
        dense = torch.zeros(batch, CHANNELS, e, e)
        if masks is not None:
            dense[:, :16] = F.pixel_unshuffle(masks.float(), 4)
            dense[:, 16] = 1.0
        return sparse, dense


class ThresholdDecoder(nn.Module):
    """The mask decoder's forward API, answering with the rules of the module docstring."""

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings,
                dense_prompt_embeddings, multimask_output):
        components = _components(image_embeddings)
        outs = []
        for sparse, dense in zip(sparse_prompt_embeddings.cpu().numpy(), dense_prompt_embeddings):
            labels = np.round(sparse[:, 2]).astype(int)
            corners = sparse[np.isin(labels, (2, 3)), :2] / 4.0
            box = corners.reshape(-1) if len(corners) else None
            keep = np.isin(labels, (0, 1))
            mask = None
            if float(dense[16].max()) > 0:
                mask = F.pixel_shuffle(dense[None, :16].cpu(), 4)[0, 0].numpy() > 0
            outs.append(_region(components, sparse[keep, :2] / 4.0, labels[keep], box, mask))
        return _answer(outs, multimask_output, image_embeddings.device)


def make_segmenting_sam(img_size: int = 256) -> Sam:
    """A :class:`Sam` whose parts are the rules of this module (see the module docstring)."""
    if img_size % 16:
        raise ValueError("img_size must be divisible by 16")
    return Sam(
        image_encoder=IntensityEncoder(img_size),
        prompt_encoder=RawPromptEncoder(img_size),
        mask_decoder=ThresholdDecoder(),
        config=None,
    ).eval()


def _components(embeddings: torch.Tensor) -> np.ndarray:
    intensity = F.pixel_shuffle(embeddings[:1, :16].float(), 4)[0, 0].cpu().numpy()
    valid = intensity > -50
    lo, hi = np.percentile(intensity[valid], [1, 99])
    components, _ = ndimage.label(valid & (intensity > (lo + hi) / 2))
    return components


def _answer(outs: list[np.ndarray], multimask_output: bool, device) -> tuple:
    k = 3 if multimask_output else 1
    low = torch.from_numpy(np.stack(outs)).float()[:, None].repeat(1, k, 1, 1)
    iou = torch.tensor([0.95 if o.max() > 0 else 0.0 for o in outs])[:, None].repeat(1, k)
    return low.to(device), iou.to(device)


class SegmentingPredictor(Predictor):
    """The real Predictor whose ``decode`` applies the rules of the module docstring
    directly (robust to how the core drives the decoder modules, e.g. the shared
    decoder stages of segment-everything)."""

    decoder_runner = None  # segment-everything decodes through decode() below

    @torch.no_grad()
    def decode(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
               multimask_output=True):
        components = _components(self.features)
        scale = self.lowres_size / self.img_size
        batch = next(t for t in (point_coords, boxes, mask_input) if t is not None).shape[0]
        outs = []
        for b in range(batch):
            points = None if point_coords is None else point_coords[b].cpu().numpy() * scale
            labels = None if point_labels is None else point_labels[b].cpu().numpy()
            box = None if boxes is None else boxes[b].cpu().numpy() * scale
            mask = None if mask_input is None else mask_input[b, 0].cpu().numpy() > 0
            outs.append(_region(components, points, labels, box, mask))
        return _answer(outs, multimask_output, self.device)


def _region(components, points, labels, box, mask) -> np.ndarray:
    side = components.shape[0]

    def ids_at(xy: np.ndarray) -> set[int]:
        found = set()
        for x, y in xy:
            r, c = int(np.clip(y, 0, side - 1)), int(np.clip(x, 0, side - 1))
            if components[r, c]:
                found.add(int(components[r, c]))
        return found

    region = np.zeros(components.shape, dtype=bool)
    if box is not None:
        x0, y0 = np.floor(box[:2]).astype(int)
        x1, y1 = np.ceil(box[2:]).astype(int)
        inside = np.zeros_like(region)
        inside[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
        pieces, n = ndimage.label((components > 0) & inside)
        if n:
            sizes = ndimage.sum_labels(np.ones_like(pieces), pieces, range(1, n + 1))
            region = pieces == 1 + int(np.argmax(sizes))
    elif points is not None and np.any(labels == 1):
        region = np.isin(components, list(ids_at(points[labels == 1])) or [-1])
    elif mask is not None:
        overlap = np.bincount(components[mask], minlength=components.max() + 1)
        overlap[0] = 0
        if overlap.max() > 0:
            region = components == int(np.argmax(overlap))
    if points is not None:
        for cid in ids_at(points[labels == 0]):
            region &= components != cid
    return np.where(region, 10.0, -10.0).astype(np.float32)


def disk_image(shape=(96, 128), centres=((30, 40, 12), (60, 95, 14)), value=200, seed=0):
    """uint8 image of bright disks ``(row, col, radius)`` on a dark noisy background."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(20, 3, shape)
    for r, c, radius in centres:
        image[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = value
    return np.clip(image, 0, 255).astype(np.uint8)


def ball_stack(shape=(9, 64, 64), centre=(4, 32, 30), radii=(6, 14, 14), seed=0):
    """uint16 stack with one bright ellipsoid; returns ``(stack, truth_mask)``."""
    rng = np.random.default_rng(seed)
    z, r, c = np.mgrid[: shape[0], : shape[1], : shape[2]]
    inside = sum(((a - m) / s) ** 2 for a, m, s in zip((z, r, c), centre, radii)) <= 1.0
    stack = rng.normal(300, 20, shape)
    stack[inside] = 3000
    return np.clip(stack, 0, 65535).astype(np.uint16), inside
