"""Training pipeline: data validation, prompts, losses, a short run that learns, round trip."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_samscope.core.modeling.build import tiny_config
from napari_samscope.core.progress import Progress
from napari_samscope.core.synthetic import make_nuclei_2d, make_nuclei_3d
from napari_samscope.core.training import TrainConfig, TrainingData, prepare_pair, train, train_iter
from napari_samscope.core.training.losses import dice_loss, focal_loss, mask_iou, sam_loss
from napari_samscope.core.training.prompts import (
    PromptKind,
    boxes_from_masks,
    corrective_points,
    initial_prompts,
    jittered_boxes,
    random_points_in,
)
from napari_samscope.core.weights import registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(n: int, size: int = 64, seed: int = 0):
    pairs = [
        make_nuclei_2d((size, size), n=3, radius_range=(10, 16), touching=False, seed=seed + i)
        for i in range(n)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ------------------------------------------------------------------------------ data


def test_prepare_pair_matches_inference_preprocessing():
    image, labels = make_nuclei_2d((100, 60), dtype="uint16", radius_range=(6, 9), seed=1)
    sample = prepare_pair(image, labels, 64)
    # longest side resized to 64, rounded as the official preprocessing
    assert sample.image.shape == (64, 38, 3) and sample.image.dtype == np.uint8
    assert sample.labels.shape == (64, 38) and sample.labels.dtype == np.uint32
    from napari_samscope.core.predict.image import to_rgb_uint8
    from napari_samscope.core.predict.transforms import resize_rgb_uint8

    np.testing.assert_array_equal(sample.image, resize_rgb_uint8(to_rgb_uint8(image), 64))
    assert set(sample.ids.tolist()) <= set(np.unique(labels).tolist()) - {0}
    assert len(sample.ids) > 0


def test_stacks_become_planes_with_objects():
    volume, labels = make_nuclei_3d((6, 48, 48), radius_range=(6, 8), seed=0)
    labels[0] = 0  # an empty plane is skipped, not an error
    data = TrainingData([volume], [labels])
    assert 1 <= len(data) <= 5
    assert all(lab.any() for _, lab, _ in data.planes)
    assert data.summary()["planes"] == len(data)


def test_shape_mismatch_is_refused():
    image, labels = make_nuclei_2d((64, 64), seed=0)
    with pytest.raises(ValueError, match="same height and width"):
        TrainingData([image], [labels[:, :50]])
    with pytest.raises(ValueError, match="same shape"):
        volume, vlabels = make_nuclei_3d((4, 32, 32), seed=0)
        TrainingData([volume], [vlabels[:3]])
    with pytest.raises(ValueError, match="pair up"):
        TrainingData([image, image], [labels])
    with pytest.raises(ValueError, match="at least one"):
        TrainingData([], [])


def test_empty_labels_are_refused():
    image, labels = make_nuclei_2d((64, 64), seed=0)
    with pytest.raises(ValueError, match="no objects"):
        TrainingData([image, image], [labels, np.zeros_like(labels)], names=["a.tif", "b.tif"])
    with pytest.raises(ValueError, match="b.tif"):
        TrainingData([image, image], [labels, np.zeros_like(labels)], names=["a.tif", "b.tif"])
    volume, vlabels = make_nuclei_3d((4, 32, 32), seed=0)
    with pytest.raises(ValueError, match="no objects"):
        TrainingData([volume], [np.zeros_like(vlabels)])


def test_bad_label_values_are_refused():
    image, labels = make_nuclei_2d((64, 64), seed=0)
    with pytest.raises(ValueError, match="whole numbers"):
        TrainingData([image], [labels.astype(np.float32) + 0.5])
    with pytest.raises(ValueError, match=">= 0"):
        TrainingData([image], [labels.astype(np.int32) - 1])


def test_objects_too_small_for_the_model_are_refused():
    image = np.zeros((512, 512), dtype=np.uint8)
    image[100:102, 100:102] = 200
    labels = np.zeros((512, 512), dtype=np.uint32)
    labels[100:102, 100:102] = 1
    with pytest.raises(ValueError, match="pixels large"):
        train(tiny_config("vit", img_size=64), TrainingData([image], [labels]), TrainConfig(steps=1))


def _write_folder(folder, names, arrays, suffix=".tif"):
    folder.mkdir()
    for name, array in zip(names, arrays):
        if suffix == ".png":
            Image.fromarray(array.astype(np.uint16 if array.max() > 255 else np.uint8)).save(
                folder / f"{name}{suffix}"
            )
        else:
            tifffile.imwrite(folder / f"{name}{suffix}", array)


def test_folders_pair_by_name(tmp_path):
    images, labels = _pairs(2)
    _write_folder(tmp_path / "img", ["a", "b"], images)
    _write_folder(tmp_path / "lab", ["a", "b"], labels, suffix=".png")
    data = TrainingData.from_folders(tmp_path / "img", tmp_path / "lab")
    assert len(data) == 2
    np.testing.assert_array_equal(data.planes[0][1], labels[0])
    _write_folder(tmp_path / "lab2", ["a_labels", "b_labels"], labels)
    assert len(TrainingData.from_folders(tmp_path / "img", tmp_path / "lab2")) == 2


def test_mismatched_file_names_are_refused(tmp_path):
    images, labels = _pairs(2)
    _write_folder(tmp_path / "img", ["a", "b"], images)
    _write_folder(tmp_path / "lab", ["a", "c"], labels)
    with pytest.raises(ValueError, match=r"images without labels: \['b'\].*labels without images: \['c'\]"):
        TrainingData.from_folders(tmp_path / "img", tmp_path / "lab")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainingData.from_folders(tmp_path / "nope", tmp_path / "lab")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TIFF or PNG"):
        TrainingData.from_folders(tmp_path / "img", tmp_path / "empty")


# ------------------------------------------------------------------------------ prompts


def test_prompt_sampling_follows_the_masks():
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 5:10, 20:30] = True
    masks[1, 0:32, 0:3] = True
    masks[2, 15, 15] = True
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        pts = random_points_in(masks, gen).long()
        assert all(masks[i, pts[i, 1], pts[i, 0]] for i in range(3))  # (x, y) inside
    np.testing.assert_array_equal(boxes_from_masks(masks).numpy(), [[20, 5, 29, 9], [0, 0, 2, 31], [15, 15, 15, 15]])
    boxes = jittered_boxes(masks, gen)
    assert torch.all(boxes[:, 0] <= boxes[:, 2]) and torch.all(boxes[:, 1] <= boxes[:, 3])
    assert torch.all(boxes >= 0) and torch.all(boxes <= 31)
    prompts = initial_prompts(PromptKind.BOX_AND_POINT, masks, gen)
    assert prompts.boxes.shape == (3, 4) and prompts.points.shape == (3, 1, 2)
    assert prompts.labels.tolist() == [[1], [1], [1]]


def test_corrective_clicks_land_in_the_error_region():
    targets = torch.zeros(3, 16, 16, dtype=torch.bool)
    targets[:, 4:12, 4:12] = True
    predicted = torch.zeros_like(targets)
    predicted[0] = targets[0]  # perfect
    predicted[1, 4:12, 4:8] = True  # misses the right half: positive click there
    predicted[2] = True  # covers everything: negative click outside
    coords, labels = corrective_points(predicted, targets, torch.Generator().manual_seed(1))
    assert labels.tolist() == [-1, 1, 0]
    x, y = coords[1].long().tolist()
    assert targets[1, y, x] and not predicted[1, y, x]
    x, y = coords[2].long().tolist()
    assert not targets[2, y, x] and predicted[2, y, x]


# ------------------------------------------------------------------------------ losses


def test_losses_reward_the_right_mask():
    target = torch.zeros(1, 16, 16, dtype=torch.bool)
    target[0, 4:12, 4:12] = True
    good = torch.where(target, 8.0, -8.0)
    bad = -good
    assert focal_loss(good, target) < focal_loss(bad, target)
    assert dice_loss(good, target) < 0.01 < 0.9 < dice_loss(bad, target)
    assert mask_iou(good > 0, target).item() == 1.0
    # best-of-K: the gradient goes to the good candidate only
    low = torch.stack([bad, good], dim=1)[:, :, ::4, ::4].clone().requires_grad_(True)  # (1, 2, 4, 4)
    iou_pred = torch.zeros(1, 2, requires_grad=True)
    for resolution in ("lowres", "input"):
        out = sam_loss(low, iou_pred, target, resolution=resolution)
        assert out.best.tolist() == [1]
        assert out.masks.shape == (1, 16, 16)
        low.grad = iou_pred.grad = None
        out.loss.backward()
        assert low.grad[0, 0].abs().sum() == 0 and low.grad[0, 1].abs().sum() > 0
        assert iou_pred.grad[0, 1] < iou_pred.grad[0, 0] <= 0  # pulled up towards real IoUs


# ------------------------------------------------------------------------------ training


def _quick_config(**overrides) -> TrainConfig:
    options = dict(
        steps=60, lr=5e-3, trainable="all", batch_images=2, objects_per_image=3,
        warmup_steps=3, corrective_rounds=0, prompt_weights=(0.0, 1.0, 0.0),
        focal_alpha=0.75, loss_resolution="input", seed=0,
    )
    options.update(overrides)
    return TrainConfig(**options)


def test_short_training_lowers_the_loss_and_raises_the_iou():
    torch.manual_seed(0)
    images, labels = _pairs(4)
    reports: list[Progress] = []
    result = train(tiny_config("tiny_vit", img_size=64), TrainingData(images, labels),
                   _quick_config(), progress=reports.append)
    training = [r for r in reports if r.message == "training"]
    assert len(training) == 60 and training[-1].done == training[-1].total == 60
    assert set(training[-1].info) == {"loss", "iou", "lr"}
    losses = [h["loss"] for h in result.history]
    ious = [h["iou"] for h in result.history]
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10])
    assert np.mean(ious[-10:]) > np.mean(ious[:10]) + 0.08
    assert not result.sam.training


def test_training_is_deterministic_and_freezes_what_it_should():
    images, labels = _pairs(2)
    data = TrainingData(images, labels)
    config = _quick_config(steps=3, trainable="decoder", corrective_rounds=1,
                           prompt_weights=(0.5, 0.3, 0.2), loss_resolution="lowres")
    first = train(tiny_config("vit", img_size=64), data, config)
    second = train(tiny_config("vit", img_size=64), data, config)
    assert first.history == second.history
    for key, value in first.sam.state_dict().items():
        assert torch.equal(value, second.sam.state_dict()[key]), key
    # the frozen encoder is untouched by a decoder-only run
    from napari_samscope.core.modeling.build import build_sam

    torch.manual_seed(0)
    fresh = build_sam(tiny_config("vit", img_size=64))
    for key, value in fresh.image_encoder.state_dict().items():
        assert torch.equal(value, first.sam.image_encoder.state_dict()[key]), key
    assert any(
        not torch.equal(v, first.sam.mask_decoder.state_dict()[k])
        for k, v in fresh.mask_decoder.state_dict().items()
    )


def test_train_save_load_through_registry_and_predict(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_user_models", {})
    images, labels = _pairs(2)
    out = tmp_path / "mine.pt"
    result = train(tiny_config("tiny_vit", img_size=64), TrainingData(images, labels),
                   _quick_config(steps=2), out=out, meta={"note": "test"})
    assert result.checkpoint == out and out.is_file()
    import json

    sidecar = json.loads((tmp_path / "mine.pt.json").read_text())
    assert sidecar["meta"]["training"]["steps"] == 2
    assert sidecar["meta"]["data"]["planes"] == 2 and sidecar["meta"]["note"] == "test"
    registry.register_local_model("mine", out)
    from napari_samscope.core.predict.predictor import Predictor
    from napari_samscope.core.weights.loader import load_sam

    loaded = load_sam("mine", device="cpu")
    for key, value in result.sam.state_dict().items():
        assert torch.equal(value, loaded.sam.state_dict()[key]), key
    predictor = Predictor(loaded.sam)
    predictor.set_image(images[0])
    prediction = predictor.predict(points=[[32, 32]], labels=[1])
    assert prediction.masks.shape == (1, 64, 64)


def test_training_can_be_cancelled_between_steps(tmp_path):
    images, labels = _pairs(2)
    out = tmp_path / "never.pt"
    job = train_iter(tiny_config("tiny_vit", img_size=64), TrainingData(images, labels),
                     _quick_config(steps=50), out=out)
    for report in job:
        if report.message == "training" and report.done == 2:
            break
    job.close()
    assert not out.exists()


def test_bad_training_options_are_refused():
    with pytest.raises(ValueError, match="trainable"):
        TrainConfig(trainable="encoder")
    with pytest.raises(ValueError, match="loss_resolution"):
        TrainConfig(loss_resolution="full")
    with pytest.raises(ValueError, match="prompt_weights"):
        TrainConfig(prompt_weights=(0, 0, 0))
    with pytest.raises(TypeError, match="model must be"):
        images, labels = _pairs(1)
        train(42, TrainingData(images, labels), TrainConfig(steps=1))


@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
def test_every_part_trains_for_both_encoder_families(encoder):
    from napari_samscope.core.modeling.build import build_sam

    images, labels = _pairs(1)
    torch.manual_seed(0)
    start = build_sam(tiny_config(encoder, img_size=64))
    before = {k: v.clone() for k, v in start.state_dict().items()}
    result = train(start, TrainingData(images, labels), _quick_config(steps=2, autocast="bfloat16"))
    changed = {k.split(".")[0] for k, v in result.sam.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed == {"image_encoder", "prompt_encoder", "mask_decoder"}


def test_a_frozen_encoder_encodes_each_plane_once():
    from napari_samscope.core.modeling.build import build_sam

    images, labels = _pairs(2)
    sam = build_sam(tiny_config("tiny_vit", img_size=64))
    calls = []
    sam.image_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    config = _quick_config(steps=5, trainable="decoder+prompt", augment=False, batch_images=2)
    train(sam, TrainingData(images, labels), config)
    assert calls == [2]  # both planes once, then the cached embeddings
    calls.clear()
    train(sam, TrainingData(images, labels), replace(config, trainable="all"))
    assert calls == [2] * 5  # a trained encoder runs every step


def test_negative_pair_prompts_click_the_touching_neighbour():
    from napari_samscope.core.training.prompts import pair_prompts, touching_neighbours

    labels = np.zeros((40, 60), np.int32)
    labels[10:20, 10:20] = 1
    labels[10:20, 21:30] = 2  # one pixel gap: touching at reach 2
    labels[30:35, 50:55] = 3  # alone
    near = touching_neighbours(labels, np.array([1, 2, 3]))
    assert np.array_equal(near[0], labels == 2) and np.array_equal(near[1], labels == 1)
    assert not near[2].any()
    targets = torch.from_numpy(labels[None] == np.array([1, 2, 3])[:, None, None])
    prompts = pair_prompts(targets, torch.from_numpy(near), torch.Generator().manual_seed(0))
    assert prompts.points.shape == (3, 2, 2) and prompts.boxes is None and prompts.masks is None
    assert prompts.labels.tolist() == [[1, 0], [1, 0], [1, -1]]
    for row, (own, other) in enumerate([(1, 2), (2, 1)]):
        (px, py), (nx, ny) = prompts.points[row].long().tolist()
        assert labels[py, px] == own and labels[ny, nx] == other


def test_training_with_negative_pairs_and_no_mask_feedback_runs_and_is_deterministic():
    images, labels = [], []
    for seed in range(2):
        image, lab = make_nuclei_2d((64, 64), n=4, radius_range=(9, 12), touching=0.9, seed=seed)
        images.append(image)
        labels.append(lab)
    config = _quick_config(steps=4, trainable="decoder", corrective_rounds=1,
                           negative_pair_fraction=1.0, feedback_mask_p=0.0)
    first = train(tiny_config("vit", img_size=64), TrainingData(images, labels), config)
    second = train(tiny_config("vit", img_size=64), TrainingData(images, labels), config)
    assert first.history == second.history and len(first.history) == 4
    with pytest.raises(ValueError, match="negative_pair_fraction"):
        TrainConfig(negative_pair_fraction=1.5)
    with pytest.raises(ValueError, match="feedback_mask_p"):
        TrainConfig(feedback_mask_p=-0.1)
