"""The layers the plugin creates, and what it does to its prompt layers.

- "SAM points": a Points layer whose ``label`` feature holds each point's polarity,
  drawn through a colour cycle keyed by that feature (green positive, red negative).
- "SAM boxes": a Shapes layer for rectangles, polygons and ellipses.
- "SAM preview": a Labels layer the plugin overwrites freely, every object drawn in one
  colour (``PREVIEW_COLOUR``) that no committed object gets, so that a preview is never
  mistaken for a committed object.
- "SAM labels": the default commit target.

Each is created with the image layer's transforms (scale, translate, rotate, shear,
affine on the spatial axes), so it lies exactly over the image. The image layer's
own transforms are only read, never changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_samscope._napari.coords import PlaneGeometry
from napari_samscope._napari.prompts import (
    LABEL_FEATURE,
    POINT_COLOURS,
    Polarity,
    point_polarities,
)

__all__ = [
    "POINTS_NAME",
    "BOXES_NAME",
    "PREVIEW_NAME",
    "LABELS_NAME",
    "PREVIEW_COLOUR",
    "preview_colormap",
    "transform_kwargs",
    "make_points_layer",
    "make_shapes_layer",
    "make_labels_layer",
    "ensure_plugin_labels",
    "clear_prompts",
    "toggle_polarity",
    "next_polarity",
]

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
LABELS_NAME = "SAM labels"
#: The preview's one colour (committed labels use napari's many-coloured label colormap).
PREVIEW_COLOUR = "magenta"


def preview_colormap() -> Any:
    """A label colormap drawing every non-zero id in ``PREVIEW_COLOUR`` (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: PREVIEW_COLOUR, 0: "transparent"})


def transform_kwargs(image: Any, geometry: PlaneGeometry) -> dict[str, Any]:
    """Keyword arguments that give a new layer ``image``'s transforms on the spatial axes.

    With a channel axis the rotation, shear and affine (which may mix that axis in)
    are dropped and only scale and translate are kept.
    """
    axes = list(geometry.spatial_axes)
    kwargs: dict[str, Any] = {
        "scale": [float(image.scale[a]) for a in axes],
        "translate": [float(image.translate[a]) for a in axes],
    }
    if geometry.channel_axis is None:
        kwargs["rotate"] = np.asarray(image.rotate)
        kwargs["shear"] = np.asarray(image.shear)
        kwargs["affine"] = np.asarray(image.affine.affine_matrix)
    return kwargs


def _empty_features(n: int = 0) -> Any:
    import pandas as pd

    values = pd.Categorical([Polarity.POSITIVE.value] * n, categories=list(POINT_COLOURS))
    return pd.DataFrame({LABEL_FEATURE: values})


def make_points_layer(image: Any, geometry: PlaneGeometry, name: str = POINTS_NAME) -> Any:
    """A new, empty "SAM points" layer over ``image`` (not yet added to a viewer)."""
    from napari.layers import Points

    h, w = geometry.plane_shape
    layer = Points(
        np.zeros((0, len(geometry.spatial_axes))),
        ndim=len(geometry.spatial_axes),
        name=name,
        features=_empty_features(),
        feature_defaults={LABEL_FEATURE: Polarity.POSITIVE.value},
        face_color=LABEL_FEATURE,
        face_color_cycle=dict(POINT_COLOURS),
        border_color="white",
        size=max(3.0, max(h, w) / 60.0) * float(np.min(np.abs(image.scale[-2:]))),
        **transform_kwargs(image, geometry),
    )
    return layer


def make_shapes_layer(image: Any, geometry: PlaneGeometry, name: str = BOXES_NAME) -> Any:
    """A new, empty "SAM boxes" layer over ``image``."""
    from napari.layers import Shapes

    h, w = geometry.plane_shape
    return Shapes(
        ndim=len(geometry.spatial_axes),
        name=name,
        edge_color="yellow",
        face_color=[1.0, 1.0, 0.0, 0.05],
        edge_width=max(1.0, max(h, w) / 300.0) * float(np.min(np.abs(image.scale[-2:]))),
        **transform_kwargs(image, geometry),
    )


