"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Inference (no autograd) takes a faster, algebraically equal route through the
cross attentions, because there are few prompt tokens ``T`` (about 7) and many
image tokens ``N`` (4096):

- The key/value projections of the ``N`` image tokens are folded into the ``T``
  queries (``q . (W x + b) = (W^T q) . x + q . b``; the ``q . b`` term is the same
  for every key, so softmax ignores it), and the value projection is applied after
  the weighted sum (softmax weights sum to 1). The same folding is used when image
  tokens query the prompt tokens, together with the output projection. This does
  ``T * heads`` (56) instead of ``internal_dim`` (128) multiply-adds per image token
  and channel, and avoids projecting the image tokens at all.
- With one image embedding for a batch of prompt sets (point grids of
  segment-everything, several boxes), the image tokens stay batch-1 until the first
  image-to-token update, so the work of the first block that does not depend on the
  prompts is done once for the whole batch.

The predict layer goes one step further for one image without a mask prompt (the first
block's image side projected once per image: ``core.predict.prepared_image``), through
:meth:`TwoWayAttentionBlock.attend_tokens` and :meth:`TwoWayTransformer.final_attention`.

Training (autograd on) keeps the plain projections, exactly as the official model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_samscope.core.modeling.common import MLPBlock


class TwoWayTransformer(nn.Module):
    """Decoder transformer over ``(B, C, h, w)`` image tokens and ``(B, T, C)`` prompt tokens.

    Args:
        depth: number of :class:`TwoWayAttentionBlock` layers.
        embedding_dim: ``C``.
        num_heads: attention heads; must divide ``C // attention_downsample_rate``.
        mlp_dim: hidden width of the token MLP.
        attention_downsample_rate: width reduction of the cross attentions.
    """

    def __init__(
        self,
        *,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        *,
        outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        Args:
            image_embedding: ``(B, C, h, w)``, or ``(1, C, h, w)`` shared by all ``B``
                prompt sets.
            image_pe: ``(B, C, h, w)`` or ``(1, C, h, w)`` positional encoding of the
                image tokens.
            point_embedding: ``(B, T, C)`` prompt (and output) tokens.
            outputs: only the first ``outputs`` tokens are wanted (the decoder's output
                tokens): the final attention is then computed for those rows only (each
                row's result is independent of the others). None: all ``T``.

        Returns:
            processed tokens ``(B, T, C)`` (``(B, outputs, C)``) and image tokens
            ``(B, h * w, C)``.
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)  # B,C,H,W -> B,HW,C
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        if _use_folded_attention():
            # Token-major memory once (a view, no copy, for channels-last inputs): every
            # elementwise op and LayerNorm below on the transposed view costs ~10x more.
            keys, key_pe = keys.contiguous(), key_pe.contiguous()
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            # after the first block the keys are the transformer's own tensor
            queries, keys = layer(
                queries, keys, query_pe=point_embedding, key_pe=key_pe, keys_owned=i > 0
            )
        return self.final_attention(queries, keys, point_embedding, key_pe, outputs=outputs)

    def final_attention(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        point_embedding: torch.Tensor,
        key_pe: torch.Tensor,
        *,
        outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last token-to-image attention and its norm, after the blocks.

        Args:
            queries: ``(B, T, C)`` tokens from the blocks.
            keys: ``(B, N, C)`` image tokens from the blocks (``(1, N, C)`` without blocks).
            point_embedding: ``(B, T, C)`` the prompt tokens given to :meth:`forward`.
            key_pe: ``(1, N, C)`` or ``(B, N, C)`` positional encoding of the image tokens.
            outputs: as in :meth:`forward`.

        Returns:
            as :meth:`forward`.
        """
        if outputs is not None:  # the other rows of the final attention are not wanted
            queries, point_embedding = queries[:, :outputs], point_embedding[:, :outputs]
        q = queries + point_embedding
        if _use_folded_attention():
            key_pe = key_pe.to(keys.dtype)  # under autocast: no float32 copy of the keys
            attn_out = self.final_attn_token_to_image.tokens_to_image(q, keys + key_pe, keys)
        else:
            attn_out = self.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys)
        queries = self.norm_final_attn(queries + attn_out)
        if keys.shape[0] != queries.shape[0]:  # depth 0: image tokens never got the batch
            keys = keys.expand(queries.shape[0], -1, -1)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross attention, token MLP, image->token
    cross attention; each followed by a residual add and a LayerNorm."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        *,
        keys_owned: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, C)`` queries, ``(B, N, C)`` (or shared ``(1, N, C)``) keys -> updated
        queries ``(B, T, C)`` and keys ``(B, N, C)``. ``keys_owned``: the keys may be
        overwritten (inference saves a copy of the batch's image tokens)."""
        queries = self.attend_tokens(queries, query_pe)
        if not _use_folded_attention():
            q = queries + query_pe
            k = keys + key_pe
            queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
            queries = self.norm3(queries + self.mlp(queries))
            q = queries + query_pe
            keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        else:
            # used by both cross attentions (keys do not change between); in the keys'
            # dtype, so that under autocast no float32 copy of the batch's keys is made
            image_k = keys + key_pe.to(keys.dtype)
            attn_out = self.cross_attn_token_to_image.tokens_to_image(queries + query_pe, image_k, keys)
            queries = self.norm2(queries + attn_out)
            queries = self.norm3(queries + self.mlp(queries))
            attn = self.cross_attn_image_to_token
            keys = self.norm4(
                attn.image_to_tokens(
                    image_k, queries + query_pe, queries, residual=keys, in_place=keys_owned
                )
            )
        return queries, keys

    def attend_tokens(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        """The token self-attention and its norm: ``(B, T, C)`` -> ``(B, T, C)``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        return self.norm1(queries)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to
    ``embedding_dim // downsample_rate`` channels, then back to ``embedding_dim``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(
                f"num_heads {num_heads} must divide the attention width {self.internal_dim}."
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        # B, N, C -> B, heads, N, C/heads
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q (B, Nq, C)``, ``k, v (B, Nk, C)`` -> ``(B, Nq, C)``."""
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, tokens, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, tokens, self.internal_dim)
        return self.out_proj(out)

    def _head_weights(self, linear: nn.Linear) -> torch.Tensor:
        """``(heads, d, C)`` view of a projection's ``(heads * d, C)`` weight."""
        return linear.weight.reshape(self.num_heads, -1, linear.weight.shape[1])

    def tokens_to_image(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``forward(q, k, v)`` for few queries and many keys, without projecting the keys
        or the values (inference).

        Args:
            q: ``(B, T, C)`` prompt-token queries.
            k, v: ``(B, N, C)`` image tokens, or ``(1, N, C)`` shared by the batch.

        Returns:
            ``(B, T, C)``.
        """
        batch, tokens, _ = q.shape
        heads, channels = self.num_heads, k.shape[-1]
        rows = heads * tokens
        scale = (self.internal_dim // heads) ** -0.5
        qh = self._separate_heads(self.q_proj(q))  # B, heads, T, d
        # q . (Wk x + bk) = (Wk^T q) . x + q . bk, and q . bk is the same for every key,
        # which softmax ignores.
        folded = torch.matmul(qh, self._head_weights(self.k_proj)) * scale  # B, heads, T, C
        if k.shape[0] == 1 and v.shape[0] == 1:  # one image for every prompt set
            weights = (folded.reshape(batch * rows, channels) @ k[0].transpose(0, 1)).softmax(-1)
            mixed = weights @ v[0]  # B*rows, C
        else:
            logits = torch.matmul(folded.reshape(batch, rows, channels), k.transpose(1, 2))
            mixed = torch.matmul(logits.softmax(-1), v)  # B, rows, C
        # softmax rows sum to 1, so sum_n w_n (Wv x_n + bv) = Wv (sum_n w_n x_n) + bv
        mixed = mixed.reshape(batch, heads, tokens, channels)
        wv = self._head_weights(self.v_proj).transpose(1, 2)  # heads, C, d
        out = torch.matmul(mixed, wv) + self.v_proj.bias.reshape(heads, 1, -1)
        out = out.transpose(1, 2).reshape(batch, tokens, self.internal_dim)
        return self.out_proj(out)

    def image_to_tokens(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor,
        *,
        in_place: bool = False,
    ) -> torch.Tensor:
        """``residual + forward(q, k, v)`` for many queries and few keys, without
        projecting the queries (inference).

        Args:
            q: ``(B, N, C)`` image-token queries, or ``(1, N, C)`` shared by the batch.
            k, v: ``(B, T, C)`` prompt-token keys and values.
            residual: ``(B, N, C)`` or ``(1, N, C)``, added to the output.
            in_place: accumulate into ``residual`` (when it has the batch) instead of a
                new tensor.

        Returns:
            ``(B, N, C)``.
        """
        batch, tokens, _ = k.shape
        heads, channels = self.num_heads, q.shape[-1]
        rows = heads * tokens
        scale = (self.internal_dim // heads) ** -0.5
        kh = self._separate_heads(self.k_proj(k))  # B, heads, T, d
        vh = self._separate_heads(self.v_proj(v))
        # (Wq x + bq) . k = x . (Wq^T k) + bq . k
        folded = torch.matmul(kh, self._head_weights(self.q_proj)) * scale  # B, heads, T, C
        offset = (kh @ self.q_proj.bias.reshape(heads, -1, 1)) * scale  # B, heads, T, 1
        # Wo (sum_t w_t v_t) + bo = sum_(h,t) w_ht (Wo_h v_ht + bo / heads), because the
        # weights of each head sum to 1.
        wo = self.out_proj.weight.reshape(channels, heads, -1).permute(1, 2, 0)  # heads, d, C
        values = (torch.matmul(vh, wo) + self.out_proj.bias / heads).reshape(batch, rows, channels)
        if q.shape[0] == 1:  # one image for every prompt set: one large matrix product
            logits = folded.reshape(batch * rows, channels) @ q[0].transpose(0, 1)
            logits = logits.reshape(batch, heads, tokens, -1) + offset
        else:
            logits = torch.matmul(folded.reshape(batch, rows, channels), q.transpose(1, 2))
            logits = logits.reshape(batch, heads, tokens, -1) + offset
        # softmax over the T prompt tokens of each head; the image axis stays innermost
        weights = logits.softmax(2).reshape(batch, rows, -1)  # B, heads*T, N
        if in_place and residual.shape[0] == batch:
            dtype = residual.dtype  # under autocast the products come out in its dtype
            return residual.baddbmm_(weights.transpose(1, 2).to(dtype), values.to(dtype))
        return torch.baddbmm(residual, weights.transpose(1, 2), values)


def _use_folded_attention() -> bool:
    """The folded cross attentions serve inference; training keeps the plain graph."""
    return not torch.is_grad_enabled()
