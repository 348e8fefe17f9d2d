"""Interactive segmentation of one viewer: prompts in, a preview, commits out (no Qt).

:class:`InteractiveSegmentation` holds what the "Segment Anything" dock decides and
keeps, apart from its controls and threads:

- which layers are the image and the prompt layers (read through callables, so that
  the dock's dropdowns stay the single place where the user chooses them);
- the snapshot a job works on: the image's current plane geometry, a
  :class:`~napari_samscope._napari.images.PlaneSource` and the collected prompts;
- what to preview: nothing (no prompts), a decode on the calling thread (every
  prompted plane is encoded and the last decode was quick) or a job for a worker,
  shown first as a quick draft when the full decode does more than one decoder pass
  (flip averaging, point refinement, zoom) and a draft is quick;
- the preview layer, in its own colour, and the click memory that feeds the last
  mask back into the next click (:mod:`~napari_samscope._napari.refinement`);
- the commit of a preview into a Labels layer, undoable with Ctrl+Z;
- clearing prompts and the ``T`` key's polarity toggle.

The dock runs the jobs in its workers and shows messages; everything here can be
driven headless on a viewer.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from napari_samscope._napari import engine
from napari_samscope._napari import layers as plugin_layers
from napari_samscope._napari.coords import current_geometry
from napari_samscope._napari.images import ImageSettings, PlaneSource
from napari_samscope._napari.labels import Segmentation, write_preview
from napari_samscope._napari.labels import commit as commit_segmentation
from napari_samscope._napari.prompts import PromptSet, collect_prompts
from napari_samscope._napari.refinement import ClickMemory
from napari_samscope.core.progress import Progress

__all__ = ["InteractiveSegmentation", "INLINE_DECODE_MS", "DRAFT_DECODE_MS", "Snapshot", "CommitResult"]

#: The longest decode (ms, the last one measured) for which the next preview is decoded
#: on the calling (GUI) thread; slower decodes (huge images, many objects) go to a worker.
INLINE_DECODE_MS = 40.0
#: The longest draft (ms, the last one on the image) for which the next prompt gets a
#: draft on the calling thread before its full decode (a draft blocks that thread).
DRAFT_DECODE_MS = 80.0


@dataclass
class Snapshot:
    """What one segmentation works on, taken when it was asked for."""

    image: Any
    source: PlaneSource
    prompts: PromptSet | None


@dataclass
class CommitResult:
    """A commit: the ids written and the layer they went into (``None``: nothing)."""

    ids: list[int]
    target: Any = None
    created: bool = False

    @property
    def message(self) -> str:
        if self.target is None:
            return ""
        if not self.ids:
            return "nothing committed: every pixel was already labelled"
        return f"committed {self.ids} into '{self.target.name}'"


class InteractiveSegmentation:
    """The state and decisions of interactive segmentation on ``viewer``.

    Args:
        viewer: the napari viewer.
        image, points, shapes: callables returning the chosen image / Points / Shapes
            layer (or ``None``).
        settings: callable returning the image conversion :class:`ImageSettings`.
        embeddings: callable returning the path of an embeddings file ("" for none).
    """

    def __init__(
        self,
        viewer: Any,
        *,
        image: Callable[[], Any],
        points: Callable[[], Any],
        shapes: Callable[[], Any],
        settings: Callable[[], ImageSettings] = ImageSettings,
        embeddings: Callable[[], str] = str,
    ) -> None:
        self.viewer = viewer
        self._image, self._points, self._shapes = image, points, shapes
        self._settings, self._embeddings = settings, embeddings
        #: The objects shown in the preview layer (``None``: no preview).
        self.preview: Segmentation | None = None
        #: Decode on the calling thread when the last decode took at most this (0: never).
        self.inline_decode_ms = INLINE_DECODE_MS
        #: The last decode's duration (ms), from either path.
        self.decode_ms = float("inf")
        #: Show a draft (one decoder pass, on the calling thread) while a full decode
        #: runs in a worker when the last draft of this image took at most this (0: never).
        self.draft_decode_ms = DRAFT_DECODE_MS
        #: The last draft's duration (ms) on the active image (0 before the first).
        self.draft_ms = 0.0
        #: The last masks of the prompted objects, fed back with the next click.
        self.memory = ClickMemory()
        #: The image the last snapshot was taken of (to tell a removed image apart).
        self.active_image: Any = None
        self._drawn: list[Any] = []

    # ------------------------------------------------------------------ layers

    @property
    def image_layer(self) -> Any:
        return self._image()

    @property
    def points_layer(self) -> Any:
        return self._points()

    @property
    def shapes_layer(self) -> Any:
        return self._shapes()

    def require_image(self) -> Any:
        image = self.image_layer
        if image is None:
            raise ValueError("Choose an image layer first (add one to the viewer).")
        return image

    def geometry(self, image: Any) -> Any:
        """``image``'s plane geometry at the viewer's current position."""
        return current_geometry(image, self.viewer.dims.order, self.viewer.dims.point,
                                channel_axis=self._settings().channel_axis)

    def make_prompt_layers(self, points: bool, shapes: bool) -> tuple[Any, Any]:
        """Add new "SAM points" (active, in add mode) and/or "SAM boxes" layers for the
        image; returns the new layers (``None`` for one not asked for)."""
        image = self.require_image()
        geometry = self.geometry(image)
        new_points = new_shapes = None
        if points:
            new_points = self.viewer.add_layer(plugin_layers.make_points_layer(image, geometry))
            new_points.mode = "add"
        if shapes:
            new_shapes = self.viewer.add_layer(plugin_layers.make_shapes_layer(image, geometry))
        if new_points is not None:  # the next click adds a point
            self.viewer.layers.selection.active = new_points
        return new_points, new_shapes

    def activate_points(self) -> None:
        """Make the points layer active so that the next click adds a prompt."""
        if self.points_layer is not None and self.points_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.points_layer

    def check_alive(self, image: Any) -> None:
        if image not in self.viewer.layers:
            raise ValueError(f"The image layer '{image.name}' was removed while it was being "
                             "segmented; the result was discarded.")

    # ------------------------------------------------------------------ preview

    def snapshot(self, prompts: bool = True) -> Snapshot:
        """The image, its plane source and (with ``prompts``) the prompts, as they are now."""
        image = self.require_image()
        geometry = self.geometry(image)
        source = PlaneSource.from_layer(image, geometry, self._settings(), embeddings=self._embeddings())
        if image is not self.active_image:
            self.draft_ms = 0.0  # another image: its drafts may be quick again
        self.active_image = image
        self.memory.switch(image)
        found = None
        if prompts:
            found = collect_prompts(image, geometry, self.viewer.dims.point,
                                    self.points_layer, self.shapes_layer)
        return Snapshot(image, source, found)

    def decode_inline(self, snap: Snapshot, predictor: Any, cache: Any, lock: Any) -> Segmentation | None:
        """Decode ``snap`` on the calling thread if every prompted plane is encoded, the
        predictor is free (``lock`` taken without waiting) and the last decode was quick;
        ``None``: it belongs in a worker (:meth:`preview_job`). Decode errors propagate."""
        if self.decode_ms > self.inline_decode_ms or snap.prompts is None:
            return None
        embeddings = engine.cached_embeddings(predictor, cache, snap.source, snap.prompts.prompted_planes)
        if embeddings is None or not lock.acquire(blocking=False):
            return None
        try:
            return self._timed_decode(predictor, embeddings, snap)
        finally:
            lock.release()

    def decode_draft(self, snap: Snapshot, predictor: Any, cache: Any, lock: Any) -> Segmentation | None:
        """A quick draft of ``snap`` on the calling thread, to show while the full
        decode runs in a worker (``Predictor.predict(draft=True)``: one decoder pass,
        :attr:`Segmentation.draft` set), or ``None``: drafts are off, a plane is not
        encoded, the predictor is busy (``lock`` not free at once), the full decode
        would be the same one pass, or this image's last draft was slow. Decode errors
        propagate."""
        if (self.draft_decode_ms <= 0 or self.draft_ms > self.draft_decode_ms
                or snap.prompts is None):
            return None
        from napari_samscope.core.predict.object_decode import draft_is_cheaper

        embeddings = engine.cached_embeddings(predictor, cache, snap.source, snap.prompts.prompted_planes)
        if embeddings is None or not any(draft_is_cheaper(predictor, e) for e in embeddings.values()):
            return None
        if not lock.acquire(blocking=False):
            return None
        try:
            started = perf_counter()
            seg = engine.decode_planes(predictor, embeddings, snap.prompts, snap.source.geometry,
                                       memory=self.memory, draft=True)
            self.draft_ms = (perf_counter() - started) * 1000.0
            return seg
        finally:
            lock.release()

    def preview_job(self, snap: Snapshot, predictor: Any, cache: Any,
                    lock: Any) -> Generator[Progress, None, Segmentation]:
        """The preview of ``snap`` as a job: encodes the planes it needs, then decodes."""
        prompts = snap.prompts
        if prompts is None:
            raise ValueError("The snapshot was taken without prompts.")
        if engine.uses_tiles(predictor, snap.source):  # large lazy layer or embeddings file
            return (yield from engine.segment_tiled_iter(predictor, snap.source, prompts))
        embeddings = {}
        for key in prompts.prompted_planes:
            embeddings[key] = yield from engine.embedding_iter(predictor, cache, snap.source, key)
        return self._timed_decode(predictor, embeddings, snap, lock)

    def _timed_decode(self, predictor: Any, embeddings: dict, snap: Snapshot, lock: Any = None) -> Segmentation:
        started = perf_counter()
        seg = engine.decode_planes(predictor, embeddings, snap.prompts, snap.source.geometry, lock,
                                   memory=self.memory)
        self.decode_ms = (perf_counter() - started) * 1000.0
        return seg

    def show_preview(self, segmentation: Segmentation | None, image: Any) -> tuple[Any, bool]:
        """Draw ``segmentation`` (``None``: clear) in the preview layer, made for
        ``image`` on first use in the preview colour; the active layer stays active.
        Returns ``(preview layer or None, created)``."""
        if segmentation is not None:
            self.check_alive(image)
        layer, created = self._preview_layer(segmentation)
        if layer is not None:
            self._drawn = write_preview(layer, segmentation, self._drawn)
        self.preview = segmentation
        return layer, created

    def _preview_layer(self, segmentation: Segmentation | None) -> tuple[Any, bool]:
        name = plugin_layers.PREVIEW_NAME
        if segmentation is None:
            return (self.viewer.layers[name] if name in self.viewer.layers else None), False
        layer, created = plugin_layers.ensure_plugin_labels(
            self.viewer, name, self.require_image(), segmentation.geometry, "uint8", opacity=0.6,
            colormap=plugin_layers.preview_colormap())
        if created:
            self._drawn = []
            self.activate_points()
        return layer, created

    def preview_layer_removed(self) -> None:
        """The preview layer left the viewer: nothing of it is drawn any more."""
        self._drawn = []

    # ------------------------------------------------------------------ commit, prompts

    def commit(self, target: Any, *, overwrite: bool = False, clear: bool = True) -> CommitResult:
        """Write the preview into ``target`` (``None``: the plugin's "SAM labels" layer,
        made if needed, while the prompt layers stay active) with ``data_setitem``, so
        that Ctrl+Z undoes it; then clear the preview and (with ``clear``) the prompts.
        Raises ``ValueError`` when there is nothing to commit or the layers do not match."""
        if self.preview is None or self.preview.is_empty():
            raise ValueError("Nothing to commit: add prompts and wait for the preview.")
        if self.preview.draft:
            raise ValueError("The preview is still a quick draft: wait for the full result "
                             "(or press S to segment again), then commit.")
        image = self.require_image()
        created = False
        if target is None:
            target, created = plugin_layers.ensure_plugin_labels(
                self.viewer, plugin_layers.LABELS_NAME, image, self.preview.geometry)
        ids = commit_segmentation(target, self.preview, overwrite=overwrite)
        self.show_preview(None, image)
        self.memory.clear()
        if clear:
            self.clear_prompts()
        return CommitResult(ids, target, created)

    def clear_prompts(self) -> None:
        """Remove every prompt from the prompt layers and forget the click memory."""
        plugin_layers.clear_prompts(self.points_layer, self.shapes_layer)
        self.memory.clear()

    def toggle_polarity(self) -> str | None:
        """``T``: the next point's polarity, or flip the selected points in select mode
        (:func:`~napari_samscope._napari.layers.toggle_polarity`); ``None``: no points layer."""
        if self.points_layer is None:
            return None
        return plugin_layers.toggle_polarity(self.points_layer)

    def forget_image(self, layer: Any) -> bool:
        """``layer`` left the viewer; True if it was the image being segmented."""
        if layer is not self.active_image:
            return False
        self.active_image = None
        self.memory.switch(None)
        return True
