"""The zarr embedding store: reuse, invalidation, crashes, concurrent writers, planes."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat

import numpy as np
import pytest
from _tiling_helpers import LocalPredictor, NoWholeRead, disc_image

from napari_samscope.core.store import EmbeddingStore, StoreMismatch
from napari_samscope.core.tiling import TiledPredictor

pytest.importorskip("zarr")

IMAGE = disc_image((200, 200), [(50, 50), (150, 120)], radius=6)


def _tiled(image=IMAGE, path=None, predictor=None, **kwargs):
    tp = TiledPredictor(predictor or LocalPredictor())
    kwargs.setdefault("tile_shape", 64)
    kwargs.setdefault("halo", 8)
    tp.set_image(image, embeddings=path, **kwargs)
    return tp


def test_a_second_session_decodes_from_the_store_without_encoding(tmp_path):
    path = tmp_path / "emb.zarr"
    first = _tiled(path=path)
    first.precompute_all()
    assert first.encoded_tiles == len(first.grid)
    second = _tiled(path=path)
    masks = second.predict(points=[50, 50]).masks
    second.precompute_all()
    assert second.encoded_tiles == 0
    np.testing.assert_array_equal(masks[0], disc_image((200, 200), [(50, 50)], radius=6) > 0)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"tile_shape": 48}, "another tile shape"),
        ({"halo": 4}, "another halo"),
        ({"contrast_limits": (0, 100)}, "normalisation"),
    ],
)
def test_a_store_for_another_tiling_is_refused_then_recomputed_on_request(tmp_path, change, match):
    path = tmp_path / "emb.zarr"
    _tiled(path=path).precompute_all()
    with pytest.raises(StoreMismatch, match=match):
        _tiled(path=path, **change)
    again = _tiled(path=path, recompute=True, **change)
    again.precompute_all()
    assert again.encoded_tiles == len(again.grid)


def test_a_store_for_other_data_or_another_model_is_refused(tmp_path):
    path = tmp_path / "emb.zarr"
    _tiled(path=path).precompute_all()
    other = IMAGE.copy()
    other[0:20, 0:20] = 99  # a corner the signature samples
    with pytest.raises(StoreMismatch, match="other image data"):
        _tiled(other, path=path)
    with pytest.raises(StoreMismatch, match="image of another shape"):
        _tiled(IMAGE[:190], path=path)
    another = LocalPredictor()
    another.model_key = "other-weights"
    with pytest.raises(StoreMismatch, match="another model"):
        _tiled(path=path, predictor=another)


def test_not_a_store_and_unwritable_locations_get_clear_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an embedding store"):
        _tiled(path=tmp_path / "plain")
    with pytest.raises(ValueError, match="not an embedding store"):
        _tiled(path=tmp_path / "plain", recompute=True)
    assert (tmp_path / "plain" / "notes.txt").exists()  # never deleted
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(ValueError, match="Could not create"):
            _tiled(path=locked / "emb.zarr")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="Could not create"):
        _tiled(path=blocker / "emb.zarr")


class CrashAfter(LocalPredictor):
    """Encodes ``n`` images, then fails as a crash or a cancel would."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def encode(self, images, batch_size=1, **kwargs):
        if self.left <= 0:
            raise RuntimeError("crash")
        self.left -= len(images)
        return super().encode(images, batch_size, **kwargs)


def test_a_crash_mid_precompute_keeps_finished_tiles_and_recomputes_the_rest(tmp_path):
    path = tmp_path / "emb.zarr"
    crashing = _tiled(path=path, predictor=CrashAfter(1 + 5))  # 1: the store's shape probe
    with pytest.raises(RuntimeError, match="crash"):
        crashing.precompute_all()
    spec = EmbeddingStore.read_spec(path)
    assert EmbeddingStore(path, spec).done(0).sum() == 5
    resumed = _tiled(path=path)
    resumed.precompute_all()
    assert resumed.encoded_tiles == len(resumed.grid) - 5
    reference = _tiled()
    for tile in resumed.grid:
        np.testing.assert_array_equal(
            resumed.tile_embedding(tile.index).features.numpy(),
            reference.tile_embedding(tile.index).features.numpy(),
        )


