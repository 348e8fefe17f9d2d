"""Shared pytest configuration.

Core tests use tiny, randomly initialised configurations of the real
architectures (``make_tiny_sam`` and the fixtures below, built with
``napari_samscope.core.modeling.build.tiny_config``); nothing here downloads weights.
"""

import os

# Keep the Qt binding deterministic for the widget tests (pytest-xvfb provides the display).
os.environ.setdefault("QT_API", "pyqt6")
# Never touch the user's real weight cache from the tests.
os.environ.setdefault("SAMSCOPE_CACHE_DIR", os.path.join(os.path.dirname(__file__), ".cache-never-used"))


# ---------------------------------------------------------------------------------------
# Tiny models of the real architectures (owned by the modeling helper).

import pytest  # noqa: E402


def make_tiny_sam(encoder: str = "vit", img_size: int = 64, seed: int = 0, **overrides):
    """A tiny, seeded, eval-mode ``Sam`` of the real architecture (CPU, float32)."""
    import torch

    from napari_samscope.core.modeling.build import build_sam, tiny_config

    torch.manual_seed(seed)
    return build_sam(tiny_config(encoder, img_size, **overrides)).eval()


def randomize_state(model, seed: int = 0):
    """Give EVERY persistent parameter and buffer random values, in place.

    Fresh models have zeros in ``pos_embed``, the relative-position tables,
    TinyViT's attention biases, many biases and BatchNorm statistics; parity
    tests must not depend on those zeros. Scales stay close to a trained model's
    (so activations stay finite): weights keep their init std (0.1 when zero-init),
    norm weights are ``1 + 0.1 N(0, 1)``, BatchNorm variances uniform in [0.5, 1.5].
    Integer buffers (``num_batches_tracked``) are left alone. Returns the model.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    norm_params = set()
    for module in model.modules():
        if isinstance(module, norm_types) or type(module).__name__ == "LayerNorm2d":
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        state = model.state_dict(keep_vars=True)
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                value = torch.rand(tensor.shape, generator=generator) + 0.5
            elif id(tensor) in norm_params and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            else:
                std = float(tensor.float().std()) if tensor.numel() > 1 else 0.0
                value = noise * (std if std > 0 else 0.1)
            tensor.copy_(value.to(tensor.dtype))
    return model


@pytest.fixture
def tiny_vit_config():
    """``SamConfig`` of a tiny SAM ViT (img_size 64, prompt width 32)."""
    from napari_samscope.core.modeling.build import tiny_config

    return tiny_config("vit", 64)


@pytest.fixture
def tiny_sam():
    """Tiny SAM with a ViT encoder, img_size 64, seeded, eval mode."""
    return make_tiny_sam("vit", 64)


@pytest.fixture
def tiny_mobile_sam():
    """Tiny SAM with a TinyViT (MobileSAM) encoder, img_size 64, seeded, eval mode."""
    return make_tiny_sam("tiny_vit", 64)


@pytest.fixture
def random_state_sam():
    """Tiny ViT SAM whose every parameter and buffer is random (incl. pos_embed, rel_pos)."""
    return randomize_state(make_tiny_sam("vit", 64), seed=1)


@pytest.fixture
def random_state_mobile_sam():
    """Tiny TinyViT SAM whose every parameter and buffer is random (incl. attention biases)."""
    return randomize_state(make_tiny_sam("tiny_vit", 64), seed=2)


@pytest.fixture
def randomize():
    """The :func:`randomize_state` helper (``randomize(model, seed) -> model``)."""
    return randomize_state


@pytest.fixture
def tiny_sam_factory():
    """The :func:`make_tiny_sam` helper (``factory(encoder, img_size, seed, **overrides)``)."""
    return make_tiny_sam


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (tiny training steps and single-image figures:
    one thread avoids thread contention on a busy machine); restores the setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
