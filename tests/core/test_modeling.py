"""The network modules: shapes, prompt semantics, batching, autocast, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from napari_samscope.core.modeling.build import build_sam, tiny_config
from napari_samscope.core.modeling.common import LayerNorm2d
from napari_samscope.core.modeling.image_encoder import (
    Attention,
    window_partition,
    window_unpartition,
)
from napari_samscope.core.modeling.tiny_vit import Attention as TinyViTAttention

ENCODERS = ("vit", "tiny_vit")


def _decode(model, embedding, points=None, boxes=None, masks=None, multimask=True):
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("img_size", [64, 96, 128])
def test_forward_shapes_at_several_sizes(tiny_sam_factory, encoder, img_size):
    model = tiny_sam_factory(encoder, img_size)
    side = img_size // 16
    assert model.img_size == img_size and model.embedding_size == side
    with torch.no_grad():
        embedding = model.image_encoder(torch.randn(2, 3, img_size, img_size))
        assert embedding.shape == (2, 32, side, side)
        points = (torch.rand(3, 2, 2) * img_size, torch.tensor([[1, 0], [1, 1], [0, 1]]))
        for multimask, k in ((True, 3), (False, 1)):
            low_res, iou = _decode(model, embedding[:1], points=points, multimask=multimask)
            assert low_res.shape == (3, k, 4 * side, 4 * side)
            assert iou.shape == (3, k)
            assert torch.isfinite(low_res).all()


def test_prompt_encoder_token_counts_and_dense(tiny_sam):
    encoder = tiny_sam.prompt_encoder
    points = (torch.rand(2, 3, 2) * 64, torch.ones(2, 3, dtype=torch.long))
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]])
    masks = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        sparse, dense = encoder(points=points, boxes=None, masks=None)
        assert sparse.shape == (2, 4, 32)  # a padding point is appended
        assert dense.shape == (2, 32, 4, 4)
        sparse, _ = encoder(points=points, boxes=boxes, masks=None)
        assert sparse.shape == (2, 5, 32)  # 3 points + 2 corners, no padding
        sparse, dense_m = encoder(points=None, boxes=None, masks=masks)
        assert sparse.shape == (2, 0, 32) and dense_m.shape == (2, 32, 4, 4)
        assert not torch.allclose(dense_m[0], dense[0])
        sparse, dense = encoder(points=None, boxes=None, masks=None)
        assert sparse.shape == (1, 0, 32) and dense.shape == (1, 32, 4, 4)
        assert encoder.get_dense_pe().shape == (1, 32, 4, 4)


def test_point_labels_semantics(random_state_sam):
    encoder = random_state_sam.prompt_encoder
    xy = torch.tensor([[[10.0, 20.0], [30.0, 5.0]]])
    with torch.no_grad():
        pe = encoder.pe_layer.forward_with_coords(xy + 0.5, encoder.input_image_size)

        def embed(labels):
            return encoder(points=(xy, torch.tensor([labels])), boxes=None, masks=None)[0][0]

        fg_bg = embed([1, 0])
        torch.testing.assert_close(fg_bg[0], pe[0, 0] + encoder.point_embeddings[1].weight[0])
        torch.testing.assert_close(fg_bg[1], pe[0, 1] + encoder.point_embeddings[0].weight[0])
        torch.testing.assert_close(fg_bg[2], encoder.not_a_point_embed.weight[0])  # padding
        padded = embed([1, -1])
        torch.testing.assert_close(padded[1], encoder.not_a_point_embed.weight[0])
        # labels 2 / 3 are box corners (ONNX semantics): same as the box prompt
        corners = embed([2, 3])[:2]
        box = encoder(points=None, boxes=xy.reshape(1, 4), masks=None)[0][0]
        torch.testing.assert_close(corners, box)


def test_decoder_shares_one_embedding_across_prompts(random_state_sam):
    model = random_state_sam
    embedding = torch.randn(1, 32, 4, 4)
    points = (torch.rand(3, 2, 2) * 64, torch.tensor([[1, 0], [1, 1], [0, 1]]))
    with torch.no_grad():
        low_res, iou = _decode(model, embedding, points=points)
        for i in range(3):
            single = (points[0][i : i + 1], points[1][i : i + 1])
            low_i, iou_i = _decode(model, embedding, points=single)
            torch.testing.assert_close(low_res[i : i + 1], low_i, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[i : i + 1], iou_i, atol=1e-5, rtol=1e-5)


def test_decoder_pairs_batched_embeddings_with_prompts(random_state_sam):
    model = random_state_sam
    embeddings = torch.randn(2, 32, 4, 4)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 50.0, 60.0]])
    with torch.no_grad():
        low_res, iou = _decode(model, embeddings, boxes=boxes, multimask=False)
        assert low_res.shape == (2, 1, 16, 16)
        for i in range(2):
            low_i, iou_i = _decode(model, embeddings[i : i + 1], boxes=boxes[i : i + 1], multimask=False)
            torch.testing.assert_close(low_res[i : i + 1], low_i, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[i : i + 1], iou_i, atol=1e-5, rtol=1e-5)


def test_decoder_rejects_mismatched_batches(tiny_sam):
    boxes = torch.rand(3, 4) * 64
    with torch.no_grad(), pytest.raises(ValueError, match="batch size 2 but there are 3"):
        _decode(tiny_sam, torch.randn(2, 32, 4, 4), boxes=boxes)


def _naive_rel_pos_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention with decomposed relative positions, written out without SDPA."""
    batch, height, width, dim = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    for qy, qx, ky, kx in itertools.product(range(height), range(width), repeat=2):
        qi, ki = qy * width + qx, ky * width + kx
        rh = attn.rel_pos_h[qy - ky + height - 1]
        rw = attn.rel_pos_w[qx - kx + width - 1]
        logits[:, :, qi, ki] += q[:, :, qi] @ rh + q[:, :, qi] @ rw
    out = logits.softmax(-1) @ v
    return attn.proj(out.permute(0, 2, 1, 3).reshape(batch, height, width, dim))


