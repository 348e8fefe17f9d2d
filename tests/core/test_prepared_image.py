"""The decoder runner's per-image preparation (inference) equals the plain computation.

With one image embedding and no mask prompt, the predictor's decoder runner projects the
first transformer block's image side once (``prepared_image.prepare_image``) and keeps it
while its inputs stay the same (``image_memo.ImageMemo``). These tests compare that path
with the plain (autograd) computation of the module, which is the official one, and
check that the kept image is dropped whenever an input or a weight it depends on changes.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from napari_samscope.core.modeling.transformer import Attention
from napari_samscope.core.predict import prepared_image as pi
from napari_samscope.core.predict.fast_decode import DecoderRunner
from napari_samscope.core.predict.image_memo import ImageMemo

TOL = dict(atol=2e-5, rtol=1e-4)


def _runner(model):
    return DecoderRunner(model, torch.device("cpu"))


def _decode(runner, embedding, prompts, multimask=True):
    """The runner's decoding (its own cached positional encoding)."""
    points = prompts["points"]
    coords, labels = (None, None) if points is None else points
    return runner.decode(embedding, coords, labels, prompts["boxes"], prompts["masks"], multimask)


def _module(model, embedding, pe, prompts, multimask=True):
    sparse, dense = model.prompt_encoder(**prompts)
    return model.mask_decoder(embedding, pe, sparse, dense, multimask)


def _plain(model, embedding, pe, prompts, multimask=True):
    model.requires_grad_(False)  # autograd on, but no graph: the plain path
    with torch.enable_grad():
        return _module(model, embedding, pe, prompts, multimask)


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


def _memo_value(runner):
    return runner.prepared_image


@pytest.fixture
def model(randomize, tiny_sam_factory):
    return randomize(tiny_sam_factory("vit", 64), seed=21)


@pytest.mark.parametrize("kind", ["points", "boxes", "points+boxes"])
@pytest.mark.parametrize("batch", [1, 3])
def test_prepared_image_equals_plain_and_is_kept(model, kind, batch):
    runner = _runner(model)
    embedding = torch.randn(1, 32, 4, 4)
    pe = model.prompt_encoder.get_dense_pe()
    prompts = _prompts(kind, batch)
    plain = _plain(model, embedding, pe, prompts)
    first = _decode(runner, embedding, prompts)
    prepared = _memo_value(runner)
    second = _decode(runner, embedding, prompts)
    assert prepared is not None and _memo_value(runner) is prepared  # kept, not rebuilt
    assert runner.prepare(embedding) is prepared
    for got in (first, second):
        torch.testing.assert_close(got[0], plain[0], **TOL)
        torch.testing.assert_close(got[1], plain[1], **TOL)


def test_equal_values_in_new_tensors_reuse_the_prepared_image(model):
    runner = _runner(model)
    embedding = torch.randn(1, 32, 4, 4)
    prompts = _prompts("points", 1)
    _decode(runner, embedding, prompts)
    prepared = _memo_value(runner)
    _decode(runner, embedding.clone(), prompts)
    assert _memo_value(runner) is prepared


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
    runner = _runner(model)
    embedding = torch.randn(1, 32, 4, 4)
    prompts = _prompts("points+boxes", 2)
    _decode(runner, embedding, prompts)
    before = _memo_value(runner)
    with torch.no_grad():
        _changes(model, embedding)[change]()
    if change == "another embedding":
        embedding = torch.randn(1, 32, 4, 4)
    pe = model.prompt_encoder.get_dense_pe()
    got = _decode(runner, embedding, prompts)
    assert _memo_value(runner) is not before
    plain = _plain(model, embedding, pe, prompts)
    torch.testing.assert_close(got[0], plain[0], **TOL)
    torch.testing.assert_close(got[1], plain[1], **TOL)


