"""samscope embed: a lazily read TIFF stack or OME-Zarr into a reusable embedding store."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr")


@pytest.fixture
def stack_tif(tmp_path):
    from napari_samscope.core.synthetic import make_nuclei_2d

    planes = [make_nuclei_2d((150, 140), seed=s, dtype="uint16")[0] for s in range(3)]
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack(planes), tile=(64, 64), photometric="minisblack")
    return path


def test_embed_a_tiff_stack_then_reuse_refuse_and_recompute(run_cli, tiny_checkpoint, stack_tif, tmp_path):
    from napari_samscope.core.store import EmbeddingStore

    out = tmp_path / "emb.zarr"
    args = ("embed", stack_tif, "--out", out, "--model", tiny_checkpoint, "--tile-shape", "64",
            "--halo", "8", "--device", "cpu")
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    spec = EmbeddingStore.read_spec(out)
    assert spec.n_planes == 3 and spec.image_shape == (3, 150, 140) and spec.dtype == "<u2"
    store = EmbeddingStore(out, spec)
    assert all(store.done(p).all() for p in range(3))
    assert f"encoded {3 * spec.n_tiles}, reused 0" in stdout
    code, stdout, err = run_cli(*args)
    assert code == 0 and f"encoded 0, reused {3 * spec.n_tiles}" in stdout
    code, _, err = run_cli(*args[:-4], "--halo", "4", "--device", "cpu")
    assert code == 1 and "another halo" in err and "--recompute" in err
    code, stdout, err = run_cli(*args[:-4], "--halo", "4", "--device", "cpu", "--recompute")
    assert code == 0, err
    assert EmbeddingStore.read_spec(out).halo == (4, 4)


def test_embed_an_ome_zarr_uses_the_full_resolution_level(run_cli, tiny_checkpoint, tmp_path):
    from napari_samscope.core.store import EmbeddingStore

    image = np.random.default_rng(0).integers(0, 4000, (130, 100), dtype=np.uint16)
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    root.create_array("0", data=image, chunks=(32, 32))
    root.create_array("1", data=image[::2, ::2], chunks=(32, 32))
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}]}]
    out = tmp_path / "emb.zarr"
    code, stdout, err = run_cli("embed", tmp_path / "img.ome.zarr", "--out", out, "--model",
                                tiny_checkpoint, "--tile-shape", "64,48", "--halo", "8,4")
    assert code == 0, err
    spec = EmbeddingStore.read_spec(out)
    assert spec.image_shape == (130, 100) and spec.tile_shape == (64, 48)


def test_embed_bad_input(run_cli, tiny_checkpoint, stack_tif, tmp_path):
    code, _, err = run_cli("embed", tmp_path / "missing.tif", "--out", tmp_path / "e.zarr",
                           "--model", tiny_checkpoint)
    assert code == 1 and "does not exist" in err
    code, _, err = run_cli("embed", stack_tif, "--out", tmp_path / "e.zarr", "--model",
                           tiny_checkpoint, "--tile-shape", "64", "--halo", "32")
    assert code == 1 and "less than half the tile" in err
    code, _, err = run_cli("embed", stack_tif, "--out", tmp_path / "e.zarr", "--model",
                           tiny_checkpoint, "--tile-shape", "128")
    assert code == 1 and "would be shrunk" in err
    code, _, err = run_cli("embed", stack_tif, "--out", tmp_path / "e.zarr", "--tile-shape", "a,b")
    assert code == 2 and "not N or H,W" in err
