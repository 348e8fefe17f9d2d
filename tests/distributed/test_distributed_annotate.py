"""``auto_annotate`` on a real dask LocalCluster: same files as in-process, worker loss, reruns."""

from __future__ import annotations

import os
import signal

import pytest

from napari_samscope.core.datasets.manifest import MANIFEST_NAME
from napari_samscope.distributed import auto_annotate
from napari_samscope.distributed.worker import clear_cache, load_count

pytest.importorskip("distributed", reason="needs napari-samscope[distributed]")


def _worker_loads(client) -> dict[str, int]:
    return client.run(load_count)


def test_local_cluster_gives_the_in_process_files_byte_for_byte(same_folders,
    image_folder, tiny_model_file, reference_labels, tmp_path, capsys
):
    out = tmp_path / "labels"
    summary = auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=out, save_tiff=True,
                            progress=None, scheduler="local", workers=2)
    assert summary.images == 8 and summary.annotated == 8 and not summary.failed
    assert summary.planes == 10  # 7 single images and a 3-plane stack
    same_folders(reference_labels, out)
    assert (out / "n0.txt").exists() and (out / "n0_tif.txt").exists()  # names from the whole folder
    assert "dask dashboard: http://127.0.0.1:" in capsys.readouterr().err


def test_each_worker_loads_the_model_once(same_folders, cluster, image_folder, tiny_model_file, reference_labels, tmp_path):
    address, client = cluster
    client.run(clear_cache)
    out = tmp_path / "labels"
    summary = auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=out, save_tiff=True,
                            progress=None, verbose=False, scheduler=address)
    assert summary.annotated == 8
    loads = _worker_loads(client)
    assert len(loads) == 2 and all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1
    # the workers run without dask's fixed malloc trim threshold (it slows the model down)
    assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
    same_folders(reference_labels, out)


def test_a_killed_worker_does_not_lose_the_run(same_folders, cluster, image_folder, tiny_model_file, reference_labels, tmp_path):
    address, client = cluster
    client.wait_for_workers(2)
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker(report):
        if killed or report.done < 1:
            return
        busy = [w for w, keys in client.processing().items() if keys and w in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    out = tmp_path / "labels"
    summary = auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=out, save_tiff=True,
                            progress=kill_a_busy_worker, verbose=False, scheduler=address, retries=1)
    assert killed, "no worker was busy after the first task; the test did not kill one"
    assert summary.annotated == 8 and not summary.failed
    same_folders(reference_labels, out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written file left


def test_a_rerun_skips_finished_files_and_redoes_missing_ones(same_folders,
    cluster, image_folder, tiny_model_file, reference_labels, tmp_path
):
    address, client = cluster
    out = tmp_path / "labels"
    first = auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=out, save_tiff=True,
                          progress=None, verbose=False, scheduler=address)
    assert first.annotated == 8
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "n3.txt").unlink()  # as if the run had stopped before this image
    client.run(clear_cache)
    again = auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=out, save_tiff=True,
                          progress=None, verbose=False, scheduler=address)
    assert (again.annotated, again.skipped) == (1, 7)
    assert sum(_worker_loads(client).values()) == 1  # only the task with work loaded a model
    same_folders(reference_labels, out)
    redone = ("n3.txt", "n3_labels.tif", MANIFEST_NAME)  # the manifest records the redone file
    for name, stamp in stamps.items():
        if name not in redone:
            assert (out / name).stat().st_mtime_ns == stamp, f"{name} was rewritten"
    assert (out / MANIFEST_NAME).stat().st_mtime_ns != stamps[MANIFEST_NAME]


def test_coco_file_is_written_at_the_end(cluster, image_folder, tiny_model_file, tmp_path):
    import json

    address, _ = cluster
    summary = auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=tmp_path / "o",
                            save_coco=True, progress=None, verbose=False, scheduler=address)
    coco = json.loads(summary.coco_path.read_text())
    assert len(coco["images"]) == 10 and summary.coco_path in summary.files


def test_a_worker_without_the_model_fails_the_run_clearly(cluster, image_folder, tmp_path):
    address, _ = cluster
    missing = tmp_path / "only-on-the-client" / "model.pt"  # exists nowhere
    with pytest.raises(ValueError, match=r"the worker on .* could not load '.*model\.pt'.*shared file system"):
        auto_annotate(image_folder, sam_model=missing, output_dir=tmp_path / "o", progress=None,
                      verbose=False, scheduler=address, retries=0)
    assert not list((tmp_path / "o").glob("*.txt"))
