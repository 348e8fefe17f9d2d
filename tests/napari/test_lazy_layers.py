"""Lazy image layers (dask, multiscale) and the embeddings file, through the real manifest.

The layers count the chunks read off the GUI thread (napari itself reads what it
draws on the GUI thread; dask computes in the calling thread here), so the tests see
exactly what the plugin's jobs read.
"""

import os
import shutil
import threading

import dask.array as da
import numpy as np
import pytest
from segmenting_model import SegmentingPredictor, ball_stack, disk_image
from widget_helpers import add_points, wait_idle


@pytest.fixture(autouse=True)
def _dask_in_the_calling_thread():
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


class ReadLog:
    """Records ``(level, chunk location)`` of every chunk a worker thread computes."""

    def __init__(self):
        self.reads = []
        self.lock = threading.Lock()

    def wrap(self, array, chunks, level=0):
        def counted(block, block_info=None):
            if block_info is not None and threading.current_thread() is not threading.main_thread():
                with self.lock:
                    self.reads.append((level, tuple(block_info[0]["chunk-location"])))
            return block

        return da.from_array(array, chunks=chunks).map_blocks(counted, dtype=array.dtype)

    def at(self, level):
        return {loc for lv, loc in self.reads if lv == level}


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_dask_stack_is_read_one_plane_at_a_time(viewer, main_widget, qtbot):
    stack, truth = ball_stack()
    log = ReadLog()
    viewer.add_image(log.wrap(stack, (1, 64, 64)), name="lazy ball")
    viewer.dims.set_point(0, 4)
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    add_points(main_widget.points_layer, [[4, 32, 30]])
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"].data
    assert preview.shape == truth.shape and preview[4, 32, 30] == 1
    assert _iou(preview[4] > 0, truth[4]) > 0.8
    assert {loc[0] for loc in log.at(0)} == {4}  # that plane only, not the stack line
    assert len(main_widget.session.cache) == 1  # the in-memory path: one plane embedding

    # propagation reads plane by plane as it goes and follows the object
    main_widget.segment_all_slices()
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"].data > 0
    assert _iou(preview, truth) > 0.8
    assert {loc[0] for loc in log.at(0)} == set(range(9))


def _pyramid(log, image, chunk):
    levels = [image, image[::2, ::2].copy(), image[::4, ::4].copy()]
    return [log.wrap(level, (chunk >> i, chunk >> i), level=i) for i, level in enumerate(levels)]


def test_a_multiscale_layer_is_segmented_on_its_full_resolution(viewer, main_widget, qtbot):
    image = disk_image((512, 512), centres=((300, 400, 20), (100, 90, 25)))
    truth = disk_image((512, 512), centres=((300, 400, 20),), value=255) == 255
    log = ReadLog()
    layer = viewer.add_image(_pyramid(log, image, 128), multiscale=True, name="pyramid")
    assert layer.multiscale
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    add_points(main_widget.points_layer, [[300, 400]])
    wait_idle(qtbot, main_widget)
    preview = viewer.layers["SAM preview"].data
    assert preview.shape == (512, 512)  # the full-resolution grid
    assert preview[300, 400] == 1 and _iou(preview > 0, truth) > 0.8
    assert log.at(0) and not log.at(1) and not log.at(2)  # low-res levels never computed on
    assert len(main_widget.session.cache) == 0  # planes above the model input go by tiles


def _encoder_calls(sam):
    calls = []
    sam.model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _prompt_once(viewer, widget, qtbot, image, store, at=(30, 40)):
    viewer.add_image(image, name="cells")
    qtbot.waitUntil(lambda: widget.points_layer is not None)
    widget.ui.embeddings.setText(str(store))
    add_points(widget.points_layer, [list(at)])
    wait_idle(qtbot, widget)
    return viewer.layers["SAM preview"].data if "SAM preview" in viewer.layers else None


def _main(viewer, sam):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(sam, predictor_factory=SegmentingPredictor)
    return widget


