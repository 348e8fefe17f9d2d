"""What the registry knows about one model (:class:`ModelSpec`) and what
:func:`~napari_samscope.core.weights.registry.list_models` reports about it
(:class:`ModelStatus`). Plain frozen dataclasses; no torch, no file access.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_samscope.core.everything.params import EverythingParams

__all__ = ["InputScale", "ModelSpec", "ModelStatus"]

#: The key of :class:`InputScale` in a checkpoint's ``meta`` (and its ``.pt.json`` sidecar).
INPUT_SCALE_META_KEY = "input_scale"


@dataclass(frozen=True)
class InputScale:
    """The object scale a model was trained for, as magnifications of the user's pixels
    into the model input (``2.0``: one image pixel becomes 2 x 2 input pixels).

    ``scale="auto"`` (:mod:`napari_samscope.core.predict.input_scale`) keeps an image's
    magnification between ``min_magnification`` and ``max_magnification``, and places a
    small image at ``magnification`` instead of blowing it up to fill the input.

    Attributes:
        magnification: the magnification of the training images.
        min_magnification: the least magnification at which objects still look like the
            training objects (a large image is shrunk no further).
        max_magnification: the largest one (a small image is magnified no further).
    """

    magnification: float
    min_magnification: float
    max_magnification: float

    def __post_init__(self) -> None:
        for name in ("magnification", "min_magnification", "max_magnification"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"InputScale.{name} must be a number, not {value!r}.")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"InputScale.{name} must be a finite number above 0, not {value!r}.")
            object.__setattr__(self, name, float(value))
        if not self.min_magnification <= self.magnification <= self.max_magnification:
            raise ValueError(
                "InputScale needs min_magnification <= magnification <= max_magnification, not "
                f"{self.min_magnification:g} / {self.magnification:g} / {self.max_magnification:g}."
            )

    def to_dict(self) -> dict[str, float]:
        """The JSON-able form stored in checkpoint ``meta`` under ``"input_scale"``."""
        return {
            "magnification": self.magnification,
            "min_magnification": self.min_magnification,
            "max_magnification": self.max_magnification,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None, source: str = "the checkpoint") -> InputScale | None:
        """The scale declared in a checkpoint's ``meta`` (``meta["input_scale"]``, the form
        of :meth:`to_dict`), or None when it declares none.

        Raises:
            ValueError: the entry is there but is not a valid declaration.
        """
        if not isinstance(meta, Mapping) or meta.get(INPUT_SCALE_META_KEY) is None:
            return None
        entry = meta[INPUT_SCALE_META_KEY]
        try:
            if not isinstance(entry, Mapping):
                raise TypeError(f"it is a {type(entry).__name__}")
            return cls(
                entry["magnification"], entry["min_magnification"], entry["max_magnification"]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{source} declares an input scale that cannot be read ({error}): "
                '"input_scale" must be {"magnification": m, "min_magnification": a, '
                '"max_magnification": b} with 0 < a <= m <= b.'
            ) from None


@dataclass(frozen=True)
class ModelSpec:
    """One model of the registry.

    Attributes:
        name: canonical name (``"vit_b"``); names are matched case-insensitively.
        arch: the architecture; for official weights the key of
            ``core.build.ARCHITECTURES`` that builds it. Informational only: loading
            detects the architecture from the tensors' shapes.
        filename: the file's name in the cache folder.
        url: where to download the file, or None (packaged or local models).
        size: exact size in bytes, or None when unknown.
        sha256: hex sha256 of the file, or None when no trusted hash is published.
        aliases: other accepted names (Ultralytics and official file names).
        description: one line for menus and ``list_models``.
        package_file: path relative to the ``napari_samscope`` package, for models
            shipped inside it.
        local_path: absolute path of a model registered at run time.
        everything_defaults: the model's recommended segment-everything parameters, an
            :class:`~napari_samscope.core.everything.params.EverythingParams` (frozen, so
            the spec stays hashable), or None for official models, which keep the
            official defaults exactly. ``((name, value), ...)`` pairs are accepted and
            converted. The values that differ from the official defaults replace them
            for the parameters a user does not set; read them with :meth:`everything_params`.
        xxh128: hex xxh128 of the file (the hash micro-sam publishes), checked on download
            like ``sha256``; None when not known.
        domain: the imaging domain the weights were fine-tuned for (``"LM"``, ``"EM"``,
            ``"histopathology"``), for grouping in model lists; empty for general models.
        auto_bf16: bfloat16 autocast was measured faster than float32 for this model
            and its masks agree with float32 (IoU >= 0.97), so the default dtype request
            resolves to ``"auto"`` (bf16 where the hardware computes it natively); see
            :func:`default_dtype_request`.
        input_scale: the object scale the weights were trained for (an
            :class:`InputScale`); with one, ``scale="auto"`` is the model's default input
            placement. None (official and micro-sam models): SAM's "fill" resize.
        decoder: the registry name of the model's instance decoder companion (a
            ``"unetr_decoder"`` entry, loaded with the model for AIS/APG), or None.
        flips: how many orientations its predictors average for every prompt by default
            (1, 2 or 4; :mod:`~napari_samscope.core.predict.flips`). 1 (official and
            micro-sam models) is the plain computation.
        refine_points: whether its predictors decode point-only prompts again with
            the box of their mask (:mod:`~napari_samscope.core.predict.point_refine`).
            False (official and micro-sam models) is the official computation.
        zoom: how many times more than the image its predictors magnify the crops that box
            prompts and refined points are decoded on (:mod:`~napari_samscope.core.predict.zoom`).
            1 (official and micro-sam models) is off: the official computation.
    """

    name: str
    arch: str
    filename: str
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    package_file: str | None = None
    local_path: Path | None = None
    everything_defaults: EverythingParams | None = None
    auto_bf16: bool = False
    xxh128: str | None = None
    domain: str = ""
    input_scale: InputScale | None = None
    decoder: str | None = None
    flips: int = 1
    refine_points: bool = False
    zoom: float = 1.0

    def __post_init__(self) -> None:
        value: Any = self.everything_defaults
        if value is None or isinstance(value, EverythingParams):
            return
        params = EverythingParams.from_pairs(value, self.name)
        object.__setattr__(self, "everything_defaults", params if params.differences() else None)

    def everything_params(self) -> dict[str, Any]:
        """The recommended segment-everything parameters: those of
        :attr:`everything_defaults` that differ from the official defaults (a new dict;
        empty if none)."""
        return {} if self.everything_defaults is None else self.everything_defaults.differences()

    @property
    def source(self) -> str:
        """``"download"``, ``"package"`` or ``"local"``."""
        if self.local_path is not None:
            return "local"
        if self.package_file is not None:
            return "package"
        return "download"

    @property
    def names(self) -> tuple[str, ...]:
        """The name followed by its aliases."""
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class ModelStatus:
    """What :func:`list_models` reports about one model.

    ``cached`` is True when the weights are on this computer (downloaded, shipped
    or registered) so loading needs no network; ``path`` is where they are or will be.
    """

    name: str
    aliases: tuple[str, ...]
    arch: str
    size: int | None
    cached: bool
    path: Path
    description: str
    source: str
    domain: str = ""
