"""The model registry: one table, one entry per model, with names, aliases and weights.

Three kinds of entries:

- **downloadable** (``url`` set): the official SAM ViT-B/L/H and MobileSAM ViT-T
  weights, fetched once into the user cache (``core/weights/download.py``) and checked
  against their byte size and sha256;
- **packaged** (``package_file`` set): the project's default model, shipped inside
  the ``napari_samscope`` package;
- **local** (``local_path`` set): models registered at run time with
  :func:`register_local_model` (for example by the fine-tuning widget).

Names and aliases are case-insensitive. The loader detects a file's architecture from
the stored config or the tensors' shapes; a registry model whose ``arch`` is one of
``core.modeling.build.ARCHITECTURES`` must then be exactly that architecture.
This module does not import torch.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from napari_samscope.core.everything.params import EverythingParams
from napari_samscope.core.weights.download import cached_file, file_sha256
from napari_samscope.core.weights.microsam_zoo import MICROSAM_MODELS
from napari_samscope.core.weights.spec import InputScale, ModelSpec, ModelStatus

__all__ = [
    "DEFAULT_MODEL",
    "ModelSpec",
    "ModelStatus",
    "check_model_file",
    "decoder_models",
    "list_models",
    "lookup",
    "model_names",
    "model_path",
    "register_local_model",
    "resolve",
    "unregister_local_model",
]

# --- The project's default model: the training pipeline updates these constants. -----
#: Path of the shipped default weights, relative to the ``napari_samscope`` package.
SAMSCOPE_NUCLEI_FILE = "models/samscope_nuclei.pt"
#: Exact byte size of the shipped file (the packaged file is refused when it differs).
SAMSCOPE_NUCLEI_SIZE: int | None = 7483515
#: Hex sha256 of the shipped file (the packaged file is refused when it differs).
SAMSCOPE_NUCLEI_SHA256: str | None = "56c4bc62b42705d1380fd44dcfe1aa8142114466ad1ab93455719bed7741bc0e"
#: Informational architecture label; loading always reads the config stored in the file.
SAMSCOPE_NUCLEI_ARCH = "custom"
#: Segment-everything parameters recommended for the default model (its IoU head is
#: calibrated differently from Meta's, so the official 0.88 / 0.95 miss half the nuclei).
#: ``python training/calibrate_everything.py`` prints these values for a retrained model
#: (held-out images, masks matched at IoU >= 0.5; the figures are in training/README.md).
SAMSCOPE_NUCLEI_EVERYTHING = EverythingParams(pred_iou_thresh=0.7, stability_score_thresh=0.92)
#: The object scale the default model was trained for (``scale="auto"`` keeps images in it).
#: Its training images were rendered at 512x512 with nuclei of radius 6-31 px and upsampled
#: 2x into the 1024 input (training/README.md), so it saw nuclei of radius 12-62 input
#: pixels at magnification 2. Between 1.5x and 2.5x, nuclei the size of the rendered ones
#: span radius 9-78 input pixels: the training range give or take a quarter, on both ends.
#: Beyond that they are smaller or larger than anything the model was trained on (at the
#: "fill" magnification of a 64x64 crop, 16x, a nucleus of radius 10 px becomes 160).
SAMSCOPE_NUCLEI_INPUT_SCALE = InputScale(
    magnification=2.0, min_magnification=1.5, max_magnification=2.5
)
#: The default model's instance decoder (AIS), trained on its frozen encoder by
#: ``python training/train_instance_decoder.py`` (training/README.md) and checked like the
#: model. Size and sha256 are None while no decoder is shipped: the model then has none.
SAMSCOPE_NUCLEI_DECODER_FILE = "models/samscope_nuclei_decoder.pt"
SAMSCOPE_NUCLEI_DECODER_SIZE: int | None = 1034845
SAMSCOPE_NUCLEI_DECODER_SHA256: str | None = "877203d3fd005a7c552d6bd32d125a1d2536fc0c92e48cde1632bab368463aac"

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


#: The entry of the default model's decoder companion, once one is shipped.
_NUCLEI_DECODER: tuple[ModelSpec, ...] = (
    (ModelSpec(
        name="samscope_nuclei_decoder",
        arch="unetr_decoder",
        filename="samscope_nuclei_decoder.pt",
        size=SAMSCOPE_NUCLEI_DECODER_SIZE,
        sha256=SAMSCOPE_NUCLEI_DECODER_SHA256,
        description="instance decoder of samscope_nuclei (loaded with it; not a SAM model)",
        package_file=SAMSCOPE_NUCLEI_DECODER_FILE,
    ),)
    if SAMSCOPE_NUCLEI_DECODER_SHA256 else ()
)

# auto_bf16: every registry model runs faster under bf16 autocast than in float32 on
# hardware with native bf16 (the set_image figures are in benchmarks/RESULTS.md), and its
# masks agree with float32 (tests/core/test_bf16.py). The decoder's two-way transformer
# stays float32 under autocast, which is what keeps the masks this close.
# flips: the default model's prompts are decoded on the image and on its upside-down
# copy, and the two are averaged (core.predict.flips): on a real nuclei image its point /
# box IoU rise by 0.023 / 0.013, and its synthetic figures are back above the project's
# no-regression line, for twice the encoding time (figures in training/README.md).
SAMSCOPE_NUCLEI_FLIPS = 2
# refine_points: a point-only prompt is decoded again with the box of its mask (twice
# with zoom; core.predict.point_refine); one-point IoU rises by about 0.02 on held-out
# synthetic sets and on a real nuclei image, for one more decoder pass per box pass
# (training/README.md).
SAMSCOPE_NUCLEI_REFINE_POINTS = True
# zoom: box prompts and the box passes of refined points are also decoded on crops
# magnified twice as much as the image, and the two scales' logits averaged, the crop
# weighted 5/8 (core.predict.zoom); chosen on held-out synthetic sets (training/README.md,
# "Zoom" and "The crop's weight").
SAMSCOPE_NUCLEI_ZOOM = 2.0

_BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="samscope_nuclei",
        arch=SAMSCOPE_NUCLEI_ARCH,
        filename="samscope_nuclei.pt",
        size=SAMSCOPE_NUCLEI_SIZE,
        sha256=SAMSCOPE_NUCLEI_SHA256,
        aliases=("default", "samscope_nuclei.pt"),
        description="napari-samscope's default: a small SAM fine-tuned for fluorescent nuclei",
        package_file=SAMSCOPE_NUCLEI_FILE,
        everything_defaults=SAMSCOPE_NUCLEI_EVERYTHING,
        auto_bf16=True,
        input_scale=SAMSCOPE_NUCLEI_INPUT_SCALE,
        decoder=_NUCLEI_DECODER[0].name if _NUCLEI_DECODER else None,
        flips=SAMSCOPE_NUCLEI_FLIPS,
        refine_points=SAMSCOPE_NUCLEI_REFINE_POINTS,
        zoom=SAMSCOPE_NUCLEI_ZOOM,
    ),
    *_NUCLEI_DECODER,
    ModelSpec(
        name="vit_b",
        arch="vit_b",
        filename="sam_vit_b_01ec64.pth",
        url=_SAM_URL + "sam_vit_b_01ec64.pth",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        aliases=("sam_b.pt", "sam_vit_b_01ec64.pth", "sam_vit_b"),
        description="SAM ViT-B (Meta, 91M parameters, 375 MB)",
        auto_bf16=True,
    ),
    ModelSpec(
        name="vit_l",
        arch="vit_l",
        filename="sam_vit_l_0b3195.pth",
        url=_SAM_URL + "sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        aliases=("sam_l.pt", "sam_vit_l_0b3195.pth", "sam_vit_l"),
        description="SAM ViT-L (Meta, 308M parameters, 1.2 GB)",
        auto_bf16=True,
    ),
    ModelSpec(
        name="vit_h",
        arch="vit_h",
        filename="sam_vit_h_4b8939.pth",
        url=_SAM_URL + "sam_vit_h_4b8939.pth",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        aliases=("sam_h.pt", "sam_vit_h_4b8939.pth", "sam_vit_h"),
        description="SAM ViT-H (Meta, 636M parameters, 2.6 GB)",
        auto_bf16=True,
    ),
    ModelSpec(
        name="vit_t",
        arch="vit_t",
        filename="mobile_sam.pt",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        # No hash is published upstream: the exact size and the strict load check it.
        size=40_728_226,
        sha256=None,
        aliases=("mobile_sam.pt", "mobilesam", "mobile_sam"),
        description="MobileSAM ViT-T (TinyViT encoder, 10M parameters, 41 MB)",
        auto_bf16=True,
    ),
    *MICROSAM_MODELS,  # micro-sam's microscopy models and their instance decoders
)

#: The model used when none is named.
DEFAULT_MODEL = "samscope_nuclei"

_user_models: dict[str, ModelSpec] = {}
_lock = threading.Lock()


def _key(name: str) -> str:
    return name.strip().lower()


def _all_specs() -> list[ModelSpec]:
    with _lock:
        return [*_BUILTIN, *_user_models.values()]


def model_names() -> list[str]:
    """Canonical names of every registered model, built-in first."""
    return [spec.name for spec in _all_specs()]


def lookup(name: str) -> ModelSpec | None:
    """The spec whose name or alias is ``name`` (case-insensitive), or None."""
    if not isinstance(name, str):
        return None
    key = _key(name)
    for spec in _all_specs():
        if key in (_key(n) for n in spec.names):
            return spec
    return None


def decoder_models() -> list[str]:
    """Names of the registered models that come with an instance decoder."""
    return [spec.name for spec in _all_specs() if spec.decoder]


def model_path(spec: ModelSpec) -> Path:
    """Where ``spec``'s weights are (or will be, once downloaded) on this computer."""
    if spec.local_path is not None:
        return spec.local_path
    if spec.package_file is not None:
        return _PACKAGE_ROOT / spec.package_file
    return cached_file(spec)


