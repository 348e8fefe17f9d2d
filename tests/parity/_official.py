"""Run code in the interpreter that has the official ``segment_anything`` / MobileSAM.

The project never imports the official packages. Parity tests send numpy arrays
to a snippet that runs in that interpreter (a separate virtual environment, or
this one when ``segment_anything`` is importable) and get numpy arrays back,
through ``.npz`` files (loaded with ``allow_pickle=False``).

``OFFICIAL_BUILD`` is source code that defines ``build_official(cfg)`` (a
``SamConfig.to_dict()`` -> official ``Sam``) and ``state_dict_from(inputs)``;
snippets can ``exec`` it (``run_official`` does, so they are always defined).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ENV_VAR = "SAMSCOPE_OFFICIAL_PYTHON"
STATE_PREFIX = "sd:"
CONFIG_KEY = "config_json"

OFFICIAL_BUILD = '''
import json
from functools import partial

import numpy as np
import torch


def build_official(cfg):
    """Official Sam (Meta's for a ViT, MobileSAM's for TinyViT) from SamConfig.to_dict()."""
    enc, dec, dim = cfg["encoder"], cfg["decoder"], cfg["prompt_embed_dim"]
    size = enc["img_size"]
    if enc["type"] == "vit":
        from segment_anything.modeling import (
            ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer,
        )
        image_encoder = ImageEncoderViT(
            depth=enc["depth"], embed_dim=enc["embed_dim"], img_size=size,
            mlp_ratio=enc["mlp_ratio"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=enc["num_heads"], patch_size=enc["patch_size"], qkv_bias=True,
            use_rel_pos=enc["use_rel_pos"], global_attn_indexes=enc["global_attn_indexes"],
            window_size=enc["window_size"], out_chans=enc["out_chans"],
        )
    else:
        from mobile_sam.modeling import (
            MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer,
        )
        image_encoder = TinyViT(
            img_size=size, in_chans=3, num_classes=1000, embed_dims=enc["embed_dims"],
            depths=enc["depths"], num_heads=enc["num_heads"], window_sizes=enc["window_sizes"],
            mlp_ratio=enc["mlp_ratio"], drop_rate=0.0, drop_path_rate=0.0,
            use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
            layer_lr_decay=0.8,
        )
    side = size // 16
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(side, side),
            input_image_size=(size, size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec["num_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=dec["transformer_depth"], embedding_dim=dim,
                mlp_dim=dec["transformer_mlp_dim"], num_heads=dec["transformer_heads"],
            ),
            transformer_dim=dim, iou_head_depth=dec["iou_head_depth"],
            iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def state_dict_from(inputs):
    """The state dict packed by pack_state_dict() (keys prefixed with 'sd:')."""
    return {k[3:]: torch.from_numpy(np.array(v)) for k, v in inputs.items() if k.startswith("sd:")}


def load_official(inputs):
    """Build the official model from inputs['config_json'], load the packed state dict
    strictly, and switch to eval mode AFTER loading (MobileSAM caches its attention
    biases in eval(): a model put in eval mode before loading keeps stale biases)."""
    cfg = json.loads(str(inputs["config_json"]))
    sam = build_official(cfg)
    sam.load_state_dict(state_dict_from(inputs), strict=True)
    return sam.eval()
'''

_RUNNER = '''
import sys

import numpy as np

_data = np.load(sys.argv[1], allow_pickle=False)
inputs = {key: _data[key] for key in _data.files}
outputs = {}
namespace = {"inputs": inputs, "outputs": outputs, "__name__": "__official__"}
exec(compile(open(sys.argv[3]).read(), "official_build", "exec"), namespace)
exec(compile(open(sys.argv[4]).read(), "official_snippet", "exec"), namespace)
np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in outputs.items()})
'''


def official_python() -> str | None:
    """Path of a Python interpreter with the official packages, or None.

    ``$SAMSCOPE_OFFICIAL_PYTHON`` when set (and executable), else this interpreter if
    ``segment_anything`` is importable here, else None.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = shutil.which(configured)
        return path if path else None
    if importlib.util.find_spec("segment_anything") is not None:
        return sys.executable
    return None


def skip_reason() -> str:
    """Why parity tests are skipped (for ``pytest.mark.skipif``)."""
    return (
        "official segment_anything / MobileSAM not available: set "
        f"{ENV_VAR}=/path/to/python of an environment that has them (see README)"
    )


def pack_state_dict(state_dict, config_dict: dict | None = None) -> dict[str, np.ndarray]:
    """Arrays for :func:`run_official`: each tensor under ``'sd:<key>'`` (+ the config JSON)."""
    arrays = {STATE_PREFIX + key: value.detach().cpu().numpy() for key, value in state_dict.items()}
    if config_dict is not None:
        arrays[CONFIG_KEY] = np.array(json.dumps(config_dict))
    return arrays


def run_official(script: str, arrays: dict[str, np.ndarray], timeout: float = 900) -> dict[str, np.ndarray]:
    """Run ``script`` in the official interpreter and return the arrays it produced.

    The snippet sees ``inputs`` (dict of the given arrays) and fills ``outputs``
    (dict of array-likes); ``build_official``, ``state_dict_from`` and
    ``load_official`` from :data:`OFFICIAL_BUILD` are predefined.

    Raises:
        RuntimeError: no official interpreter, or the snippet failed (stderr included).
    """
    python = official_python()
    if python is None:
        raise RuntimeError(skip_reason())
    with tempfile.TemporaryDirectory(prefix="samscope-parity-") as tmp:
        folder = Path(tmp)
        np.savez(folder / "inputs.npz", **arrays)
        (folder / "runner.py").write_text(_RUNNER)
        (folder / "build.py").write_text(OFFICIAL_BUILD)
        (folder / "snippet.py").write_text(textwrap.dedent(script))
        result = subprocess.run(
            [python, str(folder / "runner.py"), str(folder / "inputs.npz"),
             str(folder / "outputs.npz"), str(folder / "build.py"), str(folder / "snippet.py")],
            capture_output=True, text=True, timeout=timeout, cwd=tmp,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"The official snippet failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
            )
        with np.load(folder / "outputs.npz", allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
