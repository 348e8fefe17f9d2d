"""napari prompt layers -> SAM prompts, plane by plane.

- **Points** ("SAM points"): the polarity of each point is its ``label`` feature
  (``"positive"`` / ``"negative"``; ``1``/``0`` and ``True``/``False`` are accepted
  in layers the user made). Colours only *show* the feature; they are never read.
- **Shapes** ("SAM boxes"): a rectangle is a box prompt (normalised, whatever the
  drawing direction); a polygon or an ellipse is its bounding box plus a mask prompt
  (the shape filled on the plane). Lines and paths are not prompts.

How prompts form objects, on each plane:

1. every box (rectangle, polygon or ellipse) is one object;
2. a point belongs to the first box that contains it;
3. the points that no box contains form one more object if at least one of them is
   positive (otherwise they have nothing to refine and are ignored).

A plane whose only prompt is one negative point is a *stop plane* for propagation.

Coordinates go through :mod:`napari_samscope._napari.coords` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from napari_samscope._napari.coords import (
    PlaneGeometry,
    PlaneKey,
    layer_data_to_world,
    plane_key_of,
    rowcol_to_xy,
    world_to_layer_data,
)

__all__ = [
    "Polarity",
    "ObjectPrompt",
    "PlanePrompts",
    "PromptSet",
    "LABEL_FEATURE",
    "POINT_COLOURS",
    "collect_prompts",
    "point_polarities",
    "mask_to_prompt_logits",
]

#: Name of the Points feature that holds each point's polarity.
LABEL_FEATURE = "label"


class Polarity(str, Enum):
    """Polarity of a point prompt, stored in the Points ``label`` feature."""

    POSITIVE = "positive"
    NEGATIVE = "negative"

    def flipped(self) -> Polarity:
        return Polarity.NEGATIVE if self is Polarity.POSITIVE else Polarity.POSITIVE


#: How the plugin's Points layer draws each polarity (a colour cycle keyed by the feature).
POINT_COLOURS = {Polarity.POSITIVE.value: "lime", Polarity.NEGATIVE.value: "red"}

_POSITIVE_WORDS = {"positive", "pos", "foreground", "fg", "1", "true", "+"}
_NEGATIVE_WORDS = {"negative", "neg", "background", "bg", "0", "false", "-"}


@dataclass
class ObjectPrompt:
    """The prompts of one object on one plane, in SAM coordinates.

    Attributes:
        points: ``(P, 2)`` float32 ``(x, y)`` pixels of the plane (``P`` may be 0).
        labels: ``(P,)`` int32, 1 = foreground, 0 = background.
        box: ``(4,)`` float32 ``XYXY`` or ``None``.
        mask: ``(H, W)`` bool mask prompt at the plane's size, or ``None``.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class PlanePrompts:
    """All prompts on one plane (SAM coordinates)."""

    points: np.ndarray  # (P, 2) float32 x, y
    labels: np.ndarray  # (P,) int32
    boxes: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)

    @property
    def is_stop(self) -> bool:
        """True when the plane's only prompt is a single negative point."""
        return not self.boxes and len(self.labels) == 1 and int(self.labels[0]) == 0

    def objects(self) -> list[ObjectPrompt]:
        """Group the plane's prompts into objects (see the module docstring)."""
        assigned = np.full(len(self.points), -1)
        for b, (box, _mask) in enumerate(self.boxes):
            x, y = self.points[:, 0], self.points[:, 1]
            inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
            assigned[(assigned < 0) & inside] = b
        objects = []
        for b, (box, mask) in enumerate(self.boxes):
            sel = assigned == b
            objects.append(ObjectPrompt(self.points[sel], self.labels[sel], box, mask))
        free = assigned < 0
        if np.any(self.labels[free] == 1):
            objects.append(ObjectPrompt(self.points[free], self.labels[free]))
        return objects


