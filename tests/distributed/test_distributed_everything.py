"""``samscope everything`` on a folder with a real dask LocalCluster: the in-process files
byte for byte in every mode, reruns that skip, and a worker without the model."""

from __future__ import annotations

import pytest

from napari_samscope.core.datasets.manifest import MANIFEST_NAME
from napari_samscope.distributed.worker import clear_cache, load_count

pytest.importorskip("distributed", reason="needs napari-samscope[distributed]")

GRID = ("--points-per-side", "4", "--conf", "0", "--stability-score-thresh", "0", "--records")


def _everything(run_cli, folder, model, out, *extra):
    code, stdout, err = run_cli("everything", "--model", model, "--source", folder, "--out", out,
                                "--device", "cpu", "--dtype", "float32", *extra)
    assert code == 0, err
    return stdout


def test_folder_on_the_cluster_equals_the_in_process_run(
    run_cli, same_folders, cluster, image_folder, tiny_model_file, tmp_path
):
    address, client = cluster
    client.wait_for_workers(2, timeout=120)  # a worker killed by an earlier test restarts
    here = _everything(run_cli, image_folder, tiny_model_file, tmp_path / "here", *GRID)
    client.run(clear_cache)
    there = _everything(run_cli, image_folder, tiny_model_file, tmp_path / "there", *GRID,
                        "--scheduler", address)
    same_folders(tmp_path / "here", tmp_path / "there")
    # 6 PNGs, n0.tif (its own name beside n0.png) and a 3-plane stack: 10 planes
    assert len(list((tmp_path / "there").glob("*_labels.tif"))) == 10
    assert (tmp_path / "there" / "n0_tif_labels.tif").exists()
    assert (tmp_path / "there" / "stack_z0002_masks.json").exists()
    assert here.splitlines()[-1].replace("here", "there") == there.splitlines()[-1]
    assert "done: 8 image(s)" in there
    loads = client.run(load_count)
    assert len(loads) == 2 and all(n <= 1 for n in loads.values())  # once per worker at most


@pytest.mark.parametrize("mode,tiling", [
    ("ais", ()), ("apg", ()),
    ("ais", ("--tile-shape", "48,40", "--halo", "6")),  # tiled: the tiling travels to the workers
])
def test_decoder_modes_on_the_cluster_equal_the_in_process_run(
    run_cli, same_folders, cluster, image_folder, decoder_model_file, tmp_path, mode, tiling
):
    address, _ = cluster
    _everything(run_cli, image_folder, decoder_model_file, tmp_path / "here", "--mode", mode, *tiling)
    there = _everything(run_cli, image_folder, decoder_model_file, tmp_path / "there", "--mode", mode,
                        *tiling, "--scheduler", address)
    same_folders(tmp_path / "here", tmp_path / "there")
    assert f"({mode})" in there
    import tifffile

    found = [tifffile.imread(p).max() for p in (tmp_path / "there").glob("*_labels.tif")]
    assert len(found) == 10 and max(found) > 0  # the decoder found objects to compare
    if tiling:  # the workers did tile: their labels are not the untiled ones
        _everything(run_cli, image_folder, decoder_model_file, tmp_path / "untiled", "--mode", mode)
        differ = [
            not (tifffile.imread(p) == tifffile.imread(tmp_path / "untiled" / p.name)).all()
            for p in (tmp_path / "there").glob("*_labels.tif")
        ]
        assert any(differ)


def test_a_rerun_on_the_cluster_skips_finished_images(
    run_cli, cluster, image_folder, tiny_model_file, tmp_path
):
    address, client = cluster
    out = tmp_path / "o"
    _everything(run_cli, image_folder, tiny_model_file, out, *GRID, "--scheduler", address)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "n3_overlay.png").unlink()  # as if the run had stopped before this image
    client.run(clear_cache)
    again = _everything(run_cli, image_folder, tiny_model_file, out, *GRID, "--scheduler", address)
    assert "done: 1 image(s)" in again and "7 skipped" in again
    assert sum(client.run(load_count).values()) == 1  # only the task with work loaded a model
    for name, stamp in stamps.items():
        if not name.startswith(("n3_", MANIFEST_NAME)):
            assert (out / name).stat().st_mtime_ns == stamp, f"{name} was rewritten"
    assert (out / "n3_overlay.png").exists()


def test_a_worker_without_the_model_fails_the_run_clearly(run_cli, cluster, image_folder, tmp_path):
    address, _ = cluster
    missing = tmp_path / "only-on-the-client" / "model.pt"
    code, _, err = run_cli("everything", "--model", missing, "--source", image_folder,
                           "--out", tmp_path / "o", "--scheduler", address)
    assert code == 1
    assert "the worker on" in err and "could not load" in err and "shared file system" in err
    assert not list((tmp_path / "o").glob("*_labels.tif"))



def test_stacks_are_split_into_plane_tasks():
    from napari_samscope.distributed.everything import split_planes

    assert split_planes([3], workers=2) == [[[0], [1], [2]]]
    chunks = split_planes([32, 5], workers=2)  # 37 planes, about 8 tasks: 5 planes each
    assert [sum(chunk, []) for chunk in chunks] == [list(range(32)), list(range(5))]
    assert all(len(c) <= 5 for chunk in chunks for c in chunk) and len(chunks[0]) == 7
