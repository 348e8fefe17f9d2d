"""The UNETR instance decoder, its loading, the maps, AIS and APG, on tiny models."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from napari_samscope import SAM, instances_from_maps
from napari_samscope.core.instances.apg import (
    APGParams,
    _split_and_filter,
    mask_nms,
    point_prompts_from_maps,
)
from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.instances.load import decoder_from_state, read_decoder
from napari_samscope.core.instances.maps import instance_maps_from_embedding
from napari_samscope.core.instances.postprocess import AISParams
from napari_samscope.core.instances.targets import maps_from_labels
from napari_samscope.core.weights.checkpoint import CheckpointError, UnsafeCheckpointError

EMBED = 32  # the tiny models' embedding width


def small_decoder(conv_transpose=True, seed=0, embed_dim=EMBED) -> UNETRDecoder:
    torch.manual_seed(seed)
    return UNETRDecoder(
        embed_dim=embed_dim, features=(32, 16, 8, 4), conv_transpose=conv_transpose
    ).eval()


def disk_labels(shape=(96, 128), centers=((20, 20), (20, 60), (60, 40), (70, 100)), radius=9):
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for value, (cy, cx) in enumerate(centers, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return labels


# ----------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("conv_transpose", [True, False])
def test_decoder_shapes_and_range(conv_transpose):
    decoder = small_decoder(conv_transpose)
    with torch.no_grad():
        out = decoder(torch.randn(2, EMBED, 4, 4))
    assert out.shape == (2, 3, 64, 64)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match=r"\(B, 32, E, E\)"):
        decoder(torch.randn(1, 16, 4, 4))


def test_batchnorm_uses_each_image_statistics():
    decoder = small_decoder()
    with torch.no_grad():
        for m in decoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(100.0)  # never used
    x = torch.randn(2, EMBED, 4, 4)
    with torch.no_grad():
        both = decoder(x)
        assert torch.allclose(both[1:], decoder(x[1:]), atol=1e-6)  # batch-independent
    assert 0.01 < float(both.std())


def test_micro_sam_parameter_names():
    names = set(UNETRDecoder().state_dict())
    for expected in ("base.block.1.weight", "decoder.samplers.0.block.weight",
                     "decoder.blocks.2.block.4.bias", "deconv1.block.0.block.weight",
                     "deconv4.block.1.block.weight", "deconv4.block.2.running_var",
                     "deconv_out.block.weight", "decoder_head.block.4.weight", "out_conv.bias"):
        assert expected in names
    assert "decoder.samplers.0.conv.weight" in UNETRDecoder(conv_transpose=False).state_dict()


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("conv_transpose", [True, False])
def test_decoder_from_state_round_trip(conv_transpose):
    decoder = small_decoder(conv_transpose, seed=1)
    state = {"encoder.pos_embed": torch.zeros(1), **decoder.state_dict()}  # encoder keys ignored
    loaded = decoder_from_state({"decoder_state": state}, embed_dim=EMBED)
    assert loaded.conv_transpose is conv_transpose and loaded.features == (32, 16, 8, 4)
    x = torch.randn(1, EMBED, 4, 4)
    assert torch.equal(loaded(x), decoder(x))


def test_decoder_state_errors():
    state = small_decoder().state_dict()
    with pytest.raises(CheckpointError, match="another model"):
        decoder_from_state(state, source="dec.pt", embed_dim=256)
    missing = {k: v for k, v in state.items() if k != "deconv2.block.1.block.weight"}
    with pytest.raises(CheckpointError, match="dec.pt does not fit .*deconv2"):
        decoder_from_state(missing, source="dec.pt")
    extra = {**state, "surprise.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="surprise"):
        decoder_from_state(extra, source="dec.pt")
    two = {**state, "out_conv.weight": state["out_conv.weight"][:2],
           "out_conv.bias": state["out_conv.bias"][:2]}
    with pytest.raises(CheckpointError, match="predicts 2 maps"):
        decoder_from_state(two, source="dec.pt")
    with pytest.raises(CheckpointError, match="not a micro-sam instance decoder"):
        decoder_from_state({"image_encoder.x": torch.zeros(1)}, source="sam.pt")


def test_read_decoder_file_and_refusals(tmp_path):
    decoder = small_decoder(seed=2)
    path = tmp_path / "dec.pt"
    torch.save(decoder.state_dict(), path)
    x = torch.randn(1, EMBED, 4, 4)
    assert torch.equal(read_decoder(path, embed_dim=EMBED)(x), decoder(x))

    unsafe = tmp_path / "unsafe_decoder.pt"
    torch.save({"decoder_state": decoder.state_dict(), "args": argparse.Namespace(lr=1)}, unsafe)
    with pytest.raises(UnsafeCheckpointError, match="unsafe_decoder.pt was refused for safety"):
        read_decoder(unsafe)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        read_decoder(empty)
    with pytest.raises(FileNotFoundError):
        read_decoder(tmp_path / "nothing.pt")


# ----------------------------------------------------------------------------- SAM API


@pytest.fixture
def microsam_checkpoint(tmp_path, tiny_sam_factory):
    """A tiny model saved in torch_em's training format, with a decoder."""
    sam = tiny_sam_factory("vit", 64, seed=3)
    decoder = small_decoder(seed=4)
    path = tmp_path / "microsam_format.pt"
    torch.save({
        "model_state": {"sam." + k: v for k, v in sam.state_dict().items()},
        "decoder_state": decoder.state_dict(),
    }, path)
    return path, sam, decoder