def test_rel_pos_attention_matches_written_out_formula():
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2, use_rel_pos=True, input_size=(3, 4))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
        x = torch.randn(2, 3, 4, 8)
        torch.testing.assert_close(attn(x), _naive_rel_pos_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_tiny_vit_bias_index_matches_mobile_sam_enumeration():
    ws = 4
    attn = TinyViTAttention(dim=8, num_heads=2, window_size=ws)
    points = list(itertools.product(range(ws), range(ws)))
    offsets: dict[tuple[int, int], int] = {}
    expected = []
    for p1 in points:  # MobileSAM's enumeration order of the offsets
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            offsets.setdefault(offset, len(offsets))
            expected.append(offsets[offset])
    assert attn.attention_biases.shape == (2, len(offsets))
    assert attn.attention_bias_idxs.tolist() == torch.tensor(expected).view(ws * ws, -1).tolist()
    assert "attention_bias_idxs" not in attn.state_dict()


@pytest.mark.parametrize("size", [(5, 7), (6, 6), (3, 2)])
def test_window_partition_round_trip(size):
    x = torch.randn(2, *size, 4)
    windows, padded = window_partition(x, 3)
    assert windows.shape[1:] == (3, 3, 4)
    assert padded == (math.ceil(size[0] / 3) * 3, math.ceil(size[1] / 3) * 3)
    torch.testing.assert_close(window_unpartition(windows, 3, padded, size), x)


def test_layernorm2d_keeps_dtype_and_statistics():
    norm = LayerNorm2d(6)
    x = torch.randn(2, 6, 3, 3) * 1000
    out = norm(x)
    torch.testing.assert_close(out.mean(1), torch.zeros(2, 3, 3), atol=1e-4, rtol=0)
    out16 = norm(x.to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_bfloat16_autocast_runs_close_to_float32(randomize, tiny_sam_factory, encoder):
    model = randomize(tiny_sam_factory(encoder, 96), seed=4)
    x = torch.randn(1, 3, 96, 96)
    points = (torch.rand(2, 2, 2) * 96, torch.tensor([[1, 0], [1, -1]]))
    with torch.no_grad():
        reference = _decode(model, model.image_encoder(x), points=points)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embedding = model.image_encoder(x)
            low_res, iou = _decode(model, embedding, points=points)
            dense_pe = model.prompt_encoder.get_dense_pe()
    assert embedding.dtype == torch.bfloat16
    assert dense_pe.dtype == torch.float32  # positional encodings stay float32
    assert torch.isfinite(low_res.float()).all() and torch.isfinite(iou.float()).all()
    scale = reference.abs().max()
    assert (low_res.float() - reference).abs().max() < 0.1 * scale


@pytest.mark.parametrize("encoder", ENCODERS)
def test_training_mode_backpropagates_to_every_parameter(tiny_sam_factory, encoder):
    model = tiny_sam_factory(encoder, 64).train()
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 50.0, 60.0]])
    low_res, iou = _decode(model, model.image_encoder(images), boxes=boxes, multimask=True)
    _, iou_single = _decode(model, model.image_encoder(images), boxes=boxes, multimask=False)
    (low_res.square().mean() + iou.sum() + iou_single.sum()).backward()
    used = ("image_encoder.", "mask_decoder.", "prompt_encoder.point_embeddings.2.",
            "prompt_encoder.point_embeddings.3.")
    no_grad = [n for n, p in model.named_parameters() if n.startswith(used) and p.grad is None]
    assert no_grad == []
    assert model.image_encoder.neck[0].weight.grad.abs().sum() > 0


def test_sam_container_buffers_and_config(tiny_sam, tiny_vit_config):
    assert tiny_sam.config == tiny_vit_config
    assert tiny_sam.mask_threshold == 0.0
    torch.testing.assert_close(tiny_sam.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    torch.testing.assert_close(tiny_sam.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))
    assert tiny_sam.pixel_mean.shape == (3, 1, 1)
    keys = tiny_sam.state_dict().keys()
    assert "pixel_mean" not in keys and "pixel_std" not in keys
    assert {key.split(".")[0] for key in keys} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert tiny_sam.device == torch.device("cpu")
    assert not tiny_sam.training


def test_models_are_seeded(tiny_vit_config):
    torch.manual_seed(7)
    a = build_sam(tiny_vit_config)
    torch.manual_seed(7)
    b = build_sam(tiny_config("vit", 64))
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
