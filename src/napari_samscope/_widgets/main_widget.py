"""The "Segment Anything" dock widget: prompts in, a live preview, commits out.

Qt glue only: prompts are read by ``_napari.prompts``, jobs are ``_napari.engine``
generators run by :class:`~napari_samscope._widgets.workers.JobRunner`, results are
written by ``_napari.labels``. Keys (on the plugin's layers only): ``S`` segment,
``Shift+S`` segment all slices, ``C`` commit, ``Shift+C`` clear prompts, ``T``
toggle point polarity.

Latency of the live preview: when every prompted plane is already encoded and the last
decode was quick (at most ``INLINE_DECODE_MS``), the preview is decoded on the GUI
thread inside the prompt layer's event, so the mask lands before napari redraws the new
prompt and no thread hand-off is paid either way. Otherwise (encoding needed, a decode
that was slow, the predictor busy) it runs in the preview runner's long-lived thread.
"""

from __future__ import annotations

from pathlib import Path
from time import perf_counter
from typing import Any

from qtpy.QtCore import QTimer, Signal

from napari_samscope._napari import engine
from napari_samscope._napari import layers as plugin_layers
from napari_samscope._napari.coords import current_geometry
from napari_samscope._napari.images import ImageSettings, PlaneSource, forget_layer
from napari_samscope._napari.labels import Segmentation, write_preview
from napari_samscope._napari.labels import commit as commit_segmentation
from napari_samscope._napari.prompts import collect_prompts
from napari_samscope._napari.tiled import forget_tiled
from napari_samscope._widgets.dock_lifecycle import SamscopeDock
from napari_samscope._widgets.layer_wiring import LayerWiring
from napari_samscope._widgets.main_ui import MainControls
from napari_samscope._widgets.stack_actions import StackActions
from napari_samscope._widgets.workers import JobRunner, PreviewRunner, notify_error, notify_info
from napari_samscope.core.units import MB

__all__ = ["SegmentAnythingWidget", "INLINE_DECODE_MS"]

#: The longest decode (ms, the last one measured) for which the next preview is decoded
#: on the GUI thread; slower decodes (huge images, many objects) stay in the worker.
INLINE_DECODE_MS = 40.0


def _layers_of(viewer: Any, kind: str):
    import napari.layers as nl

    cls = {"image": nl.Image, "points": nl.Points, "shapes": nl.Shapes, "labels": nl.Labels}[kind]

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, cls)
                and layer.name != plugin_layers.PREVIEW_NAME]

    return choices


