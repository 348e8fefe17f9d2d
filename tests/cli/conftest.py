"""Fixtures for the command-line tests: a tiny model saved as a checkpoint file, small images."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a tiny random SAM (ViT, img_size 64) saved in the project checkpoint format."""
    import torch

    from napari_samscope.core.modeling.build import build_sam, tiny_config
    from napari_samscope.core.weights.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_checkpoint(path, build_sam(tiny_config("vit", 64)).eval())
    return path


@pytest.fixture
def nuclei_png(tmp_path):
    """A small 8-bit PNG of synthetic nuclei."""
    from PIL import Image

    from napari_samscope.core.synthetic import make_nuclei_2d

    image, _ = make_nuclei_2d((64, 80), seed=3)
    path = tmp_path / "nuclei.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*args) -> (exit code, stdout, stderr)`` through ``samscope``'s ``main``."""
    from napari_samscope.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run

