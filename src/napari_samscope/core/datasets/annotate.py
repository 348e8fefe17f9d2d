"""``auto_annotate``: turn a folder of images into a segmentation dataset.

A detector proposes boxes (``"blobs"`` for fluorescent nuclei, a callable, or YOLO
weights; see :mod:`~napari_samscope.core.datasets.detectors`), SAM turns every box into a mask,
or, with ``det_model="ais"`` (or ``"apg"``), the SAM model's instance decoder gives the objects
and their masks at once; the masks are written as YOLO segmentation text (:mod:`~napari_samscope.core.datasets.yolo_format`).

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
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.datasets.annotate_io import (
    as_valid_plane,
    list_images,
    output_stems,
    plane_count,
    read_planes,
    txt_names,
    write_label_tiff,
)
from napari_samscope.core.datasets.annotate_options import AnnotateOptions, AnnotateSummary
from napari_samscope.core.datasets.coco_format import CocoWriter
from napari_samscope.core.datasets.detectors import (
    Detections,
    InstanceDetector,
    instance_mode,
    make_detector,
    make_instance_detector,
)
from napari_samscope.core.datasets.manifest import Manifest, resolved_path
from napari_samscope.core.datasets.yolo_format import (
    object_to_yolo_lines,
    parse_yolo_segmentation,
    write_text_atomic,
)
from napari_samscope.core.predict import label_image
from napari_samscope.core.predict.crops import crop_mask, is_unresolvable, segment_boxes
from napari_samscope.core.predict.image import to_rgb_uint8
from napari_samscope.core.progress import Job, Progress, run

__all__ = [
    "AnnotateOptions",
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


def annotate_plane(
    predictor: Any,
    image: np.ndarray,
    detections: Detections,
    *,
    contrast_limits: Any = None,
) -> list[AnnotatedObject]:
    """Segment every detected box of one 2D image with SAM.

    Boxes that the whole image, shrunk to the model input, would make too small to
    resolve (:func:`~napari_samscope.core.predict.crops.is_unresolvable`) are segmented
    on crops at the model's scale instead (:func:`~napari_samscope.core.predict.crops.segment_boxes`);
    the others on the whole image.

    Args:
        predictor: a :class:`~napari_samscope.core.predict.predictor.Predictor`.
        image: ``(H, W)`` or ``(H, W, 3|4)`` image (any dtype; normalised by ``set_image``).
        detections: boxes XYXY in pixels of ``image`` with classes and scores.
        contrast_limits: passed to ``set_image`` (the plugin passes the layer's).

    Returns:
        One :class:`AnnotatedObject` per box whose mask is not empty, in box order.
        A constant image (a blank plane) has nothing to segment and gives none.
    """
    image = as_valid_plane(np.asarray(image))
    if len(detections) == 0 or (contrast_limits is None and np.ptp(image) == 0):
        return []
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    small = is_unresolvable(boxes, image.shape, predictor.img_size)
    found: list[tuple[tuple[int, int], np.ndarray] | None] = [None] * len(boxes)
    whole = np.flatnonzero(~small)
    if whole.size:
        predictor.set_image(image, contrast_limits=contrast_limits)
        try:
            for start in range(0, whole.size, _BOX_BATCH):
                chunk = whole[start : start + _BOX_BATCH]
                result = predictor.predict(bboxes=boxes[chunk], multimask_output=False)
                for index, mask in zip(chunk, result.masks):
                    found[index] = crop_mask(mask)
        finally:
            predictor.reset_image()
    crops = np.flatnonzero(small)
    if crops.size:
        for index, item in zip(crops, segment_boxes(predictor, image, boxes[crops],
                                                     contrast_limits=contrast_limits)):
            found[index] = item
    return [
        AnnotatedObject(int(detections.class_ids[k]), float(detections.scores[k]), *item)
        for k, item in enumerate(found) if item is not None
    ]


# ----------------------------------------------------------------------------- the job


def _make_predictor(sam_model: Any, device: str) -> Any:
    from napari_samscope.core.predict.resolve import as_predictor

    return as_predictor(sam_model, device=device or "auto")


def _reserved_stems(out: Path, manifest: Manifest) -> set[str]:
    """Stems that a new source may not take: those of the manifest and, in a folder with a
    manifest, those of text files it does not list (written by hand or by someone else)."""
    used = {s.lower() for s in manifest.records}
    if manifest.existed:
        for txt in out.glob("*.txt"):
            used.add(re.sub(r"_z\d{4}$", "", txt.stem).lower())
    return used


def auto_annotate_job(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    options: AnnotateOptions | None = None,
    **params: Any,
) -> Job[AnnotateSummary]:
    """The generator behind :func:`auto_annotate` (yields ``Progress`` per image).

    ``options`` is an :class:`AnnotateOptions`; keyword arguments named like its fields
    (``sam_model=...``, ``save_tiff=True``) replace single values.
    """
    opts = AnnotateOptions.from_arguments(options, params)
    files, default_dir = list_images(data)
    out = Path(opts.output_dir).expanduser() if opts.output_dir is not None else default_dir
    out.mkdir(parents=True, exist_ok=True)
    out_resolved = out.resolve()
    manifest = Manifest.load(out)
    produced = manifest.output_paths()
    files = [p for p in files if resolved_path(p) not in produced]  # our outputs are never inputs
    inputs = {resolved_path(p) for p in files}
    classes = None if opts.classes is None else list(opts.classes)
    if instance_mode(opts.det_model) is None:
        detector = make_detector(opts.det_model, device=opts.device, conf=opts.conf,
                                 classes=classes, max_det=opts.max_det)
    else:  # the SAM model's instance decoder: made with the model, when first needed
        detector = None
    predictor = None
    coco = CocoWriter() if opts.save_coco else None
    summary = AnnotateSummary(output_dir=out, images=len(files))

    def target(name: str) -> Path:
        path = (out_resolved / name).resolve()
        if path.parent != out_resolved or path in inputs:
            raise ValueError(f"refusing to write {name!r}: it would leave {out} or replace an input image")
        return path

    stems = output_stems(files, fixed=[manifest.stem_of(p) for p in files],
                         reserved=_reserved_stems(out, manifest))
    for stem in stems:  # fail before any work if a name would replace an input image
        target(f"{stem}_labels.tif")
    for index, (path, stem) in enumerate(zip(files, stems)):
        yield Progress(f"auto-annotating {path.name}", index, len(files))
        try:
            count = plane_count(path)
            label_path = target(f"{stem}_labels.tif")
            if not opts.overwrite and count is not None:
                expected = [target(n) for n in txt_names(stem, count)] + ([label_path] if opts.save_tiff else [])
                if _already_done(manifest, stem, path, expected):
                    summary.skipped += 1
                    if coco is not None:
                        try:
                            _add_existing_to_coco(coco, path, expected[:count])
                        except (OSError, ValueError) as exc:
                            summary.failed.append((path, f"not added to the COCO file: {exc}"))
                    continue
            planes = read_planes(path, channel_axis=opts.channel_axis)
        except (OSError, ValueError) as exc:
            summary.failed.append((path, str(exc)))
            continue
        if predictor is None and detector is None:  # a model error stops the run
            detector = predictor = make_instance_detector(opts.det_model, opts.sam_model, opts.device)
        elif predictor is None:
            predictor = _make_predictor(opts.sam_model, opts.device)
        try:
            results = yield from _annotate_file(path, planes, detector, predictor, opts, index, len(files))
        except Exception as exc:  # one unusable image never stops the folder
            summary.failed.append((path, _reason(exc)))
            continue
        written = []
        label_planes = []
        for z, (objects, txt_name) in enumerate(zip(results, txt_names(stem, len(planes)))):
            shape = planes[z].shape[:2]
            lines: list[str] = []
            for obj in objects:
                lines += object_to_yolo_lines(obj.crop, obj.class_id, shape, obj.offset,
                                              split_parts=opts.split_parts)
            write_text_atomic(target(txt_name), "".join(line + "\n" for line in lines))
            written.append(target(txt_name))
            if opts.save_tiff:
                label_planes.append(paint_labels(objects, shape))
            if coco is not None:
                frame = {"frame": z} if len(planes) > 1 else {}
                image_id = coco.add_image(path.name, *shape, **frame)
                for obj in objects:
                    coco.add_object(image_id, obj.crop, obj.class_id, obj.score, shape, obj.offset)
            summary.planes += 1
            summary.objects += len(objects)
        if opts.save_tiff:
            # a stack's planes were segmented one by one: link the ids through z so that
            # one nucleus keeps one id in the label stack
            if len(label_planes) > 1:  # one id per object through the stack
                from napari_samscope.core.volume.everything import link_labels

                labels = link_labels(np.stack(label_planes))
            else:
                labels = label_planes[0]
            write_label_tiff(label_path, labels)
            written.append(label_path)
        summary.files += written
        summary.annotated += 1
        manifest.record(stem, path, written, keep=not opts.overwrite)
        manifest.save()
    yield Progress("auto-annotating", len(files), len(files))
    if coco is not None:
        summary.coco_path = coco.write(target(COCO_FILE))
        summary.files.append(summary.coco_path)
    return summary


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, ValueError | OSError) and text else f"{type(exc).__name__}: {text}"


def _already_done(manifest: Manifest, stem: str, path: Path, expected: Sequence[Path]) -> bool:
    """Outputs count as done when the manifest says they were made from this file's
    current content. A folder written before manifests existed is trusted by name once,
    and its files are then recorded."""
    if manifest.is_done(stem, path, expected):
        return True
    if not manifest.existed and manifest.stem_of(path) is None and stem not in manifest.records \
            and all(p.exists() for p in expected):
        manifest.record(stem, path, expected)
        manifest.save()
        return True
    return False


def _annotate_file(
    path: Path, planes: np.ndarray, detector: Any, predictor: Any, opts: AnnotateOptions,
    index: int, total: int,
) -> Job[list[list[AnnotatedObject]]]:
    """Detect and segment every plane of one file (all planes before anything is written)."""
    classes = None if opts.classes is None else list(opts.classes)
    results = []
    for z, plane in enumerate(planes):
        if len(planes) > 1:
            yield Progress(f"auto-annotating {path.name} plane {z + 1}/{len(planes)}", index, total)
        plane = as_valid_plane(plane)
        if opts.channel_axis is not None:  # channels last since read_planes: as RGB for both steps
            plane = to_rgb_uint8(plane, channel_axis=-1)
        if isinstance(detector, InstanceDetector):
            results.append(_instance_objects(detector, plane, opts))
            continue
        found = detector(plane).filtered(conf=opts.conf, classes=classes, max_det=opts.max_det)
        results.append(annotate_plane(predictor, plane, found))
    return results


def _instance_objects(detector: InstanceDetector, plane: np.ndarray, opts: AnnotateOptions) -> list[AnnotatedObject]:
    """The instance decoder's objects of one plane (class 0, score 1), in label order; the
    ``max_det`` largest when there are more."""
    if (opts.classes is not None and 0 not in opts.classes) or np.ptp(plane) == 0:
        return []
    found = detector.objects(plane)
    if len(found) > opts.max_det:
        areas = np.array([int(crop.sum()) for _offset, crop in found])
        keep = np.sort(np.argsort(-areas, kind="stable")[: opts.max_det])
        found = [found[i] for i in keep]
    return [AnnotatedObject(0, 1.0, offset, crop) for offset, crop in found]


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
    options: AnnotateOptions | str | os.PathLike | Callable[[np.ndarray], Any] | None = None,
    *,
    progress: Callable[[Progress], Any] | str | None = "tqdm",
    verbose: bool = True,
    **params: Any,
) -> AnnotateSummary:
    """Annotate a folder of images with a detector and SAM (see the module docstring).

    Args:
        data: a folder of images (not recursive), one image file, or a list of files.
            tif/tiff (any bit depth, multi-page stacks per plane), png, jpg/jpeg.
        options: an :class:`AnnotateOptions` with every option below; or, as in
            Ultralytics' ``auto_annotate(data, det_model)``, the detector itself.
        progress: ``"tqdm"`` (a bar on stderr, opened at the first report), None, or a
            callable receiving ``Progress``.
        verbose: print the failures and the summary to stderr at the end.
        **params: the fields of :class:`AnnotateOptions` by name, each replacing the
            value of ``options``:

            - ``det_model``: ``"blobs"`` (default, fluorescent nuclei, no weights), a
              callable ``image -> (boxes XYXY, class_ids, scores)``, Ultralytics YOLO weights,
              or ``"ais"`` / ``"apg"``: the objects and masks of the SAM model's instance
              decoder (a model that has one, e.g. ``sam_model="vit_b_lm"``; class 0, score 1);
            - ``sam_model``: registry name, alias or checkpoint path; None for the
              project's default model; or a ready ``SAM`` / ``Predictor``;
            - ``device``: ``""`` picks automatically (CUDA, MPS, CPU); or ``"cpu"``, ``"cuda:0"``...;
            - ``output_dir``: default ``<data parent>/<data name>_auto_annotate_labels``;
            - ``conf``: minimum detector score; ``classes``: keep only these class ids;
            - ``max_det``: at most this many objects per image (plane), the best-scored;
            - ``overwrite``: re-annotate images whose outputs already exist;
            - ``save_tiff``: also write ``<stem>_labels.tif`` label images;
            - ``save_coco``: also write ``annotations_coco.json`` for the whole folder;
            - ``split_parts``: one YOLO line per connected part of an object;
            - ``channel_axis``: the axis of the stored arrays that holds channels (a
              ``(H, W, 2)`` TIFF needs ``channel_axis=2``; without it, it is refused).

    Returns:
        An :class:`AnnotateSummary` (counts, failures, written files).
    """
    if options is not None and not isinstance(options, AnnotateOptions):
        if "det_model" in params:
            raise TypeError("det_model was given twice (as the second argument and by name)")
        params["det_model"], options = options, None
    job = auto_annotate_job(data, options, **params)
    summary = run(job, progress=progress)  # a tqdm bar opens at the first report only
    if verbose:
        for path, reason in summary.failed:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(summary, file=sys.stderr)
    return summary

