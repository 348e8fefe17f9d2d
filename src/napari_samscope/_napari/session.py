"""One model session per viewer, shared by every samscope widget.

``get_session(viewer)`` returns the viewer's :class:`ModelSession`: the loaded model
(``core.sam_api.SAM``), its :class:`~napari_samscope.core.predict.predictor.Predictor`, the
per-plane embedding cache, and the list of models for the dropdowns. The main
widget, the segment-everything widget, the fine-tuning widget and the
auto-annotation widget all use it, so a model is loaded once and the embeddings of a
plane are computed once.

Loading runs in a napari worker (``load`` returns it, not started); the session's
``model_changed`` signal fires on the GUI thread when a model is in place.
Nothing here imports torch until a model is loaded or set.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import Any

from psygnal import Signal

from napari_samscope.core.progress import Progress
from napari_samscope.core.units import MB

__all__ = [
    "ModelSession",
    "ModelChoice",
    "get_session",
    "unwrap_viewer",
    "DEFAULT_CACHE_MB",
    "DEVICES",
]

#: Default bound of the embedding cache, in MB (10^6 bytes).
DEFAULT_CACHE_MB = 1024
#: Devices offered by the widgets.
DEVICES = ("auto", "cpu", "cuda", "mps")

_SESSIONS: dict[int, ModelSession] = {}


class ModelChoice:
    """One entry of the model dropdown: a registry model and whether it is cached."""

    def __init__(
        self,
        name: str,
        cached: bool,
        description: str = "",
        default: bool = False,
        source: str = "download",
        size: int | None = None,
    ):
        self.name = name
        self.cached = cached
        self.description = description
        self.default = default
        self.source = source
        self.size = size

    @property
    def label(self) -> str:
        """Text for the dropdown, e.g. ``"vit_b - not cached (downloads 375 MB)"``."""
        if self.cached:
            state = "cached"
        elif self.source == "download":
            size = f" {self.size / MB:.0f} MB" if self.size else ""
            state = f"not cached (downloads{size})"
        else:
            state = "not installed"
        return f"{self.name}{' (default)' if self.default else ''} - {state}"

    def __repr__(self) -> str:
        return f"ModelChoice({self.name!r}, cached={self.cached})"


class ModelSession:
    """The model, predictor and embedding cache shared by the widgets of one viewer.

    The model *chosen* in the widgets (``selected_model``) is part of the session too,
    so that every dock of the viewer shows and loads the same one.

    Signals:
        model_changed(object): the new ``SAM`` (or ``None``), on the GUI thread.
        models_changed(): the list of models changed (a model was added).
        cache_changed(int, int): bytes held and the bound, after a change.
        selection_changed(object): the registry name chosen in a model dropdown.
        scale_changed(object): the input scale chosen (``"auto"``, ``"fill"`` or a number).
        flips_changed(object): the flips chosen (1, 2, 4, or None: each model's own).
        zoom_changed(object): the zoom chosen (a float >= 1, 1.0 off, or None: each model's own).
    """

    model_changed = Signal(object)
    models_changed = Signal()
    cache_changed = Signal(int, int)
    selection_changed = Signal(object)
    scale_changed = Signal(object)
    flips_changed = Signal(object)
    zoom_changed = Signal(object)

    def __init__(self, cache_mb: float = DEFAULT_CACHE_MB) -> None:
        self.sam: Any = None
        self.predictor: Any = None
        self._factory: Any = None
        self.device = "auto"
        #: Guards the shared predictor's current embedding (set_embedding + predict).
        self.decode_lock = threading.Lock()
        self._cache: Any = None
        self._cache_bytes = int(cache_mb * MB)
        #: The registry name chosen in the widgets' model dropdowns (``None``: none yet).
        self.selected_model: str | None = None
        #: True while a widget is loading a model for this session.
        self.loading = False
        self._after_load: list[Any] = []
        #: How images go into the model input, for every predictor of the session:
        #: ``"auto"`` (the scale the model declares; SAM's "fill" for models that declare
        #: none), ``"fill"`` or a magnification (``core.predict.input_scale``).
        self.scale: str | float = "auto"
        #: Orientations averaged for every prompt (``core.predict.flips``): 1, 2 or 4, or
        #: None for each model's own choice (2 for the default model, 1 for SAM).
        self.flips: int | None = None
        #: Zoom for box prompts and refined clicks (``core.predict.zoom``): 1.0 (off, the
        #: default: a zoomed click encodes a crop first), a factor > 1, or None for each
        #: model's own choice (2 for the default model, 1 for SAM). A ``SAM`` given to
        #: :meth:`set_model` with ``zoom`` set makes its zoom the session's.
        self.zoom: float | None = 1.0

    # ------------------------------------------------------------------ choosing and loading

    def select_model(self, name: str | None) -> None:
        """Choose ``name`` in every model dropdown of the viewer (it is loaded on demand)."""
        if name != self.selected_model:
            self.selected_model = name
            self.selection_changed.emit(name)

    def set_scale(self, value: str | float) -> None:
        """Use the input scale ``value`` (``"auto"``, ``"fill"``, a magnification or its
        text, such as ``"2x"``) from now on, for the loaded model and the next ones.
        Embeddings made at another scale stay cached under their own key.

        Raises:
            ValueError: not a valid scale (the current one stays).
        """
        from napari_samscope._napari.options import parse_scale

        scale = parse_scale(value)
        with self.decode_lock:
            self.scale = scale
            if self.sam is not None:
                self.sam.scale = scale
            if self.predictor is not None and hasattr(self.predictor, "scale"):
                self.predictor.scale = scale
        self.scale_changed.emit(scale)

    def set_flips(self, value: Any) -> None:
        """Average ``value`` orientations for every prompt from now on (1, 2, 4, their
        text, or None / ``"auto"`` for each model's own choice), for the loaded model and
        the next ones. Embeddings made with other flips stay cached under their own key.

        Raises:
            ValueError, TypeError: not a valid number of flips (the current one stays).
        """
        from napari_samscope.core.predict.flips import check_flips, declared_flips

        if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "")):
            flips = None
        else:
            flips = check_flips(int(value) if isinstance(value, str) and value.strip().isdigit() else value)
        with self.decode_lock:
            self.flips = flips
            if self.sam is not None:
                self.sam.flips = flips
            if self.predictor is not None and hasattr(self.predictor, "flips"):
                self.predictor.flips = declared_flips(self.sam) if flips is None else flips
        self.flips_changed.emit(flips)

    def set_zoom(self, value: Any) -> None:
        """Decode box prompts and refined clicks also on crops magnified ``value`` times
        more than the plane from now on (1 or ``"off"``: not; a number >= 1 or its text,
        such as ``"2x"``; None / ``"auto"`` for each model's own choice), for the loaded
        model and the next ones. Crops encoded at another zoom are not reused.

        Raises:
            ValueError, TypeError: not a valid zoom (the current one stays).
        """
        from napari_samscope._napari.options import parse_zoom

        zoom = parse_zoom(value)
        with self.decode_lock:
            self.zoom = zoom
            if self.predictor is not None:
                _with_spec(self.predictor, self.sam, zoom)
        self.zoom_changed.emit(zoom)

    def set_loading(self, loading: bool) -> None:
        """A widget started (True) or ended (False) loading a model; when a load ends
        without a model being set (it failed or was cancelled), waiting actions are dropped."""
        self.loading = bool(loading)
        if not loading:
            self._after_load = []

    def after_load(self, action: Any) -> None:
        """Run ``action()`` once the model being loaded is in place (dropped if it fails)."""
        self._after_load.append(action)

    # ------------------------------------------------------------------ models

    @property
    def model_name(self) -> str | None:
        return None if self.sam is None else self.sam.name

    def models(self) -> list[ModelChoice]:
        """Registry models for the dropdown: the project default first, then general models,
        then the microscopy models grouped by domain (their instance decoders are not
        listed: they come with their SAM model)."""
        from napari_samscope.core.weights.registry import DEFAULT_MODEL, list_models

        models = [m for m in list_models() if m.arch != "unetr_decoder"]  # decoders come with
        models.sort(key=lambda m: (m.name != DEFAULT_MODEL, m.domain))  # their SAM; by domain
        return [
            ModelChoice(m.name, m.cached, m.description, m.name == DEFAULT_MODEL, m.source, m.size)
            for m in models
        ]

    def add_model(self, name: str, path: str | Path, description: str = "") -> Any:
        """Register a model file (e.g. a fine-tuned one) so it appears in the dropdowns.

        Returns the registry's ``ModelSpec``. Raises ``ValueError`` / ``FileNotFoundError``
        for a reserved name or a missing file.
        """
        from napari_samscope.core.weights.registry import register_local_model

        spec = register_local_model(name, path, description)
        self.models_changed.emit()
        return spec

    def set_model(
        self, model: Any, name: str | None = None, predictor_factory: Any = None
    ) -> None:
        """Use ``model`` from now on: a ``SAM``, a ``Sam`` module, or a ``LoadedModel``.

        ``predictor_factory`` (default ``core.predictor.Predictor``) makes the session's
        predictors from the model; a ``Predictor`` subclass can be given (tests use
        one that segments by design). Embeddings of the previous model stay cached
        (keyed by model) but are not used by this one. A ``SAM`` with ``zoom`` set (in the
        console) makes that zoom the session's. Emits ``model_changed`` (and
        ``zoom_changed`` when the zoom changed).
        """
        from napari_samscope.core.modeling.sam import Sam
        from napari_samscope.core.predict.predictor import Predictor
        from napari_samscope.core.predict.sam_api import SAM
        from napari_samscope.core.weights.loader import LoadedModel

        if isinstance(model, LoadedModel):
            sam = SAM.from_sam(
                model.sam, model.name, dtype=model.dtype, spec=model.spec, path=model.path
            )
        elif isinstance(model, Sam):
            sam = SAM.from_sam(model, name or "custom")
        elif isinstance(model, SAM):
            sam = model
        else:
            raise TypeError(
                f"set_model() needs a SAM, a Sam module or a LoadedModel, not {type(model).__name__}."
            )
        if name is not None:
            sam.name = name
        sam.scale = self.scale  # the session's choice reaches every predictor of the model
        sam.flips = self.flips
        told = sam.zoom is not None and sam.zoom != self.zoom  # set on the model (console)
        factory = predictor_factory or Predictor
        with self.decode_lock:
            self.sam = sam
            if told:
                self.zoom = sam.zoom  # the user's word on the model: the boxes show it
            self._factory = factory
            self.predictor = _with_spec(factory(sam), sam, self.zoom)
        self.model_changed.emit(sam)
        if told:
            self.zoom_changed.emit(self.zoom)
        waiting, self._after_load = self._after_load, []
        for action in waiting:
            action()

    def load_iter(
        self, model: str | Path | None = None, device: str = "auto", dtype: Any = "default"
    ) -> Generator[Progress, None, Any]:
        """The loading job (downloads if needed): yields progress, returns a ``SAM`` with
        its instance decoder when the checkpoint or the registry has one (fetched here, in
        the worker, not on the GUI thread; a decoder download yields its byte progress
        like the model's, and a failed one raises ``DownloadError`` naming the exact path
        to put the file at).

        ``dtype`` as in ``core.loader.load_sam``: ``"default"`` is bf16 autocast on
        hardware that computes it natively for registry models verified in bf16
        (``ModelSpec.auto_bf16``), float32 otherwise; ``"float32"`` forces float32.
        """
        from napari_samscope.core.instances.api import load_instance_decoder_iter
        from napari_samscope.core.predict.sam_api import SAM
        from napari_samscope.core.weights.loader import load_sam_iter

        loaded = yield from load_sam_iter(model, device=device, dtype=dtype)
        sam = SAM.from_sam(loaded.sam, loaded.name, dtype=loaded.dtype, spec=loaded.spec,
                           path=loaded.path)
        sam.set_instance_decoder((yield from load_instance_decoder_iter(loaded)))
        return sam

    def load(
        self, model: str | Path | None = None, device: str = "auto", dtype: Any = "default"
    ) -> Any:
        """A napari worker (not started) that loads ``model`` and then sets it.

        Connect to its ``yielded`` (``Progress``) and ``errored`` signals, then
        ``start()`` it. A failed load leaves the current model in place.
        """
        from napari.qt.threading import create_worker

        worker = create_worker(self.load_iter, model, device, dtype, _ignore_errors=True)
        worker.returned.connect(self.set_model)
        self.device = device
        return worker

    def new_predictor(self) -> Any:
        """A separate predictor on the same model (for long jobs that set their own image)."""
        sam = self.require_model()
        return _with_spec(self._factory(sam), sam, self.zoom)

    def require_model(self) -> Any:
        """The current ``SAM``; raises ``ValueError`` with what to do when none is loaded."""
        if self.sam is None:
            raise ValueError("No model is loaded: choose a model and press 'Load' first.")
        return self.sam

    # ------------------------------------------------------------------ embeddings

    @property
    def cache(self) -> Any:
        """The embedding cache (``core.volume.EmbeddingCache``), made on first use."""
        if self._cache is None:
            from napari_samscope.core.volume import EmbeddingCache

            self._cache = EmbeddingCache(max_bytes=self._cache_bytes)
        return self._cache

    @property
    def cache_limit(self) -> int:
        return self._cache_bytes

    def set_cache_limit(self, max_bytes: int) -> None:
        """Bound the embedding cache (least recently used planes are dropped first)."""
        if max_bytes < 0:
            raise ValueError(f"The cache bound must be >= 0 bytes, not {max_bytes}.")
        self._cache_bytes = int(max_bytes)
        if self._cache is not None:
            self._cache.max_bytes = self._cache_bytes
        self.notify_cache()

    def cache_nbytes(self) -> int:
        return 0 if self._cache is None else int(self._cache.nbytes)

    def notify_cache(self) -> None:
        """Emit ``cache_changed`` with the current figures."""
        self.cache_changed.emit(self.cache_nbytes(), self._cache_bytes)


def _with_spec(predictor: Any, sam: Any, zoom: float | None) -> Any:
    """``predictor`` carrying ``sam``'s registry entry as ``predictor.spec`` (when it has
    none), so that segment-everything on it uses the model's recommended parameters
    (``core.everything.model_everything_defaults``), and zooming by the session's
    ``zoom`` (None: the model's own choice, ``core.predict.zoom.declared_zoom``). The
    session's default is 1 (off), not the model's choice: a zoomed click encodes a crop
    first (about a third of a second for the first click in each region of a plane)."""
    if getattr(predictor, "spec", None) is None:
        predictor.spec = getattr(sam, "spec", None)
    if hasattr(predictor, "zoom"):
        from napari_samscope.core.predict.zoom import declared_zoom

        predictor.zoom = declared_zoom(sam) if zoom is None else zoom
    return predictor


def unwrap_viewer(viewer: Any) -> Any:
    """The viewer itself when napari hands plugins a ``PublicOnlyProxy`` of it.

    Every widget of a viewer must see the same objects (layers compared by identity,
    one session), whichever proxy it was given.
    """
    return getattr(viewer, "__wrapped__", viewer)


def get_session(viewer: Any) -> ModelSession:
    """The :class:`ModelSession` of ``viewer`` (created on first use, dropped with it)."""
    viewer = unwrap_viewer(viewer)
    key = id(viewer)
    session = _SESSIONS.get(key)
    if session is None:
        session = _SESSIONS[key] = ModelSession()
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return session
