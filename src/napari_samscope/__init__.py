"""napari-samscope: Segment Anything (SAM, MobileSAM) for the microscope.

The public names are imported lazily so that ``import napari_samscope`` (and
napari's start-up, which imports the package to read its manifest) does not
import torch until a model is actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY: dict[str, str] = {
    "SAM": "napari_samscope.core.predict.sam_api:SAM",
    "Predictor": "napari_samscope.core.predict.predictor:Predictor",
    "Prediction": "napari_samscope.core.predict.results:Prediction",
    "MaskGenerator": "napari_samscope.core.everything.generator:MaskGenerator",
    "auto_annotate": "napari_samscope.core.datasets.annotate:auto_annotate",
    "list_models": "napari_samscope.core.weights.registry:list_models",
    "instances_from_maps": "napari_samscope.core.instances.postprocess:instances_from_maps",
    # napari console helpers (import napari when first used)
    "segment_image_layer": "napari_samscope._napari.api:segment_image_layer",
    "segment_everything_layer": "napari_samscope._napari.api:segment_everything_layer",
    "segment_stack_layer": "napari_samscope._napari.api:segment_stack_layer",
}

__all__ = [
    "__version__",
    "SAM",
    "Predictor",
    "Prediction",
    "MaskGenerator",
    "auto_annotate",
    "list_models",
    "instances_from_maps",
    "segment_image_layer",
    "segment_everything_layer",
    "segment_stack_layer",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_samscope._napari.api import (
        segment_everything_layer,
        segment_image_layer,
        segment_stack_layer,
    )
    from napari_samscope.core.datasets.annotate import auto_annotate
    from napari_samscope.core.everything.generator import MaskGenerator
    from napari_samscope.core.instances.postprocess import instances_from_maps
    from napari_samscope.core.predict.predictor import Predictor
    from napari_samscope.core.predict.results import Prediction
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.weights.registry import list_models


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'napari_samscope' has no attribute {name!r}") from None
    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
