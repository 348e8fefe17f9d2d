"""Image folders in, safe output names out: the file side of ``auto_annotate``.

- :func:`list_images`: the images of a folder (non-recursive), a file or a list, and
  the default output folder ``<data parent>/<data name>_auto_annotate_labels``;
- :func:`read_planes`: tif/tiff (any bit depth; every axis other than Y, X and RGB
  samples is a plane axis, flattened in file order), png, jpg as ``(P, H, W[, C])``;
- :func:`safe_stem` / :func:`output_stems`: file-name stems that cannot leave their
  folder, unique per input;
- :func:`write_label_tiff`: label images as uint16 (uint32 when needed) TIFFs,
  written atomically.
"""

from __future__ import annotations

import errno
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "as_valid_plane",
    "list_images",
    "output_stems",
    "plane_count",
    "read_planes",
    "safe_stem",
    "txt_names",
    "write_label_tiff",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


def safe_stem(name: str, max_bytes: int = 180) -> str:
    """A file-name stem that cannot leave its folder.

    Path separators, control characters and characters Windows forbids become ``_``;
    leading dots and spaces and trailing dots/spaces are removed; reserved Windows
    device names get a leading ``_``; the UTF-8 length is capped at ``max_bytes``.
    Unicode letters and inner spaces are kept. An empty result becomes ``"image"``.
    """
    stem = unicodedata.normalize("NFC", str(name))
    stem = re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|]+', "_", stem)
    stem = stem.strip(" .")
    while len(stem.encode("utf-8")) > max_bytes:
        stem = stem[:-1]
    stem = stem.rstrip(" .")
    if not stem:
        return "image"
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    return stem


def list_images(data: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[Path], Path]:
    """The image files of ``data`` (a folder, a file or a list) and the default output folder.

    A folder is listed non-recursively (tif/tiff/png/jpg/jpeg, hidden files ignored).

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: a folder without images, or an empty list.
    """
    if isinstance(data, str | os.PathLike):
        root = Path(data).expanduser()
        if root.is_symlink() and not root.exists():
            _check_link(root)
        if not root.exists():
            raise FileNotFoundError(f"{str(root)!r} does not exist; give a folder of images or an image file")
        if root.is_dir():
            # broken links and link loops are listed so that they are reported, not skipped silently
            files = sorted(
                p for p in root.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                and (p.is_file() or (p.is_symlink() and not p.exists()))
            )
            if not files:
                raise ValueError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {str(root)!r}"
                )
            name = root.resolve().name or "data"
            return files, root.resolve().parent / f"{name}_auto_annotate_labels"
        return [root], root.resolve().parent / f"{root.stem}_auto_annotate_labels"
    files = [Path(p).expanduser() for p in data]
    if not files:
        raise ValueError("data is an empty list; give a folder, an image file or a list of image files")
    parent = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    return files, parent.parent / f"{parent.name or 'data'}_auto_annotate_labels"


def output_stems(
    files: Sequence[Path],
    fixed: Sequence[str | None] | None = None,
    reserved: Iterable[str] = (),
) -> list[str]:
    """A unique, safe output stem per input file (case-insensitive uniqueness).

    Args:
        files: the inputs, in processing order.
        fixed: per file, a stem it already has (from the output manifest) or None; a
            fixed stem is kept, and the other files avoid it.
        reserved: stems no new file may take (lower case).
    """
    fixed = list(fixed) if fixed is not None else [None] * len(files)
    used = {s.lower() for s in reserved} | {s.lower() for s in fixed if s is not None}
    names = []
    for path, known in zip(files, fixed):
        if known is not None:
            names.append(known)
            continue
        base = safe_stem(path.stem)
        candidate = base
        if candidate.lower() in used:
            candidate = safe_stem(f"{base}_{path.suffix.lstrip('.').lower()}")
        counter = 2
        while candidate.lower() in used:
            candidate = f"{base}_{counter}"
            counter += 1
        used.add(candidate.lower())
        names.append(candidate)
    return names


def _planes_from_array(data: np.ndarray, axes: str | None) -> np.ndarray:
    """``(P, H, W)`` or ``(P, H, W, S)``: every axis except Y, X and samples (S) is a plane axis."""
    if axes and "Y" in axes and "X" in axes and len(axes) == data.ndim:
        spatial = [axes.index("Y"), axes.index("X")]
        if "S" in axes and data.shape[axes.index("S")] in (3, 4):
            spatial.append(axes.index("S"))
        others = [i for i in range(data.ndim) if i not in spatial]
        data = np.transpose(data, others + spatial)
        return data.reshape(-1, *data.shape[len(others):])
    if data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4)):
        return data[None]
    if data.ndim >= 3 and data.shape[-1] in (3, 4):
        return data.reshape(-1, *data.shape[-3:])
    return data.reshape(-1, *data.shape[-2:])


