"""Reusing freed host memory between layers and images (glibc's malloc, Linux).

An encoder pass allocates and frees hundreds of megabytes of activations, and the
instance decoder's maps at 1024x1024 more. glibc's ``malloc`` serves a request above its
mmap threshold (at most 32 MB, however it adapts) with fresh pages from the kernel, which
cost a page fault each when first written, and it hands freed memory at the top of its
heap back to the kernel once more than the trim threshold is free. The default model's
encoder keeps most of its activations under 32 MB (TinyViT runs its convolutional stage
one image at a time), yet about 13,000 faults remain per 512x512 ``set_image`` with
``flips=2`` in bf16 on the 2-core test machine; float32, larger models and AIS have more.
:func:`keep_freed_memory` raises the mmap threshold to
:data:`MMAP_THRESHOLD` and the trim threshold to :data:`TRIM_THRESHOLD`, so that the same
pages serve one layer after another and one image after the next. The values computed do
not change. The price is memory: the process keeps up to :data:`TRIM_THRESHOLD` of freed
memory, and blocks in the middle of the heap, for reuse instead of returning them, so its
resident size stays near its peak (figures: benchmarks/RESULTS.md, "Fresh pages").

Because that is a setting of the whole process, the library does not make it on its own
in someone else's process (napari, a notebook, a dask worker, whose nanny asks for the
opposite). It is made:

- by the ``samscope`` command, a process of its own that encodes image after image;
- when a model is loaded (:class:`~napari_samscope.core.predict.sam_api.SAM`) on the CPU
  with ``SAMSCOPE_HOST_MALLOC=keep`` in the environment (napari started that way, say);
- by calling :func:`keep_freed_memory` (a script, napari's console).

``SAMSCOPE_HOST_MALLOC=default`` turns all three off. Other platforms and allocators are
left alone, as is a process whose malloc thresholds were set from the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``) or that
preloads another allocator (``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading

__all__ = [
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "keep_freed_memory",
    "keep_if_requested",
    "requested",
    "why_not_kept",
]

_log = logging.getLogger(__name__)

#: Requests up to this size come from malloc's heap (reused) instead of fresh pages.
MMAP_THRESHOLD = 128 << 20
#: Free memory at the top of the heap kept for reuse before it goes back to the system.
TRIM_THRESHOLD = 256 << 20

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV = "SAMSCOPE_HOST_MALLOC"
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_state: bool | None = None  # None: not tried yet; then whether the thresholds were set


def requested() -> str:
    """``SAMSCOPE_HOST_MALLOC``: ``"keep"``, ``"default"`` or ``""`` (not set).

    Raises:
        ValueError: another value.
    """
    setting = os.environ.get(_ENV, "").strip().lower()
    if setting not in ("", "keep", "default"):
        raise ValueError(f"{_ENV} must be 'keep' or 'default', not {setting!r}.")
    return setting


def why_not_kept() -> str | None:
    """Why :func:`keep_freed_memory` would leave malloc alone here, or None if it would
    set the thresholds."""
    if requested() == "default":
        return f"{_ENV}=default"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "not glibc on Linux"
    for name in _USER_SETTINGS:
        if os.environ.get(name):
            return f"{name} is set"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "another allocator is preloaded"
    return None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module docstring).

    Returns:
        Whether they are set (by this call or an earlier one). False where
        :func:`why_not_kept` gives a reason, or if glibc refused a value.

    Raises:
        ValueError: ``SAMSCOPE_HOST_MALLOC`` is neither ``keep`` nor ``default``.
    """
    global _state
    requested()  # a bad value is an error on every call
    with _lock:
        if _state is not None:
            return _state
        reason = why_not_kept()
        if reason is not None:
            _log.debug("malloc thresholds left as they are: %s", reason)
            _state = False
            return False
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        _state = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
        _log.debug("malloc thresholds set (mmap %d, trim %d): %s",
                   MMAP_THRESHOLD, TRIM_THRESHOLD, _state)
        return _state


def keep_if_requested() -> bool:
    """:func:`keep_freed_memory` if ``SAMSCOPE_HOST_MALLOC=keep``; else whether the
    thresholds were set before. Called when a model is loaded on the CPU."""
    if requested() == "keep":
        return keep_freed_memory()
    return bool(_state)
