"""Reading and writing checkpoint files safely.

Reading always uses ``torch.load(path, map_location="cpu", weights_only=True)``: a
file can only produce tensors and plain containers, and a pickle that tries to
import or call anything (``os.system``, a class of some library...) is refused
*before* any of it runs.

Accepted layouts (after loading):

- a plain state dict ``{"image_encoder.…": tensor, "prompt_encoder.…": …, "mask_decoder.…": …}``
  (the official SAM and MobileSAM files);
- the wrappers ``{"model": sd}``, ``{"state_dict": sd}``, ``{"model_state": sd}`` (other
  top-level entries such as ``"epoch"`` are ignored);
- the project's own format ``{"model": sd, "config": SamConfig.to_dict(), "meta": {...}}``
  written by :func:`save_checkpoint`;
- any of these with DataParallel's ``module.`` prefix on every key;
- torch_em's training format (micro-sam): ``{"model_state": sd, "decoder_state": dec}``
  with a ``sam.`` prefix on every key of ``sd``; the instance decoder's state ``dec`` is
  kept in :attr:`CheckpointContents.decoder_state`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from napari_samscope.core.weights.download import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from napari_samscope.core.modeling.sam import Sam

__all__ = [
    "CheckpointContents",
    "CheckpointError",
    "UnsafeCheckpointError",
    "FORMAT",
    "read_checkpoint",
    "save_checkpoint",
    "sidecar_path",
    "unwrap_checkpoint",
]

#: Value of the ``"format"`` entry in files written by :func:`save_checkpoint`.
FORMAT = "napari-samscope/1"
WRAPPER_KEYS = ("model", "state_dict", "model_state")
SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_DATAPARALLEL_PREFIX = "module."
_TORCH_EM_PREFIX = "sam."


class CheckpointError(ValueError):
    """A file is not a usable SAM checkpoint (corrupt, or not a SAM state dict)."""


class UnsafeCheckpointError(CheckpointError):
    """A file contains Python objects or code and was refused without running any of it."""


@dataclass
class CheckpointContents:
    """What a checkpoint file holds.

    Attributes:
        state_dict: parameter name -> tensor (CPU), keys like ``"image_encoder.pos_embed"``.
        config: the architecture as ``SamConfig.to_dict()`` when the file stores it
            (project format), else None (then it is detected from the shapes).
        meta: free-form JSON-able information (training data, date...), or None.
        decoder_state: the ``"decoder_state"`` entry of a micro-sam checkpoint (an
            instance decoder, read by ``core.instances``), else None.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    decoder_state: dict[str, Any] | None = None


def _corrupt(path: Path, detail: str = "") -> CheckpointError:
    extra = f" ({detail})" if detail else ""
    return CheckpointError(
        f"{path} is not a valid PyTorch checkpoint (truncated or corrupt?){extra}. "
        "Delete it and download or save it again."
    )


def _first_sentences(text: str, limit: int = 240) -> str:
    """The start of an error message, cut at a sentence end or a word, never mid-word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text.rstrip(".")
    cut = text[:limit]
    end = cut.rfind(". ")
    return cut[:end] if end > 40 else cut[: cut.rfind(" ")] + " ..."


#: torch's legacy (pre-zip) format: a protocol-2 pickle whose first object is this magic number
_TORCH_LEGACY_START = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def _refuse_raw_pickle(path: Path) -> None:
    """A plain ``pickle.dump`` file is neither a zip checkpoint nor torch's legacy format."""
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_START))
    if head.startswith(b"\x80") and not head.startswith(_TORCH_LEGACY_START):
        raise UnsafeCheckpointError(
            f"{path} was refused for safety: it is a raw Python pickle (an unsafe legacy format), "
            "not a PyTorch checkpoint, and a pickle can hold code and objects that are not plain "
            "tensors; nothing in it was loaded or run. Re-save the weights with "
            "torch.save(model.state_dict(), path) where the file is trusted."
        )


def _load_safely(path: Path) -> Any:
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{path} is a symbolic link that leads nowhere (a loop or a missing target).")
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint file at {path}: check the path.")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder (directory), not a checkpoint file; give the path of the weights file "
            "(.pt, .pth) inside it."
        )
    if path.stat().st_size == 0:
        raise _corrupt(path, "the file is empty")
    _refuse_raw_pickle(path)
    try:
        with warnings.catch_warnings():
            # unusual pickle protocols are refused below with our own message
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        found = re.search(r"GLOBAL\s+([\w.]+)", message)
        if found or "global" in message.lower():
            what = f" ({found.group(1)})" if found else ""
            hint = ""
            if found and found.group(1).startswith(("torch_em.", "micro_sam.")):
                # torch_em's trainer pickles its datasets into the checkpoint's "init"
                hint = (
                    " It is a micro-sam / torch_em training checkpoint: export its weights with "
                    "micro-sam (micro_sam.util.export_custom_sam_model(checkpoint, model_type, "
                    "'model.pt', with_segmentation_decoder=True)) and load the exported file."
                )
            raise UnsafeCheckpointError(
                f"{path} was refused for safety: it contains Python code or objects{what} "
                "that are not plain tensors, and loading it could run that code. Only load "
                f"model files from sources you trust; SAM checkpoints hold tensors only.{hint}"
            ) from None
        raise _corrupt(path, "its content is not a tensor pickle") from None
    except (EOFError, ValueError) as error:
        raise _corrupt(path, _first_sentences(str(error)) or type(error).__name__) from None
    except (KeyError, IndexError, TypeError, AttributeError):  # bytes the unpickler cannot place
        raise _corrupt(path, "its content is not a tensor pickle") from None
    except RuntimeError as error:
        if "memory" in str(error).lower():
            raise
        if "legacy .tar format" in str(error):  # torch's guess for bytes it cannot place
            raise _corrupt(path, "its content is neither a zip checkpoint nor a tensor pickle") from None
        raise _corrupt(path, _first_sentences(str(error))) from None


