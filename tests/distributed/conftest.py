"""Fixtures for the dask tests: a tiny checkpoint, a folder of small images, and one real
``LocalCluster`` (2 single-threaded worker processes on the loopback interface) shared by
all the tests."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """Path of a tiny random SAM (ViT, img_size 64) in the project checkpoint format."""
    import torch

    from napari_samscope.core.modeling.build import build_sam, tiny_config
    from napari_samscope.core.weights.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_checkpoint(path, build_sam(tiny_config("vit", 64)).eval())
    return path


def make_image_folder(folder, count: int = 6):
    """``count`` synthetic nuclei images (PNG), one 3-plane TIFF stack, and two images
    that share a stem (``n0.png`` / ``n0.tif``), so that output names depend on the folder."""
    import tifffile
    from PIL import Image

    from napari_samscope.core.synthetic import make_nuclei_2d

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = make_nuclei_2d((64, 80), seed=i)
        Image.fromarray(image).save(folder / f"n{i}.png")
    stack = np.stack([make_nuclei_2d((64, 64), seed=100 + z)[0] for z in range(3)])
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(folder / "n0.tif", make_nuclei_2d((64, 72), seed=50)[0])
    return folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images") / "plate")


@pytest.fixture(scope="session")
def reference_labels(image_folder, tiny_model_file, tmp_path_factory):
    """The in-process run's output folder (labels and label TIFFs)."""
    from napari_samscope.core.datasets.annotate import auto_annotate

    out = tmp_path_factory.mktemp("reference") / "labels"
    summary = auto_annotate(image_folder, sam_model=tiny_model_file, output_dir=out, save_tiff=True,
                            progress=None, verbose=False)
    assert summary.annotated == summary.images and not summary.failed
    return out


@pytest.fixture
def same_folders():
    """``same_folders(expected, actual)`` asserts the same file names with the same bytes."""
    return _assert_same_folders


def _assert_same_folders(expected, actual):
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in actual.iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(expected, actual, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="session")
def cluster():
    """A running LocalCluster with 2 worker processes; yields ``(address, client)``."""
    from distributed import Client
    from napari_samscope.distributed.cluster import start_local_cluster

    with start_local_cluster(2, dashboard=False) as local, Client(local) as client:
        yield local.scheduler_address, client


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*args) -> (exit code, stdout, stderr)`` through ``samscope``'s ``main``."""
    from napari_samscope.cli.main import main

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def decoder_model_file(tmp_path_factory):
    """Path of a tiny random SAM with a tiny random instance decoder (micro-sam's training
    format) whose last layer is scaled so that AIS and APG find objects on the test images."""
    import torch

    from napari_samscope.core.instances.decoder import UNETRDecoder
    from napari_samscope.core.modeling.build import build_sam, tiny_config

    torch.manual_seed(3)
    sam = build_sam(tiny_config("vit", 64)).eval()
    decoder = UNETRDecoder(embed_dim=32, features=(32, 16, 8, 4), conv_transpose=True).eval()
    last = [m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # outputs far from 0.5: foreground and distances with structure
        last.weight.mul_(10.0)
        last.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    path = tmp_path_factory.mktemp("models") / "with_decoder.pt"
    torch.save({"model_state": {"sam." + k: v for k, v in sam.state_dict().items()},
                "decoder_state": decoder.state_dict()}, path)
    return path
