"""The typed options of ``auto_annotate`` (:class:`AnnotateOptions`) and what a run did
(:class:`AnnotateSummary`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AnnotateOptions", "AnnotateSummary"]


# ----------------------------------------------------------------------------- summary


@dataclass
class AnnotateSummary:
    """What an ``auto_annotate`` run did."""

    output_dir: Path
    images: int = 0
    annotated: int = 0
    skipped: int = 0
    planes: int = 0
    objects: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    coco_path: Path | None = None

    def __str__(self) -> str:
        objects = "object" if self.objects == 1 else "objects"
        planes = "plane" if self.planes == 1 else "planes"
        images = "image" if self.images == 1 else "images"
        return (
            f"{self.images} {images}: {self.annotated} annotated ({self.planes} {planes}, "
            f"{self.objects} {objects}), {self.skipped} skipped (already annotated), "
            f"{len(self.failed)} failed; labels in {self.output_dir}"
        )


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class AnnotateOptions:
    """Everything ``auto_annotate`` takes besides ``data`` (see :func:`auto_annotate`).

    Values are checked when the object is made, so a bad option fails before any file
    is read or any model is loaded.
    """

    det_model: str | os.PathLike | Callable[[np.ndarray], Any] | None = "blobs"
    sam_model: Any = None
    device: str = ""
    output_dir: str | os.PathLike | None = None
    conf: float = 0.25
    classes: tuple[int, ...] | None = None
    max_det: int = 300
    overwrite: bool = False
    save_tiff: bool = False
    save_coco: bool = False
    split_parts: bool = False
    #: the axis of the stored image arrays that holds channels (None: only RGB(A) samples)
    channel_axis: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.conf) <= 1.0:
            raise ValueError(f"conf must be between 0 and 1, not {self.conf}")
        if int(self.max_det) < 1:
            raise ValueError(f"max_det must be at least 1, not {self.max_det}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))

    @classmethod
    def from_arguments(cls, options: AnnotateOptions | None, params: dict[str, Any]) -> AnnotateOptions:
        """``options`` (or the defaults) with ``params`` (option name -> value) replaced.

        Raises:
            TypeError: a name in ``params`` is not an option.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise TypeError(
                f"auto_annotate got unknown option(s) {', '.join(unknown)}; the options are "
                f"{', '.join(sorted(names))}"
            )
        base = options if options is not None else cls()
        return replace(base, **params) if params else base