def test_an_embeddings_file_is_reused_by_a_new_viewer(make_napari_viewer, segmenting_sam, qtbot,
                                                      tmp_path):
    image = disk_image((96, 128))
    store = tmp_path / "cells.emb.zarr"
    calls = _encoder_calls(segmenting_sam)
    viewer = make_napari_viewer()
    preview = _prompt_once(viewer, _main(viewer, segmenting_sam), qtbot, image, store)
    assert preview[30, 40] == 1
    assert (store / "zarr.json").exists() and len(calls) >= 1
    encoded = len(calls)

    again = make_napari_viewer()  # a new session on the same image and file
    widget = _main(again, segmenting_sam)
    preview2 = _prompt_once(again, widget, qtbot, image.copy(), store)
    assert len(calls) == encoded  # nothing encoded: the tile came from the file
    np.testing.assert_array_equal(preview2, preview)


def test_an_embeddings_file_of_another_image_is_refused_and_kept(viewer, main_widget, qtbot,
                                                                 tmp_path, notifications):
    store = tmp_path / "cells.emb.zarr"
    _prompt_once(viewer, main_widget, qtbot, disk_image((96, 128)), store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    other = disk_image((96, 128), centres=((50, 60, 20),), seed=1)
    viewer.layers.clear()
    qtbot.waitUntil(lambda: main_widget.points_layer is None)
    preview = _prompt_once(viewer, main_widget, qtbot, other, store, at=(50, 60))
    assert any("was made for other image data" in m and "embeddings file" in m
               for m in notifications.errors())
    assert preview is None or not preview.any()
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # nothing lost


def test_an_unwritable_embeddings_location_notifies(viewer, main_widget, qtbot, tmp_path,
                                                    notifications):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    targets = [blocker / "emb.zarr"]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        targets.append(locked / "emb.zarr")
    for target in targets:
        _prompt_once(viewer, main_widget, qtbot, disk_image((96, 128)), target)
        assert any("Could not create the embedding store" in m for m in notifications.errors())
        viewer.layers.clear()
        qtbot.waitUntil(lambda: main_widget.points_layer is None)
    assert blocker.read_text() == "x"


def test_a_store_deleted_during_precompute_notifies_and_is_rebuilt(viewer, main_widget, qtbot,
                                                                   tmp_path, notifications,
                                                                   monkeypatch):
    from napari_samscope.core.tiling import TiledPredictor

    image = disk_image((512, 512), centres=((300, 400, 20), (100, 90, 25)))
    store = tmp_path / "big.emb.zarr"
    viewer.add_image(image, name="big")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    main_widget.ui.embeddings.setText(str(store))
    encode = TiledPredictor._encode
    count = []

    def deleting(self, windows):
        count.append(1)
        if len(count) == 3:
            shutil.rmtree(store)
        return encode(self, windows)

    monkeypatch.setattr(TiledPredictor, "_encode", deleting)
    main_widget.precompute()
    wait_idle(qtbot, main_widget)
    assert any("was deleted or moved while in use" in m for m in notifications.errors())
    assert not store.exists()
    monkeypatch.setattr(TiledPredictor, "_encode", encode)
    add_points(main_widget.points_layer, [[300, 400]])  # the next prompt opens it afresh
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data[300, 400] == 1
    assert (store / "zarr.json").exists()


@pytest.mark.parametrize("kind", ["grey", "rgba", "5 channels"])
def test_precompute_fills_the_embeddings_file_plane_by_plane(viewer, main_widget, qtbot, tmp_path,
                                                            kind):
    from napari_samscope.core.store import EmbeddingStore

    stack, _ = ball_stack(shape=(3, 64, 64), centre=(1, 32, 30))
    if kind == "rgba":
        stack = np.stack([(stack // 12).astype(np.uint8)] * 4, axis=-1)
    elif kind == "5 channels":
        stack = np.stack([stack] * 5, axis=1)  # (Z, C, H, W)
    log = ReadLog()
    chunks = (1, 5, 64, 64) if kind == "5 channels" else (1, 64, 64) + stack.shape[3:]
    viewer.add_image(log.wrap(stack, chunks), name="ball",
                     rgb=kind == "rgba")
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    if kind == "5 channels":
        main_widget.ui.channel_axis.setCurrentIndex(2)  # axis 1
        main_widget.ui.channels.setText("0,1,2")
    store = tmp_path / "ball.emb.zarr"
    main_widget.ui.embeddings.setText(str(store))
    main_widget.precompute()
    wait_idle(qtbot, main_widget)
    spec = EmbeddingStore.read_spec(store)
    assert spec.n_planes == 3 and spec.image_shape[:3] == (3, 64, 64)
    opened = EmbeddingStore(store, spec)
    assert all(opened.done(p).all() for p in range(3))
    assert {loc[0] for loc in log.at(0)} == {0, 1, 2}


def test_a_store_made_outside_napari_is_reused_for_a_zarr_layer(viewer, main_widget, qtbot,
                                                                tmp_path, segmenting_sam):
    """A zarr image embedded by the core (as ``samscope embed`` does) opens in napari with
    the same file and prompts without encoding."""
    import zarr

    from napari_samscope.core.tiling import TiledPredictor

    image = disk_image((512, 512), centres=((300, 400, 20), (100, 90, 25)))
    array = zarr.open_array(str(tmp_path / "image.zarr"), mode="w", shape=image.shape,
                            chunks=(128, 128), dtype=image.dtype)
    array[:] = image
    store = tmp_path / "image.emb.zarr"
    outside = TiledPredictor(SegmentingPredictor(segmenting_sam))
    outside.set_image(zarr.open_array(str(tmp_path / "image.zarr"), mode="r"), embeddings=store)
    assert outside.precompute_all() == len(outside.grid) > 1
    calls = _encoder_calls(segmenting_sam)
    preview = _prompt_once(viewer, main_widget, qtbot,
                           zarr.open_array(str(tmp_path / "image.zarr"), mode="r"), store,
                           at=(300, 400))
    assert calls == [] and preview[300, 400] == 1


def test_everything_on_a_multiscale_layer_runs_by_tiles(viewer, everything_widget, qtbot,
                                                        monkeypatch):
    from napari_samscope.core import tiling

    tiled_runs = []
    original = tiling.segment_everything_tiled_iter

    def spy(tiled, **params):
        tiled_runs.append(len(tiled.grid))
        return original(tiled, **params)

    monkeypatch.setattr(tiling, "segment_everything_tiled_iter", spy)
    image = disk_image((512, 512), centres=((300, 400, 20), (100, 90, 25), (250, 250, 18)))
    log = ReadLog()
    viewer.add_image(_pyramid(log, image, 128), multiscale=True, name="pyramid")
    everything_widget.reset_choices()
    everything_widget.points_per_side.setValue(8)
    with qtbot.waitSignal(everything_widget.finished, timeout=60_000):
        everything_widget.run()
    labels = viewer.layers["SAM everything"].data
    assert labels.shape == (512, 512)
    found = {int(labels[r, c]) for r, c in ((300, 400), (100, 90), (250, 250))}
    assert 0 not in found and len(found) == 3  # each disk once, whichever tile saw it
    assert labels[5, 5] == 0
    assert tiled_runs == [9]  # 256 px tiles (the double's input), halo 32, on 512 x 512
    assert not log.at(1) and not log.at(2)


def test_segment_all_slices_with_an_embeddings_file(viewer, main_widget, qtbot, tmp_path):
    stack, truth = ball_stack()
    viewer.add_image(stack, name="ball")
    viewer.dims.set_point(0, 4)
    qtbot.waitUntil(lambda: main_widget.points_layer is not None)
    main_widget.ui.embeddings.setText(str(tmp_path / "ball.emb.zarr"))
    add_points(main_widget.points_layer, [[4, 32, 30]])
    wait_idle(qtbot, main_widget)
    assert viewer.layers["SAM preview"].data[4, 32, 30] == 1
    main_widget.segment_all_slices()
    wait_idle(qtbot, main_widget)
    assert _iou(viewer.layers["SAM preview"].data > 0, truth) > 0.8
    assert main_widget.commit() == [1]
