"""Segment everything: a grid of point prompts through the mask decoder, filtered and
de-duplicated into a set of objects (:class:`MaskGenerator`), with the compact mask
records it returns and the mask utilities (NMS, stability, crops) it uses.
"""

from napari_samscope.core.everything.generator import (
    EVERYTHING_DEFAULTS,
    MaskGenerator,
    model_everything_defaults,
)
from napari_samscope.core.everything.records import EverythingResult, MaskRecord

__all__ = [
    "EVERYTHING_DEFAULTS",
    "EverythingResult",
    "MaskGenerator",
    "MaskRecord",
    "model_everything_defaults",
]
