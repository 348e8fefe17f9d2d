"""``SAM``: the Ultralytics-style entry point.

Example::

    from napari_samscope import SAM, Predictor

    model = SAM("sam_b.pt")                  # registry name/alias or local path; SAM() = default
    model.info()
    r = model(image, bboxes=[439, 437, 524, 709])             # one object
    r = model(image, points=[900, 370], labels=[1])           # one object
    r = model(image, bboxes=[[10, 10, 50, 60], [70, 5, 120, 40]])  # one object per box
    everything = model(image)                                  # segment everything

    pred = Predictor(model)                  # encode once, prompt many times
    pred.set_image(image)
    r = pred.predict(points=[[x, y], [x2, y2]], labels=[1, 0])

Coordinates are SAM's ``(x, y)`` pixels of the original image; boxes are XYXY.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_samscope.core.host_memory import keep_if_requested
from napari_samscope.core.instances.api import InstanceSegmentationMixin
from napari_samscope.core.modeling.sam import Sam
from napari_samscope.core.predict.image import load_image, to_rgb_uint8
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.prompts import parse_prompts
from napari_samscope.core.predict.results import Prediction

if TYPE_CHECKING:
    from napari_samscope.core.everything.generator import EverythingResult

__all__ = ["SAM"]


class SAM(InstanceSegmentationMixin):
    """A SAM-family model, ready to segment.

    Args:
        model: a registry name or alias (``"vit_b"``, ``"sam_b.pt"``,
            ``"sam_vit_b_01ec64.pth"``, ``"mobile_sam.pt"``, ...), a local checkpoint
            path, or None for the project's default model. Downloaded once when needed.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ...
        dtype: autocast dtype: ``"default"`` (the model's choice: ``"auto"`` for registry
            models verified in bf16, ``ModelSpec.auto_bf16``, float32 for files given by
            path), None or ``"float32"`` (float32), ``"bfloat16"``, ``"float16"`` or
            ``"auto"`` (bf16 where the hardware computes it natively, else float32).
        progress: download/loading progress, passed to ``core.loader.load_sam``
            (None, ``"tqdm"`` or a callable receiving ``core.progress.Progress``).

    Attributes:
        model: the :class:`Sam` module (eval mode).
        name: the model's registry name, or the file name / ``"custom"``.
        device: the ``torch.device`` it runs on.
        dtype: the autocast dtype (None for float32).
        path: the checkpoint file, when loaded from one.
        spec: the registry entry (``core.registry.ModelSpec``), or None for a file given
            by path or a wrapped module.
        input_scale: the object scale the weights were trained for
            (``core.weights.spec.InputScale``, from the registry entry or the checkpoint's
            meta), or None; with one, images go into the model with ``scale="auto"`` by
            default (:mod:`~napari_samscope.core.predict.input_scale`).
        scale: the input scale of the predictors made from this model when they are
            given none (``"auto"``, ``"fill"``, a magnification, or None for the model's
            default: ``"auto"`` when it declares its scale, else ``"fill"``); settable.
        flips: the orientations its predictors average for every prompt (1, 2 or 4, or
            None for the registry entry's choice: 2 for the default model, else 1;
            :mod:`~napari_samscope.core.predict.flips`); settable.
        refine_points: whether its predictors decode point-only prompts again with the
            box of their mask (True, False, or None for the registry entry's choice:
            True for the default model, else False;
            :mod:`~napari_samscope.core.predict.point_refine`); settable.
        zoom: how many times more than the image its predictors magnify the crop a box
            prompt or a refined point is decoded on (a number >= 1, 1: off, or None for the
            registry entry's choice: 2 for the default model, else 1;
            :mod:`~napari_samscope.core.predict.zoom`); settable.
        instance_decoder: micro-sam's UNETR decoder when the checkpoint or the registry
            has one (``has_instance_decoder``; ``segment_instances``, ``instance_maps``
            come from :class:`~napari_samscope.core.instances.api.InstanceSegmentationMixin`).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        device: Any = "auto",
        dtype: Any = "default",
        progress: Any = None,
    ) -> None:
        from napari_samscope.core.weights.loader import load_sam

        loaded = load_sam(model, device=device, dtype=dtype, progress=progress)
        self._init(loaded.sam, loaded.name, loaded.device, loaded.dtype, loaded.path, loaded.spec)
        self.input_scale = loaded.input_scale
        self._attach_instance_decoder(loaded, progress=progress)  # AIS/APG (core.instances)

    @classmethod
    def from_sam(
        cls,
        sam: Sam,
        name: str = "custom",
        device: Any = None,
        dtype: Any = None,
        *,
        spec: Any = None,
        path: str | Path | None = None,
        input_scale: Any = None,
    ) -> SAM:
        """Wrap an in-memory :class:`Sam` (tests, training); no file is read.

        ``device`` moves the module (default: where it is); ``dtype`` as in ``SAM``, but
        the default here is None (float32). ``spec`` is the registry entry the weights
        came from (a ``LoadedModel``'s): it brings the model's recommended
        segment-everything parameters and what ``dtype="default"`` means.
        ``input_scale``: the scale the weights declare (default: the ``spec``'s).
        """
        from napari_samscope.core.device import resolve_dtype, select_device

        if not isinstance(sam, Sam):
            raise TypeError(f"from_sam() needs a Sam module, not {type(sam).__name__}.")
        target = select_device(device) if device is not None else sam.device
        if sam.device != target:
            sam.to(target)
        obj = cls.__new__(cls)
        auto_bf16 = bool(getattr(spec, "auto_bf16", False))
        obj._init(sam, name, target, resolve_dtype(dtype, target, auto_bf16=auto_bf16), path, spec)
        if input_scale is not None:
            obj.input_scale = input_scale
        return obj

    def _init(
        self,
        sam: Sam,
        name: str,
        device: Any,
        dtype: torch.dtype | None,
        path: Path | None,
        spec: Any,
    ) -> None:
        self.model = sam.eval()
        self.name = str(name)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_if_requested()  # SAMSCOPE_HOST_MALLOC=keep (core.host_memory)
        self.dtype = dtype
        self.path = None if path is None else Path(path)
        self.spec = spec
        self.input_scale = getattr(spec, "input_scale", None)
        self._scale: str | float | None = None
        self._flips: int | None = None
        self._refine_points: bool | None = None
        self._zoom: float | None = None

    @property
    def scale(self) -> str | float | None:
        """The default input scale of this model's predictors (see the class docstring)."""
        return self._scale

    @scale.setter
    def scale(self, value: Any) -> None:
        from napari_samscope.core.predict.input_scale import check_scale

        self._scale = None if value is None else check_scale(value)

    @property
    def flips(self) -> int | None:
        """The default flips of this model's predictors (see the class docstring)."""
        return self._flips

    @flips.setter
    def flips(self, value: Any) -> None:
        from napari_samscope.core.predict.flips import check_flips

        self._flips = None if value is None else check_flips(value)

    @property
    def refine_points(self) -> bool | None:
        """The default ``refine_points`` of this model's predictors (class docstring)."""
        return self._refine_points

    @refine_points.setter
    def refine_points(self, value: Any) -> None:
        from napari_samscope.core.predict.point_refine import check_refine_points

        self._refine_points = None if value is None else check_refine_points(value)

    @property
    def zoom(self) -> float | None:
        """The default ``zoom`` of this model's predictors (class docstring)."""
        return self._zoom

    @zoom.setter
    def zoom(self, value: Any) -> None:
        from napari_samscope.core.predict.zoom import check_zoom

        self._zoom = None if value is None else check_zoom(value)

    def __repr__(self) -> str:
        dtype = "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")
        return f"SAM({self.name!r}, device={str(self.device)!r}, dtype={dtype!r})"

    # ------------------------------------------------------------------ inspection

    def info(self, verbose: bool = True) -> dict[str, Any]:
        """Summary of the model: layers, parameters, size, input size.

        Returns a dict with ``name``, ``architecture`` (encoder type), ``layers`` (leaf
        modules), ``parameters``, ``size_mb`` (parameters and buffers in memory, MB),
        ``file_mb`` (checkpoint file size in MB, or None), ``input_size`` (``S``),
        ``embedding_size`` (``E``), ``device`` and ``dtype``; prints it when ``verbose``.
        Sizes are decimal (1 MB = 10^6 bytes), as ``samscope models`` lists files.
        """
        from napari_samscope.core.units import format_size, megabytes

        modules = list(self.model.modules())
        layers = sum(1 for m in modules if next(m.children(), None) is None)
        params = sum(p.numel() for p in self.model.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        nbytes += sum(b.numel() * b.element_size() for b in self.model.buffers())
        file_mb = None
        if self.path is not None and self.path.is_file():
            file_mb = megabytes(self.path.stat().st_size)
        summary = {
            "name": self.name,
            "architecture": getattr(self.model.config, "encoder_type", "unknown"),
            "layers": layers,
            "parameters": params,
            "size_mb": megabytes(nbytes),
            "file_mb": file_mb,
            "input_size": self.model.img_size,
            "embedding_size": self.model.embedding_size,
            "device": str(self.device),
            "dtype": "float32" if self.dtype is None else str(self.dtype).replace("torch.", ""),
        }
        if verbose:
            sizes = f"{format_size(nbytes)} in memory"
            if file_mb is not None:  # the figure `samscope models` lists comes first
                sizes = f"{format_size(self.path.stat().st_size)} file, {sizes}"
            print(
                f"{self.name} summary: {layers} layers, {params:,} parameters, "
                f"{sizes}, input {summary['input_size']}x{summary['input_size']}, "
                f"{summary['architecture']} on {summary['device']} ({summary['dtype']})"
            )
        return summary

    def everything_defaults(self) -> dict[str, Any]:
        """Segment-everything parameters used when not given: the official defaults
        (``core.everything.EVERYTHING_DEFAULTS``) updated with this model's recommended
        values (``spec.everything_params()``; none for official models)."""
        from napari_samscope.core.everything.generator import (
            EVERYTHING_DEFAULTS,
            model_everything_defaults,
        )

        return {**EVERYTHING_DEFAULTS, **model_everything_defaults(self)}

    def predictor(self, scale: Any = None) -> Predictor:
        """A new :class:`Predictor` on this model (encode once, prompt many times);
        ``scale`` is its default input scale (``"auto"``, ``"fill"`` or a magnification;
        default :attr:`scale`, else ``"auto"`` when the model declares its scale, else
        ``"fill"``)."""
        return Predictor(self, scale=scale)

    # ------------------------------------------------------------------ inference

    def __call__(
        self,
        source: np.ndarray | str | Path,
        bboxes: Any = None,
        points: Any = None,
        labels: Any = None,
        masks: Any = None,
        multimask_output: bool = False,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        normalization: str = "percentile",
        contrast_limits: Any = None,
        scale: Any = None,
        **everything_kwargs: Any,
    ) -> Prediction | EverythingResult:
        """Segment ``source`` (an array or an image file).

        With prompts (``bboxes``, ``points``/``labels``, ``masks``; rules as in
        :meth:`Predictor.predict`) it returns a :class:`Prediction`. Without prompts it
        segments everything with :class:`~napari_samscope.core.everything.generator.MaskGenerator`,
        to which ``everything_kwargs`` go (``points_per_side``, ``pred_iou_thresh``, ...),
        and returns its result; parameters not given take the model's recommended values
        (:meth:`everything_defaults`), then the official ones. ``channel_axis``, ``channels``, ``normalization`` and
        ``contrast_limits`` choose how the image becomes 8-bit RGB
        (:func:`~napari_samscope.core.predict.image.to_rgb_uint8`). ``scale`` places the
        image in the model input (``"auto"``, ``"fill"`` or a magnification, see
        :mod:`~napari_samscope.core.predict.input_scale`; default as :meth:`predictor`);
        coordinates and masks stay in pixels of ``source``.

        Each call works on its own predictor (no state is shared between calls), so
        several threads may call one ``SAM`` at the same time.
        """
        prompted = any(p is not None for p in (bboxes, points, labels, masks))
        predictor = Predictor(self, scale=scale)  # a bad scale fails before the encoding
        if prompted:  # fail on bad prompts before the expensive encoding
            parse_prompts(points, labels, bboxes, masks, 4 * self.model.embedding_size)
        image = load_image(source) if isinstance(source, (str, Path)) else source
        rgb = to_rgb_uint8(
            image,
            channel_axis=channel_axis,
            channels=channels,
            normalization=normalization,
            contrast_limits=contrast_limits,
        )
        if prompted:
            if everything_kwargs:
                raise TypeError(
                    f"Unexpected arguments {sorted(everything_kwargs)}: segment-everything "
                    "options only apply when no prompt is given."
                )
            predictor.set_image(rgb)
            return predictor.predict(
                points=points,
                labels=labels,
                bboxes=bboxes,
                masks=masks,
                multimask_output=multimask_output,
            )
        from napari_samscope.core.everything.generator import (
            MaskGenerator,
            model_everything_defaults,
        )

        generator = MaskGenerator(
            predictor, model_defaults=model_everything_defaults(self),
            **everything_kwargs,
        )
        return generator.generate(rgb)

    def export(self, format: str = "onnx", out_dir: str | Path = ".", **kwargs: Any) -> list[Path]:
        """Export the model (``format="onnx"``) into ``out_dir``; returns the written files.

        Extra keyword arguments go to ``core.export_onnx.export_onnx``.
        """
        if format.lower() != "onnx":
            raise ValueError(f"Only format='onnx' is supported, not {format!r}.")
        from napari_samscope.core.export.onnx import export_onnx

        return export_onnx(self, Path(out_dir), **kwargs)
