"""Our Predictor against the official ``SamPredictor`` (Meta's, MobileSAM's for TinyViT).

Same fully random weights (``pos_embed`` and the relative-position tables included),
the same non-square 8-bit RGB image and the same prompts on both sides: positive and
negative points, a box, a box plus a point, a low-resolution mask fed back, multimask
on and off, and several boxes at once. The image embedding, the low-resolution logits
and the IoU scores must agree within 1e-3 (float32), the final masks on at least 99.9%
of the pixels. Each side encodes its image once. Run with
``SAMSCOPE_OFFICIAL_PYTHON=/path/to/python pytest -m parity -s tests/parity``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _official import official_python, pack_state_dict, run_official, skip_reason

from napari_samscope.core.modeling.build import (
    ARCHITECTURES,
    build_sam,
    sam_from_state_dict,
    tiny_config,
)
from napari_samscope.core.predict.predictor import Predictor

pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(official_python() is None, reason=skip_reason()),
]

TOLERANCE = 1e-3
MIN_MASK_AGREEMENT = 0.999
LOGIT_SCALE = 100.0
IOU_SCALE = 4.0

OFFICIAL_SNIPPET = """
import json
import torch

sam = load_official(inputs)
if json.loads(str(inputs["config_json"]))["encoder"]["type"] == "vit":
    from segment_anything import SamPredictor
else:
    from mobile_sam import SamPredictor
predictor = SamPredictor(sam)
predictor.set_image(inputs["image"])
outputs["embedding"] = predictor.get_image_embedding().numpy()
for name in json.loads(str(inputs["case_names"])):
    get = lambda key: inputs.get(name + "/" + key)
    for multi in (True, False):
        masks, iou, low = predictor.predict(
            point_coords=get("points"), point_labels=get("labels"), box=get("box"),
            mask_input=None if get("mask") is None else get("mask")[None],
            multimask_output=multi,
        )
        outputs[f"{name}/multi{int(multi)}/masks"] = masks
        outputs[f"{name}/multi{int(multi)}/iou"] = iou
        outputs[f"{name}/multi{int(multi)}/low_res"] = low
boxes = predictor.transform.apply_boxes_torch(torch.from_numpy(inputs["many_boxes"]),
                                              predictor.original_size)
with torch.no_grad():
    masks, iou, low = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