def resolve(name: str) -> ModelSpec:
    """The registry entry for a model name or alias (case-insensitive).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown name; the message lists the valid names.
        FileNotFoundError: a packaged or registered local model whose file is missing
            (for the default model: it is not installed yet).
    """
    if not isinstance(name, str):
        raise TypeError(f"A model name must be a string, not {type(name).__name__}.")
    spec = lookup(name)
    if spec is None:
        valid = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name
                          for s in _all_specs())
        raise ValueError(
            f"Unknown model {name!r}. Give the path of a weights file or one of: {valid}."
        )
    path = model_path(spec)
    if spec.source == "package" and not path.is_file():
        raise FileNotFoundError(
            f"The default model {spec.name!r} is not installed: {path} does not exist. "
            "Reinstall napari-samscope, or choose another model such as 'vit_b' "
            "(sam_b.pt) or 'vit_t' (mobile_sam.pt)."
        )
    if spec.source == "local" and not path.is_file():
        raise FileNotFoundError(
            f"The weights of model {spec.name!r} are missing: {path} does not exist. "
            "Train or register the model again, or choose another model."
        )
    return spec


def check_model_file(spec: ModelSpec, path: str | os.PathLike[str] | None = None) -> Path:
    """Check that ``spec``'s file on disk is the registered one; return its path.

    The size is checked whenever the registry knows it. The sha256 is checked for
    packaged models (small files); downloaded files were hashed when they arrived.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: wrong size or hash; the message says to delete the file.
    """
    path = Path(path) if path is not None else model_path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"The weights of model {spec.name!r} are missing: no file at {path}.")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise ValueError(
            f"The file {path} for model {spec.name!r} has {size:,} bytes but {spec.size:,} "
            "were expected: it is incomplete or a different file. Delete it and load the "
            "model again to download a fresh copy."
        )
    if spec.source == "package" and spec.sha256 is not None:
        actual = file_sha256(path)
        if actual != spec.sha256.lower():
            raise ValueError(
                f"The packaged file {path} for model {spec.name!r} is damaged: its sha256 is "
                f"{actual} but {spec.sha256} was expected. Reinstall napari-samscope."
            )
    return path


