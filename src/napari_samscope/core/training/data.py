"""Training data: image / instance-label pairs, validated and prepared as inference sees them.

Sources: numpy arrays (2D planes or ``(Z, Y, X)`` stacks, whose planes are sampled),
folders of TIFF/PNG files with matching names, or napari layers (the widget passes
their data as arrays). Every pair is checked when it is added: the label image must
have the image's spatial shape, integer values and at least one object.

:meth:`TrainingData.prepare` turns the pairs into :class:`PreparedSample` with exactly
the inference preprocessing: ``to_rgb_uint8`` (percentile 0.5-99.5 for non-8-bit
data, 8-bit data untouched), then the longest side resized to the model's ``img_size``
with Pillow's bilinear filter. Labels are resized with nearest neighbour to the same
frame, so prompts and target masks live in the model's input frame.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.predict.image import load_image, to_rgb_uint8
from napari_samscope.core.predict.transforms import resize_longest_side_shape, resize_rgb_uint8
from napari_samscope.core.progress import Progress

__all__ = ["IMAGE_SUFFIXES", "PreparedSample", "TrainingData", "prepare_pair"]

#: File suffixes read by :meth:`TrainingData.from_folders`.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

#: Label-file name endings recognised by :meth:`TrainingData.from_folders`.
COMMON_LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask")

#: Objects smaller than this many pixels in the model frame are never used as targets.
MIN_OBJECT_PIXELS = 9


@dataclass(frozen=True)
class PreparedSample:
    """One 2D training plane in the model's input frame.

    Attributes:
        image: ``(h, w, 3)`` uint8, longest side equal to the model's ``img_size``.
        labels: ``(h, w)`` uint32 instance labels (0 = background) in the same frame.
        ids: instance ids large enough to be used as training targets.
        name: where the plane came from (file name and plane index), for messages.
    """

    image: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    name: str


def _resize_labels_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (pixel centres map to pixel centres)."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return np.ascontiguousarray(labels[rows[:, None], cols[None, :]], dtype=np.uint32)


def prepare_pair(
    image: np.ndarray,
    labels: np.ndarray,
    img_size: int,
    *,
    name: str = "image",
    channel_axis: int | None = None,
    normalization: str = "percentile",
) -> PreparedSample:
    """Preprocess one 2D image / label pair exactly as inference will (see module docstring).

    Args:
        image: ``(H, W)``, ``(H, W, 3|4)`` or a multichannel image with ``channel_axis``.
        labels: ``(H, W)`` integer instance labels, 0 = background.
        img_size: the model's input side ``S``.
        name: used in messages.
        channel_axis, normalization: passed to :func:`~napari_samscope.core.predict.image.to_rgb_uint8`.
    """
    rgb = to_rgb_uint8(image, channel_axis=channel_axis, normalization=normalization)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(
            f"{name}: the image is {rgb.shape[:2]} but its labels are {labels.shape}; "
            "every label image must have the same height and width as its image."
        )
    resized = resize_rgb_uint8(rgb, img_size)
    new_shape = resize_longest_side_shape(labels.shape[0], labels.shape[1], img_size)
    small = _resize_labels_nearest(np.asarray(labels), new_shape)
    counts = np.bincount(small.ravel())
    ids = np.flatnonzero(counts >= MIN_OBJECT_PIXELS)
    ids = ids[ids > 0].astype(np.uint32)
    return PreparedSample(image=resized, labels=small, ids=ids, name=name)


def _as_labels(labels: Any, name: str) -> np.ndarray:
    data = np.asarray(labels)
    if data.dtype == np.bool_:
        data = data.astype(np.uint32)
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError(
                f"{name}: labels must be whole numbers (instance ids); got fractional or "
                "non-finite values. Save label images as integers."
            )
    elif not np.issubdtype(data.dtype, np.integer):
        raise TypeError(f"{name}: labels must be an integer array, not dtype {data.dtype}.")
    if data.size and data.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background), found {data.min()}.")
    return data


class TrainingData:
    """A validated collection of image / instance-label pairs (2D planes or stacks).

    Args:
        images: sequence of images. Each is ``(H, W)``, ``(H, W, 3|4)`` (RGB), a
            multichannel image with ``channel_axis``, or a ``(Z, H, W)`` stack when its
            labels are ``(Z, H, W)`` too.
        labels: one integer label image (or label stack) per image; 0 = background.
        names: one name per pair for messages (default ``"image 0"``, ...).
        channel_axis: channel axis of every 2D image (None for greyscale / RGB).
        normalization: ``"percentile"`` (default, as inference) or ``"minmax"``.

    Raises:
        ValueError: no pairs, different numbers of images and labels, shape mismatch,
            a label image (or a whole label stack) without objects, non-integer labels.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        names: Sequence[str] | None = None,
        channel_axis: int | None = None,
        normalization: str = "percentile",
    ) -> None:
        images, labels = list(images), list(labels)
        if len(images) == 0:
            raise ValueError("No training images were given; pass at least one image/label pair.")
        if len(images) != len(labels):
            raise ValueError(
                f"Got {len(images)} images but {len(labels)} label images; they must pair up."
            )
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        self.channel_axis = channel_axis
        self.normalization = normalization
        self.planes: list[tuple[np.ndarray, np.ndarray, str]] = []
        for image, label, name in zip(images, labels, names):
            self.planes.extend(self._split(np.asarray(image), _as_labels(label, name), name))

    def _split(
        self, image: np.ndarray, labels: np.ndarray, name: str
    ) -> list[tuple[np.ndarray, np.ndarray, str]]:
        """Validate one pair; a stack becomes its planes that hold objects."""
        is_stack = labels.ndim == 3 and self.channel_axis is None
        if labels.ndim not in (2, 3) or (labels.ndim == 3 and not is_stack):
            raise ValueError(f"{name}: labels must be (H, W) or a (Z, H, W) stack, not {labels.shape}.")
        if is_stack:
            if image.shape != labels.shape:
                raise ValueError(
                    f"{name}: the image stack is {image.shape} but its label stack is "
                    f"{labels.shape}; they must have the same shape."
                )
            planes = [
                (image[z], labels[z], f"{name} [plane {z}]")
                for z in range(labels.shape[0])
                if labels[z].any()
            ]
            if not planes:
                raise ValueError(f"{name}: the label stack has no objects (all zeros); label some.")
            return planes
        spatial = image.shape[:2] if self.channel_axis is None else tuple(
            s for i, s in enumerate(image.shape) if i != self.channel_axis % image.ndim
        )
        if spatial != labels.shape:
            raise ValueError(
                f"{name}: the image is {image.shape} but its labels are {labels.shape}; "
                "every label image must have the same height and width as its image."
            )
        if not labels.any():
            raise ValueError(
                f"{name}: the label image has no objects (all zeros); label at least one "
                "object or leave the pair out."
            )
        return [(image, labels, name)]

    @classmethod
    def from_folders(
        cls,
        images_dir: str | Path,
        labels_dir: str | Path,
        *,
        label_suffix: str | None = None,
        **kwargs: Any,
    ) -> TrainingData:
        """Pairs from two folders of TIFF/PNG files whose names match.

        ``cells_01.tif`` pairs with ``cells_01.tif`` or ``cells_01.png`` in the labels
        folder, or with ``cells_01<label_suffix>.tif`` when ``label_suffix`` is given
        (e.g. ``"_labels"``). With ``label_suffix=None`` the common suffixes
        ``_labels``, ``_label``, ``_masks``, ``_mask`` are also recognised when every
        label file carries the same one.

        Raises:
            FileNotFoundError: a folder does not exist or holds no TIFF/PNG file.
            ValueError: some names have no partner (the message lists them).
        """
        images = _image_files(images_dir, "images")
        labels = _image_files(labels_dir, "labels")
        suffixes = [label_suffix] if label_suffix is not None else ["", *COMMON_LABEL_SUFFIXES]
        for suffix in suffixes:
            if suffix and not all(stem.endswith(suffix) for stem in labels):
                continue
            renamed = {stem[: len(stem) - len(suffix)] if suffix else stem: p for stem, p in labels.items()}
            if set(renamed) == set(images) or suffix == suffixes[-1]:
                break
        else:
            renamed = labels
        missing_labels = sorted(set(images) - set(renamed))
        missing_images = sorted(set(renamed) - set(images))
        if missing_labels or missing_images:
            parts = []
            if missing_labels:
                parts.append(f"images without labels: {missing_labels[:5]}")
            if missing_images:
                parts.append(f"labels without images: {missing_images[:5]}")
            raise ValueError(
                "Image and label file names do not match (" + "; ".join(parts) + "). "
                "Each image needs a label file with the same name (the suffix may differ; "
                "use label_suffix / --label-suffix for names like 'cells_01_labels.tif')."
            )
        stems = sorted(images)
        return cls(
            [load_image(images[s]) for s in stems],
            [load_image(renamed[s]) for s in stems],
            names=[images[s].name for s in stems],
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.planes)

    def summary(self) -> dict[str, Any]:
        """JSON-able description (planes, objects, shapes) for checkpoint metadata."""
        n_objects = sum(int(len(np.unique(lab)) - 1) for _, lab, _ in self.planes)
        shapes = sorted({tuple(int(s) for s in lab.shape) for _, lab, _ in self.planes})
        return {"planes": len(self.planes), "objects": n_objects, "shapes": [list(s) for s in shapes[:10]]}

    def prepare(self, img_size: int) -> Generator[Progress, None, list[PreparedSample]]:
        """Preprocess every plane for a model of input side ``img_size`` (a progress job)."""
        prepared = []
        for i, (image, labels, name) in enumerate(self.planes):
            yield Progress("preparing training images", i, len(self.planes))
            sample = prepare_pair(
                image,
                labels,
                img_size,
                name=name,
                channel_axis=self.channel_axis,
                normalization=self.normalization,
            )
            if len(sample.ids):
                prepared.append(sample)
        if not prepared:
            raise ValueError(
                f"No object is at least {MIN_OBJECT_PIXELS} pixels large once the images are "
                f"resized to the model's input size {img_size}; label larger objects."
            )
        yield Progress("preparing training images", len(self.planes), len(self.planes))
        return prepared


def _image_files(folder: str | Path, what: str) -> dict[str, Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"The {what} folder {str(folder)!r} does not exist.")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise FileNotFoundError(
            f"The {what} folder {str(folder)!r} holds no TIFF or PNG file ({', '.join(IMAGE_SUFFIXES)})."
        )
    return files
