"""The parameters of segment-everything as one typed, validated value.

:class:`EverythingParams` is what the registry (a model's recommended values), the CLI
(``samscope everything`` options), the napari widget and
:class:`~napari_samscope.core.everything.generator.MaskGenerator` pass to each other.
Its defaults are those of the official ``SamAutomaticMaskGenerator``. It checks every
value when it is made, so a bad value fails before any model is loaded.

This module imports neither torch nor the rest of the package, so the registry and
``--help`` can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ALIASES", "EVERYTHING_DEFAULTS", "EverythingParams"]

#: Ultralytics' names for some parameters -> ours (the official names).
ALIASES: dict[str, str] = {
    "points_stride": "points_per_side",
    "conf": "pred_iou_thresh",
    "points_batch_size": "points_per_batch",
    "crop_downscale_factor": "crop_n_points_downscale_factor",
}

_UNIT_INTERVAL = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh")


@dataclass(frozen=True)
class EverythingParams:
    """Segment-everything parameters (defaults: the official generator's).

    Attributes:
        points_per_side: grid points per image side (Ultralytics: ``points_stride``); None
            only together with explicit ``point_grids`` given to the generator.
        points_per_batch: prompts decoded together (Ultralytics: ``points_batch_size``).
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` this (alias ``conf``).
        stability_score_thresh: keep masks whose stability score is ``>=`` this.
        stability_score_offset: logit offset of the stability score (``>= 0``).
        box_nms_thresh: box IoU above which duplicates inside a crop are dropped.
        crop_n_layers: extra crop layers; layer ``i`` has ``(2**i)**2`` crops.
        crop_nms_thresh: box IoU above which duplicates between crops are dropped.
        crop_overlap_ratio: overlap of layer-1 crops, as a fraction of the short side, in ``[0, 1)``.
        crop_n_points_downscale_factor: layer ``i`` uses ``points_per_side / f**i`` points.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this (pixels).
        multimask_output: 3 candidates per point (else 1); a bool.

    Whole-number fields accept whole floats (``32.0`` from a spin box) and store ints;
    the others store floats. Bools are refused where a number is expected and numbers
    where a bool is expected.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    multimask_output: bool = True

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(field.name, value))
        for name in _UNIT_INTERVAL:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}.")
        if not 0.0 <= self.crop_overlap_ratio < 1.0:
            raise ValueError(f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio!r}.")
        minimum = {
            "points_per_side": 1, "points_per_batch": 1, "crop_n_layers": 0,
            "crop_n_points_downscale_factor": 1, "min_mask_region_area": 0,
            "stability_score_offset": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is not None and value < low:
                kind = "a positive integer" if low == 1 else f">= {low}"
                raise ValueError(f"{name} must be {kind}, got {value!r}.")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EverythingParams:
        """Parameters from keyword arguments, Ultralytics aliases included; the others
        take the official defaults.

        Raises:
            TypeError: an unknown name, a name given with its alias, or a value of the
                wrong kind.
            ValueError: a value out of its range.
        """
        return cls(**canonical_names(kwargs))

    @classmethod
    def with_defaults(
        cls, given: Mapping[str, Any], model_defaults: Mapping[str, Any] | None = None
    ) -> EverythingParams:
        """``given`` (aliases allowed) > ``model_defaults`` (a model's recommended values,
        e.g. ``ModelSpec.everything_params()``) > the official defaults.

        Raises:
            ValueError: ``model_defaults`` names something that is not a parameter
                (a broken registry entry), or a value is out of range.
            TypeError: as :meth:`from_kwargs` for ``given``.
        """
        model_defaults = dict(model_defaults or {})
        unknown = sorted(set(model_defaults) - set(EVERYTHING_DEFAULTS))
        if unknown:
            raise ValueError(
                f"The model's recommended segment-everything parameters {unknown} are not "
                f"parameters of the generator (valid ones: {sorted(EVERYTHING_DEFAULTS)}); "
                "fix the model's registry entry."
            )
        return cls(**{**model_defaults, **canonical_names(given)})

    def replace(self, **kwargs: Any) -> EverythingParams:
        """A copy with some values changed (aliases allowed), validated."""
        return dataclasses.replace(self, **canonical_names(kwargs))

    # ------------------------------------------------------------------ reading

    def to_dict(self) -> dict[str, Any]:
        """Every parameter's value, by name (a new dict)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def differences(self, other: EverythingParams | None = None) -> dict[str, Any]:
        """The values that differ from ``other`` (default: the official defaults)."""
        base = (other or _OFFICIAL).to_dict()
        return {k: v for k, v in self.to_dict().items() if v != base[k]}

    @classmethod
    def from_pairs(cls, pairs: Any, owner: str = "") -> EverythingParams:
        """Parameters from ``((name, value), ...)`` pairs (the registry's older form).

        Raises:
            TypeError: not a tuple of ``(name, value)`` pairs.
            ValueError: a parameter is repeated.
        """
        what = f"everything_defaults of model {owner!r}" if owner else "everything_defaults"
        if not isinstance(pairs, tuple) or not all(
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs
        ):
            raise TypeError(f"{what} must be a tuple of (parameter name, value) pairs.")
        if len({key for key, _ in pairs}) != len(pairs):
            raise ValueError(f"{what} repeats a parameter.")
        return cls.from_kwargs(**dict(pairs))


def canonical_names(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with Ultralytics aliases renamed; unknown names raise ``TypeError``."""
    out = dict(kwargs)
    for alias, name in ALIASES.items():
        if alias in out:
            if name in out:
                raise TypeError(f"Give either {name!r} or its alias {alias!r}, not both.")
            out[name] = out.pop(alias)
    unknown = sorted(set(out) - set(EVERYTHING_DEFAULTS))
    if unknown:
        raise TypeError(
            f"Unknown segment-everything parameter(s) {unknown}; "
            f"valid ones are {sorted(EVERYTHING_DEFAULTS)} and aliases {sorted(ALIASES)}."
        )
    return out


_WHOLE = {"points_per_side", "points_per_batch", "crop_n_layers",
          "crop_n_points_downscale_factor", "min_mask_region_area"}


def _coerce(name: str, value: Any) -> Any:
    """``value`` as the field's type, or a TypeError / ValueError naming ``name``."""
    if name == "multimask_output":
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"multimask_output must be True or False, not {value!r}.")
        return bool(value)
    if name == "points_per_side" and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if name in _WHOLE:
        if value != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}.")
        return int(value)
    return float(value)


_OFFICIAL = EverythingParams()

#: Every parameter and its official default (``EverythingParams().to_dict()``).
EVERYTHING_DEFAULTS: dict[str, Any] = _OFFICIAL.to_dict()
