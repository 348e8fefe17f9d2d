"""Masks <-> YOLO segmentation text (COCO JSON: :mod:`~napari_samscope.core.datasets.coco_format`).

**YOLO segmentation format.** One text file per image, one line per object::

    <class> x1 y1 x2 y2 ... xn yn

with ``x`` and ``y`` normalised to [0, 1] by the image width and height. The
coordinates are continuous image coordinates in which pixel ``(row, col)`` covers
``[col, col + 1) x [row, row + 1)``, so its centre is ``(col + 0.5, row + 0.5)``.

**Polygons.** Every boundary of a mask is traced at the 0.5 iso-level between pixel
centres (``skimage.measure.find_contours``): outer boundaries *and* the boundaries
of holes. A YOLO line holds a single polygon, so the rings of one object are joined
into one polygon by zero-width *bridges*: from the closest vertex of the first (outer)
ring the path walks to another ring, around it, and back along the same segment. Filled
with the even-odd rule (``skimage.draw.polygon``, OpenCV's ``fillPoly``, most
rasterisers) a bridge covers no area, so holes stay holes and the separate parts of
a multi-part object all come back -- nothing is silently dropped. With
``split_parts=True`` each connected part gets its own line instead (holes are still
bridged into their part); parsers then see one instance per part.

:func:`parse_yolo_segmentation` reads such a file back into masks (even-odd fill),
which is how the round trip is tested.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as fill_polygon
from skimage.measure import approximate_polygon, find_contours

__all__ = [
    "mask_rings",
    "mask_to_polygon",
    "masks_to_yolo_lines",
    "object_to_yolo_lines",
    "write_yolo_segmentation",
    "parse_yolo_lines",
    "parse_yolo_segmentation",
    "yolo_text_to_masks",
    "polygon_to_mask",
    "write_text_atomic",
]


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be a 2D (H, W) array, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def mask_rings(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """Every boundary ring of a 2D mask, the outer ring of the largest part first.

    Args:
        mask: ``(H, W)`` bool (anything non-zero is foreground).
        tolerance: Douglas-Peucker tolerance in pixels used to drop nearly collinear
            vertices; 0 keeps every vertex of the traced contour except the exactly
            collinear ones (which changes nothing).

    Returns:
        A list of closed rings, each ``(K, 2)`` float64 ``(row, col)`` in pixel-index
        coordinates (pixel centres at integers), first vertex not repeated at the end.
        Holes are rings too; filling all rings with the even-odd rule gives the mask.
    """
    mask = _check_mask(mask)
    if not mask.any():
        return []
    padded = np.pad(mask, 1).astype(np.float32)
    # fully_connected="high": diagonal foreground neighbours belong to one contour, as
    # with 8-connected parts.
    contours = find_contours(padded, 0.5, fully_connected="high")
    rings = []
    for contour in contours:
        ring = _drop_collinear(_open_ring(contour - 1.0))  # undo the padding
        if tolerance > 0 and len(ring) > 4:
            simplified = _open_ring(approximate_polygon(ring, tolerance))
            # tiny objects (a pixel's diamond) must not collapse to a segment
            ring = simplified if len(simplified) >= 3 else ring
        if len(ring) >= 3:
            rings.append(ring)
    rings.sort(key=lambda r: -abs(_area(r)))  # largest outer ring first
    return rings


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove repeated vertices and vertices on the straight line through their neighbours."""
    if len(ring) < 4:
        return ring
    keep = np.any(ring != np.roll(ring, 1, axis=0), axis=1)
    ring = ring[keep]
    if len(ring) < 4:
        return ring
    before, after = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    turning = np.abs(cross) > 1e-9
    return ring[turning] if turning.sum() >= 3 else ring


def _open_ring(ring: np.ndarray) -> np.ndarray:
    return ring[:-1] if len(ring) > 1 and np.allclose(ring[0], ring[-1]) else ring


