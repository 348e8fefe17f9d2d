"""Loading a SAM model by registry name, alias or file path, onto a device.

``load_sam_iter`` is the progress-yielding job (download if needed, read, build,
move); ``load_sam`` runs it headless. How a ``model`` argument is understood:

1. ``None`` -> the project default model (``registry.DEFAULT_MODEL``);
2. an existing file (``str`` or ``Path``) -> loaded as it is, even when its name is
   also a registry alias (a local ``sam_b.pt`` wins over the download);
3. a registry name or alias (case-insensitive) -> the cached, packaged or registered
   file, downloaded first when it is not on this computer yet.

The architecture always comes from the config stored in the file (project format)
or from the tensors' shapes, never from the file name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from napari_samscope.core.device import (
    DEFAULT_DTYPE,
    DeviceLike,
    DtypeLike,
    resolve_dtype,
    select_device,
)
from napari_samscope.core.progress import Progress, run
from napari_samscope.core.weights.checkpoint import CheckpointError, read_checkpoint
from napari_samscope.core.weights.download import download_iter
from napari_samscope.core.weights.registry import (
    DEFAULT_MODEL,
    ModelSpec,
    check_model_file,
    lookup,
    model_names,
    model_path,
    resolve,
)
from napari_samscope.core.weights.spec import InputScale

if TYPE_CHECKING:  # pragma: no cover
    from napari_samscope.core.modeling.sam import Sam

__all__ = ["LoadedModel", "ModelLike", "load_sam", "load_sam_iter"]

ModelLike = str | os.PathLike[str] | None
_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


@dataclass
class LoadedModel:
    """A model ready to predict, with where it came from.

    Attributes:
        sam: the model, float32 weights, eval mode, on ``device``.
        name: the registry name, or the file name for a path.
        spec: the registry entry, or None for a file given by path.
        path: the weights file that was read.
        device: where the model lives.
        dtype: autocast dtype to run it with (``None`` = plain float32); see
            ``core.device.autocast``.
        meta: the ``meta`` stored in project-format checkpoints, else None.
        decoder_state: the instance decoder's state stored in a micro-sam checkpoint,
            else None (``core.instances`` builds the decoder from it).
        input_scale: the object scale the weights were trained for: the registry
            entry's ``input_scale``, else the one declared in the checkpoint's ``meta``
            (``meta["input_scale"]``), else None (SAM's "fill" placement).
    """

    sam: Sam
    name: str
    spec: ModelSpec | None
    path: Path | None
    device: torch.device
    dtype: torch.dtype | None
    meta: dict[str, Any] | None = None
    decoder_state: dict[str, Any] | None = None
    input_scale: InputScale | None = None


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or os.sep in text
        or text.startswith("~")
        or text.lower().endswith(_WEIGHT_SUFFIXES)
    )


def _refuse_directory(path: Path) -> None:
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory, not a model file; give the path of the weights file "
            "(.pt, .pth) inside it, or a registry name."
        )
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{path} is a symbolic link that leads nowhere (a loop or a missing target).")


def _locate(model: ModelLike) -> tuple[ModelSpec | None, Path, bool]:
    """``(spec, path, needs_download)`` for a ``model`` argument."""
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, os.PathLike):
        path = Path(model).expanduser()
        _refuse_directory(path)
        if not path.exists():
            raise FileNotFoundError(f"No model file at {path}: check the path.")
        return None, path, False
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a registry name, a file path or None, not {type(model).__name__}."
        )
    path = Path(model.strip()).expanduser()
    if model.strip() and path.is_file():
        return None, path, False
    if model.strip():
        _refuse_directory(path)
    spec = lookup(model)
    if spec is None and _looks_like_path(model):
        raise FileNotFoundError(
            f"No model file at {path.absolute()}, and {model!r} is not a registered model "
            f"name either (valid names: {', '.join(model_names())})."
        )
    spec = resolve(model)  # raises for unknown names and for missing packaged/local files
    if spec.arch == "unetr_decoder":
        sam_name = spec.name.removesuffix("_decoder")
        raise ValueError(
            f"{spec.name!r} is the instance decoder of {sam_name!r}, not a SAM model: load "
            f"{sam_name!r}, which brings its decoder."
        )
    if spec.source == "download":
        return spec, model_path(spec), True  # download_iter returns at once when cached
    return spec, check_model_file(spec), False


def load_sam_iter(
    model: ModelLike = None, device: DeviceLike = "auto", dtype: DtypeLike = DEFAULT_DTYPE
) -> Generator[Progress, None, LoadedModel]:
    """Find, download if needed, read and build a model; yields progress.

    Args:
        model: registry name/alias, path of a weights file, or None for the default.
        device: ``"auto"`` (cuda, mps, cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
        dtype: autocast dtype request (see ``core.device.resolve_dtype``). The default,
            ``"default"``, is ``"auto"`` (bf16 on CPUs and GPUs that compute it natively,
            else float32) for registry models with ``ModelSpec.auto_bf16`` and plain
            float32 for everything else (files given by path included). ``None`` or
            ``"float32"`` always give float32.

    Yields:
        Byte progress while downloading, then ``Progress("loading <name>", step, 3)``.

    Raises:
        FileNotFoundError: no such file, or the default model is not installed.
        ValueError: unknown name, bad device/dtype, or a file that is not a SAM
            checkpoint (``CheckpointError``, ``UnsafeCheckpointError``).
        DownloadError: the weights could not be downloaded (the message says where
            to put the file by hand).
    """
    target = select_device(device)
    resolve_dtype(dtype, target)  # a bad request fails before any download
    spec, path, needs_download = _locate(model)
    autocast_dtype = resolve_dtype(dtype, target, auto_bf16=spec is not None and spec.auto_bf16)
    if needs_download and spec is not None:
        path = yield from download_iter(spec)
    name = spec.name if spec is not None else path.name
    message = f"loading {name}"

    yield Progress(message, 0, 3)
    contents = read_checkpoint(path)
    _refuse_non_finite(contents.state_dict, path)
    declared = spec.input_scale if spec is not None else None
    try:
        input_scale = declared or InputScale.from_meta(contents.meta, str(path))
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    yield Progress(message, 1, 3)
    sam = _build(contents.state_dict, contents.config, path)
    if spec is not None:
        _check_registry_architecture(sam, spec, path)
    yield Progress(message, 2, 3)
    sam = sam.to(target).eval()
    yield Progress(message, 3, 3)
    return LoadedModel(
        sam=sam, name=name, spec=spec, path=path, device=target, dtype=autocast_dtype,
        meta=contents.meta, decoder_state=contents.decoder_state, input_scale=input_scale,
    )


def _build(state_dict: dict[str, torch.Tensor], config: dict[str, Any] | None, path: Path) -> Sam:
    from napari_samscope.core.modeling.build import sam_from_state_dict

    try:
        return sam_from_state_dict(state_dict, config=config)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} does not hold a loadable SAM model: {error}") from error


def _refuse_non_finite(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """A weight that is NaN or infinite makes every score NaN: refuse the file at once."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path} holds non-finite weights (NaN or infinity in {key!r}); the model would "
                "give NaN scores. The training that wrote it diverged or the file is damaged: "
                "use another checkpoint."
            )


def _differences(found: Any, expected: Any, prefix: str = "") -> list[str]:
    """``"encoder.depth 10 instead of 12"`` for each field of two configs that differs."""
    out = []
    for item in dataclasses.fields(expected):
        mine, theirs = getattr(found, item.name, None), getattr(expected, item.name)
        if dataclasses.is_dataclass(theirs) and type(mine) is type(theirs):
            out += _differences(mine, theirs, f"{prefix}{item.name}.")
        elif mine != theirs:
            out.append(f"{prefix}{item.name} {mine!r} instead of {theirs!r}")
    return out


def _check_registry_architecture(sam: Sam, spec: ModelSpec, path: Path) -> None:
    """A registry model with a known architecture must be exactly that architecture
    (a ViT-B file with blocks removed would otherwise load as a smaller model)."""
    from napari_samscope.core.modeling.build import ARCHITECTURES

    expected = ARCHITECTURES.get(spec.arch)
    if expected is None or sam.config == expected:
        return
    differences = _differences(sam.config, expected)
    raise CheckpointError(
        f"{path} is registered as model {spec.name!r} ({spec.arch}) but holds another "
        f"architecture ({'; '.join(differences[:3]) or 'a different configuration'}). The file "
        "is not the registered one: delete it and load the model again."
    )


def load_sam(
    model: ModelLike = None,
    device: DeviceLike = "auto",
    dtype: DtypeLike = DEFAULT_DTYPE,
    progress: Callable[[Progress], Any] | str | None = None,
) -> LoadedModel:
    """Headless :func:`load_sam_iter`; ``progress`` is None, ``"tqdm"`` or a callback."""
    return run(load_sam_iter(model, device=device, dtype=dtype), progress=progress)
