"""The decoder transformer's first block with its image side projected once per image.

With one image embedding and no mask prompt, the image side of the first
:class:`~napari_samscope.core.modeling.transformer.TwoWayAttentionBlock` does not depend
on the prompts: the key and value projections of its token-to-image attention and the
query projection of its image-to-token attention. :func:`prepare_image` computes them
once per image (head-major layout), and :func:`forward_prepared` runs the transformer for
``B`` prompt sets from there: a few million multiply-adds in that block per prompt set
instead of about 175 million. The results are those of ``TwoWayTransformer.forward`` up
to float rounding. Inference only (autograd off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_samscope.core.modeling.transformer import (
    Attention,
    TwoWayAttentionBlock,
    TwoWayTransformer,
)

__all__ = ["PreparedImage", "forward_prepared", "prepare_image"]


@dataclass
class PreparedImage:
    """The prompt-independent inputs of the transformer for one image (inference).

    ``keys`` / ``key_pe``: ``(1, N, C)`` image tokens and positional encoding, token-major.
    ``first_keys`` / ``first_values``: ``(heads, N, d)`` keys ``k_proj(keys + key_pe)`` and
    values ``v_proj(keys)`` of the first block's token-to-image attention;
    ``first_queries``: ``(heads, d, N)`` (transposed) queries ``q_proj(keys + key_pe)`` of its
    image-to-token attention (None when the transformer has no blocks).
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    first_keys: torch.Tensor | None
    first_values: torch.Tensor | None
    first_queries: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors."""
        tensors = (self.keys, self.key_pe, self.first_keys, self.first_values, self.first_queries)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def first_block_weights(transformer: TwoWayTransformer) -> list[torch.Tensor]:
    """The weights a :class:`PreparedImage` is projected with (none without blocks)."""
    if not transformer.depth:
        return []
    block = transformer.layers[0]
    to_image, to_tokens = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    return [
        to_image.k_proj.weight,
        to_image.k_proj.bias,
        to_image.v_proj.weight,
        to_image.v_proj.bias,
        to_tokens.q_proj.weight,
        to_tokens.q_proj.bias,
    ]


@torch.no_grad()
def prepare_image(
    transformer: TwoWayTransformer, image_embedding: torch.Tensor, image_pe: torch.Tensor
) -> PreparedImage:
    """The prompt-independent part of ``transformer.forward`` for one image.

    Args:
        transformer: the decoder's :class:`TwoWayTransformer`.
        image_embedding: ``(1, C, h, w)`` image tokens (the dense prompt embedding added).
        image_pe: ``(1, C, h, w)`` their positional encoding.
    """
    if image_embedding.shape[0] != 1 or image_pe.shape[0] != 1:
        raise ValueError("prepare_image takes one image: (1, C, h, w) tensors.")
    keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # 1, N, C
    key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    if transformer.depth == 0:
        return PreparedImage(keys, key_pe, None, None, None)
    block = transformer.layers[0]
    image_k = (keys + key_pe)[0]
    to_image, to_tokens = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    return PreparedImage(
        keys,
        key_pe,
        project_heads(to_image, to_image.k_proj, image_k),
        project_heads(to_image, to_image.v_proj, keys[0]),
        project_heads(to_tokens, to_tokens.q_proj, image_k, transposed=True),
    )


def forward_prepared(
    transformer: TwoWayTransformer,
    image: PreparedImage,
    point_embedding: torch.Tensor,
    *,
    outputs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``transformer.forward`` on an image from :func:`prepare_image`: the same results for
    ``B`` prompt sets ``(B, T, C)`` sharing that image (arguments and returns as there)."""
    if torch.is_grad_enabled():
        raise RuntimeError("forward_prepared is for inference: call it with autograd off.")
    queries, keys = point_embedding, image.keys
    for i, layer in enumerate(transformer.layers):
        if i == 0:
            queries, keys = _first_block(layer, queries, point_embedding, image)
        else:  # after the first block the keys are this function's own tensor
            queries, keys = layer(
                queries, keys, query_pe=point_embedding, key_pe=image.key_pe, keys_owned=True
            )
    return transformer.final_attention(queries, keys, point_embedding, image.key_pe, outputs=outputs)


