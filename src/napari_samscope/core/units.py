"""Sizes as the package prints them: decimal units (1 MB = 10^6 bytes, 1 GB = 10^9), as
the registry's descriptions and file managers give them, everywhere (CLI, ``SAM.info``,
the napari widgets)."""

from __future__ import annotations

__all__ = ["GB", "MB", "format_size", "megabytes"]

MB = 10**6
GB = 10**9


def megabytes(nbytes: float, digits: int = 1) -> float:
    """``nbytes`` in MB (10^6 bytes), rounded to ``digits``."""
    return round(float(nbytes) / MB, digits)


def format_size(nbytes: float | None) -> str:
    """``"7.5 MB"``, ``"1.25 GB"`` (from 1 GB), or ``"?"`` for an unknown size."""
    if nbytes is None:
        return "?"
    if nbytes >= GB:
        return f"{nbytes / GB:.2f} GB"
    return f"{nbytes / MB:.1f} MB"
