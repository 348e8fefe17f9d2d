"""Choosing the compute device and the autocast dtype.

``device="auto"`` picks CUDA, then Apple's MPS, then the CPU. ``dtype`` selects
mixed precision: ``None`` (or ``"float32"``) runs plain float32; ``"bfloat16"`` /
``"float16"`` run the model under :func:`torch.autocast`; ``"auto"`` picks bfloat16
where the hardware computes it natively and float32 elsewhere; ``"default"`` (the
default of ``load_sam`` and ``SAM``) is the model's own choice: ``"auto"`` for registry
models whose bf16 speed and quality were verified (``ModelSpec.auto_bf16``), float32
for everything else (checkpoint paths, fresh or tiny configurations).

The model's weights always stay float32; autocast only lowers the precision of the
matrix products inside the ``with`` block, so masks thresholded at 0 agree with
float32 on almost every pixel while running faster on recent hardware.
"""

from __future__ import annotations

import contextlib
import platform
import sys
from collections.abc import Iterator
from functools import lru_cache

import torch

__all__ = [
    "DEFAULT_DTYPE",
    "DeviceLike",
    "DtypeLike",
    "autocast",
    "cpu_has_native_bf16",
    "resolve_dtype",
    "select_device",
]

DeviceLike = str | torch.device | None
DtypeLike = str | torch.dtype | None

_SUPPORTED_DEVICE_TYPES = ("cpu", "cuda", "mps")

#: The dtype request meaning "what the model recommends" (see :func:`resolve_dtype`).
DEFAULT_DTYPE = "default"