def make_labels_layer(
    image: Any, geometry: PlaneGeometry, name: str, dtype: Any = np.uint32, **kwargs: Any
) -> Any:
    """A new Labels layer of zeros shaped like ``image``'s planes (channel axis removed)."""
    from napari.layers import Labels

    return Labels(
        np.zeros(geometry.labels_shape, dtype=dtype),
        name=name,
        **transform_kwargs(image, geometry),
        **kwargs,
    )


def clear_prompts(points: Any | None, shapes: Any | None) -> None:
    """Remove every prompt from the prompt layers (their other settings stay)."""
    if points is not None and len(points.data):
        points.data = np.zeros((0, points.ndim))
    if shapes is not None and len(shapes.data):
        shapes.data = []


def next_polarity(points: Any) -> Polarity:
    """The polarity the next point added to ``points`` will get."""
    value = points.feature_defaults[LABEL_FEATURE]
    value = value.iloc[0] if hasattr(value, "iloc") else value
    return Polarity(str(value))


def toggle_polarity(points: Any) -> str:
    """The ``T`` key: set the polarity of the next point, or flip the chosen points.

    In napari's add mode (where prompts are clicked) ``T`` always sets the polarity of
    the *next* point: napari selects each point as it is added, so flipping the
    selection there would flip the point just placed instead. In select mode, the
    selected points are flipped. A selection that no longer matches the layer's points
    (they were cleared) is ignored. Returns a short message saying what changed.
    """
    count = len(points.data)
    selected = sorted(i for i in points.selected_data if 0 <= i < count)
    if selected and str(getattr(points.mode, "value", points.mode)) == "select":
        import pandas as pd

        features = points.features.copy()
        positive = point_polarities(points) == 1
        positive[selected] = ~positive[selected]
        column = np.where(positive, Polarity.POSITIVE.value, Polarity.NEGATIVE.value)
        features[LABEL_FEATURE] = pd.Categorical(column, categories=list(POINT_COLOURS))
        points.features = features
        points.refresh_colors()
        return f"flipped {len(selected)} point(s)"
    new = next_polarity(points).flipped()
    points.feature_defaults = {LABEL_FEATURE: new.value}
    return f"next point: {new.value}"


def ensure_plugin_labels(
    viewer: Any, name: str, image: Any, geometry: PlaneGeometry, dtype: Any = np.uint32, **kwargs: Any
) -> tuple[Any, bool]:
    """The plugin's Labels layer ``name`` matching ``image``'s planes, made if needed.

    A layer of that name whose shape does not match (another image was chosen) is
    replaced. The layer that was active stays active (napari would make the new layer
    active, so that the next click on a prompt layer would do nothing), and the new
    layer goes below the prompt layers and the preview (:func:`_slot_below_prompts`), so
    that it never hides the points a user clicks. Returns ``(layer, created)``.
    """
    if name in viewer.layers:
        layer = viewer.layers[name]
        if tuple(layer.data.shape) == geometry.labels_shape:
            return layer, False
        viewer.layers.remove(layer)
    active = viewer.layers.selection.active
    layer = viewer.add_layer(make_labels_layer(image, geometry, name, dtype=dtype, **kwargs))
    slot = _slot_below_prompts(viewer, image, name)
    if slot is not None:
        viewer.layers.move(viewer.layers.index(layer), slot)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer, True


def _slot_below_prompts(viewer: Any, image: Any, name: str) -> int | None:
    """The index (napari's layer list: 0 is drawn first, at the bottom) just below the
    lowest Points or Shapes layer above ``image`` (and below the preview, for any other
    plugin layer), or ``None`` to leave a new layer on top."""
    layers = list(viewer.layers)
    floor = layers.index(image) if image in layers else -1
    above = [
        k for k, other in enumerate(layers[:-1])  # the last one is the new layer itself
        if k > floor and (type(other).__name__ in ("Points", "Shapes")
                          or (other.name == PREVIEW_NAME and name != PREVIEW_NAME))
    ]
    return min(above) if above else None
