"""``samscope embed`` on a real dask LocalCluster: two workers writing one store give the
in-process embeddings, reruns encode only the missing tiles, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samscope.distributed.embed import split_tiles

pytest.importorskip("distributed", reason="needs napari-samscope[distributed]")
zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def stack_tif(tmp_path_factory):
    import tifffile

    from napari_samscope.core.synthetic import make_nuclei_2d

    planes = [make_nuclei_2d((150, 140), seed=s, dtype="uint16")[0] for s in range(4)]
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    tifffile.imwrite(path, np.stack(planes), tile=(64, 64), photometric="minisblack")
    return path


def _embed(run_cli, image, model, out, *extra):
    code, stdout, err = run_cli("embed", image, "--out", out, "--model", model, "--tile-shape", "64",
                                "--halo", "8", "--device", "cpu", "--dtype", "float32", *extra)
    return code, stdout, err


def _arrays(path):
    group = zarr.open_group(str(path), mode="r")
    return np.asarray(group["features"]), np.asarray(group["done"])


def test_two_workers_fill_one_store_with_the_in_process_embeddings(
    run_cli, cluster, stack_tif, tiny_model_file, tmp_path
):
    from napari_samscope.core.store import EmbeddingStore
    from napari_samscope.distributed.embed import EmbedJob, embed_prepare_task, embed_tiles_task
    from napari_samscope.distributed.worker import ModelRef

    address, client = cluster
    client.wait_for_workers(2, timeout=120)  # a worker killed by an earlier test restarts
    code, stdout, err = _embed(run_cli, stack_tif, tiny_model_file, tmp_path / "here.zarr")
    assert code == 0, err
    code, there, err = _embed(run_cli, stack_tif, tiny_model_file, tmp_path / "there.zarr",
                              "--scheduler", address)
    assert code == 0, err
    assert EmbeddingStore.read_spec(tmp_path / "here.zarr") == EmbeddingStore.read_spec(tmp_path / "there.zarr")
    features, done = _arrays(tmp_path / "there.zarr")
    expected, expected_done = _arrays(tmp_path / "here.zarr")
    assert done.all() and expected_done.all() and np.abs(features).max() > 0
    np.testing.assert_array_equal(features, expected)
    tiles = done.size
    assert f"4 plane(s) x {tiles // 4} tiles" in there and f"encoded {tiles}, reused 0" in there

    # the same with every plane's tiles shared out between the two workers, pinned, at once
    job = EmbedJob(str(stack_tif), str(tmp_path / "both.zarr"), ModelRef(str(tiny_model_file), "cpu", "float32"),
                   (64, 64), (8, 8))
    first, second = sorted(client.scheduler_info()["workers"])
    summary, missing = client.submit(embed_prepare_task, job, workers=[first], pure=False).result()
    futures = [
        client.submit(embed_tiles_task, job, plane, tiles[k::2], workers=[worker],
                      allow_other_workers=False, pure=False)
        for plane, tiles in enumerate(missing) for k, worker in enumerate((first, second))
    ]
    assert sum(f.result() for f in futures) == tiles and summary.reused == 0
    both, both_done = _arrays(tmp_path / "both.zarr")
    assert both_done.all()
    np.testing.assert_array_equal(both, expected)


def test_a_rerun_encodes_only_the_missing_tiles(run_cli, cluster, stack_tif, tiny_model_file, tmp_path):
    address, _ = cluster
    out = tmp_path / "s.zarr"
    code, _, err = _embed(run_cli, stack_tif, tiny_model_file, out, "--scheduler", address)
    assert code == 0, err
    complete, done = _arrays(out)
    store = zarr.open_group(str(out), mode="r+")
    store["done"][1, 2] = 0  # as if the run had stopped before these tiles were marked
    store["done"][3, 0] = 0
    code, stdout, err = _embed(run_cli, stack_tif, tiny_model_file, out, "--scheduler", address)
    assert code == 0, err
    assert f"encoded 2, reused {done.size - 2}" in stdout
    again, done_again = _arrays(out)
    assert done_again.all()
    np.testing.assert_array_equal(again, complete)


def test_store_mismatch_and_missing_model_fail_clearly(run_cli, cluster, stack_tif, tiny_model_file, tmp_path):
    address, _ = cluster
    out = tmp_path / "s.zarr"
    assert _embed(run_cli, stack_tif, tiny_model_file, out, "--scheduler", address)[0] == 0
    code, _, err = run_cli("embed", stack_tif, "--out", out, "--model", tiny_model_file,
                           "--tile-shape", "64", "--halo", "4", "--scheduler", address)
    assert code == 1 and "another halo" in err and "--recompute" in err
    code, stdout, err = run_cli("embed", stack_tif, "--out", out, "--model", tiny_model_file,
                                "--tile-shape", "64", "--halo", "4", "--scheduler", address, "--recompute")
    assert code == 0 and "reused 0" in stdout, err
    code, _, err = _embed(run_cli, stack_tif, tmp_path / "nowhere" / "model.pt", tmp_path / "n.zarr",
                          "--scheduler", address)
    assert code == 1 and "could not load" in err and "shared file system" in err


def test_tiles_are_split_within_planes_into_enough_tasks():
    missing = [list(range(9)), [], [0, 5], list(range(9))]
    tasks = split_tiles(missing, workers=2)  # 20 tiles, about 8 tasks: 3 tiles each
    assert all(len(t) <= 3 for _, t in tasks)
    assert sorted((p, i) for p, t in tasks for i in t) == [(p, i) for p, m in enumerate(missing) for i in m]
    assert split_tiles([[0, 1]], workers=8) == [(0, [0]), (0, [1])]
    assert split_tiles([[], []], workers=2) == []
