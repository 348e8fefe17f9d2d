"""Configs, parameter counts, shape-based detection and strict loading."""

from __future__ import annotations

import json

import pytest
import torch

from napari_samscope.core.modeling.build import (
    ARCHITECTURES,
    DecoderConfig,
    SamConfig,
    TinyViTConfig,
    ViTConfig,
    build_sam,
    detect_config,
    parameter_count,
    sam_from_state_dict,
    tiny_config,
)
from napari_samscope.core.modeling.build import _construct as construct_model

# Counted with the official segment_anything / MobileSAM builders (torch, meta device).
OFFICIAL_PARAMETERS = {
    "vit_b": 93_735_472,
    "vit_l": 312_342_832,
    "vit_h": 641_090_608,
    # MobileSAM's 10,130,092 includes its unused classifier (head 321,000 + norm_head 640)
    "vit_t": 10_130_092 - 321_000 - 640,
}
MOBILE_SAM_CLASSIFIER = {
    "image_encoder.head.weight": (1000, 320),
    "image_encoder.head.bias": (1000,),
    "image_encoder.norm_head.weight": (320,),
    "image_encoder.norm_head.bias": (320,),
}


def meta_state_dict(config) -> dict[str, torch.Tensor]:
    """State dict of an architecture with meta tensors: shapes only, nothing allocated."""
    with torch.device("meta"):
        return construct_model(config).state_dict()


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_parameter_counts_match_official(name):
    assert parameter_count(name) == OFFICIAL_PARAMETERS[name]


def test_official_architecture_numbers():
    expected = {
        "vit_b": (768, 12, 12, (2, 5, 8, 11)),
        "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    }
    for name, (dim, depth, heads, global_blocks) in expected.items():
        enc = ARCHITECTURES[name].encoder
        assert (enc.embed_dim, enc.depth, enc.num_heads, enc.global_attn_indexes) == (
            dim, depth, heads, global_blocks)
        assert (enc.img_size, enc.patch_size, enc.window_size, enc.use_rel_pos) == (1024, 16, 14, True)
    tiny = ARCHITECTURES["vit_t"].encoder
    assert isinstance(tiny, TinyViTConfig)
    assert tiny.embed_dims == (64, 128, 160, 320) and tiny.depths == (2, 2, 6, 2)
    assert tiny.num_heads == (2, 4, 5, 10) and tiny.window_sizes == (7, 7, 14, 7)
    for config in ARCHITECTURES.values():
        assert config.prompt_embed_dim == 256 and config.img_size == 1024
        assert config.decoder == DecoderConfig()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_detects_each_architecture_from_shapes(name):
    state = meta_state_dict(ARCHITECTURES[name])
    if name == "vit_t":
        state.update({k: torch.empty(shape, device="meta") for k, shape in MOBILE_SAM_CLASSIFIER.items()})
    assert detect_config(state) == ARCHITECTURES[name]


def test_detection_uses_shapes_not_values():
    class FakeTensor:  # anything with a .shape is enough
        def __init__(self, shape):
            self.shape = shape

    state = {k: FakeTensor(tuple(v.shape)) for k, v in meta_state_dict(ARCHITECTURES["vit_l"]).items()}
    assert detect_config(state) == ARCHITECTURES["vit_l"]


@pytest.mark.parametrize("img_size", [64, 96, 128])
def test_detects_tiny_vit_configs(tiny_sam_factory, img_size):
    model = tiny_sam_factory("vit", img_size)
    detected = detect_config(model.state_dict())
    assert detected.encoder == model.config.encoder  # heads from the rel-pos tables
    assert detected.decoder.transformer_mlp_dim == 64


def test_detects_tiny_tinyvit_stages(tiny_mobile_sam):
    detected = detect_config(tiny_mobile_sam.state_dict())
    expected = tiny_mobile_sam.config.encoder
    assert detected.encoder.embed_dims == expected.embed_dims
    assert detected.encoder.depths == expected.depths
    assert detected.encoder.num_heads[1:] == expected.num_heads[1:]
    assert detected.encoder.window_sizes[1:] == expected.window_sizes[1:]
    assert detected.img_size == 1024  # invisible in TinyViT shapes: the documented default


def test_strict_round_trip_reproduces_outputs(random_state_sam, random_state_mobile_sam):
    for model in (random_state_sam, random_state_mobile_sam):
        loaded = sam_from_state_dict(model.state_dict(), model.config.to_dict())
        assert not loaded.training
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(loaded.image_encoder(x), model.image_encoder(x))
        torch.testing.assert_close(loaded.pixel_mean, model.pixel_mean)
        for (name, a), b in zip(loaded.named_buffers(), model.buffers()):
            assert torch.equal(a, b), name  # incl. non-persistent buffers rebuilt after loading


def test_real_vit_b_and_vit_t_load_strictly():
    for name in ("vit_t", "vit_b"):
        torch.manual_seed(0)
        source = build_sam(name)
        state = source.state_dict()
        if name == "vit_t":  # MobileSAM's unused classifier keys are dropped
            state.update({k: torch.randn(shape) for k, shape in MOBILE_SAM_CLASSIFIER.items()})
        loaded = sam_from_state_dict(state)
        assert loaded.config == ARCHITECTURES[name]
        assert set(loaded.state_dict()) == set(source.state_dict())
        assert not any(p.is_meta for p in loaded.parameters())
        assert not any(b.is_meta for b in loaded.buffers())
        del source, loaded, state


@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
def test_large_architectures_pass_the_key_check_without_allocating(name):
    # Meta tensors carry shapes but no data: every key and shape matches, then loading
    # refuses the data-less tensors (proves the strict key/shape check passed).
    with pytest.raises(TypeError, match="holds no data"):
        sam_from_state_dict(meta_state_dict(ARCHITECTURES[name]))


def test_classifier_keys_are_unexpected_for_a_vit(tiny_sam):
    state = dict(tiny_sam.state_dict())
    state["image_encoder.head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="1 unexpected keys: image_encoder.head.weight"):
        sam_from_state_dict(state, tiny_sam.config)


def test_missing_key_is_named(tiny_sam):
    state = dict(tiny_sam.state_dict())
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(ValueError, match="1 missing keys: mask_decoder.iou_token.weight"):
        sam_from_state_dict(state, tiny_sam.config)


def test_wrong_shape_is_named(tiny_sam):
    state = dict(tiny_sam.state_dict())
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 31)
    with pytest.raises(ValueError, match=r"mask_decoder.iou_token.weight: checkpoint \(1, 31\) vs model \(1, 32\)"):
        sam_from_state_dict(state, tiny_sam.config)


def test_given_config_is_checked_against_shapes(tiny_sam):
    with pytest.raises(ValueError, match="image_encoder.pos_embed"):
        sam_from_state_dict(tiny_sam.state_dict(), tiny_config("vit", 96))
    with pytest.raises(ValueError, match="missing keys"):
        sam_from_state_dict(tiny_sam.state_dict(), tiny_config("tiny_vit", 64).to_dict())


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"backbone.weight": torch.zeros(2)},
        {"image_encoder.x": torch.zeros(1), "prompt_encoder.no_mask_embed.weight": torch.zeros(1, 4)},
    ],
)
def test_non_sam_state_dict_is_refused(state):
    with pytest.raises(ValueError, match="Not a SAM-family state dict"):
        sam_from_state_dict(state)


