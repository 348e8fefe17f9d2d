"""Shared pieces of the tiling and store tests: a local stand-in predictor and a lazy
array that refuses to be read whole."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from napari_samscope.core.predict.predictor import ImageEmbedding
from napari_samscope.core.predict.results import Prediction
from napari_samscope.core.predict.transforms import resize_longest_side_shape


class LocalPredictor:
    """A deterministic predictor whose "embedding" is the image itself and whose mask is
    the bright connected region under the first point (or the largest in the box), so a
    tile and the whole image give identical masks for objects inside a tile."""

    img_size = 64
    lowres_size = 16
    model_key = "local-stand-in"

    def __init__(self) -> None:
        self.encoded = 0
        self._emb: ImageEmbedding | None = None

    def encode(self, images, batch_size=1, **kwargs):
        out = []
        for rgb in images:
            self.encoded += 1
            plane = torch.as_tensor(np.asarray(rgb)[..., 0], dtype=torch.float32)[None, None]
            h, w = plane.shape[-2:]
            out.append(
                ImageEmbedding(plane, (h, w), resize_longest_side_shape(h, w, 64), self.model_key)
            )
        return out

    def set_embedding(self, emb):
        if emb.model_key != self.model_key:
            raise ValueError("another model")
        self._emb = emb

    def get_embedding(self):
        return self._emb

    @property
    def is_image_set(self):
        return self._emb is not None

    def reset_image(self):
        self._emb = None

    def decode(self, *args, **kwargs):  # pragma: no cover - interface only
        raise NotImplementedError

    def predict(self, points=None, labels=None, bboxes=None, masks=None, multimask_output=False):
        image = self._emb.features[0, 0].numpy()
        regions, _ = ndimage.label(image > 127)
        pts = None
        if points is not None:
            pts = np.asarray(points, dtype=float)
            pts = pts.reshape((1,) * (3 - pts.ndim) + pts.shape)  # (N, P, 2)
        boxes = None if bboxes is None else np.asarray(bboxes, dtype=float).reshape(-1, 4)
        n = len(pts) if pts is not None else len(boxes)
        out = []
        for k in range(n):
            if pts is not None:
                x, y = pts[k, 0]
                label = regions[int(y), int(x)]
            else:
                x0, y0, x1, y1 = boxes[k].astype(int)
                inside = regions[y0 : y1 + 1, x0 : x1 + 1]
                ids, counts = np.unique(inside[inside > 0], return_counts=True)
                label = ids[np.argmax(counts)] if len(ids) else 0
            out.append(regions == label if label else np.zeros(image.shape, bool))
        return Prediction(np.stack(out), np.ones(n, np.float32))


class NoWholeRead:
    """An array-like over a numpy array that raises when converted whole, and counts
    the largest window read."""

    def __init__(self, data: np.ndarray, max_fraction: float = 0.5) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.largest = 0
        self._limit = max_fraction * data.size

    def __getitem__(self, index):
        part = self._data[index]
        if np.size(part) > self._limit:
            raise AssertionError(f"read {np.size(part)} of {self._data.size} values at once")
        self.largest = max(self.largest, int(np.size(part)))
        return part

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole array was materialised")


def disc_image(shape, centres, radius=5) -> np.ndarray:
    """uint8 image with bright discs at ``(y, x)`` centres."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape, np.uint8)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 200
    return image


class ComponentsGenerator:
    """A stand-in for ``MaskGenerator``: every bright connected region of the tile is one
    mask (cut where the tile cuts it), as a segment-everything run on that tile would."""

    def generate_iter(self, rgb, embedding=None):
        from napari_samscope.core.everything.records import EverythingResult, MaskRecord

        yield from ()
        plane = np.asarray(rgb)[..., 0]
        regions, count = ndimage.label(plane > 127)
        shape = plane.shape
        records = []
        for k in range(1, count + 1):
            records.append(
                MaskRecord.from_mask(
                    regions == k, 0, 0, shape, predicted_iou=0.9, stability_score=0.95,
                    point_coords=(0.0, 0.0), crop_box=(0, 0, shape[1], shape[0]),
                )
            )
        return EverythingResult(records, shape)