def image_rgb(shape=(40, 56), seed=0):
    return np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)


def test_sam_loads_torch_em_format_with_decoder(microsam_checkpoint):
    path, sam, decoder = microsam_checkpoint
    model = SAM(str(path), device="cpu", dtype=None)
    assert model.has_instance_decoder
    for name, tensor in sam.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], tensor)
    image = image_rgb()
    maps = model.instance_maps(image)
    assert maps.shape == (3, 40, 56) and maps.dtype == np.float32
    # by hand: decoder output at the input size, crop the image part, resize
    predictor = model.predictor()
    predictor.set_image(image)
    emb = predictor.get_embedding()
    out = decoder(emb.features)
    h, w = emb.input_size
    expected = torch.nn.functional.interpolate(out[..., :h, :w], (40, 56), mode="bilinear")
    np.testing.assert_allclose(maps, expected[0].detach().numpy(), atol=1e-6)
    # a cached embedding gives the same maps without encoding
    np.testing.assert_array_equal(model.instance_maps(emb), maps)
    labels = model.segment_instances(image)
    assert labels.shape == (40, 56) and labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, instances_from_maps(maps))
    apg = model.segment_instances(image, mode="apg", min_size=0)
    assert apg.shape == (40, 56) and apg.dtype == np.uint32


def test_training_checkpoint_with_objects_is_refused(tmp_path, tiny_sam_factory):
    path = tmp_path / "torch_em_best.pt"
    torch.save({
        "model_state": {"sam." + k: v for k, v in tiny_sam_factory("vit", 64).state_dict().items()},
        "decoder_state": small_decoder().state_dict(),
        "init": argparse.Namespace(lr=1e-5),  # training checkpoints pickle such objects
    }, path)
    with pytest.raises(UnsafeCheckpointError, match="torch_em_best.pt was refused for safety"):
        SAM(str(path), device="cpu")


def test_no_decoder_is_a_clear_error(tmp_path, tiny_sam_factory):
    path = tmp_path / "plain.pt"
    torch.save(tiny_sam_factory("vit", 64).state_dict(), path)
    model = SAM(str(path), device="cpu", dtype=None)
    assert not model.has_instance_decoder
    for call in (lambda: model.segment_instances(image_rgb()),
                 lambda: model.segment_instances(image_rgb(), mode="apg"),
                 lambda: model.instance_maps(image_rgb())):
        with pytest.raises(ValueError, match="no instance decoder.*vit_b_lm.*vit_h_histopathology"):
            call()


def test_set_instance_decoder(tmp_path, tiny_sam_factory):
    model = SAM.from_sam(tiny_sam_factory("vit", 64))
    assert not model.has_instance_decoder
    with pytest.raises(ValueError, match="another model"):
        model.set_instance_decoder(small_decoder(embed_dim=16))
    with pytest.raises(TypeError, match="UNETRDecoder, a file path or None"):
        model.set_instance_decoder(42)
    path = tmp_path / "dec.pt"
    torch.save(small_decoder().state_dict(), path)
    model.set_instance_decoder(path)
    assert model.has_instance_decoder
    model.set_instance_decoder(None)
    assert not model.has_instance_decoder


