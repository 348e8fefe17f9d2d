"""The inference fast paths equal the plain (training) computation.

Inference (autograd off) folds the decoder's cross-attention projections into the few
prompt tokens, shares the prompt-independent decoder work across a batch of prompt
sets that use one image, and on the CPU may compute the encoder's relative-position
attention explicitly in chunks; the predict layer's decoder runner adds chunks of
prompt sets, mask bands and the ``min_iou`` selection. Training (autograd on) runs the
plain graph, which is the official computation; these tests compare them on fully
random weights.
"""

from __future__ import annotations

import pytest
import torch

from napari_samscope.core.modeling import image_encoder as vit
from napari_samscope.core.modeling.transformer import Attention
from napari_samscope.core.predict import fast_decode
from napari_samscope.core.predict.fast_decode import DecoderRunner

TOL = dict(atol=2e-5, rtol=1e-4)


def _decode(model, embedding, **prompts):
    sparse, dense = model.prompt_encoder(**prompts)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )


def _run(model, embedding, *, multimask=True, min_iou=None, **prompts):
    """The decoder runner (the predictor's decoding) on the same inputs."""
    points = prompts["points"]
    coords, labels = (None, None) if points is None else points
    runner = DecoderRunner(model, torch.device("cpu"))
    return runner.decode(
        embedding, coords, labels, prompts["boxes"], prompts["masks"], multimask, min_iou=min_iou
    )


def _both_paths(model, embedding, **prompts):
    model.requires_grad_(False)  # autograd on, but no graph: the plain path
    with torch.enable_grad():
        plain = _decode(model, embedding, **prompts)
    with torch.no_grad():
        fast = _decode(model, embedding, **prompts)
    return plain, fast, _run(model, embedding, **prompts)


def _prompt_cases(size: int, batch: int, lowres: int) -> dict[str, dict]:
    g = torch.Generator().manual_seed(0)
    points = torch.rand(batch, 3, 2, generator=g) * size
    labels = torch.tensor([[1, 0, 1]] * batch)
    corners = torch.rand(batch, 2, 2, generator=g) * size
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    masks = torch.randn(batch, 1, lowres, lowres, generator=g)
    return {
        "points": dict(points=(points, labels), boxes=None, masks=None),
        "boxes": dict(points=None, boxes=boxes, masks=None),
        "points+boxes": dict(points=(points[:, :1], labels[:, :1]), boxes=boxes, masks=None),
        "masks": dict(points=(points, labels), boxes=None, masks=masks),
    }


@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
@pytest.mark.parametrize("case", ["points", "boxes", "points+boxes", "masks"])
@pytest.mark.parametrize("images", ["shared", "one per prompt set"])
def test_decoder_fast_path_equals_plain(randomize, tiny_sam_factory, encoder, case, images):
    model = randomize(tiny_sam_factory(encoder, 64), seed=11)
    side = model.embedding_size
    batch = 3
    prompts = _prompt_cases(model.img_size, batch, 4 * side)[case]
    count = 1 if images == "shared" else batch
    embedding = torch.randn(count, model.prompt_encoder.embed_dim, side, side)
    (plain_low, plain_iou), *fast_paths = _both_paths(model, embedding, **prompts)
    for fast_low, fast_iou in fast_paths:  # the module without autograd, the runner
        assert fast_low.shape == plain_low.shape == (batch, 3, 4 * side, 4 * side)
        torch.testing.assert_close(fast_low, plain_low, **TOL)
        torch.testing.assert_close(fast_iou, plain_iou, **TOL)


def test_shared_batch_decodes_like_one_prompt_at_a_time(randomize, tiny_sam_factory):
    model = randomize(tiny_sam_factory("vit", 64), seed=12)
    embedding = torch.randn(1, 32, 4, 4)
    prompts = _prompt_cases(64, 5, 16)["points"]
    coords, labels = prompts["points"]
    with torch.no_grad():
        batched = _decode(model, embedding, points=(coords, labels), boxes=None, masks=None)
        single = [
            _decode(model, embedding, points=(coords[i : i + 1], labels[i : i + 1]), boxes=None,
                    masks=None)
            for i in range(5)
        ]
    torch.testing.assert_close(batched[0], torch.cat([s[0] for s in single]), **TOL)
    torch.testing.assert_close(batched[1], torch.cat([s[1] for s in single]), **TOL)


@pytest.mark.parametrize("heads,tokens,shared", [(2, 5, True), (2, 5, False), (4, 1, True)])
def test_folded_cross_attentions_equal_projected_attention(heads, tokens, shared):
    torch.manual_seed(3)
    attn = Attention(16, heads, downsample_rate=2)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.5)
    batch, n_img = 3, 20
    prompt = torch.randn(batch, tokens, 16)
    image = torch.randn(1 if shared else batch, n_img, 16)
    image_k = image + torch.randn(1, n_img, 16)
    with torch.no_grad():
        expected = attn(prompt, image_k.expand(batch, -1, -1), image.expand(batch, -1, -1))
        torch.testing.assert_close(attn.tokens_to_image(prompt, image_k, image), expected, **TOL)
        residual = torch.randn_like(image)
        expected = residual + attn(image_k.expand(batch, -1, -1), prompt, prompt)
        got = attn.image_to_tokens(image_k, prompt, prompt, residual=residual)
        assert got.shape == (batch, n_img, 16)
        torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("size", [(5, 7), (4, 4)])