outputs["many_boxes/masks"] = masks[:, 0].numpy()
outputs["many_boxes/iou"] = iou[:, 0].numpy()
outputs["many_boxes/low_res"] = low[:, 0].numpy()
"""


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A non-square 8-bit RGB image with smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = 40 + 20 * rng.standard_normal((h, w, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(h, w)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += rng.uniform(60, 160, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def _cases(h: int, w: int, lowres: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:lowres, 0:lowres] / lowres
    blob = (8.0 * (0.08 - (yy - 0.4) ** 2 - (xx - 0.5) ** 2) / 0.08).astype(np.float32)
    box = np.array([0.2 * w, 0.25 * h, 0.7 * w, 0.8 * h])
    return {
        "pos_neg_points": {
            "points": np.array([[0.4 * w, 0.5 * h], [0.8 * w, 0.2 * h], [0.1 * w, 0.9 * h]]),
            "labels": np.array([1, 0, 1]),
        },
        "one_point": {"points": np.array([[0.55 * w, 0.45 * h]]), "labels": np.array([1])},
        "box": {"box": box},
        "box_point": {
            "box": box,
            "points": np.array([[0.45 * w, 0.5 * h]]),
            "labels": np.array([0]),
        },
        "mask_feedback": {
            "points": np.array([[0.5 * w, 0.4 * h]]),
            "labels": np.array([1]),
            "mask": blob + rng.standard_normal(blob.shape).astype(np.float32),
        },
    }


def _many_boxes(h: int, w: int) -> np.ndarray:
    return np.array(
        [
            [0.1 * w, 0.1 * h, 0.5 * w, 0.4 * h],
            [0.3 * w, 0.5 * h, 0.9 * w, 0.95 * h],
            [0.6 * w, 0.05 * h, 0.95 * w, 0.5 * h],
        ]
    )


def _ours(model, image, cases, many_boxes) -> dict[str, np.ndarray]:
    predictor = Predictor(model)
    predictor.set_image(image)
    out = {"embedding": predictor.get_embedding().features.numpy()}
    for name, case in cases.items():
        for multi in (True, False):
            r = predictor.predict(
                points=case.get("points"),
                labels=case.get("labels"),
                bboxes=case.get("box"),
                masks=case.get("mask"),
                multimask_output=multi,
            )
            out[f"{name}/multi{int(multi)}/masks"] = r.masks
            out[f"{name}/multi{int(multi)}/iou"] = r.scores
            out[f"{name}/multi{int(multi)}/low_res"] = r.logits
    r = predictor.predict(bboxes=many_boxes)
    out["many_boxes/masks"], out["many_boxes/iou"] = r.masks, r.scores
    out["many_boxes/low_res"] = r.logits
    return out


def _scale_outputs(state: dict[str, torch.Tensor]) -> None:
    """Give the random decoder a trained model's output scales, in place.

    At init scale the low-resolution logits stay within about +-0.1 and the IoU near
    0.02, so an absolute tolerance would say little; trained models give logits of
    +-10 or more. The last layers of the hypernetwork MLPs and of the IoU head are
    scaled so that the logits reach about +-10 and the IoU about 0.1 to 1.
    """
    for key in list(state):
        if key.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in key:
            state[key] = state[key] * LOGIT_SCALE
        elif key.startswith("mask_decoder.iou_prediction_head.layers.2."):
            state[key] = state[key] * IOU_SCALE


def _classifier(width: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image_encoder.head.weight": torch.randn(1000, width, generator=generator),
        "image_encoder.head.bias": torch.randn(1000, generator=generator),
        "image_encoder.norm_head.weight": torch.randn(width, generator=generator),
        "image_encoder.norm_head.bias": torch.randn(width, generator=generator),
    }


def _compare(randomize, config, image_size: tuple[int, int], seed: int) -> None:
    torch.manual_seed(seed)
    state = dict(randomize(build_sam(config), seed=seed).state_dict())
    _scale_outputs(state)
    if config.encoder_type == "tiny_vit":  # MobileSAM's files carry an unused classifier
        state.update(_classifier(config.encoder.embed_dims[-1], seed))
    model = sam_from_state_dict(state, config.to_dict()).eval()
    h, w = image_size
    image = _image(h, w, seed)
    cases = _cases(h, w, 4 * model.embedding_size, seed)
    many_boxes = _many_boxes(h, w)
    ours = _ours(model, image, cases, many_boxes)

    arrays = {**pack_state_dict(state, config.to_dict()), "image": image, "many_boxes": many_boxes}
    arrays["case_names"] = np.array(json.dumps(list(cases)))
    for name, case in cases.items():
        arrays.update({f"{name}/{key}": value for key, value in case.items()})
    official = run_official(OFFICIAL_SNIPPET, arrays)

    assert set(official) == set(ours)
    errors, agreement = {}, {}
    for key in sorted(ours):
        assert ours[key].shape == official[key].shape, (key, ours[key].shape, official[key].shape)
        if key.endswith("masks"):
            agreement[key] = float((ours[key] == official[key]).mean())
        else:
            errors[key] = float(np.abs(ours[key].astype(np.float64) - official[key]).max())
    worst_error = max(errors, key=errors.get)
    worst_masks = min(agreement, key=agreement.get)
    print(
        f"\n{config.encoder_type} S={config.img_size} image {h}x{w}: largest |logit| "
        f"{max(np.abs(official[k]).max() for k in official if k.endswith('low_res')):.1f}; "
        f"max abs err: embedding {errors['embedding']:.1e}, low-res logits "
        f"{max(v for k, v in errors.items() if k.endswith('low_res')):.1e}, IoU "
        f"{max(v for k, v in errors.items() if k.endswith('iou')):.1e}; worst {errors[worst_error]:.1e} "
        f"({worst_error}); worst mask agreement {agreement[worst_masks]:.6f} ({worst_masks})"
    )
    assert errors[worst_error] < TOLERANCE, (worst_error, errors[worst_error])
    assert agreement[worst_masks] >= MIN_MASK_AGREEMENT, (worst_masks, agreement[worst_masks])
    # the comparison is not trivial: real, varied masks and large logits on both sides
    assert np.abs(official["embedding"]).max() > 0.1
    assert max(np.abs(official[k]).max() for k in official if k.endswith("low_res")) > 5.0
    fractions = [official[k].mean() for k in official if k.endswith("masks")]
    assert 0.0 < float(np.mean(fractions)) < 1.0


def test_tiny_vit_predictor_matches_segment_anything(randomize):
    # the 64-pixel model input is padded at the bottom (downscaled image) ...
    _compare(randomize, tiny_config("vit", 64), (45, 70), seed=11)


def test_tiny_vit_predictor_upscaled_image(randomize):
    # ... and here the image is smaller than the input (upscaled), padded on the right
    _compare(randomize, tiny_config("vit", 96), (37, 23), seed=12)


def test_vit_t_predictor_matches_mobile_sam(randomize):
    # (MobileSAM's TinyViT has a fixed 256-channel neck: no tiny TinyViT on that side)
    _compare(randomize, ARCHITECTURES["vit_t"], (480, 640), seed=14)


def test_vit_b_predictor_matches_segment_anything(randomize):
    _compare(randomize, ARCHITECTURES["vit_b"], (613, 917), seed=15)
