"""Object detectors that turn an image into box prompts for SAM.

A detector is any callable ``image -> Detections``. Three kinds are built in by
:func:`make_detector`, and a fourth by :func:`make_instance_detector`:

- ``"blobs"`` (the default, no weights): :class:`BlobDetector`, a scikit-image peak
  detector tuned for fluorescent nuclei (bright, roughly round objects on a dark
  background): smoothing, an Otsu foreground, distance-transform peaks as seeds, a
  watershed to split touching nuclei, and one box per region.
- a Python callable ``image -> (boxes XYXY, class_ids, scores)`` (or just the
  ``(N, 4)`` boxes, which gives class 0 and score 1);
- a path to Ultralytics YOLO weights (``"yolov8x.pt"``), when the optional
  ``ultralytics`` package is installed;
- ``"ais"`` (or ``"apg"``): the SAM model's own instance decoder
  (:class:`InstanceDetector`, ``core.instances``); its objects come with their masks, so
  ``auto_annotate`` uses those masks as they are instead of prompting SAM with boxes.

Boxes are ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` in pixels of the image, SAM's
convention: ``x`` is the column, ``y`` the row; ``x1``/``y1`` are the last covered
column/row (like segment-anything's mask-to-box).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: file suffixes of Ultralytics YOLO weights (names like "yolov8x.pt" are downloaded by Ultralytics)
YOLO_SUFFIXES = (".pt", ".onnx", ".engine", ".torchscript", ".mlpackage", ".tflite", ".pb")

#: det_model names that mean the SAM model's instance decoder (``core.instances`` modes)
INSTANCE_DETECTORS = ("ais", "apg")

__all__ = [
    "Detections",
    "BlobDetector",
    "CallableDetector",
    "InstanceDetector",
    "YoloDetector",
    "INSTANCE_DETECTORS",
    "instance_mode",
    "make_detector",
    "make_instance_detector",
]


@dataclass(frozen=True)
class Detections:
    """Boxes found in one image.

    Attributes:
        boxes: ``(N, 4)`` float32 XYXY in pixels (x = column, y = row).
        class_ids: ``(N,)`` int64.
        scores: ``(N,)`` float32 confidences in [0, 1].
    """

    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def from_arrays(cls, boxes: Any, class_ids: Any = None, scores: Any = None) -> Detections:
        """Validate and convert array-likes; missing classes are 0, missing scores 1."""
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim == 1 and boxes.shape[0] == 4:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"detector boxes must have shape (N, 4) as XYXY, got {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError("detector boxes contain NaN or infinite values")
        n = len(boxes)
        class_ids = np.zeros(n, np.int64) if class_ids is None else np.asarray(class_ids).astype(np.int64).reshape(-1)
        scores = np.ones(n, np.float32) if scores is None else np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(class_ids) != n or len(scores) != n:
            raise ValueError(
                f"a detector returned {n} boxes but {len(class_ids)} class ids and {len(scores)} scores; "
                "give one of each per box"
            )
        return cls(boxes, class_ids, scores)

    def filtered(self, conf: float = 0.0, classes: Sequence[int] | None = None, max_det: int | None = None) -> Detections:
        """Keep boxes with ``score >= conf`` and a class in ``classes``; the ``max_det`` best."""
        keep = self.scores >= conf
        if classes is not None:
            keep &= np.isin(self.class_ids, np.asarray(list(classes), dtype=np.int64))
        index = np.flatnonzero(keep)
        index = index[np.argsort(-self.scores[index], kind="stable")]
        if max_det is not None:
            index = index[: max(0, int(max_det))]
        return Detections(self.boxes[index], self.class_ids[index], self.scores[index])


def _to_grey_float(image: np.ndarray) -> np.ndarray:
    """2D float64 intensity in [0, 1] (per-image percentile 0.5-99.5 normalisation)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].astype(np.float64).mean(axis=-1)
    if image.ndim != 2:
        raise ValueError(f"the blob detector needs a 2D (H, W) or RGB (H, W, 3) image, got shape {image.shape}")
    image = image.astype(np.float64)
    finite = np.isfinite(image)
    if not finite.any():
        raise ValueError("the image holds no finite values (all NaN or infinite)")
    lo, hi = np.percentile(image[finite], [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(image[finite].min()), float(image[finite].max())
    if hi <= lo:
        return np.zeros(image.shape)
    return np.clip((np.where(finite, image, lo) - lo) / (hi - lo), 0.0, 1.0)


@dataclass
class BlobDetector:
    """Bright-blob (fluorescent nucleus) detector; needs no weights.

    Args:
        sigma: Gaussian smoothing in pixels before thresholding.
        min_distance: minimum distance in pixels between two nucleus centres; about
            the smallest expected nucleus radius.
        min_area: regions smaller than this (pixels) are dropped as noise.
        max_area: regions larger than this are dropped (None: no limit).
        threshold: foreground threshold on the [0, 1]-normalised image; None uses Otsu.
        box_padding: pixels added on each side of a region's box (SAM likes a little slack).
        bright_objects: False for dark objects on a bright background (e.g. brightfield).

    Calling it on an image returns :class:`Detections` with class 0 and, as score,
    ``1 - exp(-c / (2 sigma))`` where ``c`` is the region's mean (smoothed) intensity above
    the threshold and ``sigma`` the robust noise level of the background: a region one
    noise level above the threshold scores 0.39, three levels 0.78.
    """

    sigma: float = 1.0
    min_distance: int = 6
    min_area: int = 12
    max_area: int | None = None
    threshold: float | None = None
    box_padding: int = 2
    bright_objects: bool = True

    def __call__(self, image: np.ndarray) -> Detections:
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.filters import gaussian, threshold_triangle
        from skimage.measure import regionprops
        from skimage.segmentation import watershed

        grey = _to_grey_float(image)
        if not self.bright_objects:
            grey = 1.0 - grey
        smooth = gaussian(grey, sigma=self.sigma) if self.sigma > 0 else grey
        if self.threshold is not None:
            level = float(self.threshold)
        elif np.ptp(smooth) > 0:
            level = float(threshold_triangle(smooth))
        else:
            return Detections.from_arrays(np.zeros((0, 4)))
        foreground = smooth > level
        foreground = ndi.binary_opening(foreground, iterations=1)
        distance = ndi.distance_transform_edt(foreground)
        regions, _ = ndi.label(foreground)
        peaks = peak_local_max(
            distance, min_distance=max(1, int(self.min_distance)), labels=regions, exclude_border=False
        )
        markers = np.zeros(grey.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # regions without a peak (thin shapes) keep one seed each
        seeded = np.unique(regions[markers > 0])
        for index in np.setdiff1d(np.arange(1, regions.max() + 1), seeded):
            r, c = np.argwhere(regions == index)[0]
            markers[r, c] = markers.max() + 1
        labels = watershed(-distance, markers, mask=foreground)

        h, w = grey.shape
        boxes, scores = [], []
        for prop in regionprops(labels, intensity_image=smooth):
            if prop.area < self.min_area or (self.max_area is not None and prop.area > self.max_area):
                continue
            r0, c0, r1, c1 = prop.bbox  # r1, c1 exclusive
            p = self.box_padding
            boxes.append([max(0, c0 - p), max(0, r0 - p), min(w - 1, c1 - 1 + p), min(h - 1, r1 - 1 + p)])
            scores.append(prop.intensity_mean - level)
        if not boxes:
            return Detections.from_arrays(np.zeros((0, 4)))
        # confidence from the contrast above the threshold in units of background noise:
        # 1 - exp(-contrast / (2 sigma)); one sigma gives 0.39, three give 0.78
        background = smooth[~foreground]
        if background.size > 1:
            sigma = 1.4826 * float(np.median(np.abs(background - np.median(background))))
        else:
            sigma = 0.0
        sigma = max(sigma, 1e-3)
        scores_arr = 1.0 - np.exp(-np.clip(np.asarray(scores, dtype=np.float64), 0, None) / (2 * sigma))
        return Detections.from_arrays(boxes, None, scores_arr)


class CallableDetector:
    """Wraps a user function ``image -> (boxes, class_ids, scores)`` or ``image -> boxes``."""

    def __init__(self, function: Callable[[np.ndarray], Any]) -> None:
        self.function = function

    def __call__(self, image: np.ndarray) -> Detections:
        out = self.function(image)
        if isinstance(out, Detections):
            return out
        if isinstance(out, tuple):
            if len(out) != 3:
                raise TypeError(
                    f"a detector callable must return (boxes, class_ids, scores) or just boxes; "
                    f"it returned a tuple of {len(out)} items"
                )
            return Detections.from_arrays(*out)
        return Detections.from_arrays(out)


class YoloDetector:
    """Ultralytics YOLO weights as a detector (needs the optional ``ultralytics`` package).

    Images are given to YOLO as 8-bit BGR (its numpy convention); greyscale and
    high-bit-depth images are normalised first.
    """

    def __init__(self, weights: str | os.PathLike, device: str = "", conf: float = 0.25,
                 classes: Sequence[int] | None = None, max_det: int = 300) -> None:
        try:
            from ultralytics import YOLO
        except ImportError:
            raise ImportError(
                f"det_model={str(weights)!r} is an Ultralytics YOLO weight file, which needs the optional "
                "'ultralytics' package (pip install ultralytics); without it use det_model='blobs' "
                "or pass a Python callable"
            ) from None
        self.model = YOLO(str(weights))
        self.device, self.conf, self.max_det = device, conf, max_det
        self.classes = list(classes) if classes is not None else None

    def __call__(self, image: np.ndarray) -> Detections:
        from napari_samscope.core.predict.image import to_rgb_uint8

        bgr = np.ascontiguousarray(to_rgb_uint8(image)[..., ::-1])
        kwargs: dict[str, Any] = {"conf": self.conf, "max_det": self.max_det, "verbose": False}
        if self.device:
            kwargs["device"] = self.device
        if self.classes is not None:
            kwargs["classes"] = self.classes
        result = self.model(bgr, **kwargs)[0]
        boxes = result.boxes

        def as_numpy(value: Any) -> np.ndarray:
            return value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)

        return Detections.from_arrays(as_numpy(boxes.xyxy), as_numpy(boxes.cls), as_numpy(boxes.conf))


def instance_mode(det_model: Any) -> str | None:
    """``"ais"`` / ``"apg"`` when ``det_model`` names the instance decoder, else None."""
    if isinstance(det_model, str) and det_model.strip().lower() in INSTANCE_DETECTORS:
        return det_model.strip().lower()
    return None


class InstanceDetector:
    """A SAM model's instance decoder as a detector: its objects (AIS or APG), each with its
    box and its mask (class 0, score 1).

    Args:
        model: a ``SAM`` with an instance decoder.
        mode: ``"ais"`` or ``"apg"``.
        **params: the mode's parameters (micro-sam's names; see ``SAM.segment_instances``).
    """

    def __init__(self, model: Any, mode: str = "ais", **params: Any) -> None:
        self.model, self.mode, self.params = model, mode, params

    def segment(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint32 labels of ``image``, 0 background."""
        return self.model.segment_instances(image, mode=self.mode, **self.params)

    def objects(self, image: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
        """``(offset (row, col), bool crop)`` of every object of ``image``, in label order."""
        from scipy import ndimage

        labels = self.segment(image)
        found = []
        for value, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is not None:
                found.append(((box[0].start, box[1].start), labels[box] == value))
        return found

    def __call__(self, image: np.ndarray) -> Detections:
        boxes = [[c, r, c + crop.shape[1] - 1, r + crop.shape[0] - 1]
                 for (r, c), crop in self.objects(image)]
        return Detections.from_arrays(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


def make_instance_detector(det_model: str, sam_model: Any, device: str = "") -> InstanceDetector:
    """The instance decoder of ``sam_model`` as a detector (``det_model`` ``"ais"``/``"apg"``).

    ``sam_model``: a ``SAM``, or a registry name / checkpoint path / None (the default model),
    loaded here.

    Raises:
        ValueError: the model has no instance decoder (the message names models with one).
        TypeError: ``sam_model`` is a bare module or a predictor, which carry no decoder.
    """
    mode = instance_mode(det_model)
    if mode is None:
        raise ValueError(f"det_model={det_model!r} is not one of {', '.join(INSTANCE_DETECTORS)}.")
    if sam_model is None or isinstance(sam_model, str | os.PathLike):
        from napari_samscope.core.predict.sam_api import SAM

        sam_model = SAM(sam_model, device=device or "auto")
    if not hasattr(sam_model, "has_instance_decoder"):
        raise TypeError(
            f"det_model={mode!r} uses the instance decoder of the SAM model: give sam_model as a "
            f"registry name, a checkpoint path or a SAM, not a {type(sam_model).__name__}."
        )
    if not sam_model.has_instance_decoder:
        from napari_samscope.core.instances.api import no_decoder_message

        raise ValueError(no_decoder_message(sam_model.name, f"det_model={mode!r}"))
    return InstanceDetector(sam_model, mode)


def make_detector(
    det_model: str | os.PathLike | Callable[[np.ndarray], Any] | None = "blobs",
    device: str = "",
    conf: float = 0.25,
    classes: Sequence[int] | None = None,
    max_det: int = 300,
) -> Callable[[np.ndarray], Detections]:
    """Build a detector from ``det_model``.

    Args:
        det_model: ``"blobs"`` (or None), a callable, a :class:`BlobDetector`, or a path
            to Ultralytics YOLO weights (``.pt``, ``.onnx``, ...).
        device, conf, classes, max_det: passed to YOLO (the other kinds are filtered
            afterwards by :meth:`Detections.filtered`).

    Raises:
        ImportError: YOLO weights but ``ultralytics`` is not installed.
        FileNotFoundError: a weight path that does not exist (YOLO names such as
            ``yolov8x.pt`` are still handed to Ultralytics, which downloads them).
        ValueError: a name that is neither ``"blobs"`` nor a weight file name; ``"ais"`` /
            ``"apg"``, which need the SAM model (:func:`make_instance_detector`).
        TypeError: anything else.
    """
    if instance_mode(det_model) is not None:
        raise ValueError(
            f"det_model={det_model!r} is the SAM model's instance decoder: build it with "
            "make_instance_detector(det_model, sam_model)."
        )
    if det_model is None or (isinstance(det_model, str) and det_model.lower() in ("blobs", "blob")):
        return BlobDetector()
    if isinstance(det_model, BlobDetector | CallableDetector | YoloDetector):
        return det_model
    if callable(det_model):
        return CallableDetector(det_model)
    if isinstance(det_model, str | os.PathLike):
        path = Path(det_model)
        if not path.exists():
            if len(path.parts) > 1:
                raise FileNotFoundError(f"detector weights {str(path)!r} not found; check the path")
            if path.suffix.lower() not in YOLO_SUFFIXES:
                raise ValueError(
                    f"det_model={str(det_model)!r} is neither 'blobs' nor YOLO weights "
                    f"({', '.join(YOLO_SUFFIXES)}) nor an existing file; use det_model='blobs', "
                    "a callable, or a YOLO weight file such as 'yolov8x.pt'"
                )
        return YoloDetector(path, device=device, conf=conf, classes=classes, max_det=max_det)
    raise TypeError(
        f"det_model must be 'blobs', a callable image -> (boxes, class_ids, scores), or a YOLO weight "
        f"path; got {type(det_model).__name__}"
    )