@dataclass
class PromptSet:
    """Prompts by plane, plus what was skipped and why (for a notification)."""

    planes: dict[PlaneKey, PlanePrompts]
    skipped: list[str] = field(default_factory=list)

    def on(self, key: PlaneKey) -> PlanePrompts | None:
        return self.planes.get(key)

    @property
    def prompted_planes(self) -> list[PlaneKey]:
        """Planes that hold at least one object (stop planes excluded), sorted."""
        return sorted(k for k, p in self.planes.items() if p.objects())

    @property
    def stop_planes(self) -> list[PlaneKey]:
        return sorted(k for k, p in self.planes.items() if p.is_stop)


def point_polarities(points_layer: Any) -> np.ndarray:
    """``(P,)`` int32 labels (1 positive, 0 negative) from the ``label`` feature.

    A layer without the feature counts all its points as positive.

    Raises:
        ValueError: for a value that is not a recognised polarity.
    """
    n = len(points_layer.data)
    features = getattr(points_layer, "features", None)
    if features is None or LABEL_FEATURE not in features or n == 0:
        return np.ones(n, dtype=np.int32)
    out = np.empty(n, dtype=np.int32)
    for i, value in enumerate(features[LABEL_FEATURE].to_numpy()):
        word = str(int(value) if isinstance(value, (bool, np.bool_)) else value).strip().lower()
        if word in _POSITIVE_WORDS:
            out[i] = 1
        elif word in _NEGATIVE_WORDS:
            out[i] = 0
        else:
            raise ValueError(
                f"Point {i} of layer '{points_layer.name}' has label {value!r}; "
                "use 'positive' or 'negative' (press T to toggle)."
            )
    return out


def _to_image_data(
    prompt_layer: Any, data: np.ndarray, image_layer: Any, dims_point: Sequence[float]
) -> np.ndarray:
    """Prompt-layer data coordinates -> image data coordinates ``(N, image.ndim)``."""
    if prompt_layer.ndim > image_layer.ndim:
        raise ValueError(
            f"The prompt layer '{prompt_layer.name}' has {prompt_layer.ndim} dimensions but the "
            f"image '{image_layer.name}' has {image_layer.ndim}; use prompt layers with the "
            "image's dimensions (the plugin creates them when you pick the image)."
        )
    world_tail = layer_data_to_world(prompt_layer, data)
    world = np.tile(np.asarray(dims_point, dtype=float), (len(world_tail), 1))
    if world.shape[1] < prompt_layer.ndim:
        world = np.zeros((len(world_tail), prompt_layer.ndim))
    world[:, world.shape[1] - prompt_layer.ndim :] = world_tail
    return world_to_layer_data(image_layer, world)


def _inside_plane(geometry: PlaneGeometry, coords: np.ndarray) -> np.ndarray:
    h, w = geometry.plane_shape
    r, c = coords[:, geometry.row_axis], coords[:, geometry.col_axis]
    return (r >= -0.5) & (r <= h - 0.5) & (c >= -0.5) & (c <= w - 0.5)