def _has_sam_keys(obj: Mapping[Any, Any]) -> bool:
    return any(isinstance(k, str) and k.startswith(SAM_PREFIXES) for k in obj)


def unwrap_checkpoint(obj: Any, source: str = "the checkpoint") -> CheckpointContents:
    """Find the SAM state dict (and config/meta) inside a loaded checkpoint object.

    Args:
        obj: what ``torch.load`` returned.
        source: how to name the file in error messages.

    Raises:
        CheckpointError: no SAM state dict inside, or entries that are not tensors.
    """
    config: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    decoder_state = obj.get("decoder_state") if isinstance(obj, Mapping) else None
    current = obj
    for _depth in range(3):  # {"model": {"state_dict": sd}} happens; deeper does not
        if not isinstance(current, Mapping) or _has_sam_keys(current):
            break
        inner_key = next((k for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if inner_key is None:
            break
        if config is None and isinstance(current.get("config"), Mapping):
            config = dict(current["config"])
        if meta is None and isinstance(current.get("meta"), Mapping):
            meta = dict(current["meta"])
        current = current[inner_key]

    if not isinstance(current, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(current).__name__}, not a state dict of tensors; "
            "it is not a SAM checkpoint."
        )
    state = dict(current)
    keys = [k for k in state if isinstance(k, str)]
    for prefix in (_DATAPARALLEL_PREFIX, _TORCH_EM_PREFIX):
        if keys and len(keys) == len(state) and all(k.startswith(prefix) for k in keys):
            state = {k[len(prefix):]: v for k, v in state.items()}
            keys = list(state)
    if not _has_sam_keys(state):
        first = ", ".join(repr(k) for k in list(state)[:4]) or "none"
        raise CheckpointError(
            f"{source} is not a SAM checkpoint: no entries start with "
            f"{', '.join(SAM_PREFIXES)} (first entries: {first})."
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source} is not a plain SAM state dict: entry {bad[0]!r} is a "
            f"{type(state[bad[0]]).__name__}, not a tensor."
        )
    return CheckpointContents(
        state_dict=state, config=config, meta=meta,
        decoder_state=dict(decoder_state) if isinstance(decoder_state, Mapping) else None,
    )


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointContents:
    """Load a SAM checkpoint file safely (CPU, ``weights_only=True``) and unwrap it.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: the file holds code or non-tensor objects (nothing ran).
        CheckpointError: empty, truncated or corrupt file, or not a SAM state dict.
    """
    path = Path(path).expanduser()
    return unwrap_checkpoint(_load_safely(path), source=str(path))


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON file written next to a checkpoint: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _arch_label(config: Any) -> str:
    from napari_samscope.core.modeling.build import ARCHITECTURES

    for name, known in ARCHITECTURES.items():
        if known == config:
            return name
    return f"custom_{config.encoder_type}"


def _write_atomically(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | os.PathLike[str], sam: Sam, meta: dict[str, Any] | None = None
) -> Path:
    """Save ``sam`` in the project format, plus a JSON sidecar ``<path>.json``.

    The checkpoint is ``{"format": FORMAT, "model": state_dict (CPU), "config":
    sam.config.to_dict(), "meta": meta}``; the sidecar holds ``format``, ``arch``,
    ``config``, ``meta``, the file's ``size`` in bytes and its ``sha256``. Both files
    are written to a temporary name and renamed into place, so a crash never leaves a
    half-written file under ``path``.

    Args:
        path: destination file (parent folders are created).
        sam: the model; must carry its ``SamConfig`` as ``sam.config``.
        meta: JSON-able information to keep with the weights (numbers, strings,
            lists, dicts).

    Raises:
        TypeError: ``sam`` has no ``config``, or ``meta`` is not JSON-able.
    """
    config = getattr(sam, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError("save_checkpoint needs a Sam model built by core.build (it has no .config).")
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"meta must hold only JSON-able values (numbers, strings, lists, dicts): {error}"
        ) from None
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").clone() for k, v in sam.state_dict().items()}
    payload = {"format": FORMAT, "model": state, "config": config.to_dict(), "meta": meta}
    _write_atomically(path, lambda f: torch.save(payload, f))

    sidecar = {
        "format": FORMAT,
        "file": path.name,
        "arch": _arch_label(config),
        "size": path.stat().st_size,
        "sha256": file_sha256(path),
        "config": config.to_dict(),
        "meta": meta,
    }
    text = json.dumps(sidecar, indent=2).encode("utf-8")
    _write_atomically(sidecar_path(path), lambda f: f.write(text))
    return path