def test_features_without_marker_are_not_trusted(tmp_path):
    path = tmp_path / "emb.zarr"
    tp = _tiled(path=path)
    tp.precompute_all()
    store = tp.store
    store._done[0, 3] = 0  # as if the process died between the data and the marker
    again = _tiled(path=path)
    again.precompute_all()
    assert again.encoded_tiles == 1


def test_a_store_deleted_mid_run_is_reported(tmp_path):
    path = tmp_path / "emb.zarr"
    tp = _tiled(path=path)
    tp.tile_embedding(0)
    shutil.rmtree(path)
    with pytest.raises(ValueError, match="deleted or moved"):
        tp.precompute_all()


def _write_all(path, barrier):
    barrier.wait()
    tp = _tiled(path=path)
    tp.precompute_all()


def test_two_processes_writing_one_store_leave_it_complete_and_valid(tmp_path):
    path = tmp_path / "emb.zarr"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_write_all, args=(path, barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    reader = _tiled(path=path)
    reference = _tiled()
    assert reader.store.done(0).all()
    for tile in reader.grid:
        np.testing.assert_array_equal(
            reader.tile_embedding(tile.index).features.numpy(),
            reference.tile_embedding(tile.index).features.numpy(),
        )
    assert reader.encoded_tiles == 0


def test_stacks_and_time_series_are_stored_per_plane(tmp_path):
    planes = np.stack(
        [
            np.stack([disc_image((96, 96), [(20 + 10 * z, 30 + 10 * t)], radius=5) for z in range(2)])
            for t in range(3)
        ]
    )  # (T, Z, Y, X)
    path = tmp_path / "tz.zarr"
    lazy = NoWholeRead(planes, max_fraction=0.2)
    for t in range(3):
        for z in range(2):
            tp = _tiled(lazy, path=path, plane=(t, z))
            tp.precompute_all()
            assert tp.encoded_tiles == len(tp.grid)
    spec = EmbeddingStore.read_spec(path)
    assert spec.n_planes == 6 and spec.image_shape == (3, 2, 96, 96)
    store = EmbeddingStore(path, spec)
    assert all(store.done(p).all() for p in range(6))
    tp = _tiled(lazy, path=path, plane=4)  # flat number of (t=2, z=0)
    mask = tp.predict(points=[50, 20]).masks[0]
    tp.precompute_all()
    assert tp.encoded_tiles == 0
    np.testing.assert_array_equal(mask, planes[2, 0] > 0)
    with pytest.raises(ValueError, match="out of range"):
        _tiled(lazy, path=path, plane=6)


def test_a_read_only_store_is_read_and_new_tiles_stay_in_memory(tmp_path, monkeypatch):
    path = tmp_path / "emb.zarr"
    first = _tiled(path=path)
    first.tile_embedding(0)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    reader = _tiled(path=path)
    assert reader.store.read_only
    reader.precompute_all()
    assert reader.encoded_tiles == len(reader.grid) - 1  # tile 0 came from the store
    with pytest.raises(ValueError, match="read-only"):
        reader.store.write(0, 1, np.zeros(reader.store.spec.feature_shape))
    monkeypatch.undo()
    assert EmbeddingStore(path, reader.store.spec).done(0).sum() == 1


def test_precompute_with_a_store_keeps_memory_flat(tmp_path):
    tp = TiledPredictor(LocalPredictor(), cache_tiles=2)
    tp.set_image(IMAGE, tile_shape=64, halo=8, embeddings=tmp_path / "emb.zarr")
    tp.precompute_all()
    assert len(tp._cache) == 0 and tp.store.done(0).all()
    for x in (10, 60, 110, 160, 190):
        tp.predict(points=[x, x])
    assert len(tp._cache) == 2 and tp.encoded_tiles == len(tp.grid)
    alone = TiledPredictor(LocalPredictor(), cache_tiles=2)
    alone.set_image(IMAGE, tile_shape=64, halo=8)
    alone.precompute_all()
    assert len(alone._cache) == len(alone.grid)  # no store: every tile stays in memory