@pytest.mark.parametrize(
    "mode,chunks",
    [
        ("sdpa", {"_SDPA_CHUNK": 1 << 25}),  # the whole bias at once
        ("sdpa", {"_SDPA_CHUNK": 3 * 2 * 7 * 5 * 7 * 2}),  # 2 query rows per chunk, one partial
        ("explicit", {"_EXPLICIT_CHUNK": 1 << 21}),  # all heads in one tile
        ("explicit", {"_EXPLICIT_CHUNK": 4 * 35 * 35}),  # 4 heads per tile, then a partial group
        ("explicit", {"_EXPLICIT_CHUNK": 2 * 7 * 35}),  # one head, 2 query rows per tile
    ],
)
@pytest.mark.parametrize("dim", [16, 64])  # 64: head width 32, the bias joins the product
def test_cpu_attention_paths_equal_plain_attention(monkeypatch, size, mode, chunks, dim):
    torch.manual_seed(5)
    attn = vit.Attention(dim=dim, num_heads=2, use_rel_pos=True, input_size=size)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(3, *size, dim)
    attn.requires_grad_(False)
    with torch.enable_grad():  # autograd on: the plain path (whole bias, fused kernel)
        plain = attn(x)
    monkeypatch.setitem(vit.CPU_ATTENTION, torch.float32, mode)
    for name, value in chunks.items():
        monkeypatch.setattr(vit, name, value)
    with torch.no_grad():
        fast = attn(x)
    torch.testing.assert_close(fast, plain, **TOL)


def test_rel_pos_bias_terms_match_materialised_bias():
    torch.manual_seed(6)
    q = torch.randn(2, 3, 4 * 5, 8)
    table_h, table_w = torch.randn(7, 8), torch.randn(9, 8)
    rel_h, rel_w = vit.decomposed_rel_pos_terms(q, table_h, table_w, (4, 5), (4, 5))
    assert rel_h.is_contiguous() and rel_w.is_contiguous()
    bias = vit.decomposed_rel_pos_bias(q, table_h, table_w, (4, 5), (4, 5))
    grid = q.reshape(2, 3, 4, 5, 8)
    for qy, qx, ky, kx in [(0, 0, 3, 4), (2, 1, 0, 3), (3, 4, 3, 4)]:
        expected = grid[:, :, qy, qx] @ (table_h[qy - ky + 3] + table_w[qx - kx + 4])
        torch.testing.assert_close(bias[:, :, qy * 5 + qx, ky * 5 + kx], expected, **TOL)


@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
def test_encoder_output_is_contiguous_and_autograd_path_agrees(randomize, tiny_sam_factory, encoder):
    model = randomize(tiny_sam_factory(encoder, 64), seed=13).requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = model.image_encoder(x)
    with torch.enable_grad():
        plain = model.image_encoder(x)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, plain, **TOL)


@pytest.mark.parametrize("multimask", [True, False])
def test_min_iou_skips_only_the_masks_of_prompt_sets_below_it(randomize, tiny_sam_factory, multimask):
    model = randomize(tiny_sam_factory("vit", 64), seed=14)
    embedding = torch.randn(1, 32, 4, 4)
    coords = torch.rand(8, 1, 2) * 64
    labels = torch.ones(8, 1, dtype=torch.int)
    prompts = dict(points=(coords, labels), boxes=None, masks=None)
    full_low, full_iou = _run(model, embedding, multimask=multimask, **prompts)
    threshold = float(full_iou.max(dim=1).values.median())
    low, iou = _run(model, embedding, multimask=multimask, min_iou=threshold, **prompts)
    nothing, _ = _run(model, embedding, multimask=multimask, min_iou=1e9, **prompts)
    kept = (full_iou > threshold).any(dim=1)
    assert 0 < int(kept.sum()) < 8
    torch.testing.assert_close(iou, full_iou)
    torch.testing.assert_close(low[kept], full_low[kept], **TOL)
    assert not low[~kept].any() and not nothing.any()
    assert low.shape == full_low.shape


