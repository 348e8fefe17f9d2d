"""Encode an image once, then segment it from prompts many times.

Two layers, as in the official predictor: :meth:`Predictor.set_image` /
:meth:`Predictor.predict` speak numpy and pixels of the original image
(``(x, y)`` = column, row); :meth:`Predictor.decode` speaks torch and the model's
input frame, for batch work such as segment-everything.

The prompt rules of :meth:`Predictor.predict` are in :mod:`napari_samscope.core.predict.prompts`;
the decoder's inference fast paths and their state are the predictor's
:class:`~napari_samscope.core.predict.fast_decode.DecoderRunner`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_samscope.core.device import resolve_dtype, select_device
from napari_samscope.core.modeling.sam import Sam
from napari_samscope.core.predict.embedding import (
    ImageEmbedding,
    SamHolder,
    checked_embedding,
    encode_rgb,
    model_key,
)
from napari_samscope.core.predict.fast_decode import DecoderRunner
from napari_samscope.core.predict.flips import FlipSetting, decode_flipped, refuse_tiled_flips
from napari_samscope.core.predict.image import load_image, to_rgb_uint8
from napari_samscope.core.predict.input_scale import ScaleSetting, check_scale
from napari_samscope.core.predict.object_decode import decode_objects
from napari_samscope.core.predict.point_refine import RefineSetting
from napari_samscope.core.predict.prompts import check_flag, parse_prompts
from napari_samscope.core.predict.resolution import warn_unresolvable_prompts
from napari_samscope.core.predict.results import Prediction
from napari_samscope.core.predict.transforms import MaskUpsampler
from napari_samscope.core.predict.zoom import ZoomSetting

__all__ = ["ImageEmbedding", "Predictor", "SamHolder", "model_key"]


class Predictor(ZoomSetting, RefineSetting, FlipSetting, ScaleSetting):
    """Prompted segmentation of one image at a time with a SAM-family model.

    Args:
        model: a :class:`~napari_samscope.core.predict.sam_api.SAM` (its device and dtype are
            the defaults) or a bare :class:`Sam` module. The module is put in eval mode.
        device: where to run; moves the module there (in place). Default: where it is.
        dtype: autocast dtype (``None`` float32, ``"bfloat16"``, ``"float16"``, ``"auto"``),
            see :func:`~napari_samscope.core.device.resolve_dtype`.
        spec: the registry entry of the weights (``core.weights.spec.ModelSpec``), which
            brings the model's recommended segment-everything parameters. Default: the
            wrapper's ``spec``, or None for a bare module.
        scale: how images go into the model input, ``"auto"``, ``"fill"`` or a
            magnification (:mod:`~napari_samscope.core.predict.input_scale`); the default
            of :meth:`set_image` and :meth:`encode`, settable as :attr:`scale`. Default:
            ``"auto"`` for a model that declares its scale, else ``"fill"``.
        input_scale: the scale the model declares (``core.weights.spec.InputScale``).
            Default: the wrapper's ``input_scale``, else the ``spec``'s, else None.
        flips: orientations averaged for every prompt, 1, 2 or 4
            (:mod:`~napari_samscope.core.predict.flips`): the default of :meth:`set_image`
            and :meth:`encode`, settable as :attr:`flips`. Default: the wrapper's ``flips``,
            else the ``spec``'s (2 for the default model), else 1.
        refine_points: decode point-only prompts again with their mask's box
            (:mod:`~napari_samscope.core.predict.point_refine`), settable. Default: the
            wrapper's, else the ``spec``'s (True for the default model), else False.
        zoom: decode box prompts and refined points on crops magnified ``zoom`` times more
            than the image (:mod:`~napari_samscope.core.predict.zoom`; 1: off), settable.
            Default: the wrapper's, else the ``spec``'s (2 for the default model), else 1.

    Threads: a predictor serialises its calls. Every method that reads or changes the
    current image (``set_image``, ``set_embedding``, ``reset_image``, ``encode``,
    ``predict``, ``decode``) holds one re-entrant lock, :attr:`lock`, so a call never
    sees another thread's image halfway. The current image is shared, though: to set an
    image and prompt it while other threads use the same predictor, hold the lock
    around both (``with predictor.lock: predictor.set_image(a); predictor.predict(...)``).
    For parallel work, use one predictor per thread (they may share the model).
    """

    def __init__(
        self, model: SamHolder | Sam, *, device: Any = None, dtype: Any = None, spec: Any = None,
        scale: Any = None, input_scale: Any = None, flips: Any = None, refine_points: Any = None,
        zoom: Any = None,
    ) -> None:
        if isinstance(model, Sam):
            sam, default_device, default_dtype = model, model.device, None
        elif isinstance(getattr(model, "model", None), Sam):
            sam, default_device, default_dtype = model.model, model.model.device, model.dtype
        else:
            raise TypeError(
                f"Predictor needs a SAM (napari_samscope.SAM) or a Sam module, "
                f"not {type(model).__name__}."
            )
        target = select_device(device) if device is not None else torch.device(default_device)
        if sam.device != target:
            sam.to(target)
            if sam is not model:  # keep the SAM wrapper's record of its device true
                model.device = target
        #: the re-entrant lock every call holds (see the class docstring)
        self.lock = threading.RLock()
        self.model = sam.eval()
        self._runner = DecoderRunner(
            sam, target, resolve_dtype(dtype if dtype is not None else default_dtype, target),
            self.lock,
        )
        #: the registry entry of a registry model (its recommended segment-everything
        #: parameters), else None
        self.spec = spec if spec is not None else getattr(model, "spec", None)
        self._init_scale(model, input_scale, scale)
        self._init_flips(model, flips, self.spec)
        self._init_refine(model, refine_points, self.spec)
        self._init_zoom(model, zoom, self.spec)
        self._embedding: ImageEmbedding | None = None
        self._tiled: Any = None  # a TiledPredictor while a tiled image is set
        self._upsampler: MaskUpsampler | None = None
        self._key: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._runner.device

    @property
    def dtype(self) -> Any:
        """Autocast dtype of encoding and decoding (None: float32); may be changed."""
        return self._runner.dtype

    @dtype.setter
    def dtype(self, value: Any) -> None:
        self._runner.dtype = value

    @property
    def decoder_runner(self) -> DecoderRunner:
        """The prompt decoding of this predictor, with its fast paths and their state
        (the two-stage decoding segment-everything uses). It holds :attr:`lock`."""
        return self._runner

    @property
    def img_size(self) -> int:
        """``S``, the side of the square model input."""
        return self.model.img_size

    @property
    def lowres_size(self) -> int:
        """``L = 4 * E``, the side of the low-resolution logits and mask prompts."""
        return 4 * self.model.embedding_size

    @property
    def model_key(self) -> str:
        """:func:`model_key` of the model (computed once per predictor: after changing
        the weights in place, make a new predictor)."""
        if self._key is None:
            self._key = model_key(self.model)
        return self._key

    @property
    def is_image_set(self) -> bool:
        """Whether an image (or an embedding, or a tiled image) is set."""
        return self._embedding is not None or self._tiled is not None

    @property
    def tiled(self) -> Any:
        """The :class:`~napari_samscope.core.tiling.predictor.TiledPredictor` of a tiled
        image (``set_image(..., tile_shape=...)``), else None."""
        return self._tiled

    @property
    def original_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the current image, or None."""
        return None if self._embedding is None else self._embedding.original_size

    @property
    def input_size(self) -> tuple[int, int] | None:
        """``(h, w)`` of the current image resized into the model input, or None."""
        return None if self._embedding is None else self._embedding.input_size

    @property
    def features(self) -> torch.Tensor:
        """``(1, C, E, E)`` float32 embedding of the current image."""
        return self._require_image().features

    @property
    def mask_upsampler(self) -> MaskUpsampler:
        """Low-resolution logits -> original size, for the current image (made with it)."""
        with self.lock:
            self._require_image()
            assert self._upsampler is not None
            return self._upsampler

    # ------------------------------------------------------------------ images

    def set_image(
        self,
        image: np.ndarray | str | Path,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        normalization: str = "percentile",
        contrast_limits: Any = None,
        tile_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
        embeddings: str | Path | Any = None,
        scale: Any = None,
        flips: Any = None,
    ) -> None:
        """Encode ``image`` (an array or a file path) and make it the current image.

        ``scale``: ``"fill"``, ``"auto"`` or a magnification (default :attr:`scale`), see
        :mod:`~napari_samscope.core.predict.input_scale`; prompts and masks stay in
        pixels of ``image`` whatever the scale. ``flips``: orientations encoded, whose
        decodings every prompt averages (1, 2 or 4, default :attr:`flips`;
        :mod:`~napari_samscope.core.predict.flips`).

        With ``tile_shape``, ``halo`` or ``embeddings`` (a ``.zarr`` store path) the image
        is tiled instead (:mod:`napari_samscope.core.tiling`): ``(H, W)`` or
        ``(H, W, 3)`` arrays of any size, numpy, zarr or dask, are cut into overlapping
        tiles encoded at the model's scale on first use (or taken from the store), and
        :meth:`predict` routes each prompt to the tile that holds it; coordinates and
        masks stay in pixels of the whole image. ``tiled`` gives the tiled predictor
        (precompute, windows, segment-everything).

        The image is converted with :func:`~napari_samscope.core.predict.image.to_rgb_uint8`
        (8-bit RGB is used as it is). A constant image is refused unless
        ``contrast_limits`` is given. On error the previous image stays set.

        The prompt-independent work of decoding is done here too, and one point is decoded
        and discarded (tens of milliseconds next to seconds of encoding), so that the
        first prompt is as fast as the next.
        """
        if tile_shape is not None or halo is not None or embeddings is not None:
            refuse_tiled_flips(flips)
            if channel_axis is not None or channels is not None:
                raise ValueError(
                    "A tiled image is 2D or RGB with channels last; select the channels first."
                )
            self._set_tiled(image, tile_shape, halo, embeddings, contrast_limits, scale)
            return
        scale, flips = self._scale if scale is None else check_scale(scale), self._resolve_flips(flips)
        rgb = to_rgb_uint8(load_image(image) if isinstance(image, (str, Path)) else image,
                           channel_axis=channel_axis, channels=channels, normalization=normalization,
                           contrast_limits=contrast_limits, allow_constant=False)
        with self.lock:
            (embedding,) = self.encode([rgb], scale=scale, flips=flips)
            self._set_current(embedding)
            self._runner.warm_up(embedding, self.mask_upsampler)

    def _set_tiled(
        self, image: Any, tile_shape: Any, halo: Any, embeddings: Any, limits: Any, scale: Any
    ) -> None:
        from napari_samscope.core.tiling.predictor import TiledPredictor

        source = load_image(image) if isinstance(image, (str, Path)) else image
        with self.lock:
            tiled = TiledPredictor.for_predictor(self, scale=scale)
            tiled.set_image(
                source, tile_shape=tile_shape, halo=halo, embeddings=embeddings,
                rgb=len(getattr(source, "shape", ())) == 3, contrast_limits=limits,
            )
            self.reset_image()
            self._tiled = tiled

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        with self.lock:
            self._embedding, self._tiled, self._upsampler = None, None, None
            self._zoom_from(None)
            self._runner.clear()

    def get_embedding(self) -> ImageEmbedding:
        """The current image's :class:`ImageEmbedding` (to cache it and set it back later)."""
        return self._require_image()

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Make a precomputed embedding of this model the current image (no encoding).

        Raises:
            TypeError: not an :class:`ImageEmbedding`.
            ValueError: it was made by another model, or its shapes do not fit this model.
        """
        if not isinstance(embedding, ImageEmbedding):
            raise TypeError(f"Expected an ImageEmbedding, not {type(embedding).__name__}.")
        with self.lock:
            checked = checked_embedding(embedding, self.model, self.model_key)
            self._set_current(checked.converted(device=self.device, dtype=torch.float32))

    def _set_current(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding`` the current image and do the prompt-independent work of
        decoding it now: the decoder's prepared image and the upsampling matrices of its
        size (tens of milliseconds the first time a size is seen)."""
        self._embedding, self._tiled = embedding, None
        self._zoom_from(embedding.pixels)  # zoom's crops are cut from them
        self._upsampler = MaskUpsampler(
            embedding.original_size, embedding.input_size, self.img_size, self.lowres_size
        )
        self._runner.clear()
        for features in (*embedding.flipped, embedding.features):  # the plain one last
            self._runner.prepare(features)

    @torch.no_grad()
    def encode(
        self,
        images: Sequence[np.ndarray | str | Path],
        *,
        batch_size: int = 4,
        scale: Any = None,
        flips: Any = None,
        **norm_kwargs: Any,
    ) -> list[ImageEmbedding]:
        """Encode several images without changing the current image.

        Images of the same size are encoded together, ``batch_size`` at a time. Unlike
        :meth:`set_image`, constant images (blank planes, empty crops) are encoded rather
        than refused, unless ``allow_constant=False`` is passed.

        Args:
            images: arrays or file paths, each accepted by :meth:`set_image`.
            batch_size: images per encoder pass.
            scale: ``"auto"``, ``"fill"`` or a magnification (as in :meth:`set_image`);
                default :attr:`scale`.
            flips: orientations to encode for flip averaging (1, 2 or 4); default
                :attr:`flips`. Work that decodes on the plain embedding only (segment-
                everything, instance maps, tiles) passes 1.
            **norm_kwargs: ``channel_axis``, ``channels``, ``normalization``,
                ``contrast_limits``, ``allow_constant`` for
                :func:`~napari_samscope.core.predict.image.to_rgb_uint8`.

        Returns:
            One :class:`ImageEmbedding` per image, in order (float32 features on the device).
        """
        if isinstance(images, (np.ndarray, str, Path)):
            raise TypeError("encode() takes a sequence of images; use set_image() for one image.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
        norm_kwargs.setdefault("allow_constant", True)
        scale = self._scale if scale is None else check_scale(scale)
        flips = self._resolve_flips(flips)
        rgbs = [
            to_rgb_uint8(load_image(im) if isinstance(im, (str, Path)) else im, **norm_kwargs)
            for im in images
        ]
        with self.lock:
            return encode_rgb(
                self.model, rgbs, batch_size, self.device, self.dtype, self.model_key,
                scale, self.input_scale, flips,
            )

    # ------------------------------------------------------------------ prompts

    @torch.no_grad()
    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        masks: Any = None,
        multimask_output: bool = False,
        draft: bool = False,
    ) -> Prediction:
        """Segment objects of the current image from prompts (rules in the module docstring).

        Args:
            points: ``(2,)``, ``(P, 2)`` or ``(N, P, 2)`` ``(x, y)`` pixels of the original image.
            labels: 1 (foreground) / 0 (background), shaped like ``points`` minus its last
                axis; default all 1.
            bboxes: ``(4,)`` or ``(N, 4)`` XYXY pixels of the original image.
            masks: ``(L, L)`` or ``(N, L, L)`` low-resolution logits of earlier results. To
                refine an object with a new click, pass all of its clicks and the previous
                single-mask result's ``logits[0]``.
            multimask_output: ask the model for 3 candidates per object.
            draft: one decoder pass on the image as it is, without flip averaging, point
                refinement or zoom (a live preview's first look; tiles decode as usual).

        Returns:
            A :class:`Prediction`. One object: its 3 candidates (multimask) or 1 mask.
            ``N`` objects: one mask each, the best-scored candidate when multimask.

        Warns:
            SmallObjectWarning: objects would shrink below what the model resolves at this
                image size (:mod:`~napari_samscope.core.predict.resolution`).

        Raises:
            ValueError: no image is set, or the prompts are invalid.
        """
        draft = check_flag(draft, "draft")
        with self.lock:
            if self._tiled is not None:
                return self._tiled.predict(points, labels, bboxes, masks, multimask_output)
            emb = self._require_image()
            prompts = parse_prompts(points, labels, bboxes, masks, self.lowres_size)
            multimask_output = check_flag(multimask_output, "multimask_output")
            zoom = None if draft or prompts.boxes is None else self.zoom_source(emb)
            crop_magnification = None if zoom is None else zoom.grid.magnification
            warn_unresolvable_prompts(emb, prompts, self.img_size, crop_magnification, 3)
            return decode_objects(self, emb, prompts, multimask_output, draft=draft)

    @torch.no_grad()
    def decode(
        self,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt encoder and mask decoder on the current image (torch level); an
        image encoded with ``flips`` > 1 is decoded on each orientation and the results
        averaged (:func:`~napari_samscope.core.predict.flips.decode_flipped`).

        Args:
            point_coords: ``(B, P, 2)`` ``(x, y)`` in the model's input frame (see
                :func:`~napari_samscope.core.predict.transforms.apply_coords`).
            point_labels: ``(B, P)`` int, 1 foreground / 0 background.
            boxes: ``(B, 4)`` XYXY in the input frame.
            mask_input: ``(B, 1, L, L)`` low-resolution logits.
            multimask_output: 3 candidates per prompt set instead of 1.

        Returns:
            low-resolution logits ``(B, K, L, L)`` and predicted IoU ``(B, K)``, float32.
        """
        with self.lock:
            embedding = self._require_image()
            if (point_coords is None) != (point_labels is None):
                raise ValueError("point_coords and point_labels must be given together.")
            if point_coords is None and boxes is None and mask_input is None:
                raise ValueError("decode() needs at least one prompt (points, boxes or masks).")
            return decode_flipped(
                self._runner, embedding, point_coords, point_labels, boxes, mask_input,
                multimask_output, self.img_size,
            )

    # ------------------------------------------------------------------ helpers

    def _require_image(self) -> ImageEmbedding:
        if self._embedding is None and self._tiled is not None:
            raise ValueError(
                "A tiled image is set: it has one embedding per tile (predictor.tiled); "
                "prompt it with predict()."
            )
        if self._embedding is None:
            raise ValueError("No image is set: call set_image(image) (or set_embedding) first.")
        return self._embedding