def as_valid_plane(plane: np.ndarray) -> np.ndarray:
    """A plane every step can use: a boolean image (a mask saved as an image) becomes
    uint8 with False -> 0 and True -> 255, its 0/1 values at full contrast.

    Raises:
        ValueError: the values are not real numbers (complex, text, objects).
    """
    plane = np.asarray(plane)
    if plane.dtype == np.bool_:
        return plane.astype(np.uint8) * np.uint8(255)
    if plane.dtype.kind not in "uif":
        raise ValueError(f"the image holds {plane.dtype} values, not real numbers")
    return plane


def _check_link(path: Path) -> None:
    """Explain a symbolic link that leads nowhere (a loop or a missing target)."""
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError(f"{str(path)!r} is a symbolic link loop (it leads back to itself)") from None
        raise ValueError(f"{str(path)!r} is a broken symbolic link: {os.readlink(path)!r} does not exist")


def _with_channels(data: np.ndarray, channel_axis: int) -> np.ndarray:
    """``(P, H, W, C)`` from an array whose channels are on ``channel_axis``."""
    if not -data.ndim <= channel_axis < data.ndim:
        raise ValueError(f"channel axis {channel_axis} does not exist in an image of shape {data.shape}")
    data = np.moveaxis(data, channel_axis, -1)
    if data.ndim < 3:
        raise ValueError(f"an image of shape {data.shape} has no room for a channel axis")
    return data.reshape(-1, *data.shape[-3:])


def _refuse_ambiguous(planes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The reading rule the API applies to arrays: a last axis of 2 (or of 5+ with tiny
    planes) is not a picture's width; say to name the channel axis instead of guessing."""
    if planes.ndim == 3 and len(shape) >= 3 and planes.shape[-1] <= 4:
        raise ValueError(
            f"cannot tell the axes of an image of shape {tuple(shape)}: a last axis of "
            f"{planes.shape[-1]} looks like channels, not a width; give the channel axis "
            f"(--channel-axis {len(shape) - 1} / channel_axis={len(shape) - 1}) for a multichannel image"
        )
    return planes


def read_planes(path: Path, channel_axis: int | None = None) -> np.ndarray:
    """Read an image file as ``(P, H, W)`` or ``(P, H, W, 3|4)`` planes (P=1 for 2D images).

    Args:
        path: the image file.
        channel_axis: the axis of the stored array that holds channels; the planes are
            then ``(P, H, W, C)``. Without it, only RGB(A) samples are channels, and a
            file whose last axis is 4 pixels or fewer (an ``(H, W, 2)`` image) is refused
            with a message that asks for the channel axis, as the API refuses that array.

    Raises:
        ValueError: the file is not a readable image, or its axes are ambiguous.
    """
    _check_link(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                data, axes = np.asarray(series.asarray()), series.axes
        except Exception as exc:  # tifffile raises many types for broken files
            raise ValueError(f"could not read {path.name!r} as a TIFF: {exc}") from None
        if channel_axis is not None:
            return _with_channels(data, channel_axis)
        return _refuse_ambiguous(_planes_from_array(data, axes), data.shape)
    from napari_samscope.core.predict.image import load_image

    data = load_image(path)
    if channel_axis is not None:
        return _with_channels(data, channel_axis)
    return _refuse_ambiguous(_planes_from_array(data, None), data.shape)


def plane_count(path: Path) -> int | None:
    """Planes in the file from its header only (None when the header cannot be read)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = series.shape, series.axes
            return int(_planes_from_array(np.empty(shape, dtype=np.uint8), axes).shape[0])
        return 1
    except Exception:
        return None


def txt_names(stem: str, planes: int) -> list[str]:
    """``<stem>.txt`` for a 2D image, ``<stem>_z0000.txt``... for the planes of a stack."""
    if planes == 1:
        return [f"{stem}.txt"]
    return [f"{stem}_z{z:04d}.txt" for z in range(planes)]


def write_label_tiff(path: Path, labels: np.ndarray) -> None:
    """Write a label image as an (atomically renamed) zlib TIFF, uint16 when it fits, else uint32."""
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tifffile.imwrite(tmp, labels.astype(dtype), photometric="minisblack", compression="zlib")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
