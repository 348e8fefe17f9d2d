"""Reading micro-sam's instance decoders: from a decoder file, or from the
``"decoder_state"`` entry of a checkpoint in torch_em's training format.

Files are read with ``torch.load(..., weights_only=True)`` (the same safe loader as SAM
checkpoints): a file that needs arbitrary unpickling is refused, naming the file.
The decoder's widths and its upsampling kind are read from the tensors' shapes and names;
the state must then match :class:`UNETRDecoder` exactly (strict load).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.weights.checkpoint import CheckpointError, _load_safely

__all__ = ["decoder_from_state", "read_decoder_state", "read_decoder"]

_FIRST_KEY = "base.block.1.weight"
_WRAPPERS = ("decoder_state", "state_dict", "model_state", "model")


def _find_state(obj: Any, source: str) -> dict[str, torch.Tensor]:
    current = obj
    for _depth in range(3):
        if not isinstance(current, Mapping) or _FIRST_KEY in current:
            break
        inner = next((k for k in _WRAPPERS if isinstance(current.get(k), Mapping)), None)
        if inner is None:
            break
        current = current[inner]
    if not isinstance(current, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(current).__name__}, not an instance decoder's state dict."
        )
    state = dict(current)
    for prefix in ("module.", "unetr."):
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    # a whole UNETR state dict carries the image encoder too: the decoder ignores it
    state = {k: v for k, v in state.items() if not str(k).startswith("encoder.")}
    if _FIRST_KEY not in state:
        first = ", ".join(repr(k) for k in list(state)[:4]) or "none"
        raise CheckpointError(
            f"{source} is not a micro-sam instance decoder: it has no {_FIRST_KEY!r} entry "
            f"(first entries: {first})."
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: decoder entry {bad[0]!r} is not a tensor.")
    return state


def decoder_from_state(
    state: Mapping[str, torch.Tensor], source: str = "the decoder state", embed_dim: int | None = None
) -> UNETRDecoder:
    """Build a :class:`UNETRDecoder` from micro-sam's decoder state dict (strict load).

    Args:
        state: parameter name -> tensor, torch_em's UNETR names without ``encoder.``.
        source: how to name the state in error messages (a file path).
        embed_dim: the SAM image embedding's channels; a decoder made for another
            width is refused.

    Raises:
        CheckpointError: not a decoder state, missing or unexpected entries, wrong shapes,
            or made for another embedding width.
    """
    state = _find_state(state, source)
    try:
        widths = (
            state[_FIRST_KEY].shape[0],
            state["decoder.blocks.0.block.4.weight"].shape[0],
            state["decoder.blocks.1.block.4.weight"].shape[0],
            state["decoder.blocks.2.block.4.weight"].shape[0],
        )
        channels = int(state[_FIRST_KEY].shape[1])
        out_channels = int(state["out_conv.weight"].shape[0])
    except KeyError as missing:
        raise CheckpointError(f"{source} is an incomplete instance decoder: no {missing} entry.") from None
    if out_channels != 3:
        raise CheckpointError(
            f"{source} predicts {out_channels} maps; an instance decoder predicts 3 "
            "(foreground, centre distance, boundary distance)."
        )
    if embed_dim is not None and channels != embed_dim:
        raise CheckpointError(
            f"{source} was made for {channels}-channel image embeddings, but this model's "
            f"encoder gives {embed_dim}: it is the decoder of another model."
        )
    conv_transpose = any(".block." in k for k in state if k.startswith("decoder.samplers"))
    decoder = UNETRDecoder(
        embed_dim=channels, features=widths, out_channels=out_channels,
        conv_transpose=conv_transpose,
    )
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].strip()
        raise CheckpointError(f"{source} does not fit the instance decoder: {detail}") from None
    return decoder.eval()


def read_decoder_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The decoder state dict in a file (a decoder file, or a checkpoint with a
    ``"decoder_state"`` entry), read safely.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: the file needs arbitrary unpickling (nothing ran).
        CheckpointError: corrupt file, or no decoder state inside.
    """
    path = Path(path).expanduser()
    return _find_state(_load_safely(path), str(path))


def read_decoder(path: str | os.PathLike[str], embed_dim: int | None = None) -> UNETRDecoder:
    """:func:`read_decoder_state` then :func:`decoder_from_state` (errors name the file)."""
    path = Path(path).expanduser()
    return decoder_from_state(read_decoder_state(path), source=str(path), embed_dim=embed_dim)