class SegmentAnythingWidget(StackActions, SamscopeDock):
    """Interactive SAM segmentation of napari image layers (2D, stacks, time series).

    Drive it from code with :meth:`set_model`, :meth:`segment`, :meth:`commit`,
    :meth:`segment_all_slices`, :meth:`precompute`, :meth:`clear_prompts`.
    """

    #: Emitted after the preview layer shows a new result.
    preview_updated = Signal()
    #: Emitted with the ids written by a commit.
    committed = Signal(list)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.ui = MainControls({k: _layers_of(napari_viewer, k)
                                for k in ("image", "points", "shapes", "labels")})
        self.ui.build(self.body)
        self.keep_in_view(self.ui.prompts_section)
        self.preview_runner = self.add_runner(
            PreviewRunner(self.progress.show_progress, self._tracker("preview")))
        self.runner = self.add_runner(
            JobRunner(self._job_progress, self._tracker("job"), background=True))
        self.preview: Segmentation | None = None
        #: Decode on the GUI thread when the last decode took at most this (0: never).
        self.inline_decode_ms = INLINE_DECODE_MS
        self._decode_ms = float("inf")  # the last decode's duration, from either path
        self._drawn: list[Any] = []
        self.wiring = LayerWiring(self, self._schedule_preview)
        self._commit_when_ready = False
        self._active_image: Any = None
        self._quiet = False

        ui = self.ui
        ui.image.changed.connect(self._image_changed)
        ui.points.changed.connect(self._prompt_layers_changed)
        ui.shapes.changed.connect(self._prompt_layers_changed)
        ui.new_prompts.clicked.connect(lambda: self.ensure_prompt_layers(new=True))
        ui.segment.clicked.connect(self.segment)
        ui.commit.clicked.connect(self.commit)
        ui.clear.clicked.connect(self.clear_prompts)
        ui.precompute.clicked.connect(self.precompute)
        ui.propagate.clicked.connect(self.segment_all_slices)
        ui.cache_mb.valueChanged.connect(lambda mb: self.session.set_cache_limit(mb * MB))
        self.link(self.session.cache_changed, self._show_cache)
        self.link(self.session.model_changed, self._model_changed)
        self.link(napari_viewer.layers.events.removed, self._layer_removed)
        self.reset_choices()
        self._image_changed(self.image_layer)
        self._prompt_layers_changed()

    # ------------------------------------------------------------------ public API

    @property
    def image_layer(self) -> Any:
        return self.ui.image.value

    @property
    def points_layer(self) -> Any:
        return self.ui.points.value

    @property
    def shapes_layer(self) -> Any:
        return self.ui.shapes.value

    def set_model(self, model: Any, device: str | None = None, name: str | None = None,
                  predictor_factory: Any = None) -> Any:
        """Use ``model``: a registry name or checkpoint path (loaded in a worker, which
        is returned), or an in-memory ``SAM`` / ``Sam`` (set at once; see
        ``ModelSession.set_model`` for ``predictor_factory``)."""
        if isinstance(model, (str, Path)) or model is None:
            return self.model_panel.load(model, device)
        self.session.set_model(model, name=name, predictor_factory=predictor_factory)
        return None

    def settings(self) -> ImageSettings:
        """The image conversion settings chosen in the widget."""
        return self.ui.settings()

    def ensure_prompt_layers(self, new: bool = False) -> tuple[Any, Any]:
        """Create "SAM points" / "SAM boxes" for the image when none is chosen (or ``new``)."""
        image = self._require_image()
        geometry = self._geometry(image)
        if new or self.points_layer is None:
            layer = self.viewer.add_layer(plugin_layers.make_points_layer(image, geometry))
            layer.mode = "add"
            self.reset_choices()
            self.ui.points.value = layer
        if new or self.shapes_layer is None:
            layer = self.viewer.add_layer(plugin_layers.make_shapes_layer(image, geometry))
            self.reset_choices()
            self.ui.shapes.value = layer
        if self.points_layer is not None:
            self.viewer.layers.selection.active = self.points_layer
        return self.points_layer, self.shapes_layer

    def segment(self) -> None:
        """Segment the prompted plane(s) into the preview (``S``): at once when they are
        encoded and decoding is quick, else in the preview worker."""
        if self._shut:
            return
        try:
            image, source, prompts = self._snapshot()
        except ValueError as error:
            notify_error(error)
            return
        if prompts.skipped:
            self.ui.status.setText("; ".join(prompts.skipped))
        planes = prompts.prompted_planes
        if not planes:
            self.preview_runner.cancel()  # a run still in flight is now stale
            self._show_preview(None, image)
            return
        if not self.with_model(self.segment):  # load the chosen model first, then segment
            return
        predictor, cache, lock = self.session.predictor, self.session.cache, self.session.decode_lock
        if self._decode_inline(image, source, prompts, predictor, cache, lock):
            return

        def job():
            if engine.uses_tiles(predictor, source):  # large lazy layer or embeddings file
                return (yield from engine.segment_tiled_iter(predictor, source, prompts))
            embeddings = {}
            for key in planes:
                embeddings[key] = yield from engine.embedding_iter(predictor, cache, source, key)
            started = perf_counter()
            seg = engine.decode_planes(predictor, embeddings, prompts, source.geometry, lock)
            self._decode_ms = (perf_counter() - started) * 1000.0
            return seg

        self.preview_runner.start(job, lambda seg: self._show_preview(seg, image), supersede=True)

    def commit(self) -> list[int]:
        """Write the preview's objects into the target labels layer (``C``).

        If a preview is still being computed, the commit happens when it arrives.
        Returns the ids written (empty when deferred or nothing to commit).
        """
        if self.preview_runner.busy:
            self._commit_when_ready = True
            return []
        return self._commit_now()

    def _commit_now(self) -> list[int]:
        self._commit_when_ready = False
        if self.preview is None or self.preview.is_empty():
            notify_info("Nothing to commit: add prompts and wait for the preview.")
            return []
        try:
            image = self._require_image()
            target = self.ui.target.value
            if target is None:  # prompt layers stay active: the next click adds a prompt
                target, _ = plugin_layers.ensure_plugin_labels(
                    self.viewer, plugin_layers.LABELS_NAME, image, self.preview.geometry)
                self.reset_choices()
                self.ui.target.value = target
            ids = commit_segmentation(target, self.preview, overwrite=self.ui.overwrite.isChecked())
        except ValueError as error:
            notify_error(error)
            return []
        self.ui.status.setText(f"committed {ids} into '{target.name}'" if ids else
                               "nothing committed: every pixel was already labelled")
        self._show_preview(None, image)
        self.clear_prompts()
        self.committed.emit(ids)
        return ids

    def clear_prompts(self) -> None:
        """Remove every prompt (``Shift+C``); the preview clears with them."""
        self._quiet = True  # one preview update for both layers, not one per layer
        try:
            plugin_layers.clear_prompts(self.points_layer, self.shapes_layer)
        finally:
            self._quiet = False
        self._schedule_preview()

    def toggle_polarity(self) -> None:
        """Flip the selected points' polarity, or the next point's (``T``)."""
        if self.points_layer is not None:
            self.ui.status.setText(plugin_layers.toggle_polarity(self.points_layer))
            self._schedule_preview()

    def reset_choices(self, event: Any = None) -> None:
        """Refresh the layer dropdowns (napari calls this when layers change)."""
        for combo in self.ui.layer_combos():
            combo.reset_choices()

    def shutdown(self) -> None:
        """Stop workers, unbind the keys and disconnect from the viewer (the widget is
        closing); touches no Qt object that may already be gone."""
        if self._shut:
            return
        super().shutdown()
        self.wiring.unbind()
        self.wiring.watch([])

    # ------------------------------------------------------------------ internals

    def _tracker(self, source: str):
        show = self.progress.tracker(source)

        def busy(state: bool) -> None:
            show(state)
            if not state:
                self.session.notify_cache()

        return busy

    def _job_progress(self, report: Any) -> None:
        self.progress.show_progress(report)
        self.session.notify_cache()  # "embeddings: N MB" follows a long encoding

    def _require_image(self) -> Any:
        image = self.image_layer
        if image is None:
            raise ValueError("Choose an image layer first (add one to the viewer).")
        return image

    def _geometry(self, image: Any) -> Any:
        return current_geometry(image, self.viewer.dims.order, self.viewer.dims.point,
                                channel_axis=self.settings().channel_axis)

    def _snapshot(self, prompts: bool = True) -> tuple[Any, PlaneSource, Any]:
        image = self._require_image()
        geometry = self._geometry(image)
        source = PlaneSource.from_layer(image, geometry, self.settings(),
                                        embeddings=self.ui.embeddings.text())
        self._active_image = image
        found = None
        if prompts:
            found = collect_prompts(image, geometry, self.viewer.dims.point,
                                    self.points_layer, self.shapes_layer)
        return image, source, found

    def _check_alive(self, image: Any) -> None:
        if image not in self.viewer.layers:
            raise ValueError(f"The image layer '{image.name}' was removed while it was being "
                             "segmented; the result was discarded.")

    def _decode_inline(self, image: Any, source: PlaneSource, prompts: Any, predictor: Any,
                       cache: Any, lock: Any) -> bool:
        """Decode on the GUI thread if every prompted plane is encoded, no preview runs,
        the predictor is free and the last decode was quick; False: use the worker."""
        if self.preview_runner.busy or self._decode_ms > self.inline_decode_ms:
            return False
        embeddings = engine.cached_embeddings(predictor, cache, source, prompts.prompted_planes)
        if embeddings is None or not lock.acquire(blocking=False):
            return False
        try:
            started = perf_counter()
            seg = engine.decode_planes(predictor, embeddings, prompts, source.geometry)
            self._decode_ms = (perf_counter() - started) * 1000.0
        except Exception as error:  # as a worker would: a notification, napari goes on
            notify_error(error)
            return True
        finally:
            lock.release()
        self.preview_runner.cancel()  # idle: only makes any late result stale
        try:
            self._show_preview(seg, image)
        except Exception as error:  # as the runner does with a failure showing a result
            notify_error(error)
        return True

    def _show_preview(self, segmentation: Segmentation | None, image: Any) -> None:
        if segmentation is not None:
            self._check_alive(image)
        layer = self._preview_layer(segmentation)
        if layer is not None:
            self._drawn = write_preview(layer, segmentation, self._drawn)
        self.preview = segmentation
        self.preview_updated.emit()
        if self._commit_when_ready:
            self._commit_now()  # this is the newest result: stale ones never get here

    def _preview_layer(self, segmentation: Segmentation | None) -> Any:
        name = plugin_layers.PREVIEW_NAME
        if segmentation is None:
            return self.viewer.layers[name] if name in self.viewer.layers else None
        layer, created = plugin_layers.ensure_plugin_labels(
            self.viewer, name, self._require_image(), segmentation.geometry, "uint8", opacity=0.6,
            colormap=plugin_layers.preview_colormap())
        if created:
            self._drawn = []
            self.wiring.bind([layer, self.points_layer, self.shapes_layer])
            if self.points_layer is not None:
                self.viewer.layers.selection.active = self.points_layer
        return layer
    def _schedule_preview(self) -> None:
        """A prompt changed: segment now, with no delay.

        The request goes to the preview runner's one-slot queue: while a run is in
        flight, a newer request replaces a waiting one and supersedes the running one,
        so a burst of changes costs at most one run beyond the one in flight.
        """
        if not self.ui.live.isChecked() or self._shut or self._quiet:
            return
        self._auto_segment()

    def _auto_segment(self) -> None:
        """The live preview: like ``segment`` but silent while there is nothing to do."""
        if self.image_layer is None:
            return
        if self.points_layer is None and self.shapes_layer is None:
            return
        self.segment()

    def _prompt_layers_changed(self, _value: Any = None) -> None:
        self.wiring.unbind()
        preview = self.viewer.layers[plugin_layers.PREVIEW_NAME] \
            if plugin_layers.PREVIEW_NAME in self.viewer.layers else None
        self.wiring.bind([self.points_layer, self.shapes_layer, preview])
        self.wiring.watch([self.points_layer, self.shapes_layer])
        self._schedule_preview()

    def _image_changed(self, image: Any) -> None:
        self.ui.set_axes(0 if image is None else image.ndim)
        if image is not None and (self.points_layer is None or self.shapes_layer is None):
            QTimer.singleShot(0, self._auto_prompt_layers)

    def _auto_prompt_layers(self) -> None:
        if self.image_layer is not None and self.image_layer in self.viewer.layers:
            try:
                self.ensure_prompt_layers()
            except ValueError as error:
                notify_error(error)

    def _layer_removed(self, event: Any) -> None:
        layer = event.value
        self.wiring.forget(layer)
        forget_layer(layer)
        forget_tiled(str(getattr(layer, "unique_id", id(layer))))
        if layer.name == plugin_layers.PREVIEW_NAME:
            self._drawn = []
        if layer is self._active_image:
            if self.preview_runner.busy or self.runner.busy:
                self.cancel()
                notify_error(f"The image layer '{layer.name}' was removed while it was being "
                             "segmented; the job was stopped and napari is fine.")
            self._active_image = None

    def _model_changed(self, _sam: Any) -> None:
        self._schedule_preview()