@pytest.mark.parametrize("batch", [1, 4])
def test_inference_leaves_the_callers_tensors_unchanged(randomize, tiny_sam_factory, batch):
    model = randomize(tiny_sam_factory("vit", 64), seed=15)
    embedding = torch.randn(1, 32, 4, 4)
    pe = model.prompt_encoder.get_dense_pe()
    tokens = torch.randn(batch, 5, 32)
    copies = [t.clone() for t in (embedding, pe, tokens)]
    with torch.no_grad():
        model.mask_decoder.transformer(embedding, pe, tokens)
        sparse, dense = model.prompt_encoder(
            points=(torch.rand(batch, 1, 2) * 64, torch.ones(batch, 1)), boxes=None, masks=None
        )
        dense_copy = dense.clone()
        model.mask_decoder(embedding, pe, sparse, dense, True)
        runner = DecoderRunner(model, torch.device("cpu"))
        runner.transform(embedding, pe, sparse, dense)
        runner.decode(embedding, torch.rand(batch, 1, 2) * 64, torch.ones(batch, 1), None, None, True)
    for original, copy in zip((embedding, pe, tokens), copies):
        assert torch.equal(original, copy)
    assert torch.equal(dense, dense_copy)


@pytest.mark.parametrize("case", ["points", "masks"])
@pytest.mark.parametrize("images", ["shared", "one per prompt set"])
def test_decoder_in_small_steps_equals_one_batch(monkeypatch, randomize, tiny_sam_factory, case, images):
    model = randomize(tiny_sam_factory("vit", 64), seed=16)
    batch = 5
    prompts = _prompt_cases(64, batch, 16)[case]
    embedding = torch.randn(1 if images == "shared" else batch, 32, 4, 4)
    whole = _run(model, embedding, **prompts)
    # 3 prompt sets per transformer step, 1 per upscaling step (a partial last step)
    monkeypatch.setattr(fast_decode, "_CHUNK_BYTES", 3 * 16 * 32 * 4)
    steps = _run(model, embedding, **prompts)
    torch.testing.assert_close(steps[0], whole[0], **TOL)
    torch.testing.assert_close(steps[1], whole[1], **TOL)


def test_tiny_vit_bias_cache_follows_weight_changes(randomize, tiny_sam_factory):
    model = randomize(tiny_sam_factory("tiny_vit", 64), seed=17).requires_grad_(False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.image_encoder(x)  # fills the caches
        for name, tensor in model.state_dict().items():
            if name.endswith("attention_biases"):
                tensor.add_(torch.randn_like(tensor))  # in place, as load_state_dict does
        cached = model.image_encoder(x)
    with torch.enable_grad():
        plain = model.image_encoder(x)
    torch.testing.assert_close(cached, plain, **TOL)


@pytest.mark.parametrize("band_bytes", [1, 3 * 4 * 16 * 8 * 4, 1 << 20])  # 1, 3, all rows
def test_mask_upscaling_in_row_bands_equals_plain(monkeypatch, randomize, tiny_sam_factory, band_bytes):
    model = randomize(tiny_sam_factory("vit", 64), seed=18).requires_grad_(False)
    decoder = model.mask_decoder
    keys = torch.randn(2, 8 * 8, 32)  # an 8x8 embedding grid, 2 prompt sets
    tokens = torch.randn(2, decoder.num_mask_tokens, 32)
    with torch.enable_grad():  # the plain path: the whole upscaling at once
        plain = decoder.upscale_masks(keys, tokens, 8, 8)
    monkeypatch.setattr(fast_decode, "_BAND_BYTES", band_bytes)
    banded = DecoderRunner(model, torch.device("cpu")).upscale_masks(keys, tokens, 8, 8)
    assert banded.shape == plain.shape == (2, decoder.num_mask_tokens, 32, 32)
    torch.testing.assert_close(banded, plain, **TOL)


def test_decoder_in_small_steps_keeps_the_min_iou_selection(monkeypatch, randomize, tiny_sam_factory):
    model = randomize(tiny_sam_factory("vit", 64), seed=19)
    embedding = torch.randn(1, 32, 4, 4)
    prompts = _prompt_cases(64, 7, 16)["points"]
    whole_low, whole_iou = _run(model, embedding, **prompts)
    best = whole_iou.max(dim=1).values.sort().values
    threshold = float(best[2:4].mean())  # between two prompts: no tie at float precision
    monkeypatch.setattr(fast_decode, "_CHUNK_BYTES", 2 * 16 * 32 * 4)  # 2 per step
    low, iou = _run(model, embedding, min_iou=threshold, **prompts)
    kept = (whole_iou > threshold).any(dim=1)
    assert 0 < int(kept.sum()) < 7
    torch.testing.assert_close(iou, whole_iou, **TOL)
    torch.testing.assert_close(low[kept], whole_low[kept], **TOL)
    assert not low[~kept].any()
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(**prompts)
        pe = model.prompt_encoder.get_dense_pe()
        with pytest.raises(ValueError, match="batch size"):
            model.mask_decoder(torch.randn(3, 32, 4, 4), pe, sparse, dense, True)
    with pytest.raises(ValueError, match="batch size"):
        _run(model, torch.randn(3, 32, 4, 4), **prompts)
