"""Instance segmentation on :class:`~napari_samscope.core.predict.sam_api.SAM`: the
decoder-based modes (AIS, APG) as a mixin, so that ``SAM`` only inherits it.

``SAM(name_or_path)`` gets its instance decoder from the checkpoint (micro-sam's
``"decoder_state"``) or from the registry (``<name>_decoder``); see
:func:`load_instance_decoder`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Generator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.instances.apg import (
    APGParams,
    instances_from_prompts,
    point_prompts_from_maps,
)
from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.instances.load import decoder_from_state, read_decoder
from napari_samscope.core.instances.maps import instance_maps_from_embedding
from napari_samscope.core.instances.postprocess import instances_from_maps
from napari_samscope.core.predict.image import load_image
from napari_samscope.core.predict.predictor import ImageEmbedding, Predictor
from napari_samscope.core.progress import Progress, run

__all__ = [
    "InstanceMode",
    "InstanceSegmentationMixin",
    "load_instance_decoder",
    "load_instance_decoder_iter",
    "no_decoder_message",
]


class InstanceMode(str, Enum):
    """How :meth:`InstanceSegmentationMixin.segment_instances` finds objects."""

    #: automatic instance segmentation: seeded watershed of the decoder's maps
    AIS = "ais"
    #: automatic prompt generation: decoder seeds as point prompts, refined by SAM
    APG = "apg"


def no_decoder_message(name: str, what: str) -> str:
    """The error for a model ``name`` without an instance decoder asked for ``what``: it
    names the models that have one."""
    from napari_samscope.core.weights.registry import decoder_models

    return (
        f"Model {name!r} has no instance decoder, so {what} is not available. Models with "
        f"one: {', '.join(decoder_models())} (or a micro-sam checkpoint that holds a "
        "'decoder_state'; or set one with set_instance_decoder). Without a decoder, use "
        "segment-everything: model(image)."
    )


def load_instance_decoder_iter(loaded: Any) -> Generator[Progress, None, UNETRDecoder | None]:
    """The instance decoder that goes with a loaded model (``core.weights.loader.LoadedModel``),
    on its device, or None; yields the download's byte progress.

    From the checkpoint's ``decoder_state`` when it has one; else from the registry's
    companion (``ModelSpec.decoder``): a packaged file (size and sha256 checked) or a
    download (once, hash-checked; ``Progress("downloading <file>", bytes, total)``).

    Raises:
        DownloadError: the companion could not be downloaded; the message names the
            model, the decoder and the exact path to put the file at by hand.
    """
    embed_dim = int(loaded.sam.prompt_encoder.embed_dim)
    decoder = None
    if getattr(loaded, "decoder_state", None) is not None:
        decoder = decoder_from_state(loaded.decoder_state, source=str(loaded.path), embed_dim=embed_dim)
    elif loaded.spec is not None and loaded.spec.decoder is not None:
        from napari_samscope.core.weights.download import DownloadError, download_iter
        from napari_samscope.core.weights.registry import check_model_file, resolve

        spec = resolve(loaded.spec.decoder)
        if spec.source == "download":
            try:
                path = yield from download_iter(spec)
            except DownloadError as error:
                raise DownloadError(
                    f"Model {loaded.spec.name!r} loaded, but its instance decoder "
                    f"{spec.name!r} (needed for AIS and APG) was not: {error}"
                ) from error
        else:
            path = check_model_file(spec)
        decoder = read_decoder(path, embed_dim=embed_dim)
        _check_trained_on(path, loaded.spec)
    return None if decoder is None else decoder.to(loaded.device).eval()


def load_instance_decoder(
    loaded: Any, progress: Callable[[Any], Any] | str | None = None
) -> UNETRDecoder | None:
    """Headless :func:`load_instance_decoder_iter`; ``progress`` is None, ``"tqdm"`` or a
    callback (it sees the download's progress)."""
    return run(load_instance_decoder_iter(loaded), progress=progress)


def _check_trained_on(path: Any, model_spec: Any) -> None:
    """Refuse a companion decoder trained on another checkpoint of its model.

    A decoder reads the embeddings of the encoder it was trained on; the same channel
    count does not make another encoder's embeddings readable (its maps would be noise).
    The project's decoder files record the SAM file's sha256 in their ``meta``
    (``training/train_instance_decoder.py``); files without it (micro-sam's) pass.
    """
    import torch

    meta = torch.load(path, map_location="cpu", weights_only=True).get("meta") or {}
    trained_on = str(meta.get("sam_sha256") or "").lower()
    expected = str(getattr(model_spec, "sha256", None) or "").lower()
    if trained_on and expected and trained_on != expected:
        raise ValueError(
            f"The instance decoder {path} was trained on another {model_spec.name} checkpoint "
            f"(sha256 {trained_on[:12]}..., this one is {expected[:12]}...): its maps would be "
            "noise. Retrain it with training/train_instance_decoder.py on this checkpoint."
        )


class InstanceSegmentationMixin:
    """Decoder-based instance segmentation for a model wrapper that has ``model`` (a ``Sam``),
    ``name``, ``device`` and ``predictor()`` (as ``SAM`` does)."""

    #: the UNETR instance decoder, or None
    instance_decoder: UNETRDecoder | None = None

    @property
    def has_instance_decoder(self) -> bool:
        """Whether :meth:`segment_instances` and :meth:`instance_maps` can run."""
        return self.instance_decoder is not None

    def set_instance_decoder(self, decoder: UNETRDecoder | str | os.PathLike[str] | None) -> None:
        """Use ``decoder`` (a module, a micro-sam decoder file or checkpoint, or None to drop it).

        Raises:
            TypeError: not a decoder, path or None.
            ValueError: a file that is not a decoder, or a decoder for other embeddings.
        """
        if decoder is None:
            self.instance_decoder = None
            return
        embed_dim = int(self.model.prompt_encoder.embed_dim)
        if isinstance(decoder, (str, os.PathLike)):
            decoder = read_decoder(decoder, embed_dim=embed_dim)
        elif not isinstance(decoder, UNETRDecoder):
            raise TypeError(
                f"set_instance_decoder() takes a UNETRDecoder, a file path or None, "
                f"not {type(decoder).__name__}."
            )
        elif decoder.embed_dim != embed_dim:
            raise ValueError(
                f"This decoder reads {decoder.embed_dim}-channel embeddings, but the model's "
                f"encoder gives {embed_dim}: it belongs to another model."
            )
        self.instance_decoder = decoder.to(self.device).eval()

    def _attach_instance_decoder(self, loaded: Any, progress: Any = None) -> None:
        self.instance_decoder = load_instance_decoder(loaded, progress=progress)

    def _predictor_on(
        self, image: Any, channel_axis: Any, channels: Any, normalization: str, limits: Any
    ) -> Predictor:
        """A new predictor of this model with ``image`` (array, file or embedding) set."""
        predictor = self.predictor()
        if isinstance(image, ImageEmbedding):  # APG decodes on the plain orientation only,
            predictor.set_embedding(dataclasses.replace(image, flipped=()))  # as for an image
        else:
            predictor.set_image(
                load_image(image) if isinstance(image, (str, Path)) else image,
                channel_axis=channel_axis, channels=channels,
                normalization=normalization, contrast_limits=limits,
                flips=1,  # the instance decoder reads the plain embedding only
            )
        return predictor

    def _tiled_on(self, image: Any, tiling: tuple[Any, Any, Any], channel_axis: Any,
                  channels: Any, limits: Any) -> Any:
        """A ``TiledPredictor`` of this model with ``image`` (array, lazy array or file)
        set in tiles of ``tiling`` ``(tile_shape, halo, embeddings)`` (nothing encoded
        yet; a store's tiles are read, not encoded)."""
        if isinstance(image, ImageEmbedding):
            raise ValueError(
                "An image embedding cannot be tiled: pass the image itself (or its "
                "embeddings store as embeddings=) with tile_shape / halo."
            )
        predictor = self.predictor()
        predictor.set_image(image, channel_axis=channel_axis, channels=channels,
                            tile_shape=tiling[0], halo=tiling[1], embeddings=tiling[2],
                            contrast_limits=limits)
        return predictor.tiled

    def _require_decoder(self, what: str) -> UNETRDecoder:
        if self.instance_decoder is None:
            raise ValueError(no_decoder_message(self.name, what))
        return self.instance_decoder

    def instance_maps(
        self,
        image: np.ndarray | str | Path | ImageEmbedding,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        normalization: str = "percentile",
        contrast_limits: Any = None,
        tile_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
        embeddings: str | Path | None = None,
    ) -> np.ndarray:
        """The decoder's maps for ``image`` (an array, a file, or an :class:`ImageEmbedding`
        of this model, which skips the encoder).

        With ``tile_shape``, ``halo`` or ``embeddings`` (a ``.zarr`` store) the image is
        tiled (as ``Predictor.set_image``) and the maps are assembled from the tiles'
        inner regions (:mod:`napari_samscope.core.tiling.instances`).

        Returns:
            ``(3, H, W)`` float32 at the original image size: foreground probability,
            distance to the object centre, distance to the object boundary.

        Raises:
            ValueError: the model has no instance decoder (the message names models that have
                one), or the image/embedding is unusable.
        """
        decoder = self._require_decoder("instance_maps()")
        if tile_shape is not None or halo is not None or embeddings is not None:
            from napari_samscope.core.tiling.instances import tiled_instance_maps

            tiled = self._tiled_on(image, (tile_shape, halo, embeddings), channel_axis, channels,
                                   contrast_limits)
            return tiled_instance_maps(tiled, decoder)
        predictor = self._predictor_on(image, channel_axis, channels, normalization, contrast_limits)
        try:
            return instance_maps_from_embedding(
                decoder, predictor.get_embedding(), self.model.img_size, self.dtype
            )
        finally:
            predictor.reset_image()

    def segment_instances(
        self,
        image: np.ndarray | str | Path | ImageEmbedding,
        mode: InstanceMode | str = InstanceMode.AIS,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        normalization: str = "percentile",
        contrast_limits: Any = None,
        tile_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
        embeddings: str | Path | None = None,
        **params: Any,
    ) -> np.ndarray:
        """Instances of ``image`` without prompts, from the instance decoder.

        Args:
            image: an array, an image file, or an :class:`ImageEmbedding` of this model.
            mode: ``"ais"`` (seeded watershed of the decoder's maps; parameters of
                :class:`~napari_samscope.core.instances.postprocess.AISParams`) or ``"apg"``
                (the decoder's seeds as point prompts refined by SAM; parameters of
                :class:`~napari_samscope.core.instances.apg.APGParams`).
            tile_shape, halo, embeddings: tile the image (names as ``Predictor.set_image``;
                ``embeddings`` a ``.zarr`` store whose tiles are reused, never encoded
                again): each tile's maps are decoded from its embedding, assembled, and
                AIS runs once on the whole image, so objects across tile borders are
                one object; APG decodes each seed on the tile that holds it best
                (:mod:`napari_samscope.core.tiling.instances`).
            **params: the mode's parameters, micro-sam's names and defaults.

        Returns:
            ``(H, W)`` uint32 labels, 0 background.

        Raises:
            ValueError: no instance decoder (the message names models that have one), an
                unknown mode, or bad parameters.
        """
        try:
            mode = InstanceMode(mode.lower() if isinstance(mode, str) else mode)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in InstanceMode)
            raise ValueError(f"Unknown instance segmentation mode {mode!r}; use one of {valid}.") from None
        decoder = self._require_decoder(f"segment_instances(mode={mode.value!r})")
        apg = APGParams.from_kwargs(**params) if mode is InstanceMode.APG else None
        if apg is None:  # check the parameters before the expensive encoding
            from napari_samscope.core.instances.postprocess import AISParams

            AISParams.from_kwargs(**params)
        if tile_shape is not None or halo is not None or embeddings is not None:
            from napari_samscope.core.tiling.instances import segment_instances_tiled

            tiled = self._tiled_on(image, (tile_shape, halo, embeddings), channel_axis, channels,
                                   contrast_limits)
            return segment_instances_tiled(tiled, decoder, mode.value, **params)
        predictor = self._predictor_on(image, channel_axis, channels, normalization, contrast_limits)
        try:
            maps = instance_maps_from_embedding(
                decoder, predictor.get_embedding(), self.model.img_size, self.dtype
            )
            if apg is None:
                return instances_from_maps(maps, **params)
            points = point_prompts_from_maps(
                maps,
                foreground_threshold=apg.foreground_threshold,
                center_distance_threshold=apg.center_distance_threshold,
                boundary_distance_threshold=apg.boundary_distance_threshold,
            )
            return instances_from_prompts(predictor, points, apg)
        finally:
            predictor.reset_image()
