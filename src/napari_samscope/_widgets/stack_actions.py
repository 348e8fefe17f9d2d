"""The stack actions of the main widget: precompute embeddings, segment all slices.

A mixin of :class:`~napari_samscope._widgets.main_widget.SegmentAnythingWidget` (it
uses the widget's session, runner, snapshot and preview), kept apart so that each
file stays small. Like every action, both load the chosen model first when none is
loaded.
"""

from __future__ import annotations

from typing import Any

from napari_samscope._napari import engine
from napari_samscope._widgets.main_ui import PROPAGATION_LABELS
from napari_samscope._widgets.workers import notify_error, notify_info
from napari_samscope.core.units import MB

__all__ = ["StackActions"]


class StackActions:
    """``segment_all_slices`` (``Shift+S``), ``precompute`` and the cache figure."""

    session: Any
    ui: Any
    runner: Any
    preview_runner: Any

    def segment_all_slices(self) -> None:
        """Propagate the prompted object through the stack into the preview (``Shift+S``)."""
        if not self.with_model(self.segment_all_slices):
            return
        try:
            image, source, prompts = self._snapshot()
            predictor = self.session.new_predictor()
        except ValueError as error:
            notify_error(error)
            return
        mode = PROPAGATION_LABELS[self.ui.mode.currentText()].value
        iou = float(self.ui.iou.value())
        cache = self.session.cache
        self.preview_runner.cancel()
        self.start_job(self.runner, lambda: engine.propagate_prompts_iter(
            predictor, cache, source, prompts, mode=mode, iou_threshold=iou),
            lambda seg: self._show_preview(seg, image), label="segmenting all slices")

    def precompute(self) -> None:
        """Encode every plane of the stack through the current plane (cancellable)."""
        if not self.with_model(self.precompute):
            return
        try:
            image, source, _ = self._snapshot(prompts=False)
            predictor = self.session.new_predictor()
        except ValueError as error:
            notify_error(error)
            return
        cache = self.session.cache

        def done(count: int) -> None:
            self._check_alive(image)
            self.ui.status.setText(f"{count} plane(s) encoded and cached")
            notify_info(f"Embeddings ready: {count} plane(s) of '{image.name}' encoded and cached.")

        self.start_job(self.runner, lambda: engine.precompute_iter(predictor, cache, source), done,
                       label="precomputing embeddings (the planes encoded so far stay cached)")

    def _show_cache(self, nbytes: int, limit: int) -> None:
        self.ui.cache_label.setText(f"embeddings: {nbytes / MB:.1f} MB of {limit / MB:.0f} MB")
