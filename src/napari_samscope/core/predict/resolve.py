"""One rule for turning whatever a user passes as "the model" into a :class:`Predictor`.

Accepted everywhere a model argument appears (segment-everything, auto-annotate, the
napari console helpers, the CLI):

- a :class:`Predictor` (used as it is, with its current image restored by callers that
  set their own);
- a :class:`~napari_samscope.core.predict.sam_api.SAM` or any wrapper with a ``model``
  attribute holding a :class:`Sam` (its device, dtype and registry entry are kept);
- a bare :class:`Sam` module (float32 on its device);
- a registry name or alias, a checkpoint path, or None for the default model (loaded
  with :func:`~napari_samscope.core.weights.loader.load_sam`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari_samscope.core.modeling.sam import Sam
from napari_samscope.core.predict.predictor import Predictor

__all__ = ["as_predictor", "is_predictor"]


def is_predictor(model: Any) -> bool:
    """Whether ``model`` is a :class:`Predictor` or an object with its interface."""
    if isinstance(model, Predictor):
        return True
    return all(hasattr(model, name) for name in ("decode", "encode", "set_embedding"))


def as_predictor(
    model: Any = None, *, device: Any = "auto", dtype: Any = "default", progress: Any = None,
    scale: Any = None,
) -> Any:
    """A predictor for ``model`` (see the module docstring for what is accepted).

    ``device``, ``dtype`` and ``progress`` only apply when a model has to be loaded from
    a name or a file (as in :class:`~napari_samscope.core.predict.sam_api.SAM`).
    ``scale`` (``"auto"``, ``"fill"`` or a magnification) becomes the predictor's
    :attr:`~Predictor.scale` (a given predictor's is changed); None keeps the default
    (``"auto"`` for models that declare their scale, else ``"fill"``).

    Raises:
        TypeError: ``model`` is none of the accepted kinds.
    """
    if is_predictor(model):
        if scale is not None:
            model.scale = scale
        return model
    if isinstance(model, Sam) or isinstance(getattr(model, "model", None), Sam):
        return Predictor(model, scale=scale)
    if model is None or isinstance(model, (str, Path, os.PathLike)):
        from napari_samscope.core.predict.input_scale import check_scale
        from napari_samscope.core.weights.loader import load_sam

        if scale is not None:
            check_scale(scale)  # a bad scale fails before any loading
        loaded = load_sam(model, device=device, dtype=dtype, progress=progress)
        return Predictor(
            loaded.sam, device=loaded.device, dtype=loaded.dtype, spec=loaded.spec,
            scale=scale, input_scale=loaded.input_scale,
        )
    raise TypeError(
        "Expected a model name or checkpoint path, a SAM, a Sam module or a Predictor, "
        f"not {type(model).__name__}."
    )
