"""Export a SAM-family model to two ONNX files (needs the optional ``onnx`` extra).

``<name>_encoder.onnx`` -- the image encoder:

======================  =====================================  ==============================
name                    shape, dtype                           meaning
======================  =====================================  ==============================
``image`` (in)          ``(1, 3, S, S)`` float32               the preprocessed image: 8-bit
                                                               RGB resized so its longest
                                                               side is ``S`` (Pillow
                                                               bilinear, new size
                                                               ``int(x * S / max(h, w) + 0.5)``),
                                                               normalised ``(x - mean) / std``,
                                                               zero-padded bottom/right
``image_embeddings``    ``(1, C, E, E)`` float32               ``E = S / 16`` (C=256, E=64
(out)                                                          for the official models)
======================  =====================================  ==============================

``<name>_decoder.onnx`` -- the prompt encoder and the mask decoder, for *one* object:

======================  =====================================  ==============================
``image_embeddings``    ``(1, C, E, E)`` float32               from the encoder
``point_coords``        ``(1, N, 2)`` float32, N dynamic       ``(x, y)`` in the *resized*
                                                               frame (original pixels times
                                                               ``new_w / w``, ``new_h / h``)
``point_labels``        ``(1, N)`` float32                     1 foreground, 0 background,
                                                               2 / 3 box top-left /
                                                               bottom-right corner, -1 padding
``mask_input``          ``(1, 1, 4E, 4E)`` float32             previous low-res logits
``has_mask_input``      ``(1,)`` float32                       1 to use ``mask_input``, else 0
``orig_im_size``        ``(2,)`` float32                       ``(h, w)`` of the original image
``masks`` (out)         ``(1, K, h, w)`` float32               mask *logits* at the original
                                                               size (threshold at 0)
``iou_predictions``     ``(1, K)`` float32                     predicted IoU per mask
``low_res_masks``       ``(1, K, 4E, 4E)`` float32             low-res logits (feed back as
                                                               ``mask_input``)
======================  =====================================  ==============================

``K`` is 3 with ``multimask_output=True`` and 1 otherwise (the single-mask output, as
``Predictor.predict(multimask_output=False)``). These are the input and output names
of the official segment-anything ONNX decoder, so existing client code works. When no
box is given, append one padding point ``(0, 0)`` with label -1 (as the official
client does); :func:`decoder_inputs` prepares everything from original-pixel prompts.
The mean, std, ``S`` and this convention are also stored in each file's metadata.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from napari_samscope.core.modeling.sam import Sam

__all__ = ["export_onnx", "decoder_inputs", "ENCODER_INPUTS", "DECODER_INPUTS", "DECODER_OUTPUTS"]

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
#: files above this size keep their weights in one external ``.data`` file (protobuf limit 2 GB)
EXTERNAL_DATA_BYTES = 1_800_000_000


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError(
            "ONNX export needs the optional 'onnx' package: pip install 'napari-samscope[onnx]' "
            "(or pip install onnx onnxruntime)"
        ) from None


def _torch_modules() -> tuple[Any, Any]:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ImageEncoderOnnx(nn.Module):
        """``(1, 3, S, S)`` preprocessed image -> ``(1, C, E, E)`` embedding."""

        def __init__(self, sam: Sam) -> None:
            super().__init__()
            self.image_encoder = sam.image_encoder

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.image_encoder(image)

    class PromptDecoderOnnx(nn.Module):
        """Prompt encoder + mask decoder + postprocessing, traceable (no data-dependent Python)."""

        def __init__(self, sam: Sam, multimask_output: bool) -> None:
            super().__init__()
            self.prompt_encoder = sam.prompt_encoder
            self.mask_decoder = sam.mask_decoder
            self.img_size = int(sam.img_size)
            self.multimask_output = bool(multimask_output)

        def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            pe = self.prompt_encoder
            embedding = pe.pe_layer.forward_with_coords(coords + 0.5, (self.img_size, self.img_size))
            labels = labels.unsqueeze(-1)
            embedding = embedding * (labels != -1).to(embedding.dtype)
            embedding = embedding + pe.not_a_point_embed.weight * (labels == -1).to(embedding.dtype)
            for index in range(pe.num_point_embeddings):
                weight = pe.point_embeddings[index].weight
                embedding = embedding + weight * (labels == index).to(embedding.dtype)
            return embedding

        def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
            pe = self.prompt_encoder
            dense = has_mask_input * pe.mask_downscaling(mask_input)
            return dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

        def _postprocess(self, low: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            size = self.img_size
            masks = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
            orig = orig_im_size.to(torch.float32)
            scale = size / torch.max(orig)
            resized = torch.floor(orig * scale + 0.5).to(torch.int64)
            masks = masks[..., : resized[0], : resized[1]]
            out = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(out[0], out[1]), mode="bilinear", align_corners=False)

        def forward(
            self,
            image_embeddings: torch.Tensor,
            point_coords: torch.Tensor,
            point_labels: torch.Tensor,
            mask_input: torch.Tensor,
            has_mask_input: torch.Tensor,
            orig_im_size: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            sparse = self._embed_points(point_coords, point_labels)
            dense = self._embed_mask(mask_input, has_mask_input)
            low, scores = self.mask_decoder.predict_masks(
                image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense
            )
            if self.multimask_output:
                low, scores = low[:, 1:], scores[:, 1:]
            else:
                low, scores = low[:, :1], scores[:, :1]
            return self._postprocess(low, orig_im_size), scores, low

    return ImageEncoderOnnx, PromptDecoderOnnx


def _unwrap(model: Any) -> tuple[Sam, str]:
    from napari_samscope.core.modeling.sam import Sam

    if isinstance(model, Sam):
        return model, "sam"
    inner = getattr(model, "model", None)
    if isinstance(inner, Sam):
        return inner, str(getattr(model, "name", "sam"))
    raise TypeError(f"export_onnx needs a SAM (napari_samscope.SAM) or a Sam module, not {type(model).__name__}")


def _safe_stem(name: str) -> str:
    stem = Path(str(name)).name
    stem = re.sub(r"\.(pt|pth|ckpt|safetensors)$", "", stem, flags=re.IGNORECASE)
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._")
    return stem or "sam"


def _finalise(exported: Path, path: Path, metadata: dict[str, str], external_data_bytes: int) -> list[Path]:
    """Copy the exported graph to ``path`` with metadata; weights external when large.

    The exporter wrote ``exported`` in a scratch folder (where a >2 GB graph spills one
    file per tensor); the final file has either embedded weights or one ``.data`` file.
    """
    import onnx

    proto = onnx.load(str(exported))  # also reads any external tensors next to it
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    weights = sum(t.ByteSize() for t in proto.graph.initializer)
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    if weights > external_data_bytes:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path.name, size_threshold=1024)
        return [path, data_path]
    onnx.save_model(proto, str(path))
    return [path]


def export_onnx(
    model: Any,
    out_dir: str | Path = ".",
    *,
    name: str | None = None,
    multimask_output: bool = False,
    opset: int = 17,
    overwrite: bool = True,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> list[Path]:
    """Write ``<name>_encoder.onnx`` and ``<name>_decoder.onnx`` into ``out_dir``.

    Args:
        model: a :class:`~napari_samscope.SAM` or a :class:`~napari_samscope.core.modeling.sam.Sam`.
        out_dir: destination folder (created if needed).
        name: file-name prefix; default the model's name (e.g. ``vit_b``), sanitised.
        multimask_output: the decoder returns 3 candidate masks instead of 1.
        opset: ONNX opset version.
        overwrite: False refuses to replace existing files.
        external_data_bytes: a graph whose weights exceed this is saved with its weights
            in one external ``<file>.data`` next to it (ViT-H's encoder is above ONNX's
            2 GB protobuf limit).

    Returns:
        The written files: encoder, decoder (plus a ``.data`` file per large graph).

    Raises:
        ImportError: ``onnx`` is not installed.
        FileExistsError: a file exists and ``overwrite`` is False.
    """
    _require_onnx()
    import torch

    sam, default_name = _unwrap(model)
    stem = _safe_stem(name or default_name)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_path = out_dir / f"{stem}_encoder.onnx"
    decoder_path = out_dir / f"{stem}_decoder.onnx"
    if not overwrite:
        for path in (encoder_path, decoder_path):
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True or choose another out_dir")

    ImageEncoderOnnx, PromptDecoderOnnx = _torch_modules()
    size, embed = int(sam.img_size), int(sam.embedding_size)
    channels = int(sam.prompt_encoder.embed_dim)
    was_training, device = sam.training, sam.device
    sam.eval().to("cpu")
    metadata = {
        "producer": "napari-samscope",
        "model_name": stem,
        "img_size": str(size),
        "embedding_size": str(embed),
        "pixel_mean": ",".join(f"{v:g}" for v in sam.pixel_mean.flatten().tolist()),
        "pixel_std": ",".join(f"{v:g}" for v in sam.pixel_std.flatten().tolist()),
        "point_frame": "resized: original (x, y) * (new / old) per axis, new = int(old * S / max(h, w) + 0.5)",
        "point_labels": "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding",
        "multimask_output": str(bool(multimask_output)),
    }
    written: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as scratch, \
                torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation notices
            tmp_encoder, tmp_decoder = Path(scratch) / "encoder.onnx", Path(scratch) / "decoder.onnx"
            image = torch.zeros(1, 3, size, size)
            torch.onnx.export(
                ImageEncoderOnnx(sam), (image,), str(tmp_encoder), dynamo=False,
                input_names=list(ENCODER_INPUTS), output_names=list(ENCODER_OUTPUTS),
                opset_version=opset, do_constant_folding=True,
            )
            dummy = (
                torch.randn(1, channels, embed, embed),
                torch.randint(0, size, (1, 5, 2), dtype=torch.float32),
                torch.randint(0, 4, (1, 5), dtype=torch.float32),
                torch.randn(1, 1, 4 * embed, 4 * embed),
                torch.tensor([1.0]),
                torch.tensor([1500.0, 2250.0]),
            )
            torch.onnx.export(
                PromptDecoderOnnx(sam, multimask_output), dummy, str(tmp_decoder), dynamo=False,
                input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS),
                dynamic_axes={
                    "point_coords": {1: "num_points"},
                    "point_labels": {1: "num_points"},
                    "masks": {2: "height", 3: "width"},
                },
                opset_version=opset, do_constant_folding=True,
            )
            written += _finalise(tmp_encoder, encoder_path, metadata, external_data_bytes)
            written += _finalise(tmp_decoder, decoder_path, metadata, external_data_bytes)
    finally:
        sam.train(was_training).to(device)
    return written


def decoder_inputs(
    original_size: tuple[int, int],
    img_size: int,
    embedding: np.ndarray,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The decoder's input dict for one object, from prompts in *original* pixels.

    Args:
        original_size: ``(h, w)`` of the original image.
        img_size: the model's input side ``S`` (file metadata ``img_size``).
        embedding: ``(1, C, E, E)`` output of the encoder file.
        points: ``(N, 2)`` ``(x, y)`` points, or None.
        labels: ``(N,)`` 1 / 0 per point (required with ``points``).
        box: ``(4,)`` XYXY box, or None.
        mask_input: ``(1, 1, 4E, 4E)`` or ``(4E, 4E)`` low-res logits from a previous call.

    Returns:
        ``{name: array}`` ready for ``onnxruntime.InferenceSession.run``.
    """
    from napari_samscope.core.predict.transforms import apply_coords, resize_longest_side_shape

    h, w = int(original_size[0]), int(original_size[1])
    input_size = resize_longest_side_shape(h, w, img_size)
    coords = np.zeros((0, 2))
    point_labels = np.zeros((0,))
    if points is not None:
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if labels is None or len(np.asarray(labels).reshape(-1)) != len(coords):
            raise ValueError("give one label (1 foreground, 0 background) per point")
        point_labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if box is not None:
        coords = np.concatenate([coords, np.asarray(box, dtype=np.float64).reshape(2, 2)])
        point_labels = np.concatenate([point_labels, [2.0, 3.0]])
    else:
        coords = np.concatenate([coords, np.zeros((1, 2))])
        point_labels = np.concatenate([point_labels, [-1.0]])
    coords = apply_coords(coords, (h, w), input_size)
    lowres = 4 * int(np.asarray(embedding).shape[-1])
    if mask_input is None:
        mask = np.zeros((1, 1, lowres, lowres), np.float32)
        has_mask = np.zeros(1, np.float32)
    else:
        mask = np.asarray(mask_input, dtype=np.float32).reshape(1, 1, lowres, lowres)
        has_mask = np.ones(1, np.float32)
    return {
        "image_embeddings": np.asarray(embedding, dtype=np.float32),
        "point_coords": coords[None].astype(np.float32),
        "point_labels": point_labels[None].astype(np.float32),
        "mask_input": mask,
        "has_mask_input": has_mask,
        "orig_im_size": np.array([h, w], dtype=np.float32),
    }