def _ellipse_outline(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """Points on the ellipse inscribed in a (possibly rotated) box of 4 cyclic corners."""
    centre = corners.mean(axis=0)
    half_1 = (corners[1] - corners[0]) / 2.0
    half_2 = (corners[2] - corners[1]) / 2.0
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * half_1 + np.sin(t) * half_2


def _fill_polygon(geometry: PlaneGeometry, coords: np.ndarray) -> np.ndarray:
    from skimage.draw import polygon

    mask = np.zeros(geometry.plane_shape, dtype=bool)
    rr, cc = polygon(coords[:, geometry.row_axis], coords[:, geometry.col_axis], mask.shape)
    mask[rr, cc] = True
    return mask


def _plane_of_shape(geometry: PlaneGeometry, coords: np.ndarray) -> PlaneKey | None:
    if not geometry.key_axes:
        return ()
    return plane_key_of(geometry, coords.mean(axis=0, keepdims=True))[0]


def collect_prompts(
    image_layer: Any,
    geometry: PlaneGeometry,
    dims_point: Sequence[float],
    points_layer: Any | None = None,
    shapes_layer: Any | None = None,
) -> PromptSet:
    """Read the prompt layers and express them per plane of ``image_layer``.

    Args:
        image_layer: the napari Image layer being segmented.
        geometry: its plane geometry (:func:`coords.current_geometry`).
        dims_point: ``viewer.dims.point``; fills world axes that a prompt layer with
            fewer dimensions than the image does not have (its prompts then apply to
            the current plane).
        points_layer, shapes_layer: the prompt layers (either may be ``None``).

    Returns:
        A :class:`PromptSet`; prompts outside the image are listed in ``skipped``.

    Raises:
        ValueError: a prompt layer with more dimensions than the image, or an
            unreadable point polarity.
    """
    planes: dict[PlaneKey, PlanePrompts] = {}
    skipped: list[str] = []

    def plane(key: PlaneKey) -> PlanePrompts:
        if key not in planes:
            planes[key] = PlanePrompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int32))
        return planes[key]

    if points_layer is not None and len(points_layer.data):
        labels = point_polarities(points_layer)
        coords = _to_image_data(points_layer, np.asarray(points_layer.data), image_layer, dims_point)
        keys = plane_key_of(geometry, coords)
        inside = _inside_plane(geometry, coords)
        xy = rowcol_to_xy(geometry, coords)
        outside = 0
        for i, key in enumerate(keys):
            if key is None or not inside[i]:
                outside += 1
                continue
            p = plane(key)
            p.points = np.concatenate([p.points, xy[i : i + 1]])
            p.labels = np.concatenate([p.labels, labels[i : i + 1]])
        if outside:
            skipped.append(f"{outside} point(s) outside image '{image_layer.name}' were ignored")

    if shapes_layer is not None and len(shapes_layer.data):
        h, w = geometry.plane_shape
        for data, kind in zip(shapes_layer.data, shapes_layer.shape_type):
            if kind not in ("rectangle", "polygon", "ellipse"):
                skipped.append(f"a {kind} shape is not a prompt and was ignored")
                continue
            vertices = np.asarray(data, dtype=float)
            if kind == "ellipse":
                vertices = _ellipse_outline(vertices)
            coords = _to_image_data(shapes_layer, vertices, image_layer, dims_point)
            key = _plane_of_shape(geometry, coords)
            xy = rowcol_to_xy(geometry, coords)
            low, high = xy.min(axis=0), xy.max(axis=0)
            if key is None or high[0] < 0 or high[1] < 0 or low[0] > w - 1 or low[1] > h - 1:
                skipped.append(f"a {kind} outside image '{image_layer.name}' was ignored")
                continue
            (x0, y0), (x1, y1) = np.clip(low, 0, [w - 1, h - 1]), np.clip(high, 0, [w - 1, h - 1])
            box = np.array([x0, y0, x1, y1], dtype=np.float32)
            mask = None if kind == "rectangle" else _fill_polygon(geometry, coords)
            plane(key).boxes.append((box, mask))
    return PromptSet(planes, skipped)


def mask_to_prompt_logits(
    mask: np.ndarray, side: int, value: float = 8.0, scale: float | None = None
) -> np.ndarray:
    """A ``(H, W)`` bool mask -> a ``(side, side)`` float32 SAM mask prompt.

    Follows SAM's geometry: the longest side is scaled to ``side`` (new size rounded
    as ``int(x + 0.5)``), or the mask by ``scale`` (prompt pixels per image pixel, for an
    image placed at another input scale), the rest is zero padded at the bottom and
    right. Inside is ``+value``, outside and padding ``-value`` (confident logits).
    """
    from skimage.transform import resize

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a mask prompt must be a non-empty (H, W) array, got shape {mask.shape}.")
    h, w = mask.shape
    scale = side / max(h, w) if scale is None else float(scale)
    nh, nw = min(side, int(h * scale + 0.5)), min(side, int(w * scale + 0.5))
    small = resize(mask.astype(np.float32), (nh, nw), order=1, anti_aliasing=True) >= 0.5
    out = np.full((side, side), -value, dtype=np.float32)
    out[:nh, :nw][small] = value
    return out
