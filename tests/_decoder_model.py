"""A tiny random SAM with a tiny random instance decoder whose maps spread over [0, 1]
(the decoder's last layer scaled), so that AIS and APG find several objects."""

from __future__ import annotations

import numpy as np


def tiny_sam_with_decoder(name: str = "tiny-ais", seed: int = 3):
    """``SAM`` (float32, CPU) of a tiny random ViT with a tiny random UNETR decoder."""
    import torch

    from napari_samscope.core.instances.decoder import UNETRDecoder
    from napari_samscope.core.modeling.build import build_sam, tiny_config
    from napari_samscope.core.predict.sam_api import SAM

    torch.manual_seed(seed)
    sam = build_sam(tiny_config("vit", 64)).eval()
    decoder = UNETRDecoder(embed_dim=32, features=(32, 16, 8, 4)).eval()
    with torch.no_grad():
        captured = []
        hook = decoder.out_conv.register_forward_hook(lambda m, i, out: captured.append(out))
        decoder(torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(seed)))
        hook.remove()
        decoder.out_conv.weight.mul_(3.0 / float(captured[0].std()))
    model = SAM.from_sam(sam, name)
    model.set_instance_decoder(decoder)
    return model


def save_microsam_format(model, path) -> None:
    """Save ``model`` and its decoder as torch_em's training checkpoint (micro-sam's format)."""
    import torch

    torch.save({
        "model_state": {"sam." + k: v for k, v in model.model.state_dict().items()},
        "decoder_state": model.instance_decoder.state_dict(),
    }, path)


def blob_image(shape=(96, 128), seed=0) -> np.ndarray:
    """uint8 image of bright blobs of several sizes on a dark noisy background."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(20, 3, shape)
    for r, c, radius in ((20, 25, 9), (30, 70, 12), (65, 30, 10), (70, 95, 14), (45, 110, 6)):
        image[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 200
    return np.clip(image, 0, 255).astype(np.uint8)


def count_encodings(sam) -> list:
    """Patch ``sam``'s image encoder to record each call's batch size; returns the list
    it appends to (a test asserts that nothing, or how much, was encoded)."""
    encoder = sam.model.image_encoder
    calls = []
    original = encoder.forward

    def counted(x, *args, **kwargs):
        calls.append(int(x.shape[0]))
        return original(x, *args, **kwargs)

    encoder.forward = counted
    return calls
