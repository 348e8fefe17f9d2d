"""The decoder's per-image preparation (inference) equals the plain computation.

With one image embedding and no mask prompt, the mask decoder projects the first
transformer block's image side once (``TwoWayTransformer.prepare_image``) and keeps it
while its inputs stay the same (``image_memo.ImageMemo``). These tests compare that
path with the plain (autograd) computation, which is the official one, and check that
the kept image is dropped whenever an input or a weight it depends on changes.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from napari_samscope.core.modeling.transformer import Attention

TOL = dict(atol=2e-5, rtol=1e-4)


def _decode(model, embedding, pe, prompts, multimask=True):
    sparse, dense = model.prompt_encoder(**prompts)
    return model.mask_decoder(embedding, pe, sparse, dense, multimask)


def _plain(model, embedding, pe, prompts, multimask=True):
    model.requires_grad_(False)  # autograd on, but no graph: the plain path
    with torch.enable_grad():
        return _decode(model, embedding, pe, prompts, multimask)


def _prompts(kind: str, batch: int, size: int = 64) -> dict:
    g = torch.Generator().manual_seed(batch)
    points = torch.rand(batch, 2, 2, generator=g) * size
    labels = torch.tensor([[1, 0]] * batch)
    corners = torch.rand(batch, 2, 2, generator=g) * size
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    if kind == "points":
        return dict(points=(points, labels), boxes=None, masks=None)
    if kind == "boxes":
        return dict(points=None, boxes=boxes, masks=None)
    return dict(points=(points[:, :1], labels[:, :1]), boxes=boxes, masks=None)


def _memo_value(model):
    entry = model.mask_decoder._image_memo._entry
    return None if entry is None else entry[2]


@pytest.fixture
def model(randomize, tiny_sam_factory):
    return randomize(tiny_sam_factory("vit", 64), seed=21)


@pytest.mark.parametrize("kind", ["points", "boxes", "points+boxes"])
@pytest.mark.parametrize("batch", [1, 3])
def test_prepared_image_equals_plain_and_is_kept(model, kind, batch):
    embedding = torch.randn(1, 32, 4, 4)
    pe = model.prompt_encoder.get_dense_pe()
    prompts = _prompts(kind, batch)
    plain = _plain(model, embedding, pe, prompts)
    with torch.no_grad():
        first = _decode(model, embedding, pe, prompts)
        prepared = _memo_value(model)
        second = _decode(model, embedding, pe, prompts)
    assert prepared is not None and _memo_value(model) is prepared  # kept, not rebuilt
    for got in (first, second):
        torch.testing.assert_close(got[0], plain[0], **TOL)
        torch.testing.assert_close(got[1], plain[1], **TOL)


def test_equal_values_in_new_tensors_reuse_the_prepared_image(model):
    embedding = torch.randn(1, 32, 4, 4)
    prompts = _prompts("points", 1)
    with torch.no_grad():
        _decode(model, embedding, model.prompt_encoder.get_dense_pe(), prompts)
        prepared = _memo_value(model)
        _decode(model, embedding.clone(), model.prompt_encoder.get_dense_pe(), prompts)
    assert _memo_value(model) is prepared


def _changes(model, embedding):
    """Ways an input or a weight of the prepared image can change (in place or new)."""
    block = model.mask_decoder.transformer.layers[0]
    return {
        "embedding in place": lambda: embedding.add_(1.0),
        "another embedding": lambda: None,  # handled by the test: a new random tensor
        "no-mask embedding": lambda: model.prompt_encoder.no_mask_embed.weight.add_(0.5),
        "positional encoding": lambda: model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(1.5),
        "first key projection": lambda: block.cross_attn_token_to_image.k_proj.weight.add_(0.3),
        "first value projection": lambda: block.cross_attn_token_to_image.v_proj.bias.add_(0.3),
        "first query projection": lambda: block.cross_attn_image_to_token.q_proj.weight.mul_(-1.0),
    }


@pytest.mark.parametrize(
    "change",
    [
        "embedding in place",
        "another embedding",
        "no-mask embedding",
        "positional encoding",
        "first key projection",
        "first value projection",
        "first query projection",
    ],
)
def test_prepared_image_follows_every_change(model, change):
    embedding = torch.randn(1, 32, 4, 4)
    prompts = _prompts("points+boxes", 2)
    with torch.no_grad():
        _decode(model, embedding, model.prompt_encoder.get_dense_pe(), prompts)
        before = _memo_value(model)
        _changes(model, embedding)[change]()
        if change == "another embedding":
            embedding = torch.randn(1, 32, 4, 4)
        pe = model.prompt_encoder.get_dense_pe()
        got = _decode(model, embedding, pe, prompts)
    assert _memo_value(model) is not before
    plain = _plain(model, embedding, pe, prompts)
    torch.testing.assert_close(got[0], plain[0], **TOL)
    torch.testing.assert_close(got[1], plain[1], **TOL)


def test_no_prepared_image_for_mask_prompts_per_prompt_images_or_training(model):
    pe = model.prompt_encoder.get_dense_pe()
    masks = dict(points=None, boxes=None, masks=torch.randn(2, 1, 16, 16))
    with torch.no_grad():
        _decode(model, torch.randn(1, 32, 4, 4), pe, masks)
        _decode(model, torch.randn(2, 32, 4, 4), pe, _prompts("points", 2))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # forced back to float32 inside
            sparse, dense = model.prompt_encoder(**_prompts("points", 1))
            model.mask_decoder.transform(torch.randn(1, 32, 4, 4), pe, sparse, dense, low_precision=True)
    _plain(model, torch.randn(1, 32, 4, 4), pe, _prompts("points", 1))
    assert _memo_value(model) is None


def test_inference_mode_tensors_work_and_are_compared_by_value(model):
    prompts = _prompts("points", 1)
    with torch.inference_mode():
        embedding = torch.randn(1, 32, 4, 4)
        pe = model.prompt_encoder.get_dense_pe()
        first = _decode(model, embedding, pe, prompts)
        prepared = _memo_value(model)
        second = _decode(model, embedding, pe, prompts)
        assert _memo_value(model) is prepared
    plain = _plain(model, embedding.clone(), pe.clone(), prompts)
    torch.testing.assert_close(first[0], plain[0], **TOL)
    torch.testing.assert_close(second[0], plain[0], **TOL)


def test_kept_image_is_not_copied_or_pickled_with_the_model(model):
    with torch.no_grad():
        _decode(model, torch.randn(1, 32, 4, 4), model.prompt_encoder.get_dense_pe(), _prompts("points", 1))
    assert _memo_value(model) is not None
    assert _memo_value(copy.deepcopy(model)) is None
    assert _memo_value(pickle.loads(pickle.dumps(model))) is None
    buffer = io.BytesIO()
    torch.save(model, buffer)  # whole-module pickling keeps working
    assert "mask_decoder._image_memo" not in "".join(model.state_dict())
    model.mask_decoder._image_memo.clear()
    assert _memo_value(model) is None


@pytest.mark.parametrize("heads,tokens,batch", [(2, 5, 3), (4, 1, 1)])
def test_projected_cross_attentions_equal_plain_attention(heads, tokens, batch):
    torch.manual_seed(4)
    attn = Attention(16, heads, downsample_rate=2)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.5)
    n_img = 20
    prompt = torch.randn(batch, tokens, 16)
    image = torch.randn(n_img, 16)
    image_k = image + torch.randn(n_img, 16)
    with torch.no_grad():
        expected = attn(prompt, image_k.expand(batch, -1, -1), image.expand(batch, -1, -1))
        got = attn.tokens_to_projected_image(
            prompt, attn.project_heads(attn.k_proj, image_k), attn.project_heads(attn.v_proj, image)
        )
        torch.testing.assert_close(got, expected, **TOL)
        residual = torch.randn(1, n_img, 16)
        expected = residual + attn(image_k.expand(batch, -1, -1), prompt, prompt)
        q_heads_t = attn.project_heads(attn.q_proj, image_k, transposed=True)
        got = attn.image_to_projected_tokens(q_heads_t, prompt, prompt, residual=residual)
        assert got.shape == (batch, n_img, 16)
        torch.testing.assert_close(got, expected, **TOL)


def test_forward_prepared_refuses_training_and_prepare_image_one_image(model):
    transformer = model.mask_decoder.transformer
    pe = model.prompt_encoder.get_dense_pe()
    prepared = transformer.prepare_image(torch.randn(1, 32, 4, 4), pe)
    with torch.enable_grad(), pytest.raises(RuntimeError, match="inference"):
        transformer.forward_prepared(prepared, torch.randn(1, 7, 32))
    with pytest.raises(ValueError, match="one image"):
        transformer.prepare_image(torch.randn(2, 32, 4, 4), pe)


@pytest.mark.parametrize("grad", [False, True])
def test_transformer_outputs_are_the_leading_rows_of_all_tokens(model, grad):
    transformer = model.mask_decoder.transformer.requires_grad_(False)
    embedding, pe = torch.randn(2, 32, 4, 4), model.prompt_encoder.get_dense_pe()
    tokens = torch.randn(2, 7, 32)
    with torch.set_grad_enabled(grad):
        every, keys = transformer(embedding, pe, tokens)
        some, some_keys = transformer(embedding, pe, tokens, outputs=5)
    assert every.shape == (2, 7, 32) and some.shape == (2, 5, 32)
    torch.testing.assert_close(some, every[:, :5], **TOL)
    torch.testing.assert_close(some_keys, keys, **TOL)


def test_same_tensors_are_recognised_without_reading_their_values(monkeypatch, model):
    from napari_samscope.core.modeling import image_memo

    embedding = torch.randn(1, 32, 4, 4)
    pe = model.prompt_encoder.get_dense_pe()
    prompts = _prompts("points", 2)
    with torch.no_grad():
        _decode(model, embedding, pe, prompts)
        prepared = _memo_value(model)

        def no_value_reads(*args):  # would synchronise with an accelerator
            raise AssertionError("the kept image was checked by value")

        monkeypatch.setattr(image_memo.torch, "equal", no_value_reads)
        _decode(model, embedding, pe, prompts)  # the no-mask embedding is a new view each time
    assert _memo_value(model) is prepared
