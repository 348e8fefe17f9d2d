"""``auto_annotate``: turn a folder of images into a segmentation dataset.

A detector proposes boxes (``"blobs"`` for fluorescent nuclei, a callable, or YOLO
weights; see :mod:`~napari_samscope.core.datasets.detectors`), SAM turns every box into a mask,
and the masks are written as YOLO segmentation text (:mod:`~napari_samscope.core.datasets.yolo_format`).

Outputs, in ``output_dir`` (default ``<data parent>/<data name>_auto_annotate_labels/``):

- ``<stem>.txt`` per image: one line per object, ``class x1 y1 x2 y2 ...`` normalised
  to [0, 1] (holes and multi-part objects bridged into one line, see
  :mod:`~napari_samscope.core.datasets.yolo_format`); an empty file when nothing was found;
- multi-page TIFF stacks are annotated plane by plane: ``<stem>_z0000.txt``,
  ``<stem>_z0001.txt``, ... (every axis other than Y, X and RGB samples counts as a
  plane axis, in file order);
- ``save_tiff=True``: ``<stem>_labels.tif``, the label image (``(H, W)`` or ``(Z, H, W)``,
  uint16, or uint32 above 65535 objects); label ``k`` is line ``k`` of the text file (unless ``split_parts``);
- ``save_coco=True``: ``annotations_coco.json`` for the whole folder (a stack plane is
  one COCO image, with a ``frame`` field).

File names come from the image stems, sanitised (path separators, control and
reserved characters become ``_``; no leading dots; length capped) and de-duplicated
(``a.png`` and ``a.tif`` give ``a.txt`` and ``a_tif.txt``); nothing is ever written
outside ``output_dir`` or onto an input image. Images that cannot be read are
reported and skipped, and a summary gives the counts. A re-run skips images whose
outputs all exist unless ``overwrite=True``; files are written atomically, so an
interrupted run never leaves a half-written file that would count as done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.datasets.annotate_io import (
    list_images,
    output_stems,
    plane_count,
    read_planes,
    txt_names,
    write_label_tiff,
)
from napari_samscope.core.datasets.coco_format import CocoWriter
from napari_samscope.core.datasets.detectors import Detections, make_detector
from napari_samscope.core.datasets.yolo_format import (
    object_to_yolo_lines,
    parse_yolo_segmentation,
    write_text_atomic,
)
from napari_samscope.core.predict import label_image
from napari_samscope.core.progress import Job, Progress, run

__all__ = [
    "AnnotatedObject",
    "AnnotateSummary",
    "annotate_plane",
    "auto_annotate",
    "auto_annotate_job",
    "paint_labels",
]

COCO_FILE = "annotations_coco.json"
_BOX_BATCH = 32  # boxes decoded at once (bounds the full-size masks held in memory)


# ----------------------------------------------------------------------------- one plane


@dataclass
class AnnotatedObject:
    """One object: its class, detector score, and mask cropped to its bounding box.

    ``crop`` is ``(h, w)`` bool; ``offset`` is the ``(row, col)`` of its top-left pixel.
    """

    class_id: int
    score: float
    offset: tuple[int, int]
    crop: np.ndarray

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    def paint(self, array: np.ndarray, value: Any) -> None:
        """Set ``array[mask] = value`` in place."""
        r, c = self.offset
        h, w = self.crop.shape
        array[r : r + h, c : c + w][self.crop] = value


def paint_labels(objects: Sequence[AnnotatedObject], shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` uint32 label image: object ``k`` gets label ``k + 1``; larger objects are
    painted first so small ones stay visible where they overlap."""
    return label_image.paint_labels(objects, shape)