def test_mode_and_parameter_errors(microsam_checkpoint):
    model = SAM(str(microsam_checkpoint[0]), device="cpu", dtype=None)
    with pytest.raises(ValueError, match="Unknown instance segmentation mode 'amg'"):
        model.segment_instances(image_rgb(), mode="amg")
    with pytest.raises(TypeError, match="center_distance_treshold"):
        model.segment_instances(image_rgb(), center_distance_treshold=0.4)
    with pytest.raises(TypeError, match="APG parameter"):
        model.segment_instances(image_rgb(), mode="apg", distance_smoothing=1.0)
    assert model.segment_instances(image_rgb(), mode="APG").dtype == np.uint32


def test_registry_companion_decoder_from_the_cache(tmp_path, monkeypatch, tiny_sam_factory):
    from napari_samscope.core.instances.api import load_instance_decoder
    from napari_samscope.core.weights.loader import LoadedModel
    from napari_samscope.core.weights.registry import lookup

    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path))
    decoder = small_decoder(seed=5)
    torch.save(decoder.state_dict(), tmp_path / lookup("vit_t_lm_decoder").filename)
    loaded = LoadedModel(
        sam=tiny_sam_factory("vit", 64), name="vit_t_lm", spec=lookup("vit_t_lm"), path=None,
        device=torch.device("cpu"), dtype=None,
    )
    found = load_instance_decoder(loaded)
    x = torch.randn(1, EMBED, 4, 4)
    assert torch.equal(found(x), decoder(x))
    loaded.spec = lookup("vit_b")
    assert load_instance_decoder(loaded) is None


# ----------------------------------------------------------------------------- AIS


def test_instances_from_clean_maps_recover_the_objects():
    labels = disk_labels()
    found = instances_from_maps(maps_from_labels(labels))
    assert found.dtype == np.uint32 and found.max() == 4
    for value in range(1, 5):
        ids, counts = np.unique(found[labels == value], return_counts=True)
        best = ids[np.argmax(counts)]
        iou = np.sum((found == best) & (labels == value)) / np.sum((found == best) | (labels == value))
        assert best > 0 and iou > 0.9


def test_touching_objects_are_split():
    labels = disk_labels(centers=((40, 40), (40, 57)), radius=10)  # overlapping disks
    found = instances_from_maps(maps_from_labels(labels))
    assert found.max() == 2


def test_min_size_and_thresholds():
    labels = disk_labels(centers=((20, 20), (60, 60)), radius=9)
    labels[80:83, 5:8] = 3  # a 9-pixel object
    maps = maps_from_labels(labels)
    assert instances_from_maps(maps, foreground_smoothing=0, distance_smoothing=0).max() == 3
    kept = instances_from_maps(maps, min_size=30)
    assert kept.max() == 2 and set(np.unique(kept)) == {0, 1, 2}
    assert instances_from_maps(maps, foreground_threshold=1.0).max() == 0
    assert instances_from_maps(maps, center_distance_threshold=0.0).max() == 0


def test_post_processing_input_errors():
    maps = maps_from_labels(disk_labels())
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        instances_from_maps(maps[:2])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        instances_from_maps(bad)
    with pytest.raises(TypeError, match="Unknown instance segmentation parameter"):
        instances_from_maps(maps, threshold=0.5)
    with pytest.raises(ValueError, match="min_size must be a finite number >= 0"):
        instances_from_maps(maps, min_size=-1)
    with pytest.raises(TypeError, match="foreground_threshold must be a number"):
        instances_from_maps(maps, foreground_threshold="0.5")
    assert AISParams().as_dict()["distance_smoothing"] == 1.6  # micro-sam's default


def test_maps_from_labels():
    labels = disk_labels()
    maps = maps_from_labels(labels)
    assert maps.shape == (3, *labels.shape) and maps.dtype == np.float32
    assert np.array_equal(maps[0] > 0, labels > 0)
    assert maps[1][20, 20] < 0.1 and maps[2][20, 20] < 0.1  # centre of object 1
    assert np.all(maps[1:, labels == 0] == 1)
    with pytest.raises(ValueError, match="2D integer"):
        maps_from_labels(np.zeros((4, 4), dtype=float))


# ----------------------------------------------------------------------------- APG


