"""The "Segment Anything" dock widget: prompts in, a live preview, commits out.

Qt glue only: what to segment, preview and commit is decided by
:class:`~napari_samscope._napari.interactive.InteractiveSegmentation` (no Qt), jobs are
``_napari.engine`` generators run by :class:`~napari_samscope._widgets.workers.JobRunner`.
Keys (on the plugin's layers only): ``S`` segment, ``Shift+S`` segment all slices,
``C`` commit, ``Shift+C`` clear prompts, ``T`` toggle point polarity.

Latency of the live preview: when every prompted plane is already encoded and the last
decode was quick (at most ``INLINE_DECODE_MS``), the preview is decoded on the GUI
thread inside the prompt layer's event, so the mask lands before napari redraws the new
prompt and no thread hand-off is paid either way. Otherwise (encoding needed, a decode
that was slow, the predictor busy) it runs in the preview runner's long-lived thread;
when the full decode does more than one decoder pass (the default model's flip
averaging and refined clicks) and the planes are encoded, a one-pass draft is drawn on
the GUI thread first, so that the object shows at once and its outline is then
sharpened (``preview_drafted``, then ``preview_updated``). A draft is never committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer, Signal

from napari_samscope._napari import layers as plugin_layers
from napari_samscope._napari.images import ImageSettings, PlaneSource, forget_layer
from napari_samscope._napari.interactive import INLINE_DECODE_MS, InteractiveSegmentation
from napari_samscope._napari.labels import Segmentation
from napari_samscope._napari.tiled import forget_tiled
from napari_samscope._widgets.dock_lifecycle import SamscopeDock
from napari_samscope._widgets.layer_wiring import LayerWiring
from napari_samscope._widgets.main_ui import MainControls
from napari_samscope._widgets.stack_actions import StackActions
from napari_samscope._widgets.workers import JobRunner, PreviewRunner, notify_error, notify_info
from napari_samscope.core.units import MB

__all__ = ["SegmentAnythingWidget", "INLINE_DECODE_MS"]


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
    :meth:`segment_all_slices`, :meth:`precompute`, :meth:`clear_prompts`; its state
    and decisions are in :attr:`interactive`.
    """

    #: Emitted after the preview layer shows a new result.
    preview_updated = Signal()
    #: Emitted after the preview layer shows a quick draft (the full result follows).
    preview_drafted = Signal()
    #: Emitted with the ids written by a commit.
    committed = Signal(list)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.ui = MainControls({k: _layers_of(napari_viewer, k)
                                for k in ("image", "points", "shapes", "labels")})
        self.ui.build(self.body)
        self.keep_in_view(self.ui.prompts_section)
        self.interactive = InteractiveSegmentation(
            napari_viewer, image=lambda: self.ui.image.value, points=lambda: self.ui.points.value,
            shapes=lambda: self.ui.shapes.value, settings=self.ui.settings,
            embeddings=self.ui.embeddings.text)
        self.preview_runner = self.add_runner(
            PreviewRunner(self.progress.show_progress, self._tracker("preview"), self._preview_failed))
        self.runner = self.add_runner(
            JobRunner(self._job_progress, self._tracker("job"), background=True))
        self.wiring = LayerWiring(self, self._schedule_preview)
        self._commit_when_ready = False
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

    @property
    def preview(self) -> Segmentation | None:
        """The objects in the preview layer (``None``: no preview)."""
        return self.interactive.preview

    @property
    def inline_decode_ms(self) -> float:
        """Decode on the GUI thread when the last decode took at most this (0: never)."""
        return self.interactive.inline_decode_ms

    @inline_decode_ms.setter
    def inline_decode_ms(self, value: float) -> None:
        self.interactive.inline_decode_ms = float(value)

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
        points, shapes = self.interactive.make_prompt_layers(
            new or self.points_layer is None, new or self.shapes_layer is None)
        for combo, layer in ((self.ui.points, points), (self.ui.shapes, shapes)):
            if layer is not None:
                self.reset_choices()
                combo.value = layer
        self.interactive.activate_points()
        return self.points_layer, self.shapes_layer

    def segment(self) -> None:
        """Segment the prompted plane(s) into the preview (``S``): at once when they are
        encoded and decoding is quick, else in the preview worker."""
        if self._shut:
            return
        try:
            snap = self.interactive.snapshot()
        except ValueError as error:
            notify_error(error)
            return
        if snap.prompts.skipped:
            self.ui.status.setText("; ".join(snap.prompts.skipped))
        if not snap.prompts.prompted_planes:
            self.preview_runner.cancel()  # a run still in flight is now stale
            self._show_preview(None, snap.image)
            return
        if not self.with_model(self.segment):  # load the chosen model first, then segment
            return
        predictor, cache, lock = self.session.predictor, self.session.cache, self.session.decode_lock
        if self._decode_inline(snap, predictor, cache, lock):
            return
        self._show_draft(snap, predictor, cache, lock)
        self.preview_runner.start(lambda: self.interactive.preview_job(snap, predictor, cache, lock),
                                  lambda seg: self._show_preview(seg, snap.image), supersede=True)

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
        try:
            result = self.interactive.commit(self.ui.target.value, overwrite=self.ui.overwrite.isChecked(),
                                             clear=False)
        except ValueError as error:
            if self.preview is None or self.preview.is_empty():
                notify_info(str(error))
            else:
                notify_error(error)
            return []
        if result.created or self.ui.target.value is None:
            self.reset_choices()
            self.ui.target.value = result.target
        self.ui.status.setText(result.message)
        self.preview_updated.emit()
        self.clear_prompts()
        self.committed.emit(result.ids)
        return result.ids

    def cancel(self) -> None:
        """Stop the dock's jobs (Cancel, or the image removed mid-run). A commit waiting
        for the preview is dropped, and a draft whose full result was stopped is taken
        away: neither may be committed later."""
        super().cancel()
        self._drop_waiting()

    def clear_prompts(self) -> None:
        """Remove every prompt (``Shift+C``); the preview clears with them."""
        self._quiet = True  # one preview update for both layers, not one per layer
        try:
            self.interactive.clear_prompts()
        finally:
            self._quiet = False
        self._schedule_preview()

    def toggle_polarity(self) -> None:
        """Flip the selected points' polarity, or the next point's (``T``)."""
        message = self.interactive.toggle_polarity()
        if message is not None:
            self.ui.status.setText(message)
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

    def _snapshot(self, prompts: bool = True) -> tuple[Any, PlaneSource, Any]:
        snap = self.interactive.snapshot(prompts)
        return snap.image, snap.source, snap.prompts

    def _check_alive(self, image: Any) -> None:
        self.interactive.check_alive(image)

    def _decode_inline(self, snap: Any, predictor: Any, cache: Any, lock: Any) -> bool:
        """Decode on the GUI thread when the controller can (no preview may run);
        False: use the worker."""
        if self.preview_runner.busy:
            return False
        try:
            seg = self.interactive.decode_inline(snap, predictor, cache, lock)
        except Exception as error:  # as a worker would: a notification, napari goes on
            notify_error(error)
            return True
        if seg is None:
            return False
        self.preview_runner.cancel()  # idle: only makes any late result stale
        try:
            self._show_preview(seg, snap.image)
        except Exception as error:  # as the runner does with a failure showing a result
            notify_error(error)
        return True

    def _show_draft(self, snap: Any, predictor: Any, cache: Any, lock: Any) -> None:
        """Draw a quick draft of ``snap`` if the controller makes one (the full result is
        computed in the worker either way). A draft that fails turns drafts off for this
        image: the worker's full decode of the same prompts reports the error."""
        try:
            seg = self.interactive.decode_draft(snap, predictor, cache, lock)
            if seg is not None:
                self._show_preview(seg, snap.image)
        except Exception:
            self.interactive.draft_ms = float("inf")

    def _show_preview(self, segmentation: Segmentation | None, image: Any) -> None:
        layer, created = self.interactive.show_preview(segmentation, image)
        if created:
            self.wiring.bind([layer, self.points_layer, self.shapes_layer])
        if segmentation is not None and segmentation.draft:
            self.preview_drafted.emit()
            return  # a deferred commit waits for the full result
        self.preview_updated.emit()
        if self._commit_when_ready:
            self._commit_now()  # this is the newest result: stale ones never get here

    def _preview_failed(self, error: BaseException) -> None:
        """The preview worker failed (already notified)."""
        self._drop_waiting("the preview failed")

    def _drop_waiting(self, why: str | None = None) -> None:
        """The full result will not come: a commit waiting for it is dropped (``why`` goes
        to the status line) and a draft drawn for it is taken away, so that neither is
        committed later."""
        if self._commit_when_ready and why:
            self.ui.status.setText(f"nothing committed: {why}")
        self._commit_when_ready = False
        if self.preview is not None and self.preview.draft:
            self._show_preview(None, self.image_layer)

    def _schedule_preview(self) -> None:
        """A prompt changed: segment now, with no delay.

        The request goes to the preview runner's one-slot queue: while a run is in
        flight, a newer request replaces a waiting one and supersedes the running one,
        so a burst of changes costs at most one run beyond the one in flight.
        """
        if self._shut or self._quiet or not self.ui.live.isChecked():
            return
        if self.image_layer is None or (self.points_layer is None and self.shapes_layer is None):
            return  # the live preview stays silent while there is nothing to do
        self.segment()

    def _prompt_layers_changed(self, _value: Any = None) -> None:
        self.wiring.unbind()
        preview = self.viewer.layers[plugin_layers.PREVIEW_NAME] \
            if plugin_layers.PREVIEW_NAME in self.viewer.layers else None
        self.wiring.bind([self.points_layer, self.shapes_layer, preview])
        self.wiring.watch([self.points_layer, self.shapes_layer])
        # after the layer list has settled: closing napari removes every layer in one go,
        # and a preview started between two removals would only be stopped with an error
        QTimer.singleShot(0, self._schedule_preview)

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
            self.interactive.preview_layer_removed()
        if self.interactive.forget_image(layer) and (self.preview_runner.busy or self.runner.busy):
            self.cancel()
            notify_error(f"The image layer '{layer.name}' was removed while it was being "
                         "segmented; the job was stopped and napari is fine.")

    def _model_changed(self, _sam: Any) -> None:
        self._schedule_preview()