def _area(ring: np.ndarray) -> float:
    y, x = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def bridge_rings(rings: Sequence[np.ndarray]) -> np.ndarray:
    """Join closed rings into one polygon with zero-width bridges.

    Every other ring is attached to the first ring at their closest pair of vertices:
    the path leaves the first ring there, goes around the other ring back to its
    start, and returns along the same segment. A bridge is traversed once each way,
    so it adds nothing under even-odd filling, even where it crosses another ring:
    filling the result gives the XOR of the rings' interiors.

    Args:
        rings: closed rings ``(K, 2)``, first vertex not repeated.

    Returns:
        ``(M, 2)`` vertices of the bridged polygon (same coordinates as the input).
    """
    if not rings:
        return np.zeros((0, 2))
    from scipy.spatial import cKDTree

    base = np.asarray(rings[0], dtype=np.float64)
    if len(rings) == 1:
        return base
    tree = cKDTree(base)
    loops: dict[int, list[np.ndarray]] = {}
    for ring in rings[1:]:
        ring = np.asarray(ring, dtype=np.float64)
        distance, nearest = tree.query(ring)
        j = int(np.argmin(distance))
        i = int(nearest[j])
        loop = np.concatenate([ring[j:], ring[: j + 1], base[i : i + 1]])  # around, then back
        loops.setdefault(i, []).append(loop)
    pieces = []
    start = 0
    for i in sorted(loops):
        pieces.append(base[start : i + 1])
        pieces.extend(loops[i])
        start = i + 1
    pieces.append(base[start:])
    return np.concatenate(pieces)


