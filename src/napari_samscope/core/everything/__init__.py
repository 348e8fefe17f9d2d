"""Segment everything: a grid of point prompts through the mask decoder, filtered and
de-duplicated into a set of objects (:class:`MaskGenerator`), with its typed parameters
(:class:`EverythingParams`), the compact mask records it returns and the mask utilities
(NMS, stability, crops) it uses.

Names are imported on first use, so that ``core.everything.params`` (imported by the
registry) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "EVERYTHING_DEFAULTS": "params",
    "EverythingParams": "params",
    "EverythingResult": "records",
    "MaskGenerator": "generator",
    "MaskRecord": "records",
    "model_everything_defaults": "generator",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_PUBLIC[name]}")
    return getattr(module, name)