def _is_present(spec: ModelSpec) -> bool:
    path = model_path(spec)
    try:
        return path.is_file() and (spec.size is None or path.stat().st_size == spec.size)
    except OSError:
        return False


def _current_size(spec: ModelSpec) -> int | None:
    try:
        return model_path(spec).stat().st_size
    except OSError:
        return None


def list_models() -> list[ModelStatus]:
    """Every registered model with whether its weights are already on this computer."""
    return [
        ModelStatus(
            name=spec.name,
            aliases=spec.aliases,
            arch=spec.arch,
            size=spec.size if spec.size is not None else _current_size(spec),
            cached=_is_present(spec),
            path=model_path(spec),
            description=spec.description,
            source=spec.source,
            domain=spec.domain,
        )
        for spec in _all_specs()
    ]


def _arch_from_sidecar(path: Path) -> str:
    """The ``"arch"`` label of the ``<path>.json`` sidecar written by ``save_checkpoint``."""
    sidecar = path.with_name(path.name + ".json")
    try:
        label = json.loads(sidecar.read_text(encoding="utf-8")).get("arch")
    except (OSError, ValueError, AttributeError):
        return "custom"
    return str(label) if label else "custom"


def register_local_model(
    name: str, path: str | os.PathLike[str], description: str = ""
) -> ModelSpec:
    """Add a weights file on this computer to the registry under ``name``.

    Registering the same name again replaces the earlier entry (a retrained model).

    Raises:
        ValueError: ``name`` is empty or is a built-in model's name or alias.
        FileNotFoundError: no file at ``path``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("A model name must be a non-empty string.")
    name = name.strip()
    builtin_keys = {_key(n) for spec in _BUILTIN for n in spec.names}
    if _key(name) in builtin_keys:
        raise ValueError(
            f"{name!r} is the name of a built-in model; choose another name for your model."
        )
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"Cannot register model {name!r}: no file at {file}.")
    spec = ModelSpec(
        name=name,
        arch=_arch_from_sidecar(file),
        filename=file.name,
        size=None,  # the file may be retrained in place; list_models reports its current size
        description=description or f"your model ({file.name})",
        local_path=file,
    )
    with _lock:
        _user_models[_key(name)] = spec
    return spec


def unregister_local_model(name: str) -> None:
    """Remove a model added with :func:`register_local_model` (the file is kept).

    Raises:
        ValueError: no model was registered under ``name``.
    """
    with _lock:
        if _user_models.pop(_key(name), None) is None:
            raise ValueError(f"No model registered at run time under the name {name!r}.")
