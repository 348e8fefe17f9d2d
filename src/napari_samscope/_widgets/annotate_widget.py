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

from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QPushButton, QSpinBox

from napari_samscope._napari import engine
from napari_samscope._napari import layers as plugin_layers
from napari_samscope._napari.coords import current_geometry
from napari_samscope._napari.images import ImageSettings, PlaneSource
from napari_samscope._napari.labels import write_planes
from napari_samscope._napari.options import BoxSource, Scope, parse
from napari_samscope._napari.prompts import ObjectPrompt, collect_prompts
from napari_samscope._widgets.dock_lifecycle import SamscopeDock
from napari_samscope._widgets.main_ui import NORMALIZATION_LABELS
from napari_samscope._widgets.panels import Section, spin_box
from napari_samscope._widgets.workers import notify_error, notify_info, objects_text

__all__ = ["AutoAnnotateWidget", "ANNOTATE_NAME", "SOURCES", "SCOPE_LABELS"]

ANNOTATE_NAME = "SAM auto-annotate"
#: Where the boxes come from, as shown.
SOURCES = {"blob detector (fluorescent nuclei)": BoxSource.BLOBS, "Shapes layer": BoxSource.SHAPES}
#: Scopes as shown.
SCOPE_LABELS = {"current plane": Scope.PLANE, "all planes of the stack": Scope.STACK}


class AutoAnnotateWidget(SamscopeDock):
    """Auto-annotate an image layer's current plane or stack (drive it with :meth:`run`)."""

    #: Emitted when "SAM auto-annotate" shows a new result.
    finished = Signal()

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.runner = self.add_job_runner()

        import napari.layers as nl

        self.image = self.layer_combo("image", nl.Image)
        self.shapes = self.layer_combo("shapes", nl.Shapes, nullable=True)
        self.shapes.null_string = "none"
        self.source = QComboBox()
        for text, kind in SOURCES.items():
            self.source.addItem(text, kind)
        self.normalization = QComboBox()
        self.normalization.addItems(list(NORMALIZATION_LABELS))
        self.conf = spin_box(QDoubleSpinBox, 0.0, 1.0, 0.25, "Blob detector: minimum score (contrast "
                              "above the background noise)", step=0.05)
        self.max_det = spin_box(QSpinBox, 1, 100_000, 300, "At most this many objects per plane")
        self.min_distance = spin_box(QSpinBox, 1, 500, 6, "Blob detector: smallest distance between "
                                  "two nucleus centres (about the smallest radius), pixels")
        self.scope = QComboBox()
        for text, scope in SCOPE_LABELS.items():
            self.scope.addItem(text, scope)
        self.run_button = QPushButton("Auto-annotate")
        self.run_button.setToolTip("Detect boxes and segment each with SAM, in the background")

        main = Section("Auto-annotate")
        main.form.addRow("image", self.image.native)
        main.form.addRow("boxes from", self.source)
        main.form.addRow("shapes layer", self.shapes.native)
        main.form.addRow("scope", self.scope)
        main.form.addRow(self.run_button)
        self.detector = Section("Detector settings", expanded=False)
        form = self.detector.form
        form.addRow("normalisation", self.normalization)
        form.addRow("min score", self.conf)
        form.addRow("min distance", self.min_distance)
        form.addRow("max objects", self.max_det)
        for section in (main, self.detector):
            self.body.addWidget(section)
        self.body.addStretch(1)
        self.keep_in_view(main)

        self.run_button.clicked.connect(lambda: self.run())
        self.reset_choices()

    # ------------------------------------------------------------------ public API

    def run(self, source: BoxSource | str | None = None, scope: Scope | str | None = None) -> None:
        """Auto-annotate with boxes from ``"blobs"`` or ``"shapes"`` on the current
        ``"plane"`` or the whole ``"stack"`` (default: what the widget shows)."""
        source = self.source.currentData() if source is None else parse(BoxSource, source, "source")
        scope = self.scope.currentData() if scope is None else parse(Scope, scope, "scope")
        if not self.with_model(lambda: self.run(source, scope)):
            return
        try:
            job, done = self._job(source, scope)
        except ValueError as error:
            notify_error(error)
            return
        self.start_job(self.runner, job, done, label="auto-annotate")

    def reset_choices(self, event: Any = None) -> None:
        self.image.reset_choices()
        self.shapes.reset_choices()

    # ------------------------------------------------------------------ internals

    def _job(self, source_kind: BoxSource, scope: Scope) -> tuple[Any, Any]:
        """Everything read from layers (GUI thread), then the worker's job and its callback."""
        image = self.image.value
        if image is None:
            raise ValueError("Choose an image layer first (add one to the viewer).")
        geometry = current_geometry(image, self.viewer.dims.order, self.viewer.dims.point)
        settings = ImageSettings(NORMALIZATION_LABELS[self.normalization.currentText()])
        source = PlaneSource.from_layer(image, geometry, settings)
        if scope is Scope.STACK and geometry.stack_axis is None:
            raise ValueError(f"'{image.name}' has a single plane; choose 'current plane'.")
        keys = source.stack_keys() if scope is Scope.STACK else [geometry.current]
        max_det = int(self.max_det.value())
        if source_kind is BoxSource.SHAPES:
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
            return (yield from engine.annotate_planes_iter(predictor, cache, source, keys, objects_of))

        return job, lambda planes: self._show(planes, image, geometry)

    def _show(self, planes: dict[Any, np.ndarray], image: Any, geometry: Any) -> None:
        if image not in self.viewer.layers:
            raise ValueError(f"The image layer '{image.name}' was removed while it was being "
                             "annotated; the result was discarded.")
        layer, _ = plugin_layers.ensure_plugin_labels(self.viewer, ANNOTATE_NAME, image, geometry)
        write_planes(layer, geometry, planes)
        self.session.notify_cache()
        count = sum(int(p.max()) for p in planes.values())  # ids restart on every plane
        notify_info(f"auto-annotate: {objects_text(count)} on {len(planes)} plane(s) of "
                    f"'{image.name}'")
        self.finished.emit()
