"""Prompted segmentation of images larger than the model input, tile by tile.

:class:`TiledPredictor` cuts the image into overlapping tiles
(:class:`~napari_samscope.core.tiling.geometry.TileGrid`), each encoded at the model's
input size without shrinking, lazily on first use or all at once with
:meth:`TiledPredictor.precompute`. Embeddings can live in an
:class:`~napari_samscope.core.store.EmbeddingStore` so that a later session decodes
prompts without encoding anything.

Prompt routing: an object's prompts (its points and box together) go to the tile that
holds them with the most margin from a cut edge (:meth:`TiledPredictor.frame_of` says
which window, so that a mask prompt can be cropped to it). When no tile holds them whole (a box
larger than a tile, or one across a tile boundary wider than the halo), a window of the
tile's size is fitted around them (:meth:`TileGrid.fitted_window`) and encoded on
demand; a window larger than the model input (or than the predictor's ``scale`` lets
into it: ``"auto"`` for a model that declares its scale) is then resized into it with
``"fill"`` (the one case where pixels are shrunk). Such windows are kept in memory only,
never in the store.

The image is read window by window (numpy, memmap, zarr or dask arrays), never whole;
all tiles share one intensity mapping estimated from a sample of the plane.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.predict.image import to_rgb_uint8
from napari_samscope.core.predict.prompts import parse_prompts
from napari_samscope.core.predict.results import Prediction
from napari_samscope.core.progress import Progress, run
from napari_samscope.core.store.embedding_store import EmbeddingStore, StoreSpec
from napari_samscope.core.tiling import lazy
from napari_samscope.core.tiling.geometry import TileGrid, Window

__all__ = ["TiledPredictor", "WindowPrediction"]


@dataclass
class WindowPrediction:
    """Masks of one object (or one group of candidates) inside the window they were
    decoded in: ``prediction.masks`` is ``(K, h, w)`` at ``window`` ``(y0, y1, x0, x1)`` of
    an ``image_shape`` image. ``prediction.logits`` refer to that window."""

    prediction: Prediction
    window: Window
    image_shape: tuple[int, int]

    def full_masks(self) -> np.ndarray:
        """``(K, H, W) bool`` masks in original image coordinates."""
        out = np.zeros((len(self.prediction),) + tuple(self.image_shape), dtype=bool)
        y0, y1, x0, x1 = self.window
        out[:, y0:y1, x0:x1] = self.prediction.masks
        return out


class TiledPredictor:
    """A predictor for large images, tiles and planes (see the module docstring).

    Args:
        model: a :class:`~napari_samscope.core.predict.predictor.Predictor` (tiles are
            decoded on it, so its current image is replaced) or a
            :class:`~napari_samscope.SAM` (a new predictor of it). Simplest for a plain
            image: ``Predictor(model).set_image(image, tile_shape=..., halo=...)``.
        cache_tiles: tile embeddings kept in memory (least recently used dropped first).
    """

    def __init__(self, model: Any, *, cache_tiles: int = 64) -> None:
        if cache_tiles < 1:
            raise ValueError(f"cache_tiles must be at least 1, not {cache_tiles}.")
        if all(hasattr(model, name) for name in ("encode", "set_embedding", "predict")):
            self.predictor = model
        elif callable(getattr(model, "predictor", None)):
            self.predictor = model.predictor()  # a SAM
        else:
            raise TypeError(
                f"TiledPredictor needs a Predictor or a SAM, not {type(model).__name__}: "
                "load a model with SAM(name_or_path) first."
            )
        self.cache_tiles = int(cache_tiles)
        self._cache: OrderedDict[Any, Any] = OrderedDict()
        self._image: Any = None
        self.grid: TileGrid | None = None
        self.store: EmbeddingStore | None = None
        self.encoded_tiles = 0  # tiles (and windows) encoded since set_image

    @classmethod
    def for_predictor(cls, predictor: Any, scale: Any = None, **kwargs: Any) -> TiledPredictor:
        """A tiled predictor that shares ``predictor``'s model (weights, device, dtype,
        registry entry and declared input scale) but decodes tiles on its own
        :class:`Predictor` (never zoomed), so the given predictor's current image is never
        replaced and it may delegate to the tiled one (``Predictor.set_image(image,
        tile_shape=...)``) without re-entering itself. ``scale``: how tiles go into the
        model input (default: ``predictor``'s ``scale``)."""
        if not all(hasattr(predictor, name) for name in ("model", "device", "dtype", "spec")):
            raise TypeError(f"for_predictor needs a Predictor, not {type(predictor).__name__}.")
        sibling = type(predictor)(
            predictor.model, device=predictor.device, dtype=predictor.dtype, spec=predictor.spec
        )
        if hasattr(sibling, "scale"):
            sibling.input_scale = getattr(predictor, "input_scale", None)
            sibling.scale = scale if scale is not None else getattr(predictor, "scale", "fill")
        if hasattr(sibling, "refine_points"):  # the given predictor's, not the model's default
            sibling.refine_points, sibling.zoom = getattr(predictor, "refine_points", False), 1
        return cls(sibling, **kwargs)

    # ------------------------------------------------------------------ image

    def set_image(
        self,
        image: Any,
        *,
        tile_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
        embeddings: str | Path | EmbeddingStore | None = None,
        plane: int | Sequence[int] | None = None,
        rgb: bool = False,
        contrast_limits: Sequence[float] | None = None,
        recompute: bool = False,
    ) -> None:
        """Make one plane of ``image`` the current image; nothing is encoded yet.

        Args:
            image: ``(..., H, W)`` (or ``(..., H, W, C)`` with ``rgb``) array-like:
                numpy, memmap, zarr or dask. Leading axes are planes (Z, T, ...). A list
                of such arrays is taken as a multiscale pyramid: its first (full
                resolution) level is used.
            tile_shape: ``(th, tw)`` or one int; it must fit the model input at the
                predictor's ``scale`` (a tile is never shrunk: at most ``S`` with
                ``"fill"``). Default: the largest square tile that fits
                (``Predictor.max_side``: ``S`` with ``"fill"``, ``S / 2`` for a model
                declaring magnification 2 with ``"auto"``).
            halo: overlap on each side of a tile's inner region; default ``S // 8``.
            embeddings: a ``.zarr`` path (created or reused) or an open store.
            plane: which plane of a stack (flat number or index tuple).
            rgb: the last axis holds colour channels.
            contrast_limits: ``(lo, hi)`` mapped to 0..255 for every tile; default:
                percentiles of a sample of the plane (8-bit data keeps 0..255).
            recompute: replace a store made for another image, model or tiling
                instead of refusing it.

        Raises:
            ValueError: bad geometry, a tile larger than the model input, a plane out of
                range, or a store that does not match (unless ``recompute``).
        """
        if isinstance(image, (list, tuple)) and image and hasattr(image[0], "shape"):
            image = image[0]  # a multiscale pyramid: compute on the full resolution
        lazy.check_array(image, rgb)
        size = int(self.predictor.img_size)
        side = int(self.predictor.max_side()) if hasattr(self.predictor, "max_side") else size
        tile = tile_shape if tile_shape is not None else (min(side, size),) * 2
        grid = TileGrid(lazy.plane_shape(image, rgb), tile, halo if halo is not None else size // 8)
        if max(grid.tile_shape) > size:
            raise ValueError(
                f"tile_shape {grid.tile_shape} is larger than the model input ({size} px): a "
                f"tile would be shrunk. Use tiles of at most {size} px."
            )
        self._magnification(grid.tile_shape)  # a tile that does not fit at the scale fails now
        index = lazy.plane_index(image, plane, rgb)
        if contrast_limits is not None:
            limits = tuple(float(v) for v in contrast_limits)
            normalization = f"limits {limits[0]:g} {limits[1]:g}"
        else:
            limits = lazy.estimate_contrast_limits(image, index, rgb)
            normalization = "auto"
        store = embeddings
        if embeddings is not None and not isinstance(embeddings, EmbeddingStore):
            spec = self._store_spec(image, grid, rgb, normalization)
            store = EmbeddingStore.open(embeddings, spec, recompute=recompute)
        self._image, self._rgb, self._index, self._limits = image, rgb, index, limits
        self._plane = lazy.flat_plane(image, index, rgb)
        self.grid, self.store = grid, store
        self._cache.clear()
        self.encoded_tiles = 0

    def _store_spec(self, image: Any, grid: TileGrid, rgb: bool, normalization: str) -> StoreSpec:
        model = getattr(self.predictor, "model", None)
        embed_dim = int(model.prompt_encoder.embed_dim) if model is not None else 0
        side = int(model.embedding_size) if model is not None else 0
        if model is None:  # a predictor-like object: ask it for one tile's shape
            (probe,) = self.predictor.encode([np.zeros(grid.tile_shape + (3,), np.uint8)])
            embed_dim, side = int(probe.features.shape[1]), int(probe.features.shape[-1])
        return StoreSpec(
            model_key=str(self.predictor.model_key),
            scale=self.scale_record(grid.tile_shape),
            tile_shape=grid.tile_shape,
            halo=grid.halo,
            image_shape=tuple(int(s) for s in image.shape),
            dtype=np.dtype(image.dtype).str,
            signature=lazy.data_signature(image, rgb),
            normalization=normalization,
            n_tiles=len(grid),
            n_planes=lazy.plane_count(image, rgb),
            feature_shape=(embed_dim, side, side),
        )

    def _magnification(self, shape: tuple[int, int]) -> float:
        """The magnification a window of ``shape`` is encoded at (the predictor's scale)."""
        from napari_samscope.core.predict.input_scale import resolve_magnification

        scale = getattr(self.predictor, "scale", "fill")
        declared = getattr(self.predictor, "input_scale", None)
        return resolve_magnification(shape, int(self.predictor.img_size), scale, declared)

    def scale_record(self, tile_shape: tuple[int, int]) -> str:
        """The scale an embedding store records: ``"fill"`` for SAM's resize, else
        ``"x<m>"`` with the magnification ``m`` of a whole tile."""
        from napari_samscope.core.predict.input_scale import check_scale

        scale = check_scale(getattr(self.predictor, "scale", "fill"))
        declared = getattr(self.predictor, "input_scale", None)
        if scale == "fill" or (scale == "auto" and declared is None):
            return "fill"
        return f"x{self._magnification(tile_shape)!r}"

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the current plane."""
        return self._require_grid().image_shape

    # ------------------------------------------------------------------ embeddings

    def precompute(
        self, batch_size: int = 1, tiles: Sequence[int] | None = None
    ) -> Generator[Progress, None, int]:
        """Encode every tile (or every tile of ``tiles``, indices into :attr:`grid`) not yet
        in memory or in the store, yielding progress; returns the number of tiles encoded.
        With a store, each tile is written (and marked complete) as soon as it is encoded,
        so stopping early loses nothing done, and is not kept in memory (prompts read it
        back), so memory does not grow with the image; without a store, every tile is
        kept in memory.

        Raises:
            ValueError: a tile index out of range.
        """
        grid = self._require_grid()
        wanted = range(len(grid)) if tiles is None else [int(i) for i in tiles]
        bad = [i for i in wanted if not 0 <= i < len(grid)]
        if bad:
            raise ValueError(f"tile {bad[0]} does not exist: this plane has {len(grid)} tiles (0 to {len(grid) - 1})")
        todo = [i for i in wanted if not self._available(i)]
        for start in range(0, len(todo), max(1, batch_size)):
            yield Progress("encoding tiles", start, len(todo))
            chunk = todo[start : start + max(1, batch_size)]
            for index, emb in zip(chunk, self._encode([grid[i].outer for i in chunk])):
                # with a writable store, tiles go to disk only, so memory stays flat
                self._keep(index, emb, remember=not self._writable_store())
        yield Progress("encoding tiles", len(todo), len(todo))
        return len(todo)

    def precompute_all(
        self, progress: Any = None, batch_size: int = 1, tiles: Sequence[int] | None = None
    ) -> int:
        """Run :meth:`precompute` to the end (``progress`` as in ``core.progress.run``)."""
        return run(self.precompute(batch_size, tiles), progress=progress)

    def tile_embedding(self, index: int) -> Any:
        """The ``ImageEmbedding`` of tile ``index`` (from memory, the store, or encoded now)."""
        grid = self._require_grid()
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        if self.store is not None and self.store.has(self._plane, index):
            emb = self._from_store(index)
        else:
            (emb,) = self._encode([grid[index].outer])
        self._keep(index, emb)
        return emb

    def window_embedding(self, window: Window) -> Any:
        """The ``ImageEmbedding`` of any window (a tile's outer window uses the tile's)."""
        grid = self._require_grid()
        for tile in grid:
            if tile.outer == tuple(window):
                return self.tile_embedding(tile.index)
        key = ("window", tuple(window))
        if key not in self._cache:
            (emb,) = self._encode([window])
            self._remember(key, emb)
        self._cache.move_to_end(key)
        return self._cache[key]

    def read_rgb(self, window: Window) -> np.ndarray:
        """The 8-bit RGB pixels of ``window``, mapped as the encoder sees them."""
        part = lazy.read_window(self._image, self._index, window)
        kwargs: dict[str, Any] = {"allow_constant": True}
        if self._rgb and part.dtype != np.uint8:
            kwargs["channel_axis"] = -1
        if self._limits is not None:
            kwargs["contrast_limits"] = self._limits
        return to_rgb_uint8(part, **kwargs)

    def _available(self, index: int) -> bool:
        if index in self._cache:
            return True
        return self.store is not None and self.store.has(self._plane, index)

    def _encode(self, windows: list[Window]) -> list[Any]:
        rgbs = [self.read_rgb(w) for w in windows]
        self.encoded_tiles += len(rgbs)
        plain = {"flips": 1} if getattr(self.predictor, "flips", 1) != 1 else {}  # one orientation
        if all(self._fits(rgb.shape[:2]) for rgb in rgbs):
            return self.predictor.encode(rgbs, batch_size=max(1, len(rgbs)), **plain)
        # a window fitted around a large box may not fit at the scale: it is resized into
        # the model input (the one case where pixels are shrunk, see the module docstring)
        return [self.predictor.encode([rgb], **plain, **({} if self._fits(rgb.shape[:2]) else
                                                         {"scale": "fill"}))[0] for rgb in rgbs]

    def _fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a window of ``shape`` fits the model input at the predictor's scale."""
        try:
            self._magnification((int(shape[0]), int(shape[1])))
        except ValueError:
            return False
        return True

    def _writable_store(self) -> bool:
        return self.store is not None and not self.store.read_only

    def _keep(self, index: int, emb: Any, remember: bool = True) -> None:
        store = self.store
        if self._writable_store() and not store.has(self._plane, index):  # type: ignore[union-attr]
            store.write(self._plane, index, emb.features.detach().float().cpu().numpy())  # type: ignore[union-attr]
        if remember:
            self._remember(index, emb)

    def _remember(self, key: Any, emb: Any) -> None:
        self._cache[key] = emb
        self._cache.move_to_end(key)
        # without a store, memory is the only place a tile lives: keep every tile
        limit = self.cache_tiles + (0 if self.store is not None else len(self._require_grid()))
        while len(self._cache) > limit:
            self._cache.popitem(last=False)

    def _from_store(self, index: int) -> Any:
        import torch

        from napari_samscope.core.predict.embedding import ImageEmbedding
        from napari_samscope.core.predict.input_scale import scaled_size

        h, w = self._require_grid()[index].shape
        features = torch.from_numpy(self.store.read(self._plane, index))  # type: ignore[union-attr]
        magnification = self._magnification((h, w))
        return ImageEmbedding(
            features, (h, w), scaled_size((h, w), magnification), str(self.predictor.model_key),
            magnification,
        )

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        masks: Any = None,
        multimask_output: bool = False,
    ) -> Prediction:
        """Segment objects from prompts in original image pixels, as ``Predictor.predict``;
        masks are ``(N, H, W)`` over the whole plane (see :meth:`predict_windows` for
        masks cropped to their window, which large images should prefer)."""
        parts = self.predict_windows(points, labels, bboxes, masks, multimask_output)
        height, width = self.image_shape
        total = sum(len(p.prediction) for p in parts)
        full = np.zeros((total, height, width), dtype=bool)
        scores, logits, row = [], [], 0
        for part in parts:
            y0, y1, x0, x1 = part.window
            k = len(part.prediction)
            full[row : row + k, y0:y1, x0:x1] = part.prediction.masks
            scores.append(part.prediction.scores)
            logits.append(part.prediction.logits)
            row += k
        same = all(lg is not None for lg in logits) and len({lg.shape[1:] for lg in logits}) == 1
        return Prediction(full, np.concatenate(scores), np.concatenate(logits) if same else None)

    def predict_windows(
        self,
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        masks: Any = None,
        multimask_output: bool = False,
    ) -> list[WindowPrediction]:
        """Like :meth:`predict`, but each object's masks stay cropped to the window they
        were decoded in: one :class:`WindowPrediction` per object, in prompt order (one
        object with ``multimask_output``: its candidates). Mask prompts (logits of an
        earlier result) must come with the points or box that chose that window."""
        grid = self._require_grid()
        lowres = int(self.predictor.lowres_size)
        prompts = parse_prompts(points, labels, bboxes, masks, lowres)
        if prompts.points is None and prompts.boxes is None:
            raise ValueError("A tiled image needs point or box prompts (they choose the tile).")
        frames = [self._frame(grid, prompts, k) for k in range(prompts.count)]
        out: list[WindowPrediction | None] = [None] * prompts.count
        for frame in dict.fromkeys(frames):
            members = [k for k, f in enumerate(frames) if f == frame]
            self.predictor.set_embedding(self.window_embedding(frame))
            y0, _, x0, _ = frame
            kwargs: dict[str, Any] = {"multimask_output": multimask_output}
            if prompts.points is not None:
                kwargs["points"] = prompts.points[members] - (x0, y0)
                kwargs["labels"] = prompts.labels[members]
            if prompts.boxes is not None:
                kwargs["bboxes"] = prompts.boxes[members] - (x0, y0, x0, y0)
            if prompts.masks is not None:
                kwargs["masks"] = prompts.masks[members][:, 0]
            result = self.predictor.predict(**kwargs)
            per = len(result) // len(members)
            for j, k in enumerate(members):
                part = slice(j * per, (j + 1) * per)
                if prompts.count > 1 and per > 1:  # several objects: the best candidate each
                    best = j * per + int(np.argmax(result.scores[part]))
                    part = slice(best, best + 1)
                logits = None if result.logits is None else result.logits[part]
                pred = Prediction(result.masks[part], result.scores[part], logits)
                out[k] = WindowPrediction(pred, frame, grid.image_shape)
        return out  # type: ignore[return-value]

    def frame_of(self, points: Any = None, labels: Any = None, bboxes: Any = None) -> Window:
        """The window ``(y0, y1, x0, x1)`` that one object's point and box prompts are
        decoded in by :meth:`predict_windows` (to crop a mask prompt to it)."""
        prompts = parse_prompts(points, labels, bboxes, None, int(self.predictor.lowres_size))
        if prompts.count != 1 or (prompts.points is None and prompts.boxes is None):
            raise ValueError("frame_of takes the points and/or box of one object.")
        return self._frame(self._require_grid(), prompts, 0)

    @staticmethod
    def _frame(grid: TileGrid, prompts: Any, k: int) -> Window:
        """The window object ``k`` is decoded in (see the module docstring)."""
        xs, ys = [], []
        if prompts.points is not None:
            xs += list(prompts.points[k, :, 0])
            ys += list(prompts.points[k, :, 1])
        if prompts.boxes is not None:
            x0, y0, x1, y1 = prompts.boxes[k]
            xs += [x0, x1]
            ys += [y0, y1]
        return grid.route(xs, ys)

    def _require_grid(self) -> TileGrid:
        if self.grid is None:
            raise ValueError("No image is set: call set_image(image, tile_shape=..., halo=...) first.")
        return self.grid