def test_non_tensor_entries_and_non_mappings_are_refused(tiny_sam):
    with pytest.raises(TypeError, match="state dict"):
        detect_config([("a", 1)])
    state = dict(tiny_sam.state_dict())
    state["mask_decoder.iou_token.weight"] = [[0.0] * 32]
    with pytest.raises(ValueError, match="not a named tensor"):
        sam_from_state_dict(state, tiny_sam.config)


def test_vit_without_relative_positions_needs_a_config():
    config = tiny_config("vit", 64, use_rel_pos=False)
    state = build_sam(config).state_dict()
    with pytest.raises(ValueError, match="pass its config"):
        detect_config(state)
    assert sam_from_state_dict(state, config).config == config


def test_half_precision_state_dict_loads_as_float32(tiny_sam):
    state = {k: v.half() if v.is_floating_point() else v for k, v in tiny_sam.state_dict().items()}
    loaded = sam_from_state_dict(state, tiny_sam.config)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


@pytest.mark.parametrize("config", [tiny_config("vit", 96), tiny_config("tiny_vit", 128), ARCHITECTURES["vit_t"]])
def test_config_dict_round_trip_is_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert SamConfig.from_dict(data) == config


def test_config_dict_errors():
    data = tiny_config().to_dict()
    with pytest.raises(ValueError, match="Unknown encoder config entries"):
        SamConfig.from_dict({**data, "encoder": {**data["encoder"], "depthh": 2}})
    with pytest.raises(ValueError, match="Unknown encoder type"):
        SamConfig.from_dict({**data, "encoder": {**data["encoder"], "type": "resnet"}})
    with pytest.raises(ValueError, match="Unknown config entries"):
        SamConfig.from_dict({**data, "extra": 1})
    with pytest.raises(ValueError, match="'encoder' entry"):
        SamConfig.from_dict({"prompt_embed_dim": 32})


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_config("vit", 72)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_config("tiny_vit", 40)
    with pytest.raises(ValueError, match="Unknown encoder"):
        tiny_config("resnet")
    with pytest.raises(ValueError, match="Unknown tiny_config override"):
        tiny_config("vit", 64, depthh=3)
    with pytest.raises(ValueError, match="must equal prompt_embed_dim"):
        SamConfig(encoder=ViTConfig(out_chans=128))
    with pytest.raises(ValueError, match="global_attn_indexes"):
        ViTConfig(depth=2, global_attn_indexes=(5,))
    with pytest.raises(ValueError, match="4 entries"):
        TinyViTConfig(depths=(2, 2, 6))
    with pytest.raises(ValueError, match="Unknown architecture"):
        build_sam("vit_x")
    with pytest.raises(TypeError, match="SamConfig"):
        build_sam(42)