def test_point_prompts_one_per_object_inside_it():
    labels = disk_labels()
    points = point_prompts_from_maps(maps_from_labels(labels))
    assert points.shape == (4, 2)
    hit = {int(labels[int(y), int(x)]) for x, y in points}
    assert hit == {1, 2, 3, 4}
    assert point_prompts_from_maps(np.ones((3, 20, 20), np.float32)).shape == (0, 2)


def test_mask_nms_and_merging():
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, 2:10, 2:10] = True
    masks[1, 2:10, 2:11] = True  # IoU 64/72 = 0.89 with mask 0
    masks[2, 12:18, 12:18] = True
    assert list(mask_nms(masks, np.array([0.5, 0.9, 0.1]), 0.8)) == [1, 2]
    assert sorted(mask_nms(masks, np.array([0.5, 0.9, 0.1]), 0.9)) == [0, 1, 2]
    painted = np.zeros((10, 10), dtype=np.uint32)
    painted[0:2, 0:2] = 1
    painted[5:9, 5:9] = 1  # the same id in two pieces -> two objects
    painted[0:1, 8:9] = 2  # one pixel -> removed with min_size 2
    out = _split_and_filter(painted, 2)
    assert out.max() == 2 and np.count_nonzero(out) == 20
    with pytest.raises(ValueError, match="batch_size"):
        APGParams(batch_size=0)


def test_instance_maps_from_embedding_non_square(tiny_sam_factory):
    from napari_samscope.core.predict.predictor import Predictor

    predictor = Predictor(tiny_sam_factory("vit", 64))
    predictor.set_image(image_rgb((30, 50)))
    maps = instance_maps_from_embedding(small_decoder(), predictor.get_embedding(), 64)
    assert maps.shape == (3, 30, 50) and maps.flags.c_contiguous


def test_maps_follow_the_model_dtype(tiny_sam_factory):
    from napari_samscope.core.predict.predictor import Predictor

    predictor = Predictor(tiny_sam_factory("vit", 64))
    predictor.set_image(image_rgb((30, 50)))
    emb = predictor.get_embedding()
    decoder = small_decoder(seed=6)
    full = instance_maps_from_embedding(decoder, emb, 64)
    half = instance_maps_from_embedding(decoder, emb, 64, torch.bfloat16)
    assert half.dtype == np.float32 and half.shape == full.shape
    assert 0 < np.abs(half - full).max() < 0.05  # bf16 convolutions: close, not equal


def test_apg_seeds_and_pieces_are_four_connected():
    """As micro-sam's APG (elf's label): regions touching only at a corner stay apart."""
    maps = np.zeros((3, 20, 20), dtype=np.float32)
    maps[0] = 1.0  # foreground everywhere
    maps[1:] = 1.0  # no seed ...
    maps[1:, 3:7, 3:7] = 0.0  # ... but two squares touching at one corner
    maps[1:, 7:11, 7:11] = 0.0
    assert len(point_prompts_from_maps(maps)) == 2
    painted = np.zeros((20, 20), dtype=np.uint32)
    painted[3:7, 3:7] = painted[7:11, 7:11] = 1
    pieces = _split_and_filter(painted, 0)
    assert pieces.max() == 2 and pieces[4, 4] != pieces[8, 8]


def test_a_torch_em_training_checkpoint_is_refused_with_the_export_to_use(
    tmp_path, tiny_sam_factory, monkeypatch
):
    """torch_em's trainer pickles its datasets into "init": refused, naming micro-sam's export."""
    import sys
    import types

    module = types.ModuleType("torch_em.data.fake_dataset")

    class SegmentationDataset:  # stands for the dataset a real training run pickles
        pass

    SegmentationDataset.__module__ = module.__name__
    SegmentationDataset.__qualname__ = "SegmentationDataset"
    module.SegmentationDataset = SegmentationDataset
    for parent in ("torch_em", "torch_em.data"):
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "best.pt"
    torch.save({
        "model_state": {"sam." + k: v for k, v in tiny_sam_factory("vit", 64).state_dict().items()},
        "decoder_state": small_decoder().state_dict(),
        "init": {"train_dataset": SegmentationDataset()},
    }, path)
    with pytest.raises(UnsafeCheckpointError, match=r"best.pt was refused for safety.*"
                       r"export_custom_sam_model"):
        SAM(str(path), device="cpu")
