"""Segment everything in a folder of images: one label image and overlay per image plane.

The job behind ``samscope everything``, in the calling process or as one task per file
on a dask cluster (``napari_samscope.distributed.everything``). Outputs, in ``out``:

- ``<stem><plane>_labels.tif`` (uint16, or uint32 above 65535 objects) and
  ``<stem><plane>_overlay.png`` per image plane (``<plane>`` is ``""`` for a 2D image,
  ``_z0003`` for plane 3 of a stack); with ``records``, ``<stem><plane>_masks.json``;
- ``samscope_manifest.json``, the record of which source and which settings each
  output was made from.

Every file is written to a temporary name and renamed into place, so an interrupted run
never leaves a half-written file. A rerun with the same settings skips the images whose
outputs all exist and were made from the same source content (unless ``overwrite``);
other settings redo them. Stems come from the whole folder (:func:`plan_stems`), so
one file's names do not depend on which task or process writes it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.progress import Job, Progress

__all__ = [
    "EverythingBatchOptions",
    "EverythingBatchSummary",
    "MODES",
    "everything_files_job",
    "expected_outputs",
    "image_planes",
    "make_segmenter",
    "overlay",
    "plan_stems",
    "plane_to_rgb",
    "print_failures",
    "write_results",
]

MODES = ("amg", "ais", "apg")


@dataclass(frozen=True)
class EverythingBatchOptions:
    """How every image is segmented.

    Attributes:
        mode: ``"amg"`` (the point grid), ``"ais"`` or ``"apg"`` (the instance decoder).
        params: segment-everything parameters set by the user, ``(name, value)`` pairs
            (``amg`` only; the model's recommended values fill in the others).
        records: also write ``<stem>_masks.json`` (``amg`` only).
        overwrite: redo images whose outputs already exist.
        settings: what the outputs depend on besides the source (the model and these
            options), recorded in the manifest; a rerun skips only outputs made with
            the same settings.
        tile_shape, halo: segment each image tile by tile (``core.tiling``; None and
            None: the whole image at once; one of them: the model's default for the
            other).
    """

    mode: str = "amg"
    params: tuple[tuple[str, Any], ...] = ()
    records: bool = False
    overwrite: bool = False
    settings: str = ""
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode != "amg" and (self.params or self.records):
            raise ValueError(f"the point-grid options and records do not apply to mode {self.mode!r}")

    @property
    def tiling(self) -> dict[str, Any]:
        """``tile_shape`` / ``halo`` keywords for a tiled run (empty: untiled)."""
        if self.tile_shape is None and self.halo is None:
            return {}
        return {"tile_shape": self.tile_shape, "halo": self.halo}


@dataclass
class EverythingBatchSummary:
    """What a run did: ``done`` images segmented, ``skipped`` done before, ``objects``
    found, ``failed`` ``(path, reason)``, ``files`` written, ``lines`` one per plane,
    ``notes`` about the model (once each)."""

    done: int = 0
    skipped: int = 0
    objects: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self, out: Path) -> str:
        """The run's summary line."""
        noun = "objects" if self.objects != 1 else "object"
        skipped = f", {self.skipped} skipped (done before; --overwrite redoes them)" if self.skipped else ""
        return (f"done: {self.done} image(s), {self.objects} {noun}, {len(self.failed)} failed"
                f"{skipped}; results in {out}")

    def merge(self, other: EverythingBatchSummary) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.objects += other.objects
        self.failed += other.failed
        self.files += other.files
        self.lines += other.lines
        self.notes += [note for note in other.notes if note not in self.notes]


# ----------------------------------------------------------------------------- writing


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``(H, W, 3) uint8`` image with each label tinted and outlined in its colour."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    if labels.max() == 0:
        return rgb.copy()
    tinted = label2rgb(labels, image=rgb, alpha=alpha, bg_label=0, image_alpha=1.0)
    edges = find_boundaries(labels, mode="inner")
    colours = label2rgb(labels, bg_label=0)
    tinted[edges] = colours[edges]
    return np.clip(tinted * 255 + 0.5, 0, 255).astype(np.uint8)


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_results(out_dir: Path, stem: str, rgb: np.ndarray, labels: np.ndarray) -> list[Path]:
    """``<stem>_labels.tif`` (uint16/uint32) and ``<stem>_overlay.png`` in ``out_dir``,
    each written atomically. ``labels`` is ``(H, W)``; ``rgb`` the ``(H, W, 3) uint8``
    image shown under it."""
    from PIL import Image

    from napari_samscope.core.datasets.annotate_io import write_label_tiff

    out_dir.mkdir(parents=True, exist_ok=True)
    label_path = out_dir / f"{stem}_labels.tif"
    overlay_path = out_dir / f"{stem}_overlay.png"
    write_label_tiff(label_path, labels)
    picture = Image.fromarray(overlay(rgb, labels))
    _write_atomic(overlay_path, lambda tmp: picture.save(tmp, format="PNG"))
    return [label_path, overlay_path]


def image_planes(path: Path, channel_axis: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``(suffix, plane)`` for each plane of an image file: ``""`` for a 2D image,
    ``"_z0003"`` for plane 3 of a stack (as ``auto_annotate`` names them). Planes are
    ``(H, W)``, ``(H, W, 3|4)`` or, with ``channel_axis``, ``(H, W, C)``."""
    from napari_samscope.core.datasets.annotate_io import read_planes

    planes = read_planes(path, channel_axis=channel_axis)
    if len(planes) == 1:
        return [("", planes[0])]
    return [(f"_z{z:04d}", plane) for z, plane in enumerate(planes)]


def plane_to_rgb(plane: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """``(H, W, 3) uint8`` of one plane from :func:`image_planes` (channels last when
    ``channel_axis`` was given), by the API's own conversion rule."""
    from napari_samscope.core.datasets.annotate_io import as_valid_plane
    from napari_samscope.core.predict.image import to_rgb_uint8

    return to_rgb_uint8(as_valid_plane(plane), channel_axis=-1 if channel_axis is not None else None)


# ----------------------------------------------------------------------------- names


def plan_stems(source: str | os.PathLike, out: Path) -> list[tuple[Path, str]]:
    """``(image, output stem)`` for every image of ``source`` (a folder or one file).

    The files the manifest of ``out`` lists as outputs are never inputs; a source keeps
    the stem the manifest recorded for it; new stems avoid the recorded ones.

    Raises:
        ValueError: ``source`` is missing or holds no image; the manifest is unreadable.
    """
    from napari_samscope.core.datasets.annotate_io import list_images, output_stems
    from napari_samscope.core.datasets.manifest import Manifest, resolved_path

    files, _ = list_images(source)
    manifest = Manifest.load(out)
    produced = manifest.output_paths()
    files = [p for p in files if resolved_path(p) not in produced]
    stems = output_stems(files, fixed=[manifest.stem_of(p) for p in files],
                         reserved={s.lower() for s in manifest.records})
    return list(zip(files, stems))


# ----------------------------------------------------------------------------- segmenting


#: ``segment(rgb)``: a job (yielding the model's own progress) whose value is
#: ``(labels, records or None)``
Segmenter = Callable[[np.ndarray], Job[tuple[np.ndarray, list[dict[str, Any]] | None]]]


def make_segmenter(model: Any, options: EverythingBatchOptions) -> tuple[Segmenter, str]:
    """``(segment, note)``: ``segment(rgb)``, a job whose value is ``(labels, records or
    None)``, with ``model``
    (a :class:`~napari_samscope.core.predict.sam_api.SAM`), and a note naming the
    model's recommended values in use (``""`` when none).

    Raises:
        ValueError: a decoder mode with a model that has no instance decoder.
    """
    if options.mode != "amg":
        if not model.has_instance_decoder:
            model.segment_instances(None, mode=options.mode)  # the error that names the models with one

        def instances(rgb: np.ndarray) -> Job[tuple[np.ndarray, None]]:
            yield from ()
            return model.segment_instances(rgb, mode=options.mode, **options.tiling), None

        return instances, ""
    from napari_samscope.core.everything.generator import MaskGenerator, model_everything_defaults
    from napari_samscope.core.everything.params import EverythingParams

    given = dict(options.params)
    recommended = model_everything_defaults(model)
    generator = MaskGenerator(model, params=EverythingParams.with_defaults(given, recommended))
    applied = {k: v for k, v in recommended.items() if k not in given}
    note = ""
    if applied:
        shown = ", ".join(f"{k} {v:g}" for k, v in applied.items())
        note = f"{model.name}: using the model's recommended {shown} (set the options to change)"

    def grid(rgb: np.ndarray) -> Job[tuple[np.ndarray, list[dict[str, Any]]]]:
        if options.tiling:  # tile by tile, stitched across the halos
            from napari_samscope.core.tiling import TiledPredictor, segment_everything_tiled_iter

            tiled = TiledPredictor(model)
            tiled.set_image(rgb, rgb=True, **options.tiling)
            result = yield from segment_everything_tiled_iter(tiled, generator=generator)
        else:
            result = yield from generator.generate_iter(rgb)
        records = [
            {
                "label": i + 1, "area": r.area, "bbox": list(r.bbox),
                "predicted_iou": r.predicted_iou, "stability_score": r.stability_score,
                "point": list(r.point_coords), "crop_box": list(r.crop_box),
            }
            for i, r in enumerate(result.records)
        ]
        return result.to_label_image(), records

    return grid, note


def expected_outputs(out: Path, stem: str, path: Path, records: bool) -> list[Path] | None:
    """The files a finished image has in ``out`` (None when its planes cannot be counted
    from the header)."""
    from napari_samscope.core.datasets.annotate_io import plane_count

    count = plane_count(path)
    if count is None:
        return None
    suffixes = [""] if count == 1 else [f"_z{z:04d}" for z in range(count)]
    kinds = ("_labels.tif", "_overlay.png") + (("_masks.json",) if records else ())
    return [out / f"{stem}{s}{k}" for s in suffixes for k in kinds]


def _relabelled(job: Job[Any], where: str) -> Job[Any]:
    """``job``'s own progress reports, their message prefixed with ``where``."""
    while True:
        try:
            report = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(f"{where}: {report.message}", report.done, report.total)


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, ValueError | OSError) and text else f"{type(exc).__name__}: {text}"


def everything_files_job(
    items: Sequence[tuple[Path, str]],
    out: Path,
    model: Any,
    options: EverythingBatchOptions,
    *,
    echo: Callable[[str], Any] | None = None,
    only_planes: Sequence[int] | None = None,
) -> Job[EverythingBatchSummary]:
    """Segment every ``(image, stem)`` of ``items`` into ``out`` (yields ``Progress`` per plane).

    ``model`` is a ``SAM``, or a function without arguments that returns one, called
    when the first image needs work (the distributed workers pass their model cache, so
    a task whose images are all done loads nothing). A file that fails is recorded in
    the summary and the next one is tried; ``echo`` receives each plane's line as it is
    done.

    ``only_planes`` (with a single item): segment only these planes of the stack, without
    the skip-if-done check and without recording the file in the manifest (the caller
    records it once all its planes are done; a cluster splits a stack this way).

    Raises:
        ValueError: the model cannot segment in this mode (before any file is written),
            or ``only_planes`` with several items.
    """
    from napari_samscope.core.datasets.manifest import Manifest

    if only_planes is not None and len(items) != 1:
        raise ValueError("only_planes applies to a single image")
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(out)
    summary = EverythingBatchSummary()
    segment: Segmenter | None = None
    total = len(items)
    for index, (path, stem) in enumerate(items):
        yield Progress("segmenting images", index, total)
        expected = expected_outputs(out, stem, path, options.records)
        if only_planes is None and not options.overwrite and expected is not None \
                and manifest.is_done(stem, path, expected, settings=options.settings):
            summary.skipped += 1
            continue
        try:
            planes = image_planes(path)
            if only_planes is not None:
                if any(not 0 <= z < len(planes) for z in only_planes):
                    raise ValueError(f"planes {list(only_planes)} are not all in this {len(planes)}-plane image")
                planes = [planes[z] for z in only_planes]
        except (OSError, ValueError) as exc:
            summary.failed.append((path, _reason(exc)))
            continue
        if segment is None:  # a model error fails the run, not one file
            if callable(model) and getattr(model, "has_instance_decoder", None) is None:
                model = model()
            segment, note = make_segmenter(model, options)
            if note:
                summary.notes.append(note)
                if echo is not None:
                    echo(note)
        try:
            found, written = 0, []
            for z, (suffix, plane) in enumerate(planes):
                if len(planes) > 1 and only_planes is None:
                    yield Progress(f"segmenting images (plane {z + 1}/{len(planes)})", index, total)
                rgb = plane_to_rgb(plane)
                labels, records = yield from _relabelled(segment(rgb), f"image {index + 1}/{total}")
                files = write_results(out, stem + suffix, rgb, labels)
                if options.records and records is not None:
                    json_path = out / f"{stem}{suffix}_masks.json"
                    text = json.dumps(records, indent=1)
                    _write_atomic(json_path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
                    files.append(json_path)
                count = len(records) if records is not None else int(np.count_nonzero(np.unique(labels)))
                noun = "mask" if options.mode == "amg" else "object"
                how = "" if options.mode == "amg" else f" ({options.mode})"
                where = f" plane {suffix[2:]}" if suffix else ""
                line = (f"{path.name}{where}: {count} {noun}{'' if count == 1 else 's'}{how} -> "
                        f"{', '.join(str(p) for p in files)}")
                summary.lines.append(line)
                if echo is not None:
                    echo(line)
                found += count
                written += files
        except Exception as exc:  # one unusable image never stops the folder
            summary.failed.append((path, _reason(exc)))
            continue
        if only_planes is None:
            manifest.record(stem, path, written, keep=False, settings=options.settings)
            manifest.save()
            summary.done += 1
        summary.objects += found
        summary.files += written
    yield Progress("segmenting images", total, total)
    return summary


def print_failures(summary: EverythingBatchSummary) -> None:
    """``skipped <path>: <reason>`` on stderr for every file that failed."""
    for path, reason in summary.failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