def _first_block(
    block: TwoWayAttentionBlock,
    queries: torch.Tensor,
    query_pe: torch.Tensor,
    image: PreparedImage,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block.forward`` with its image side taken from ``image``."""
    queries = block.attend_tokens(queries, query_pe)
    attn_out = tokens_to_projected_image(
        block.cross_attn_token_to_image, queries + query_pe, image.first_keys, image.first_values
    )
    queries = block.norm2(queries + attn_out)
    queries = block.norm3(queries + block.mlp(queries))
    keys = block.norm4(
        image_to_projected_tokens(
            block.cross_attn_image_to_token,
            image.first_queries,
            queries + query_pe,
            queries,
            residual=image.keys,
        )
    )
    return queries, keys


def project_heads(
    attn: Attention, linear: nn.Linear, x: torch.Tensor, *, transposed: bool = False
) -> torch.Tensor:
    """``(N, C)`` tokens -> ``(heads, N, d)`` projection by ``linear`` (one of ``attn``'s
    q/k/v projections), head-major and contiguous; ``(heads, d, N)`` if ``transposed``."""
    heads = linear(x).reshape(x.shape[0], attn.num_heads, -1)
    return (heads.permute(1, 2, 0) if transposed else heads.transpose(0, 1)).contiguous()


def tokens_to_projected_image(
    attn: Attention, q: torch.Tensor, k_heads: torch.Tensor, v_heads: torch.Tensor
) -> torch.Tensor:
    """``attn(q, k, v)`` with the image keys and values already projected.

    Args:
        attn: the token-to-image attention.
        q: ``(B, T, C)`` prompt-token queries.
        k_heads, v_heads: ``(heads, N, d)`` from :func:`project_heads` of ``k_proj(k)``
            and ``v_proj(v)``, shared by the ``B`` prompt sets.

    Returns:
        ``(B, T, C)``.
    """
    batch, tokens, _ = q.shape
    heads = attn.num_heads
    qh = attn.q_proj(q).reshape(batch * tokens, heads, -1).transpose(0, 1)  # heads, B*T, d
    out = torch.nn.functional.scaled_dot_product_attention(qh[None], k_heads[None], v_heads[None])[0]
    out = out.reshape(heads, batch, tokens, -1).permute(1, 2, 0, 3)  # B, T, heads, d
    return attn.out_proj(out.reshape(batch, tokens, attn.internal_dim))


def image_to_projected_tokens(
    attn: Attention,
    q_heads_t: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    residual: torch.Tensor,
) -> torch.Tensor:
    """``residual + attn(q, k, v)`` with the image queries already projected.

    Args:
        attn: the image-to-token attention.
        q_heads_t: ``(heads, d, N)`` from :func:`project_heads` of ``q_proj(q)``
            (transposed), shared by the ``B`` prompt sets.
        k, v: ``(B, T, C)`` prompt-token keys and values.
        residual: ``(1, N, C)`` or ``(B, N, C)``, added to the output (not modified).

    Returns:
        ``(B, N, C)``.
    """
    batch, tokens, _ = k.shape
    heads, channels = attn.num_heads, residual.shape[-1]
    head_dim, n_image = q_heads_t.shape[1], q_heads_t.shape[2]
    kh = attn.k_proj(k).reshape(batch, tokens, heads, head_dim).transpose(1, 2) * head_dim**-0.5
    vh = attn.v_proj(v).reshape(batch, tokens, heads, -1).transpose(1, 2)  # B, heads, T, d
    wo = attn.out_proj.weight.reshape(channels, heads, -1).permute(1, 2, 0)  # heads, d, C
    # Wo (sum_t w_t v_t) + bo = sum_(h,t) w_ht (Wo_h v_ht + bo / heads): the weights of each
    # head sum to 1 (as in Attention.image_to_tokens)
    values = (torch.matmul(vh, wo) + attn.out_proj.bias / heads).reshape(batch, -1, channels)
    keys = kh.transpose(0, 1).reshape(heads, batch * tokens, head_dim)
    logits = torch.matmul(keys, q_heads_t).reshape(heads, batch, tokens, n_image)
    # softmax over the T prompt tokens of each head; the image axis stays innermost
    weights = logits.softmax(2).transpose(0, 1).reshape(batch, heads * tokens, n_image)
    return torch.baddbmm(residual, weights.transpose(1, 2), values)