_DTYPE_NAMES: dict[str, torch.dtype | None] = {
    "float32": None,
    "fp32": None,
    "float": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: DeviceLike = "auto") -> torch.device:
    """Turn a user's device choice into a :class:`torch.device` that exists here.

    Args:
        device: ``"auto"`` or ``None`` (CUDA if available, then MPS, then CPU), or an
            explicit ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``torch.device``.

    Raises:
        ValueError: the string is not a device, the device type is not supported, or
            the requested accelerator is not available on this computer.
        TypeError: ``device`` is neither a string, a ``torch.device`` nor ``None``.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, str):
        try:
            parsed = torch.device(device.strip().lower())
        except (RuntimeError, ValueError):
            raise ValueError(
                f"{device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
            ) from None
    elif isinstance(device, torch.device):
        parsed = device
    else:
        raise TypeError(
            f"device must be a string such as 'auto', 'cpu' or 'cuda', a torch.device or "
            f"None, not {type(device).__name__}."
        )

    if parsed.type not in _SUPPORTED_DEVICE_TYPES:
        raise ValueError(
            f"Device type {parsed.type!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'."
        )
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device='cuda' was requested but CUDA is not available on this computer "
                "(no NVIDIA GPU, or a CPU-only build of torch); use device='auto' or 'cpu'."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device={str(parsed)!r} was requested but this computer has {count} CUDA "
                f"device(s) (cuda:0 to cuda:{count - 1}); use one of those or 'auto'."
            )
    if parsed.type == "mps" and not _mps_available():
        raise ValueError(
            "device='mps' was requested but Apple's MPS backend is not available on this "
            "computer; use device='auto' or 'cpu'."
        )
    return parsed


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (so bf16 autocast is a speed-up).

    What is checked, in order:

    - x86: torch's own CPU feature probes ``torch.cpu._is_avx512_bf16_supported()``
      (AVX512-BF16) and ``torch.cpu._is_amx_tile_supported()`` (Intel AMX), which are
      what oneDNN uses to pick its bf16 kernels;
    - Linux on ARM (aarch64): the ``bf16`` flag of ``/proc/cpuinfo`` (Armv8.6 BF16).

    Anything else (older x86, macOS, unknown) reports False: bf16 still *works*
    there, it is only emulated and therefore not chosen by ``dtype="auto"``.
    """
    for probe_name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(getattr(torch, "cpu", None), probe_name, None)
        if probe is None:
            continue
        try:
            if probe():
                return True
        except (RuntimeError, AttributeError):  # a build without the probe compiled in
            continue
    if sys.platform.startswith("linux") and platform.machine().lower() in ("aarch64", "arm64"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.lower().startswith("features") and "bf16" in line.split(":", 1)[-1].split():
                        return True
        except OSError:
            return False
    return False


def _cuda_supports_bf16(device: torch.device) -> bool:
    """Native bf16 on this CUDA device: compute capability 8.0+ (Ampere) or any ROCm GPU."""
    if getattr(torch.version, "hip", None):
        return True
    if not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, _minor = torch.cuda.get_device_capability(index)
    return major >= 8


def resolve_dtype(
    dtype: DtypeLike, device: torch.device | str, *, auto_bf16: bool = False
) -> torch.dtype | None:
    """Decide the autocast dtype for ``device``; ``None`` means plain float32.

    Args:
        dtype: ``None``, ``"float32"``/``"fp32"`` (plain float32), ``"bfloat16"``/``"bf16"``,
            ``"float16"``/``"fp16"``, ``"auto"``, ``"default"`` (:data:`DEFAULT_DTYPE`), or a
            ``torch.dtype`` (``torch.float32``, ``torch.bfloat16``, ``torch.float16``).
        device: the device the model runs on (from :func:`select_device`).
        auto_bf16: what ``"default"`` means: ``"auto"`` when True (the model's registry
            entry has ``auto_bf16``), plain float32 when False. Other requests ignore it.

    Returns:
        ``torch.bfloat16`` or ``torch.float16`` to run under autocast, or ``None`` for
        float32. ``"auto"`` gives bfloat16 on CUDA GPUs that support it and on CPUs
        with native bf16 (:func:`cpu_has_native_bf16`), float32 elsewhere (MPS included).

    Raises:
        ValueError: an unknown dtype name or dtype; float16 on the CPU (use bfloat16,
            which the CPU autocast supports well); bfloat16 on a CUDA GPU without bf16
            support (use float16).
        TypeError: ``dtype`` is neither a string, a ``torch.dtype`` nor ``None``.
    """
    device = torch.device(device)
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        if key == DEFAULT_DTYPE:
            key = "auto" if auto_bf16 else "float32"
        if key == "auto":
            if device.type == "cuda":
                return torch.bfloat16 if _cuda_supports_bf16(device) else None
            if device.type == "cpu":
                return torch.bfloat16 if cpu_has_native_bf16() else None
            return None
        if key not in _DTYPE_NAMES:
            raise ValueError(
                f"dtype {dtype!r} is not supported; use None/'float32', 'bfloat16', "
                "'float16', 'auto' or 'default'."
            )
        chosen = _DTYPE_NAMES[key]
    elif isinstance(dtype, torch.dtype):
        if dtype == torch.float32:
            chosen = None
        elif dtype in (torch.bfloat16, torch.float16):
            chosen = dtype
        else:
            raise ValueError(
                f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or "
                "torch.float16 (or None)."
            )
    else:
        raise TypeError(
            f"dtype must be None, a string such as 'bfloat16' or a torch.dtype, "
            f"not {type(dtype).__name__}."
        )

    if chosen == torch.float16 and device.type == "cpu":
        raise ValueError(
            "float16 autocast is not supported on the CPU; use dtype='bfloat16' (or 'auto'), "
            "or None for float32."
        )
    if chosen == torch.bfloat16 and device.type == "cuda" and not _cuda_supports_bf16(device):
        raise ValueError(
            "This CUDA GPU does not support bfloat16; use dtype='float16' or None for float32."
        )
    return chosen


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """Run the ``with`` block under mixed precision ``dtype`` on ``device``.

    A no-op for ``None`` and ``torch.float32``; otherwise
    ``torch.autocast(device.type, dtype=dtype)``. Pass the output of
    :func:`resolve_dtype`. Outputs produced inside the block may be bf16/fp16:
    callers convert what they return with ``.float()``.
    """
    device = torch.device(device)
    if dtype is None or dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