def test_no_prepared_image_for_mask_prompts_per_prompt_images_or_low_precision(model):
    runner = _runner(model)
    pe = model.prompt_encoder.get_dense_pe()
    masks = dict(points=None, boxes=None, masks=torch.randn(2, 1, 16, 16))
    _decode(runner, torch.randn(1, 32, 4, 4), masks)
    _decode(runner, torch.randn(2, 32, 4, 4), _prompts("points", 2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sparse, dense = model.prompt_encoder(**_prompts("points", 1))
        runner.transform(torch.randn(1, 32, 4, 4), pe, sparse, dense, low_precision=True)
    assert _memo_value(runner) is None


def test_inference_mode_tensors_work_and_are_compared_by_value(model):
    runner = _runner(model)
    prompts = _prompts("points", 1)
    with torch.inference_mode():
        embedding = torch.randn(1, 32, 4, 4)
        first = _decode(runner, embedding, prompts)
        prepared = _memo_value(runner)
        second = _decode(runner, embedding, prompts)
        assert _memo_value(runner) is prepared
    pe = model.prompt_encoder.get_dense_pe()
    plain = _plain(model, embedding.clone(), pe, prompts)
    torch.testing.assert_close(first[0], plain[0], **TOL)
    torch.testing.assert_close(second[0], plain[0], **TOL)


def test_the_model_keeps_no_inference_state(model):
    runner = _runner(model)
    names = set(model.state_dict())
    _decode(runner, torch.randn(1, 32, 4, 4), _prompts("points", 1))
    assert _memo_value(runner) is not None
    assert set(model.state_dict()) == names
    assert not any("memo" in name for name, _ in model.named_modules())
    buffer = io.BytesIO()
    torch.save(model, buffer)  # whole-module pickling keeps working
    memo = runner._memo
    assert isinstance(memo, ImageMemo) and memo.value is not None
    assert copy.deepcopy(memo).value is None and pickle.loads(pickle.dumps(memo)).value is None
    runner.clear()
    assert _memo_value(runner) is None


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
        got = pi.tokens_to_projected_image(
            attn, prompt, pi.project_heads(attn, attn.k_proj, image_k),
            pi.project_heads(attn, attn.v_proj, image),
        )
        torch.testing.assert_close(got, expected, **TOL)
        residual = torch.randn(1, n_img, 16)
        expected = residual + attn(image_k.expand(batch, -1, -1), prompt, prompt)
        q_heads_t = pi.project_heads(attn, attn.q_proj, image_k, transposed=True)
        got = pi.image_to_projected_tokens(attn, q_heads_t, prompt, prompt, residual=residual)
        assert got.shape == (batch, n_img, 16)
        torch.testing.assert_close(got, expected, **TOL)


def test_forward_prepared_refuses_training_and_prepare_image_one_image(model):
    transformer = model.mask_decoder.transformer
    pe = model.prompt_encoder.get_dense_pe()
    prepared = pi.prepare_image(transformer, torch.randn(1, 32, 4, 4), pe)
    with torch.enable_grad(), pytest.raises(RuntimeError, match="inference"):
        pi.forward_prepared(transformer, prepared, torch.randn(1, 7, 32))
    with pytest.raises(ValueError, match="one image"):
        pi.prepare_image(transformer, torch.randn(2, 32, 4, 4), pe)


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
    from napari_samscope.core.predict import image_memo

    runner = _runner(model)
    embedding = torch.randn(1, 32, 4, 4)
    prompts = _prompts("points", 2)
    _decode(runner, embedding, prompts)
    prepared = _memo_value(runner)

    def no_value_reads(*args):  # would synchronise with an accelerator
        raise AssertionError("the kept image was checked by value")

    monkeypatch.setattr(image_memo.torch, "equal", no_value_reads)
    _decode(runner, embedding, prompts)  # the no-mask embedding is a new view each time
    assert _memo_value(runner) is prepared


def test_prepare_skips_the_prepared_image_where_decoding_runs_under_autocast(model):
    """Under bf16 autocast the decoder never reads a prepared image, so set_image does
    not make one; in float32 it is made once per orientation and kept (up to 4)."""
    features = [torch.randn(1, 32, 4, 4) for _ in range(5)]
    low = DecoderRunner(model, torch.device("cpu"), dtype=torch.bfloat16)
    assert low.prepare(features[0]) is None and low.prepared_image is None
    full = _runner(model)
    made = [full.prepare(f) for f in features[:4]]
    assert all(m is not None for m in made)
    assert [full.prepare(f) for f in features[:4]] == made  # all four kept: nothing recomputed
    full.prepare(features[4])  # a fifth drops the least recently used
    assert full.prepare(features[0]) is not made[0]


def test_the_memo_keeps_up_to_its_capacity():
    memo = ImageMemo(capacity=2)
    a, b, c = torch.zeros(3), torch.ones(3), torch.full((3,), 2.0)
    calls = []

    def compute(x):
        return lambda: calls.append(x) or len(calls)

    assert memo.get((a,), [], compute("a")) == 1 and memo.get((b,), [], compute("b")) == 2
    assert memo.get((a,), [], compute("a")) == 1  # kept
    memo.get((c,), [], compute("c"))  # drops b, the least recently used
    assert memo.get((b,), [], compute("b")) == 4 and calls == ["a", "b", "c", "b"]
    assert memo.value == 4
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        ImageMemo(capacity=0)
