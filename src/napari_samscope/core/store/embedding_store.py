"""A persistent store of tile embeddings in zarr, safe against crashes and concurrent writers.

Layout of ``path`` (a zarr v3 group):

- attributes: ``format``, ``version`` and the :class:`StoreSpec` (model key, scale, tile
  geometry, image shape and dtype, data signature, normalisation, embedding shape);
- ``features``: ``(P, N, C, E, E)`` float16, one chunk per tile of a plane (``P`` planes
  of ``N`` tiles);
- ``done``: ``(P, N)`` uint8 completion markers, one chunk (one file) per tile.

Safety: zarr's local store writes every chunk to a temporary file and renames it into
place, so a chunk is either absent, old or complete. A tile's marker is written only after
its features, so a crash or a cancel leaves every marked tile usable and the rest are
recomputed on the next run. Two processes computing the same tile write the same kind of
complete chunk, each atomically; a reader trusts a tile only once its marker exists.
A new store is built in a temporary folder and renamed into place, so two processes
creating it at once end with one valid store.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingStore", "StoreMismatch", "StoreSpec", "FORMAT"]

FORMAT = "samscope-embeddings"
VERSION = 1


class StoreMismatch(ValueError):
    """The store at a path was made for another image, model or tiling."""


@dataclass(frozen=True)
class StoreSpec:
    """What a store's embeddings depend on; a store is used only when all of it matches.

    Attributes:
        model_key: ``Predictor.model_key`` of the encoder.
        scale: how tiles are placed into the model input: ``"fill"`` (SAM's resize of
            the longest side) or ``"x<m>"``, the magnification ``m`` of a whole tile
            (``TiledPredictor.scale_record``).
        tile_shape, halo: the tile geometry ``(y, x)``.
        image_shape: the whole array's shape (planes and channels included).
        dtype: the image dtype (numpy ``str``).
        signature: a hash of a sample of the data (``tiling.lazy.data_signature``).
        normalization: how pixels were mapped to 8 bits (e.g. ``"auto"`` or the limits).
        n_tiles: tiles per plane; ``n_planes``: planes.
        feature_shape: ``(C, E, E)`` of one tile's embedding.
    """

    model_key: str
    scale: str
    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    image_shape: tuple[int, ...]
    dtype: str
    signature: str
    normalization: str
    n_tiles: int
    n_planes: int
    feature_shape: tuple[int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreSpec:
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                raise StoreMismatch(f"The embedding store lacks the field {field.name!r}.")
            value = data[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


_WHAT = {
    "model_key": "by another model (or other weights)",
    "scale": "at another scale",
    "tile_shape": "with another tile shape",
    "halo": "with another halo",
    "image_shape": "for an image of another shape",
    "dtype": "for an image of another dtype",
    "signature": "for other image data",
    "normalization": "with another intensity normalisation",
    "n_tiles": "with another tiling",
    "n_planes": "for another number of planes",
    "feature_shape": "by a model with another embedding shape",
}


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Embedding stores need the zarr package: pip install 'napari-samscope[zarr]'."
        ) from None
    return zarr


def _user_error(error: OSError, path: Path, doing: str) -> ValueError:
    reason = error.strerror or str(error)
    return ValueError(
        f"Could not {doing} the embedding store {str(path)!r}: {reason}. Choose a writable "
        f"location with free space; tiles already written are kept."
    )


class EmbeddingStore:
    """Tile embeddings of one image (all its planes) for one model, on disk.

    Use :meth:`open` (create or reuse); the constructor expects an existing store.

    Args:
        path: the ``.zarr`` folder.
        spec: what the embeddings must match.
    """

    def __init__(self, path: str | Path, spec: StoreSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        zarr = _zarr()
        #: True when the store can only be read (tiles computed now stay in memory)
        self.read_only = not os.access(self.path, os.W_OK)
        try:
            group = zarr.open_group(str(self.path), mode="r" if self.read_only else "r+")
        except OSError as error:
            raise _user_error(error, self.path, "open") from error
        self._features = group["features"]
        self._done = group["done"]

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | Path, spec: StoreSpec, *, recompute: bool = False) -> EmbeddingStore:
        """Reuse the store at ``path`` if it matches ``spec``, else create it.

        Args:
            recompute: replace an existing store that does not match (or that does,
                to start afresh) instead of refusing it.

        Raises:
            StoreMismatch: the store was made for another image, model or tiling and
                ``recompute`` is False.
            ValueError: ``path`` is not a store, or cannot be written.
        """
        path = Path(path)
        if path.exists() and recompute:
            cls._check_is_store(path)
            try:
                shutil.rmtree(path)
            except OSError as error:
                raise _user_error(error, path, "replace") from error
        if not path.exists():
            cls._create(path, spec)
        found = cls.read_spec(path)
        if found != spec:
            raise StoreMismatch(cls._mismatch_message(path, found, spec))
        return cls(path, spec)

    @staticmethod
    def read_spec(path: str | Path) -> StoreSpec:
        """The :class:`StoreSpec` recorded in the store at ``path``."""
        path = Path(path)
        attrs = EmbeddingStore._check_is_store(path)
        return StoreSpec.from_json(attrs["spec"])

    @staticmethod
    def _check_is_store(path: Path) -> dict[str, Any]:
        zarr = _zarr()
        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception as error:
            raise ValueError(
                f"{str(path)!r} exists but is not an embedding store; choose another path."
            ) from error
        if attrs.get("format") != FORMAT:
            raise ValueError(
                f"{str(path)!r} is a zarr folder but not a samscope embedding store; "
                f"choose another path."
            )
        if attrs.get("version") != VERSION:
            raise StoreMismatch(
                f"The embedding store {str(path)!r} has format version {attrs.get('version')}, "
                f"this version reads {VERSION}; recompute it."
            )
        return attrs

    @staticmethod
    def _mismatch_message(path: Path, found: StoreSpec, wanted: StoreSpec) -> str:
        fields = [f.name for f in dataclasses.fields(StoreSpec)]
        diffs = [n for n in fields if getattr(found, n) != getattr(wanted, n)]
        details = "; ".join(
            f"{_WHAT[n]} ({n}: stored {getattr(found, n)!r}, now {getattr(wanted, n)!r})"
            for n in diffs
        )
        return (
            f"The embedding store {str(path)!r} was made {details}. Use another path, or "
            f"recompute it (recompute=True, or --recompute on the command line)."
        )

    @staticmethod
    def _create(path: Path, spec: StoreSpec) -> None:
        zarr = _zarr()
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(str(temp), mode="w")
            c, e1, e2 = spec.feature_shape
            group.create_array(
                "features", shape=(spec.n_planes, spec.n_tiles, c, e1, e2),
                chunks=(1, 1, c, e1, e2), dtype="float16", fill_value=0,
            )
            group.create_array(
                "done", shape=(spec.n_planes, spec.n_tiles), chunks=(1, 1), dtype="uint8",
                fill_value=0,
            )
            group.attrs.update({"format": FORMAT, "version": VERSION, "spec": spec.to_json()})
            try:
                os.rename(temp, path)
            except OSError:
                if not path.exists():  # not a lost race with another creator
                    raise
        except OSError as error:
            raise _user_error(error, path, "create") from error
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)

    # ------------------------------------------------------------------ tiles

    def done(self, plane: int) -> np.ndarray:
        """``(N,) bool``: which tiles of ``plane`` are complete."""
        self._check_alive()
        return np.asarray(self._done[plane], dtype=bool)

    def has(self, plane: int, tile: int) -> bool:
        """Whether tile ``tile`` of ``plane`` is complete."""
        self._check_alive()
        return bool(self._done[plane, tile])

    def read(self, plane: int, tile: int) -> np.ndarray:
        """``(1, C, E, E) float32`` features of a complete tile.

        Raises:
            ValueError: the tile is not complete.
        """
        if not self.has(plane, tile):
            raise ValueError(f"Tile {tile} of plane {plane} is not in the store yet.")
        return np.asarray(self._features[plane, tile], dtype=np.float32)[None]

    def write(self, plane: int, tile: int, features: Any) -> None:
        """Store one tile's ``(1, C, E, E)`` (or ``(C, E, E)``) features, then mark it complete.

        Raises:
            ValueError: the shape is wrong, the store is read-only or was deleted, or the
                disk refused.
        """
        if self.read_only:
            raise ValueError(f"The embedding store {str(self.path)!r} is read-only.")
        array = np.asarray(features, dtype=np.float32)
        array = array.reshape(array.shape[-3:]) if array.ndim == 4 and array.shape[0] == 1 else array
        if tuple(array.shape) != tuple(self.spec.feature_shape):
            raise ValueError(
                f"Features of shape {tuple(array.shape)} do not fit this store "
                f"({tuple(self.spec.feature_shape)})."
            )
        self._check_alive()
        try:
            self._features[plane, tile] = array.astype(np.float16)
            self._check_alive()  # do not mark a tile whose data went with a deleted store
            self._done[plane, tile] = 1
        except OSError as error:
            raise _user_error(error, self.path, "write to") from error

    def _check_alive(self) -> None:
        if not (self.path / "zarr.json").exists():
            raise ValueError(
                f"The embedding store {str(self.path)!r} was deleted or moved while in use; "
                f"open it again to recompute the embeddings."
            )
