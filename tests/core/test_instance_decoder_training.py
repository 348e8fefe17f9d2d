"""Training an instance decoder on a frozen SAM encoder, and the object-level scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.instances.load import read_decoder
from napari_samscope.core.modeling.build import build_sam, tiny_config
from napari_samscope.core.progress import run
from napari_samscope.core.synthetic import make_nuclei_2d
from napari_samscope.core.training.data import prepare_pair
from napari_samscope.core.training.instance_decoder import (
    DecoderTrainConfig,
    distance_dice_loss,
    save_decoder,
    train_decoder_iter,
)
from napari_samscope.core.training.instance_eval import instance_scores, match_instances

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(features=(16, 8, 4, 2), crop_tokens=None, batch_images=2, lr=1e-2, warmup_steps=2)


def _tiny_sam(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam(tiny_config("tiny_vit", img_size=64)).eval()


def _samples(n: int = 3):
    out = []
    for i in range(n):
        image, labels = make_nuclei_2d((64, 64), n=4, radius_range=(6.0, 9.0), seed=100 + i)
        out.append(prepare_pair(image, labels, 64, name=f"plane {i}"))
    return out


def _train(config: DecoderTrainConfig, sam=None, samples=None, decoder=None):
    sam = sam if sam is not None else _tiny_sam()
    return run(train_decoder_iter(sam, samples or _samples(), config, decoder=decoder), progress=None)


def test_training_lowers_the_loss_and_leaves_the_encoder_alone():
    sam = _tiny_sam()
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    result = _train(DecoderTrainConfig(steps=40, seed=1, **TINY), sam=sam)
    assert len(result.losses) == 40 and result.planes == 3
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.8 * first, (first, last)
    assert result.decoder.embed_dim == 32 and not result.decoder.training
    assert all(torch.equal(before[k], v) for k, v in sam.state_dict().items())
    maps = result.decoder(torch.zeros(1, 32, 4, 4))
    assert maps.shape == (1, 3, 64, 64)


def test_training_is_deterministic_and_the_seed_matters():
    config = DecoderTrainConfig(steps=6, seed=3, **TINY)
    a, b = _train(config), _train(config)
    assert a.losses == b.losses
    for (name, x), y in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
        assert torch.equal(x, y), name
    c = _train(DecoderTrainConfig(steps=6, seed=4, **TINY))
    assert c.losses != a.losses


def test_crops_train_on_the_matching_part_of_the_targets():
    result = _train(DecoderTrainConfig(steps=3, seed=0, **{**TINY, "crop_tokens": 2}))
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"steps": 0}, "steps"),
        ({"batch_images": 0}, "batch_images"),
        ({"crop_tokens": 1}, "crop_tokens"),
        ({"features": (64, 32, 16, 4)}, "features"),
        ({"features": (8, 4, 2)}, "features"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"autocast": "float16"}, "autocast"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        DecoderTrainConfig(**options)


def test_bad_inputs_are_refused():
    config = DecoderTrainConfig(steps=1, **TINY)
    with pytest.raises(TypeError, match="Sam module"):
        next(train_decoder_iter("vit_b", _samples(1), config))
    with pytest.raises(ValueError, match="at least one"):
        next(train_decoder_iter(_tiny_sam(), [], config))
    with pytest.raises(TypeError, match="PreparedSample"):
        next(train_decoder_iter(_tiny_sam(), [np.zeros((64, 64))], config))
    image, labels = make_nuclei_2d((64, 64), n=3, seed=1)
    with pytest.raises(ValueError, match="prepare_pair"):
        next(train_decoder_iter(_tiny_sam(), [prepare_pair(image, labels, 128)], config))
    with pytest.raises(TypeError, match="DecoderTrainConfig"):
        next(train_decoder_iter(_tiny_sam(), _samples(1), {"steps": 1}))
    wrong = UNETRDecoder(embed_dim=16, features=TINY["features"])
    with pytest.raises(ValueError, match="16-channel"):
        _train(config, decoder=wrong)


def test_a_saved_decoder_loads_strictly_and_only_for_its_encoder(tmp_path):
    result = _train(DecoderTrainConfig(steps=2, **TINY))
    path = save_decoder(tmp_path / "decoder.pt", result.decoder, meta={"seed": 0})
    contents = torch.load(path, weights_only=True)
    assert contents["config"] == {
        "embed_dim": 32, "features": [16, 8, 4, 2], "out_channels": 3, "conv_transpose": True,
    }
    loaded = read_decoder(path, embed_dim=32)
    x = torch.randn(1, 32, 4, 4)
    assert torch.equal(loaded(x), result.decoder(x))
    with pytest.raises(ValueError, match="32-channel image embeddings"):
        read_decoder(path, embed_dim=128)
    with pytest.raises(TypeError, match="UNETRDecoder"):
        save_decoder(tmp_path / "x.pt", torch.nn.Conv2d(1, 1, 1))


def test_distance_dice_loss_is_zero_for_the_targets_and_masks_the_background():
    target = torch.zeros(1, 3, 8, 8)
    target[:, 0, 2:6, 2:6] = 1
    target[:, 1:, :, :] = 1
    target[:, 1:, 3:5, 3:5] = 0.3
    assert float(distance_dice_loss(target.clone(), target)) == pytest.approx(0.0, abs=1e-6)
    other = target.clone()
    other[:, 1:, 0, 0] = 0.0  # background distances are not trained
    assert float(distance_dice_loss(other, target)) == pytest.approx(0.0, abs=1e-6)
    other[:, 0] = 1 - other[:, 0]
    assert float(distance_dice_loss(other, target)) > 0.9
    with pytest.raises(ValueError, match="B, 3, H, W"):
        distance_dice_loss(target[:, :2], target[:, :2])


def test_objects_match_at_iou_one_half():
    truth = np.zeros((20, 20), dtype=np.uint16)
    truth[0:10, 0:10] = 1
    truth[10:20, 10:20] = 2
    truth[0:4, 16:20] = 3
    pred = np.zeros((20, 20), dtype=np.int32)
    pred[0:10, 0:8] = 7  # IoU 0.8 with 1
    pred[10:20, 10:13] = 9  # IoU 0.3 with 2
    pred[15:20, 0:5] = 4  # nothing there
    tp, fp, fn, ious = match_instances(pred, truth)
    assert (tp, fp, fn) == (1, 2, 2)
    assert ious.tolist() == pytest.approx([0.8])
    scores = instance_scores([pred, truth], [truth, truth])
    assert scores["f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 2))
    assert scores["mean_matched_iou"] == pytest.approx((0.8 + 3) / 4)
    with pytest.raises(ValueError, match="same shape"):
        match_instances(pred[:5], truth)
    with pytest.raises(ValueError, match="iou"):
        match_instances(pred, truth, iou=0.3)
    with pytest.raises(ValueError, match="integer"):
        match_instances(pred.astype(float), truth)
