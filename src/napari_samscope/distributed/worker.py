"""What a worker process keeps between tasks: its model, loaded once.

A task names the model by a :class:`ModelRef` (a registry name or a checkpoint path, the
device and the dtype request), never by the weights themselves: the model is resolved
where the worker runs (its own weight cache, ``SAMSCOPE_CACHE_DIR``, or a path on a
shared file system) and kept in a per-process cache keyed by the reference, so the
tasks that run on a worker after the first one reuse it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LazyPredictor",
    "ModelRef",
    "cached_model",
    "cached_predictor",
    "clear_cache",
    "load_count",
]

_PREDICTORS: dict[tuple[Any, ...], Any] = {}
_LOADS = [0]  # models this process has loaded since it started or was cleared


@dataclass(frozen=True)
class ModelRef:
    """A model as the workers load it.

    ``model`` is None (the project default model), a registry name or alias, or a
    checkpoint path (absolute, so that every worker reads the same file on a shared
    file system). ``device`` ``""`` picks automatically on each worker; ``dtype`` is the
    request of :class:`~napari_samscope.core.predict.sam_api.SAM` (``"default"``...).
    """

    model: str | None = None
    device: str = ""
    dtype: str = "default"

    @classmethod
    def of(cls, model: Any, device: str = "", dtype: str = "default") -> ModelRef:
        """The reference for a user's model argument (a name, a path or None).

        Raises:
            TypeError: a model object: the workers must load the model themselves.
        """
        if model is None:
            return cls(None, device or "", dtype)
        if isinstance(model, str | os.PathLike):
            text = os.fspath(model)
            local = Path(text).expanduser()
            if local.exists():  # a file here: give the workers its absolute path
                text = str(local.absolute())
            return cls(text, device or "", dtype)
        raise TypeError(
            f"with a scheduler, give the model as a registry name or a checkpoint path, not a "
            f"{type(model).__name__}: each worker loads the model itself"
        )

    def cache_key(self) -> tuple[Any, ...]:
        """The reference plus the file's size and time, so that a rewritten checkpoint reloads."""
        stamp: tuple[int, int] | None = None
        if self.model is not None:
            try:
                info = os.stat(self.model)
                stamp = (info.st_size, info.st_mtime_ns)
            except OSError:
                stamp = None
        return (self.model, self.device, self.dtype, stamp)


def cached_predictor(ref: ModelRef) -> Any:
    """This process's :class:`~napari_samscope.core.predict.predictor.Predictor` for ``ref``.

    Raises:
        ValueError: the model cannot be loaded here (the message names the worker).
    """
    key = ref.cache_key()
    predictor = _PREDICTORS.get(key)
    if predictor is None:
        predictor = _load(ref)
        _PREDICTORS[key] = predictor
        _LOADS[0] += 1
    return predictor


def cached_model(ref: ModelRef) -> Any:
    """This process's :class:`~napari_samscope.core.predict.sam_api.SAM` for ``ref``, loaded
    as the ``samscope`` commands load it (``SAM(model, device, dtype)``).

    Raises:
        ValueError: the model cannot be loaded here (the message names the worker).
    """
    key = ("SAM", *ref.cache_key())
    model = _PREDICTORS.get(key)
    if model is None:
        model = _load(ref, as_sam=True)
        _PREDICTORS[key] = model
        _LOADS[0] += 1
    return model


def _load(ref: ModelRef, as_sam: bool = False) -> Any:
    from napari_samscope.core.predict.resolve import as_predictor

    try:
        if as_sam:
            from napari_samscope.core.predict.sam_api import SAM

            return SAM(ref.model, device=ref.device or "auto", dtype=ref.dtype)
        if ref.dtype == "default":  # as auto_annotate resolves a name or a path
            return as_predictor(ref.model, device=ref.device or "auto")
        from napari_samscope.core.predict.sam_api import SAM

        return as_predictor(SAM(ref.model, device=ref.device or "auto", dtype=ref.dtype))
    except Exception as exc:
        where = f"{socket.gethostname()} (process {os.getpid()})"
        shown = "the default model" if ref.model is None else repr(ref.model)
        raise ValueError(
            f"the worker on {where} could not load {shown}: {' '.join(str(exc).split())}. "
            "Every worker loads the model itself: give a checkpoint path that the workers can "
            "read (a shared file system), or point SAMSCOPE_CACHE_DIR on the workers to a "
            "folder that holds the weights"
        ) from None


def clear_cache() -> None:
    """Forget this process's models (tests, or to free memory on a long-lived worker)."""
    _PREDICTORS.clear()
    _LOADS[0] = 0


def load_count() -> int:
    """How many models this process has loaded (since it started or :func:`clear_cache`)."""
    return _LOADS[0]


class LazyPredictor:
    """Stands for :func:`cached_predictor` ``(ref)`` and loads it at its first use.

    Handed to the core job as its model, so that a task whose outputs all exist (a
    rerun) never loads the model.
    """

    def __init__(self, ref: ModelRef) -> None:
        self._ref = ref

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(cached_predictor(self._ref), name)