def mask_to_polygon(mask: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """The mask as one bridged polygon, ``(M, 2)`` ``(row, col)`` pixel-index coordinates."""
    return bridge_rings(mask_rings(mask, tolerance))


def _part_polygons(mask: np.ndarray, tolerance: float, split_parts: bool) -> list[np.ndarray]:
    if not split_parts:
        poly = mask_to_polygon(mask, tolerance)
        return [poly] if len(poly) else []
    parts, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    polys = []
    for index in range(1, n + 1):
        poly = mask_to_polygon(parts == index, tolerance)
        if len(poly):
            polys.append(poly)
    return polys


def object_to_yolo_lines(
    mask: np.ndarray,
    class_id: int,
    image_shape: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
    tolerance: float = 0.0,
    split_parts: bool = False,
    decimals: int = 6,
) -> list[str]:
    """YOLO segmentation line(s) of one object.

    Args:
        mask: ``(h, w)`` bool, the object's mask, either the whole image or a crop.
        class_id: the object's class.
        image_shape: ``(H, W)`` of the image; default ``mask.shape`` (mask = whole image).
        offset: ``(row, col)`` of the crop's top-left pixel in the image.
        tolerance, split_parts, decimals: see :func:`masks_to_yolo_lines`.

    Returns:
        One line (or one per part with ``split_parts``); none for an empty mask.
    """
    mask = _check_mask(mask)
    h, w = image_shape if image_shape is not None else mask.shape
    lines = []
    for poly in _part_polygons(mask, tolerance, split_parts):
        x = np.clip((poly[:, 1] + offset[1] + 0.5) / w, 0.0, 1.0)
        y = np.clip((poly[:, 0] + offset[0] + 0.5) / h, 0.0, 1.0)
        coords = np.stack([x, y], axis=1).ravel()
        lines.append(f"{int(class_id)} " + " ".join(f"{v:.{decimals}f}" for v in coords))
    return lines


def masks_to_yolo_lines(
    masks: np.ndarray | Sequence[np.ndarray],
    class_ids: Sequence[int] | np.ndarray | None = None,
    tolerance: float = 0.0,
    split_parts: bool = False,
    decimals: int = 6,
) -> list[str]:
    """YOLO segmentation lines for a set of masks of one image.

    Args:
        masks: ``(N, H, W)`` bool masks (or a sequence of ``(H, W)`` masks).
        class_ids: ``(N,)`` integer class per mask; default all 0.
        tolerance: polygon simplification tolerance in pixels (see :func:`mask_rings`).
        split_parts: one line per connected part instead of one bridged line per mask.
        decimals: digits written per coordinate.

    Returns:
        One string per object (no trailing newline); empty masks produce no line.
    """
    masks = [_check_mask(m) for m in masks]
    if class_ids is None:
        class_ids = [0] * len(masks)
    if len(class_ids) != len(masks):
        raise ValueError(f"got {len(masks)} masks but {len(class_ids)} class ids; give one class per mask")
    lines = []
    for mask, cls in zip(masks, class_ids):
        lines += object_to_yolo_lines(mask, int(cls), tolerance=tolerance, split_parts=split_parts,
                                      decimals=decimals)
    return lines


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    An interrupted run never leaves a half-written file under the final name (the
    re-run logic treats an existing file as done).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_yolo_segmentation(
    path: str | os.PathLike,
    masks: np.ndarray | Sequence[np.ndarray],
    class_ids: Sequence[int] | np.ndarray | None = None,
    tolerance: float = 0.0,
    split_parts: bool = False,
) -> int:
    """Write one image's masks as a YOLO segmentation ``.txt`` (atomically).

    Returns:
        The number of lines written (0 writes an empty file: "annotated, no objects").
    """
    lines = masks_to_yolo_lines(masks, class_ids, tolerance=tolerance, split_parts=split_parts)
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def parse_yolo_lines(text: str) -> list[tuple[int, np.ndarray]]:
    """Parse YOLO segmentation text into ``(class_id, (K, 2) normalised xy)`` pairs.

    Raises:
        ValueError: a line that is not ``class x y x y ...`` with at least 3 points.
    """
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = int(fields[0])
            values = np.array([float(v) for v in fields[1:]], dtype=np.float64)
        except ValueError:
            raise ValueError(f"line {number} is not 'class x1 y1 x2 y2 ...': {line[:60]!r}") from None
        if values.size % 2 or values.size < 6:
            raise ValueError(
                f"line {number} needs an even number of coordinates, at least 3 points; got {values.size}"
            )
        objects.append((cls, values.reshape(-1, 2)))
    return objects


def polygon_to_mask(xy: np.ndarray, shape: tuple[int, int], normalised: bool = True) -> np.ndarray:
    """Rasterise a polygon with the even-odd rule.

    Args:
        xy: ``(K, 2)`` vertices as ``(x, y)``, normalised to [0, 1] when ``normalised``
            (else continuous pixel coordinates, pixel centres at ``+0.5``).
        shape: ``(H, W)`` of the output.

    Returns:
        ``(H, W)`` bool mask of the pixels whose centres lie inside.
    """
    h, w = shape
    xy = np.asarray(xy, dtype=np.float64)
    if normalised:
        xy = xy * np.array([w, h], dtype=np.float64)
    rows, cols = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(h, w))
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    return mask


def yolo_text_to_masks(text: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """YOLO segmentation text back into masks (even-odd fill of each line's polygon).

    Args:
        text: the content of a YOLO segmentation file.
        shape: ``(H, W)`` of the image the text annotates.

    Returns:
        ``masks`` ``(N, H, W)`` bool and ``class_ids`` ``(N,)`` int64, one per line.
    """
    objects = parse_yolo_lines(text)
    masks = np.zeros((len(objects), *shape), dtype=bool)
    for k, (_, xy) in enumerate(objects):
        masks[k] = polygon_to_mask(xy, shape)
    classes = np.array([cls for cls, _ in objects], dtype=np.int64)
    return masks, classes


def parse_yolo_segmentation(
    path: str | os.PathLike, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read a YOLO segmentation ``.txt`` file back into masks.

    Args:
        path: the ``.txt`` file.
        shape: ``(H, W)`` of the image the file annotates.

    Returns:
        ``masks`` ``(N, H, W)`` bool and ``class_ids`` ``(N,)`` int64, one per line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO label file {path} does not exist")
    return yolo_text_to_masks(path.read_text(encoding="utf-8"), shape)
