"""The touching-pair protocol passes the negative click as the plugin does (with the first
mask's logits as the mask prompt) and reports how much of the neighbour the mask holds."""

import numpy as np
import pytest
import torch

from napari_samscope.core.modeling.build import build_sam, tiny_config
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.training.touching_pairs import evaluate_touching_pairs


def _pair_image():
    rr, cc = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    labels[(rr - 30) ** 2 + (cc - 20) ** 2 <= 81] = 1
    labels[((rr - 30) ** 2 + (cc - 38) ** 2 <= 81) & (labels == 0)] = 2
    return (labels > 0).astype(np.uint8) * 200, labels


class _Recording(Predictor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def predict(self, *args, **kwargs):
        result = super().predict(*args, **kwargs)
        self.calls.append((kwargs, result))
        return result


@pytest.mark.parametrize("refine", [True, False])
def test_the_negative_click_gets_the_first_mask_and_the_neighbour_share_is_reported(refine):
    torch.manual_seed(0)
    image, labels = _pair_image()
    predictor = _Recording(build_sam(tiny_config("vit", img_size=64)))
    result = evaluate_touching_pairs(predictor, [image], [labels], refine=refine)
    assert result.pairs == 2 and len(predictor.calls) == 4
    for k, (_obj, other) in enumerate([(1, 2), (2, 1)]):
        (_, first), (second_kwargs, second) = predictor.calls[2 * k], predictor.calls[2 * k + 1]
        np.testing.assert_array_equal(second_kwargs["labels"], [1, 0])
        if refine:
            np.testing.assert_array_equal(second_kwargs["masks"], first.logits[0])
        else:
            assert second_kwargs["masks"] is None
        neighbour = labels == other
        for share, pred in ((result.neighbour_before[k], first), (result.neighbour_after[k], second)):
            assert share == pytest.approx((pred.masks[0] & neighbour).sum() / neighbour.sum())
    figures = result.as_dict()
    assert figures["neighbour_before"] == pytest.approx(np.mean(result.neighbour_before), abs=1e-4)
    assert figures["neighbour_after"] == pytest.approx(np.mean(result.neighbour_after), abs=1e-4)
    assert {"failed_neighbour_before", "failed_neighbour_after", "merged_pairs", "merged_pair_iou",
            "merged_neighbour_after"} <= set(figures)
    merged = np.asarray(result.neighbour_before) > 0.2
    assert figures["merged_pairs"] == int(merged.sum())
