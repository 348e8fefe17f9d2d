"""The "Auto-annotate" dock widget: boxes -> SAM masks -> a Labels layer.

Boxes come from the blob detector (fluorescent nuclei, no weights; see
``core.detectors.BlobDetector``) or from a napari Shapes layer (each rectangle,
polygon or ellipse is one object, as in the main widget). The job runs on the current
plane or on every plane of the stack through it, in a background worker that Cancel
stops between planes; embeddings come from (and go to) the viewer's shared cache.
The result replaces the planes it covers in the plugin's Labels layer
"SAM auto-annotate" (one id per object, larger objects painted first so small ones
stay visible). To write a dataset to disk, use ``auto_annotate`` or ``samscope annotate``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_samscope._napari import engine
from napari_samscope._napari import layers as plugin_layers
from napari_samscope._napari.coords import current_geometry
from napari_samscope._napari.images import ImageSettings, PlaneSource
from napari_samscope._napari.labels import write_planes
from napari_samscope._napari.prompts import ObjectPrompt, collect_prompts
from napari_samscope._napari.session import get_session, unwrap_viewer
from napari_samscope._widgets.dock_lifecycle import ShutsDownWithDock
from napari_samscope._widgets.main_ui import NORMALIZATION_LABELS
from napari_samscope._widgets.panels import ModelPanel, ProgressRow, spin_box
from napari_samscope._widgets.workers import JobRunner, notify_error, notify_info
from napari_samscope.core.predict.label_image import paint_labels
from napari_samscope.core.progress import Progress

__all__ = ["AutoAnnotateWidget", "ANNOTATE_NAME", "SOURCES"]

ANNOTATE_NAME = "SAM auto-annotate"
#: Where the boxes come from, as shown -> internal name.
SOURCES = {"blob detector (fluorescent nuclei)": "blobs", "Shapes layer": "shapes"}
_SCOPES = ("current plane", "all planes of the stack")


def paint_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """``(H, W) uint32``: mask ``k`` gets id ``k + 1``, larger masks painted first."""
    return paint_labels(masks, shape)


def annotate_planes_iter(
    predictor: Any,
    cache: Any,
    source: PlaneSource,
    keys: list[Any],
    objects_of: Any,
    lock: Any = None,
) -> Any:
    """Segment every plane of ``keys``: yields ``Progress``, returns ``{key: (H, W) uint32}``.

    ``objects_of(key, rgb_plane)`` gives the plane's :class:`ObjectPrompt` list.
    """
    planes = {}
    for i, key in enumerate(keys):
        yield Progress(f"auto-annotating plane {i + 1}/{len(keys)}", i, len(keys))
        stack = source.stack(key)
        objects = objects_of(key, stack.plane(source.z_of(key)))
        if not objects:
            planes[key] = np.zeros(source.geometry.plane_shape, dtype=np.uint32)
            continue
        embedding = yield from engine.embedding_iter(predictor, cache, source, key)
        masks = engine.decode_objects(predictor, embedding, objects, lock)
        planes[key] = paint_masks([m for m in masks if m.any()], source.geometry.plane_shape)
    yield Progress("auto-annotating", len(keys), len(keys))
    return planes




class AutoAnnotateWidget(ShutsDownWithDock, QWidget):
    """Auto-annotate an image layer's current plane or stack (drive it with :meth:`run`)."""

    #: Emitted when "SAM auto-annotate" shows a new result.
    finished = Signal()

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self.progress = ProgressRow()
        self.model_panel = ModelPanel(self.session, self.progress)
        self.runner = JobRunner(self.progress.show_progress, self.progress.tracker("job"))
        self._shut = False
        self._docked = False
        self.destroyed.connect(partial(AutoAnnotateWidget.shutdown, self))

        import napari.layers as nl

        self.image = ComboBox(label="image", choices=lambda _w: [
            (layer.name, layer) for layer in napari_viewer.layers if isinstance(layer, nl.Image)])
        self.shapes = ComboBox(label="shapes", nullable=True, choices=lambda _w: [
            (layer.name, layer) for layer in napari_viewer.layers if isinstance(layer, nl.Shapes)])
        self.source = QComboBox()
        self.source.addItems(list(SOURCES))
        self.normalization = QComboBox()
        self.normalization.addItems(list(NORMALIZATION_LABELS))
        self.conf = spin_box(QDoubleSpinBox, 0.0, 1.0, 0.25, "Blob detector: minimum score (contrast "
                              "above the background noise)", step=0.05)
        self.max_det = spin_box(QSpinBox, 1, 100_000, 300, "At most this many objects per plane")
        self.min_distance = spin_box(QSpinBox, 1, 500, 6, "Blob detector: smallest distance between "
                                  "two nucleus centres (about the smallest radius), pixels")
        self.scope = QComboBox()
        self.scope.addItems(list(_SCOPES))
        self.run_button = QPushButton("Auto-annotate")
        self.run_button.setToolTip("Detect boxes and segment each with SAM, in the background")

        layout = QVBoxLayout(self)
        layout.addWidget(self.model_panel)
        box = QGroupBox("Auto-annotate")
        form = QFormLayout(box)
        form.addRow("image", self.image.native)
        form.addRow("boxes from", self.source)
        form.addRow("shapes layer", self.shapes.native)
        form.addRow("normalisation", self.normalization)
        form.addRow("min score", self.conf)
        form.addRow("min distance", self.min_distance)
        form.addRow("max objects", self.max_det)
        form.addRow("scope", self.scope)
        form.addRow(self.run_button)
        layout.addWidget(box)
        layout.addWidget(self.progress)
        layout.addStretch(1)

        self.run_button.clicked.connect(lambda: self.run())
        self.progress.cancel_button.clicked.connect(self.cancel)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.reset_choices)
        self.reset_choices()

    # ------------------------------------------------------------------ public API

    def run(self, source: str | None = None, scope: str | None = None) -> None:
        """Auto-annotate with boxes from ``"blobs"`` or ``"shapes"`` on the current
        ``"plane"`` or the whole ``"stack"`` (default: what the widget shows)."""
        source = source or SOURCES[self.source.currentText()]
        scope = scope or ("stack" if self.scope.currentIndex() == 1 else "plane")
        if source not in ("blobs", "shapes") or scope not in ("plane", "stack"):
            raise ValueError(f"source must be 'blobs' or 'shapes' and scope 'plane' or 'stack', "
                             f"not {source!r} / {scope!r}.")
        try:
            if self.session.sam is None:
                self.model_panel.load(self.model_panel.selected_model(),
                                      then=lambda: self.run(source, scope))
                return
            job = self._job(source, scope)
        except ValueError as error:
            notify_error(error)
            return
        try:
            self.runner.start(job[0], job[1])
        except RuntimeError as error:
            notify_error(str(error))

    def cancel(self) -> None:
        self.runner.cancel()
        self.model_panel.runner.cancel()

    def reset_choices(self, event: Any = None) -> None:
        self.image.reset_choices()
        self.shapes.reset_choices()

    def shutdown(self) -> None:
        """Stop workers and disconnect from the viewer (also when Qt destroys the widget)."""
        if self._shut:
            return
        self._shut = True
        self.runner.shutdown()
        self.model_panel.shutdown()
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.disconnect(self.reset_choices)

    # ------------------------------------------------------------------ internals

    def _job(self, source_kind: str, scope: str) -> tuple[Any, Any]:
        """Everything read from layers (GUI thread), then the worker's job and its callback."""
        image = self.image.value
        if image is None:
            raise ValueError("Choose an image layer first (add one to the viewer).")
        geometry = current_geometry(image, self.viewer.dims.order, self.viewer.dims.point)
        settings = ImageSettings(NORMALIZATION_LABELS[self.normalization.currentText()])
        source = PlaneSource.from_layer(image, geometry, settings)
        if scope == "stack" and geometry.stack_axis is None:
            raise ValueError(f"'{image.name}' has a single plane; choose 'current plane'.")
        keys = source.stack_keys() if scope == "stack" else [geometry.current]
        max_det = int(self.max_det.value())
        if source_kind == "shapes":
            shapes = self.shapes.value
            if shapes is None:
                raise ValueError("Choose a Shapes layer with boxes, or use the blob detector.")
            prompts = collect_prompts(image, geometry, self.viewer.dims.point, shapes_layer=shapes)
            for message in prompts.skipped:
                notify_info(message)
            keys = [k for k in keys if prompts.on(k) is not None and prompts.on(k).boxes]
            if not keys:
                raise ValueError(f"The Shapes layer '{shapes.name}' has no rectangle, polygon or "
                                 f"ellipse on the chosen plane(s) of '{image.name}'.")

            def objects_of(key: Any, rgb: np.ndarray) -> list[ObjectPrompt]:
                empty = np.zeros((0, 2), np.float32)
                plane = prompts.on(key)
                return [ObjectPrompt(empty, np.zeros(0, np.int32), b, m) for b, m in plane.boxes][:max_det]
        else:
            from napari_samscope.core.datasets.detectors import BlobDetector

            detector = BlobDetector(min_distance=int(self.min_distance.value()))
            conf = float(self.conf.value())

            def objects_of(key: Any, rgb: np.ndarray) -> list[ObjectPrompt]:
                found = detector(rgb).filtered(conf=conf, max_det=max_det)
                empty = np.zeros((0, 2), np.float32)
                return [ObjectPrompt(empty, np.zeros(0, np.int32), box) for box in found.boxes]

        predictor, cache = self.session.new_predictor(), self.session.cache

        def job() -> Any:
            return (yield from annotate_planes_iter(predictor, cache, source, keys, objects_of))

        return job, lambda planes: self._show(planes, image, geometry)

    def _show(self, planes: dict[Any, np.ndarray], image: Any, geometry: Any) -> None:
        if image not in self.viewer.layers:
            raise ValueError(f"The image layer '{image.name}' was removed while it was being "
                             "annotated; the result was discarded.")
        layer, _ = plugin_layers.ensure_plugin_labels(self.viewer, ANNOTATE_NAME, image, geometry)
        write_planes(layer, geometry, planes)
        self.session.notify_cache()
        count = sum(int(p.max()) for p in planes.values())
        notify_info(f"auto-annotate: {count} objects on {len(planes)} plane(s) of '{image.name}'")
        self.finished.emit()