def _crop(mask: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (int(r0), int(c0)), mask[r0:r1, c0:c1].copy()


def annotate_plane(
    predictor: Any,
    image: np.ndarray,
    detections: Detections,
    *,
    contrast_limits: Any = None,
) -> list[AnnotatedObject]:
    """Segment every detected box of one 2D image with SAM.

    Args:
        predictor: a :class:`~napari_samscope.core.predict.predictor.Predictor`.
        image: ``(H, W)`` or ``(H, W, 3|4)`` image (any dtype; normalised by ``set_image``).
        detections: boxes XYXY in pixels of ``image`` with classes and scores.
        contrast_limits: passed to ``set_image`` (the plugin passes the layer's).

    Returns:
        One :class:`AnnotatedObject` per box whose mask is not empty, in box order.
        A constant image (a blank plane) has nothing to segment and gives none.
    """
    if len(detections) == 0 or (contrast_limits is None and np.ptp(np.asarray(image)) == 0):
        return []
    predictor.set_image(image, contrast_limits=contrast_limits)
    objects: list[AnnotatedObject] = []
    try:
        for start in range(0, len(detections), _BOX_BATCH):
            stop = start + _BOX_BATCH
            result = predictor.predict(bboxes=detections.boxes[start:stop], multimask_output=False)
            for k, mask in enumerate(result.masks):
                cropped = _crop(mask)
                if cropped is not None:
                    index = start + k
                    objects.append(AnnotatedObject(
                        int(detections.class_ids[index]), float(detections.scores[index]), *cropped
                    ))
    finally:
        predictor.reset_image()
    return objects


# ----------------------------------------------------------------------------- summary


@dataclass
class AnnotateSummary:
    """What an ``auto_annotate`` run did."""

    output_dir: Path
    images: int = 0
    annotated: int = 0
    skipped: int = 0
    planes: int = 0
    objects: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    coco_path: Path | None = None

    def __str__(self) -> str:
        return (
            f"{self.images} images: {self.annotated} annotated ({self.planes} planes, "
            f"{self.objects} objects), {self.skipped} skipped (already annotated), "
            f"{len(self.failed)} failed; labels in {self.output_dir}"
        )


# ----------------------------------------------------------------------------- the job


def _make_predictor(sam_model: Any, device: str) -> Any:
    from napari_samscope.core.predict.resolve import as_predictor

    return as_predictor(sam_model, device=device or "auto")


def auto_annotate_job(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    det_model: str | os.PathLike | Callable[[np.ndarray], Any] | None = "blobs",
    sam_model: Any = None,
    device: str = "",
    output_dir: str | os.PathLike | None = None,
    conf: float = 0.25,
    classes: Iterable[int] | None = None,
    max_det: int = 300,
    overwrite: bool = False,
    save_tiff: bool = False,
    save_coco: bool = False,
    split_parts: bool = False,
) -> Job[AnnotateSummary]:
    """The generator behind :func:`auto_annotate` (yields ``Progress`` per image)."""
    if not 0.0 <= float(conf) <= 1.0:
        raise ValueError(f"conf must be between 0 and 1, not {conf}")
    if int(max_det) < 1:
        raise ValueError(f"max_det must be at least 1, not {max_det}")
    files, default_dir = list_images(data)
    out = Path(output_dir).expanduser() if output_dir is not None else default_dir
    out.mkdir(parents=True, exist_ok=True)
    out_resolved = out.resolve()
    inputs = {p.resolve() for p in files}
    classes = None if classes is None else [int(c) for c in classes]
    detector = make_detector(det_model, device=device, conf=conf, classes=classes, max_det=max_det)
    predictor = None
    coco = CocoWriter() if save_coco else None
    summary = AnnotateSummary(output_dir=out, images=len(files))

    def target(name: str) -> Path:
        path = (out_resolved / name).resolve()
        if path.parent != out_resolved or path in inputs:
            raise ValueError(f"refusing to write {name!r}: it would leave {out} or replace an input image")
        return path

    stems = output_stems(files)
    for stem in stems:  # fail before any work if a name would replace an input image
        target(f"{stem}_labels.tif")
    for index, (path, stem) in enumerate(zip(files, stems)):
        yield Progress(f"auto-annotating {path.name}", index, len(files))
        count = plane_count(path)
        label_path = target(f"{stem}_labels.tif")
        if not overwrite and count is not None:
            expected = [target(n) for n in txt_names(stem, count)] + ([label_path] if save_tiff else [])
            if all(p.exists() for p in expected):
                summary.skipped += 1
                if coco is not None:
                    try:
                        _add_existing_to_coco(coco, path, expected[:count])
                    except (OSError, ValueError) as exc:
                        summary.failed.append((path, f"not added to the COCO file: {exc}"))
                continue
        try:
            planes = read_planes(path)
        except (OSError, ValueError) as exc:
            summary.failed.append((path, str(exc)))
            continue
        if predictor is None:
            predictor = _make_predictor(sam_model, device)
        try:
            results = yield from _annotate_file(
                path, planes, detector, predictor, conf, classes, max_det, index, len(files)
            )
        except ValueError as exc:  # unusable image content (all NaN, bad layout, ...)
            summary.failed.append((path, str(exc)))
            continue
        label_planes = []
        for z, (objects, txt_name) in enumerate(zip(results, txt_names(stem, len(planes)))):
            shape = planes[z].shape[:2]
            lines: list[str] = []
            for obj in objects:
                lines += object_to_yolo_lines(obj.crop, obj.class_id, shape, obj.offset, split_parts=split_parts)
            write_text_atomic(target(txt_name), "".join(line + "\n" for line in lines))
            summary.files.append(target(txt_name))
            if save_tiff:
                label_planes.append(paint_labels(objects, shape))
            if coco is not None:
                frame = {"frame": z} if len(planes) > 1 else {}
                image_id = coco.add_image(path.name, *shape, **frame)
                for obj in objects:
                    coco.add_object(image_id, obj.crop, obj.class_id, obj.score, shape, obj.offset)
            summary.planes += 1
            summary.objects += len(objects)
        if save_tiff:
            write_label_tiff(label_path, np.stack(label_planes) if len(label_planes) > 1 else label_planes[0])
            summary.files.append(label_path)
        summary.annotated += 1
    yield Progress("auto-annotating", len(files), len(files))
    if coco is not None:
        summary.coco_path = coco.write(target(COCO_FILE))
        summary.files.append(summary.coco_path)
    return summary


def _annotate_file(
    path: Path, planes: np.ndarray, detector: Any, predictor: Any, conf: float,
    classes: list[int] | None, max_det: int, index: int, total: int,
) -> Job[list[list[AnnotatedObject]]]:
    """Detect and segment every plane of one file (all planes before anything is written)."""
    results = []
    for z, plane in enumerate(planes):
        if len(planes) > 1:
            yield Progress(f"auto-annotating {path.name} plane {z + 1}/{len(planes)}", index, total)
        found = detector(plane).filtered(conf=conf, classes=classes, max_det=max_det)
        results.append(annotate_plane(predictor, plane, found))
    return results


def _add_existing_to_coco(coco: CocoWriter, image_path: Path, txt_paths: Sequence[Path]) -> None:
    """Put an already annotated image into the COCO file from its text files."""
    planes = read_planes(image_path)
    for z, (plane, txt) in enumerate(zip(planes, txt_paths)):
        shape = plane.shape[:2]
        frame = {"frame": z} if len(planes) > 1 else {}
        image_id = coco.add_image(image_path.name, *shape, **frame)
        masks, class_ids = parse_yolo_segmentation(txt, shape)
        coco.add_masks(image_id, masks, class_ids)


def auto_annotate(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    det_model: str | os.PathLike | Callable[[np.ndarray], Any] | None = "blobs",
    sam_model: Any = None,
    device: str = "",
    output_dir: str | os.PathLike | None = None,
    conf: float = 0.25,
    classes: Iterable[int] | None = None,
    max_det: int = 300,
    overwrite: bool = False,
    save_tiff: bool = False,
    save_coco: bool = False,
    split_parts: bool = False,
    progress: Callable[[Progress], Any] | str | None = "tqdm",
    verbose: bool = True,
) -> AnnotateSummary:
    """Annotate a folder of images with a detector and SAM (see the module docstring).

    Args:
        data: a folder of images (not recursive), one image file, or a list of files.
            tif/tiff (any bit depth, multi-page stacks per plane), png, jpg/jpeg.
        det_model: ``"blobs"`` (default, fluorescent nuclei, no weights), a callable
            ``image -> (boxes XYXY, class_ids, scores)``, or Ultralytics YOLO weights.
        sam_model: registry name, alias or checkpoint path; None for the project's default
            model; or a ready ``SAM`` / ``Predictor``.
        device: ``""`` picks automatically (CUDA, MPS, CPU); or ``"cpu"``, ``"cuda:0"``...
        output_dir: default ``<data parent>/<data name>_auto_annotate_labels``.
        conf: minimum detector score.
        classes: keep only these class ids (None: all).
        max_det: at most this many objects per image (plane), the best-scored.
        overwrite: re-annotate images whose outputs already exist.
        save_tiff: also write ``<stem>_labels.tif`` label images.
        save_coco: also write ``annotations_coco.json`` for the whole folder.
        split_parts: one YOLO line per connected part of an object.
        progress: ``"tqdm"`` (a bar on stderr), None, or a callable receiving ``Progress``.
        verbose: print the failures and the summary to stderr at the end.

    Returns:
        An :class:`AnnotateSummary` (counts, failures, written files).
    """
    summary = run(
        auto_annotate_job(
            data, det_model, sam_model, device, output_dir, conf, classes, max_det,
            overwrite, save_tiff, save_coco, split_parts,
        ),
        progress=progress,
    )
    if verbose:
        for path, reason in summary.failed:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(summary, file=sys.stderr)
    return summary
