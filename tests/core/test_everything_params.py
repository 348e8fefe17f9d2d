"""EverythingParams: the one typed value for segment-everything parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_samscope.core.everything.params import (
    ALIASES,
    EVERYTHING_DEFAULTS,
    EverythingParams,
)


def test_defaults_are_the_official_ones_and_the_value_is_frozen_and_hashable():
    params = EverythingParams()
    assert params.to_dict() == EVERYTHING_DEFAULTS
    assert EVERYTHING_DEFAULTS["pred_iou_thresh"] == 0.88
    assert EVERYTHING_DEFAULTS["multimask_output"] is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.pred_iou_thresh = 0.5  # type: ignore[misc]
    assert hash(params) == hash(EverythingParams())
    assert params.differences() == {}


def test_from_kwargs_resolves_aliases_and_replace_keeps_the_rest():
    params = EverythingParams.from_kwargs(conf=0.5, points_stride=8)
    assert params.pred_iou_thresh == 0.5 and params.points_per_side == 8
    changed = params.replace(crop_downscale_factor=2, box_nms_thresh=0.6)
    assert changed.crop_n_points_downscale_factor == 2 and changed.box_nms_thresh == 0.6
    assert changed.pred_iou_thresh == 0.5 and params.box_nms_thresh == 0.7  # a copy
    assert changed.differences() == {"points_per_side": 8, "pred_iou_thresh": 0.5,
                                     "box_nms_thresh": 0.6, "crop_n_points_downscale_factor": 2}
    assert set(ALIASES.values()) <= set(EVERYTHING_DEFAULTS)


def test_values_are_stored_as_their_field_types():
    params = EverythingParams.from_kwargs(points_per_side=16.0, pred_iou_thresh=np.float32(0.5),
                                          min_mask_region_area=np.int64(40),
                                          multimask_output=np.bool_(False))
    assert type(params.points_per_side) is int and params.points_per_side == 16
    assert type(params.pred_iou_thresh) is float and params.pred_iou_thresh == 0.5
    assert type(params.min_mask_region_area) is int
    assert params.multimask_output is False


def test_model_defaults_merge_given_over_model_over_official():
    model = {"pred_iou_thresh": 0.7, "points_per_side": 24}
    params = EverythingParams.with_defaults({"conf": 0.6, "box_nms_thresh": 0.5}, model)
    assert params.pred_iou_thresh == 0.6  # given (through its alias) wins
    assert params.points_per_side == 24  # the model's
    assert params.box_nms_thresh == 0.5
    assert params.stability_score_thresh == EVERYTHING_DEFAULTS["stability_score_thresh"]
    assert EverythingParams.with_defaults({}, None) == EverythingParams()
    with pytest.raises(ValueError, match="registry entry"):
        EverythingParams.with_defaults({}, {"pred_iou": 0.5})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"points_per_sid": 4}, TypeError, "Unknown segment-everything parameter"),
        ({"conf": 0.5, "pred_iou_thresh": 0.5}, TypeError, "alias"),
        ({"pred_iou_thresh": 1.5}, ValueError, "pred_iou_thresh must be between 0 and 1"),
        ({"box_nms_thresh": -0.1}, ValueError, "box_nms_thresh must be between"),
        ({"crop_overlap_ratio": 1.0}, ValueError, "crop_overlap_ratio"),
        ({"points_per_batch": 0}, ValueError, "points_per_batch must be a positive integer"),
        ({"points_per_side": 0}, ValueError, "points_per_side must be a positive integer"),
        ({"points_per_side": 7.5}, ValueError, "whole number"),
        ({"crop_n_layers": -1}, ValueError, "crop_n_layers must be >= 0"),
        ({"crop_n_points_downscale_factor": 0}, ValueError, "crop_n_points_downscale_factor"),
        ({"stability_score_offset": -1}, ValueError, "stability_score_offset must be >= 0"),
        ({"stability_score_offset": float("inf")}, ValueError, "finite"),
        ({"pred_iou_thresh": float("nan")}, ValueError, "finite"),
        ({"min_mask_region_area": -1}, ValueError, "min_mask_region_area must be >= 0"),
        ({"pred_iou_thresh": "high"}, TypeError, "pred_iou_thresh must be a number"),
        ({"points_per_side": True}, TypeError, "points_per_side must be a number"),
        ({"multimask_output": "no"}, TypeError, "multimask_output must be True or False"),
        ({"multimask_output": 0}, TypeError, "multimask_output must be True or False"),
    ],
)
def test_bad_values_get_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        EverythingParams.from_kwargs(**kwargs)
    if "conf" not in kwargs and "points_per_sid" not in kwargs:
        with pytest.raises(error, match=match):  # replace() checks as well
            EverythingParams().replace(**kwargs)


def test_registry_pairs_convert_to_the_typed_value():
    from napari_samscope.core.weights.spec import ModelSpec

    spec = ModelSpec(name="x", arch="vit_b", filename="x.pt",
                     everything_defaults=(("pred_iou_thresh", 0.5), ("points_per_side", 8)))
    assert isinstance(spec.everything_defaults, EverythingParams)
    assert spec.everything_params() == {"points_per_side": 8, "pred_iou_thresh": 0.5}
    typed = ModelSpec(name="x", arch="vit_b", filename="x.pt",
                      everything_defaults=EverythingParams(pred_iou_thresh=0.5, points_per_side=8))
    assert typed == spec and hash(typed) == hash(spec)
    # values equal to the official defaults are no recommendation
    same = ModelSpec(name="x", arch="vit_b", filename="x.pt",
                     everything_defaults=(("pred_iou_thresh", 0.88),))
    assert same.everything_defaults is None and same.everything_params() == {}
    with pytest.raises(ValueError, match="between 0 and 1"):
        ModelSpec(name="x", arch="vit_b", filename="x.pt",
                  everything_defaults=(("pred_iou_thresh", 5.0),))


def test_mask_generator_takes_the_typed_value(tiny_sam):
    from napari_samscope.core.everything.generator import MaskGenerator

    params = EverythingParams(points_per_side=4, pred_iou_thresh=0.5)
    generator = MaskGenerator(tiny_sam, params=params)
    assert generator.config is params and generator.params == params.to_dict()
    assert len(generator.point_grids[0]) == 16 and generator.model_defaults == {}
    tuned = MaskGenerator(tiny_sam, params=params, conf=0.3)  # keywords replace values
    assert tuned.config == params.replace(pred_iou_thresh=0.3)
    with pytest.raises(TypeError, match="EverythingParams"):
        MaskGenerator(tiny_sam, params={"pred_iou_thresh": 0.5})
    with pytest.raises(TypeError, match="multimask_output must be True or False"):
        MaskGenerator(tiny_sam, multimask_output="no")
    with pytest.raises(ValueError, match="point_grids"):
        MaskGenerator(tiny_sam, points_per_side=None)
    grid = np.array([[0.5, 0.5]])
    assert MaskGenerator(tiny_sam, points_per_side=None, point_grids=[grid]).point_grids[0].shape == (1, 2)


def test_the_registry_module_and_the_params_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import napari_samscope.core.weights.registry as r; "
            "import napari_samscope.core.everything.params; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
