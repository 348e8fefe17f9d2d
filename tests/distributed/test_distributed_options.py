"""The scheduler choice, the task plan, the errors, and the ``samscope annotate`` options
(no cluster is started here except by the CLI test)."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

from napari_samscope.distributed import auto_annotate
from napari_samscope.distributed.annotate import plan_tasks
from napari_samscope.distributed.cluster import INSTALL_HINT, ClusterSpec
from napari_samscope.distributed.worker import ModelRef

needs_distributed = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None, reason="needs napari-samscope[distributed]"
)


def test_cluster_spec_choices_and_bad_values():
    assert ClusterSpec().in_process
    assert ClusterSpec("local", 3).local_workers == 3
    assert ClusterSpec(None, 2).address == "local"  # workers alone means a local cluster
    assert ClusterSpec("tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    for workers in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be a whole number"):
            ClusterSpec("local", workers)
    with pytest.raises(ValueError, match="workers applies to scheduler='local' only"):
        ClusterSpec("tcp://10.0.0.1:8786", 2)
    for address in ("", "  ", "myhost:8786", 8786):
        with pytest.raises(ValueError, match="scheduler"):
            ClusterSpec(address)


def test_plan_puts_files_that_share_a_stem_in_one_task():
    files = [Path(n) for n in ("a.png", "b.png", "a.tif", "c.png", "A.jpg")]
    assert plan_tasks(files) == [[0, 2, 4], [1], [3]]
    plain = [Path(n) for n in ("x.png", "y.tif", "z.jpg")]
    assert plan_tasks(plain) == [[0], [1], [2]]
    # a name taken by a suffixed stem of another group: everything in one task keeps the names right
    tangled = [Path(n) for n in ("a.png", "a.tif", "a_tif.png")]
    assert plan_tasks(tangled) == [[0, 1, 2]]


def test_model_objects_are_refused_with_a_scheduler(tiny_sam, tmp_path):
    with pytest.raises(TypeError, match="each worker loads the model itself"):
        ModelRef.of(tiny_sam)
    local = tmp_path / "m.pt"
    local.write_bytes(b"x")
    assert ModelRef.of(local).model == str(local.absolute())
    assert ModelRef.of("vit_b").model == "vit_b"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_distributed
def test_a_bad_scheduler_address_fails_fast_and_clearly(image_folder, tiny_model_file, tmp_path, monkeypatch):
    from napari_samscope.distributed import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2.0)
    address = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(ValueError, match=rf"could not reach a dask scheduler at {address}.*scheduler is running"):
        auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=tmp_path / "o", progress=None,
                      verbose=False, scheduler=address)
    with pytest.raises(ValueError, match="neither 'local' nor an address"):
        auto_annotate(image_folder, sam_model=tiny_model_file, progress=None, scheduler="nowhere")


def test_without_distributed_a_scheduler_gives_the_install_command(image_folder, tmp_path, monkeypatch, run_cli):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    out = tmp_path / "o"
    with pytest.raises(ImportError, match=r"pip install 'napari-samscope\[distributed\]'"):
        auto_annotate(image_folder, output_dir=out, progress=None, scheduler="local", workers=2)
    assert not out.exists()  # nothing written before the check
    code, _, err = run_cli("annotate", image_folder, "--out", out, "--workers", "2")
    assert code == 1 and INSTALL_HINT in err
    # and the default (in-process) path does not need it
    code, _, err = run_cli("annotate", image_folder, "--out", out, "--det-model", "nothing-here")
    assert code == 1 and "distributed" not in err


def test_everything_and_embed_without_distributed_give_the_install_command(
    image_folder, tiny_model_file, tmp_path, monkeypatch, run_cli
):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    out = tmp_path / "o"
    code, _, err = run_cli("everything", "--source", image_folder, "--out", out, "--workers", "2")
    assert code == 1 and INSTALL_HINT in err
    code, _, err = run_cli("embed", image_folder / "stack.tif", "--out", tmp_path / "e.zarr",
                           "--model", tiny_model_file, "--scheduler", "tcp://127.0.0.1:8786")
    assert code == 1 and INSTALL_HINT in err
    assert not out.exists() and not (tmp_path / "e.zarr").exists()  # nothing written before the check


@needs_distributed
def test_everything_and_embed_with_a_bad_scheduler_fail_fast(image_folder, tiny_model_file, tmp_path,
                                                             monkeypatch, run_cli):
    from napari_samscope.distributed import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2.0)
    address = f"tcp://127.0.0.1:{_closed_port()}"
    code, _, err = run_cli("everything", "--source", image_folder, "--out", tmp_path / "o",
                           "--scheduler", address)
    assert code == 1 and f"could not reach a dask scheduler at {address}" in err
    code, _, err = run_cli("embed", image_folder / "stack.tif", "--out", tmp_path / "e.zarr",
                           "--model", tiny_model_file, "--scheduler", address)
    assert code == 1 and f"could not reach a dask scheduler at {address}" in err
    code, _, err = run_cli("everything", "--source", image_folder, "--workers", "2", "--scheduler", address)
    assert code == 2 and "workers applies to scheduler='local' only" in err


def test_cli_options(run_cli, image_folder, tmp_path):
    code, _, err = run_cli("annotate", image_folder, "--workers", "0")
    assert code == 2 and "not a number of workers" in err
    code, _, err = run_cli("annotate", image_folder, "--scheduler", "tcp://127.0.0.1:1", "--workers", "2")
    assert code == 2 and "workers applies to scheduler='local' only" in err
    code, out, _ = run_cli("annotate", "--help")
    assert code == 0 and "--scheduler ADDRESS" in out and "--workers N" in out


@needs_distributed
def test_cli_annotate_on_a_cluster(same_folders, run_cli, cluster, image_folder, tiny_model_file, reference_labels, tmp_path):
    address, _ = cluster
    out = tmp_path / "labels"
    code, stdout, err = run_cli("annotate", f"data={image_folder}", f"sam_model={tiny_model_file}",
                                f"out={out}", "save_tiff=True", f"scheduler={address}")
    assert code == 0, err
    assert "8 images: 8 annotated (10 planes" in stdout
    same_folders(reference_labels, out)


def test_importing_the_package_loads_neither_torch_nor_dask():
    import subprocess

    code = (
        "import sys, napari_samscope.distributed, napari_samscope.cli._distributed, "
        "napari_samscope.distributed.everything, napari_samscope.distributed.embed; "
        "print(sorted(m for m in ('torch', 'distributed', 'dask') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
