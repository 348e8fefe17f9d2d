"""The SAM ViT image encoder (ViT-B/L/H and smaller configurations of it).

A plain ViT with windowed attention, a few global-attention blocks, decomposed
relative-position biases and a convolutional neck. Module and parameter names
match Meta's ``segment_anything`` so that official checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_samscope.core.modeling.common import LayerNorm2d, MLPBlock


class ImageEncoderViT(nn.Module):
    """ViT backbone: ``(B, 3, S, S)`` normalised image -> ``(B, out_chans, S/p, S/p)``.

    Args:
        img_size: input side ``S`` (square input).
        patch_size: patch side ``p``; ``S`` must be divisible by it.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the block MLP relative to ``embed_dim``.
        out_chans: channels of the neck output (the prompt embedding width).
        qkv_bias: learnable bias on the query/key/value projection.
        use_abs_pos: learnable absolute position embedding ``pos_embed``.
        use_rel_pos: decomposed relative-position biases in attention.
        window_size: side of the attention windows (0 = global everywhere).
        global_attn_indexes: blocks that use global attention.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}.")
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))

        self.blocks = nn.ModuleList()
        for i in range(depth):
            block_window = 0 if i in global_attn_indexes else window_size
            self.blocks.append(
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    use_rel_pos=use_rel_pos,
                    window_size=block_window,
                    input_size=(grid, grid),
                )
            )

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float -> ``(B, out_chans, S/p, S/p)``."""
        x = self.patch_embed(x)  # B, H, W, C
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        # B,H,W,C -> B,C,H,W; the neck works channels-last, the embedding is returned contiguous
        return self.neck(x.permute(0, 3, 1, 2)).contiguous()


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``(B, C, H, W) -> (B, H/p, W/p, embed_dim)``."""

    def __init__(self, *, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B,C,H,W -> B,H,W,C


class Block(nn.Module):
    """Pre-norm transformer block with optional window attention.

    ``window_size == 0`` means global attention over the whole ``input_size`` grid.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(
            dim=dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=attn_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded_hw, (height, width))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head self-attention on a ``(B, H, W, C)`` grid with decomposed
    relative-position biases (MViTv2), computed with ``scaled_dot_product_attention``.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        batch, height, width, _ = x.shape
        tokens = height * width
        # B, N, 3*C -> 3, B, heads, N, head_dim
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.use_rel_pos:
            out = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (height, width))
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        # B, heads, N, head_dim -> B, H, W, C
        out = out.permute(0, 2, 1, 3).reshape(batch, height, width, -1)
        return self.proj(out)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into ``(B * n_windows, ws, ws, C)`` windows, zero-padding
    the bottom/right edges; also returns the padded ``(Hp, Wp)``."""
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    x = x.view(batch, hp // window_size, window_size, wp // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * n_windows, ws, ws, C) -> (B, H, W, C)``."""
    hp, wp = padded_hw
    height, width = hw
    batch = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.view(batch, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, -1)
    if hp > height or wp > width:
        x = x[:, :height, :width, :].contiguous()
    return x


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather the ``(q_size, k_size, C)`` relative embeddings from a ``(L, C)`` table,
    linearly resizing the table first when ``L != 2 * max(q_size, k_size) - 1``."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if rel_pos.shape[0] != max_rel_dist:
        table = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        table = table.reshape(-1, max_rel_dist).permute(1, 0)
    device = rel_pos.device
    q_coords = torch.arange(q_size, device=device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[relative.long()]


def decomposed_rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the decomposed relative-position bias (MViTv2).

    Args:
        q: unscaled queries ``(B, heads, q_h * q_w, C)``.
        rel_pos_h, rel_pos_w: tables ``(L_h, C)``, ``(L_w, C)``.
        q_size, k_size: query and key grids ``(h, w)``.

    Returns:
        ``rel_h (B, heads, q_h, q_w, k_h)`` and ``rel_w (B, heads, q_h, q_w, k_w)``,
        contiguous: the bias of query ``(i, j)`` and key ``(y, x)`` is
        ``rel_h[..., i, j, y] + rel_w[..., i, j, x]``.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = relative_position_table(q_h, k_h, rel_pos_h).to(q.dtype)
    table_w = relative_position_table(q_w, k_w, rel_pos_w).to(q.dtype)
    batch, heads, _, dim = q.shape
    grid_q = q.reshape(batch * heads, q_h, q_w, dim)
    # rows: for each query row i, (q_w, C) @ (C, k_h); the table is broadcast over B*heads
    rel_h = torch.matmul(grid_q, table_h.transpose(1, 2))  # B*heads, q_h, q_w, k_h
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, table_w).contiguous()
    return (
        rel_h.reshape(batch, heads, q_h, q_w, k_h),
        rel_w.reshape(batch, heads, q_h, q_w, k_w),
    )


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias of decomposed relative positions, materialised.

    Same arguments as :func:`decomposed_rel_pos_terms`. Returns the contiguous
    ``(B, heads, q_h * q_w, k_h * k_w)`` bias, to be added to the scaled logits.
    """
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    batch, heads, q_h, q_w, k_h = rel_h.shape
    k_w = rel_w.shape[-1]
    if _exporting() or torch.is_grad_enabled():  # traceable / differentiable
        bias = rel_h[..., :, None] + rel_w[..., None, :]
    else:  # written straight into contiguous memory (no strided result, no copy)
        bias = q.new_empty((batch, heads, q_h, q_w, k_h, k_w))
        torch.add(rel_h[..., :, None], rel_w[..., None, :], out=bias)
    return bias.reshape(batch, heads, q_h * q_w, k_h * k_w)


def _exporting() -> bool:
    """Tracing for TorchScript / ONNX export: only plain, traceable operations."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


#: How :func:`rel_pos_attention` computes attention on the CPU, per dtype: "sdpa" (the
#: fused kernel, with the bias materialised a chunk of queries at a time) or "explicit"
#: (matrix product, bias added in place, softmax, matrix product, on tiles that stay in
#: the cache). The CPU's fused kernel is fast in float32 but slow in bfloat16.
CPU_ATTENTION = {torch.float32: "sdpa", torch.bfloat16: "explicit"}
_SDPA_CHUNK = 1 << 25  # bias elements materialised at once by the "sdpa" path
_EXPLICIT_CHUNK = 1 << 23  # attention logits per tile of the "explicit" path


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Softmax attention with decomposed relative-position biases on an ``(h, w)`` grid.

    Args:
        q, k, v: ``(B, heads, h * w, C)``.
        rel_pos_h, rel_pos_w: the position tables of the block.
        size: ``(h, w)``, the grid of queries and keys.

    Returns:
        ``(B, heads, h * w, C)``.
    """
    if q.device.type != "cpu" or _exporting() or torch.is_grad_enabled():
        bias = decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, size, size)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, size, size)
    if CPU_ATTENTION.get(q.dtype, "sdpa") == "explicit":
        return _explicit_attention(q, k, v, rel_h, rel_w)
    return _chunked_sdpa(q, k, v, rel_h, rel_w)


def _row_chunks(height: int, rows: int) -> list[tuple[int, int]]:
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


def _chunked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """Fused attention, materialising the bias for a few query rows at a time (bounded
    memory: 128 MB in float32 instead of 805 MB for ViT-B's global blocks)."""
    batch, heads, height, width, k_h = rel_h.shape
    k_w = rel_w.shape[-1]
    per_row = batch * heads * width * k_h * k_w
    rows = max(1, _SDPA_CHUNK // per_row)
    if rows >= height:
        bias = q.new_empty((batch, heads, height, width, k_h, k_w))
        torch.add(rel_h[..., :, None], rel_w[..., None, :], out=bias)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.view(batch, heads, height * width, k_h * k_w)
        )
    out = q.new_empty(q.shape)
    buffers: dict[int, torch.Tensor] = {}
    for r0, r1 in _row_chunks(height, rows):
        n = r1 - r0
        if n not in buffers:
            buffers[n] = q.new_empty((batch, heads, n, width, k_h, k_w))
        bias = buffers[n]
        torch.add(rel_h[:, :, r0:r1, :, :, None], rel_w[:, :, r0:r1, :, None, :], out=bias)
        queries = slice(r0 * width, r1 * width)
        out[:, :, queries] = F.scaled_dot_product_attention(
            q[:, :, queries], k, v, attn_mask=bias.view(batch, heads, n * width, k_h * k_w)
        )
    return out


def _explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(C) + bias) v`` on tiles of (heads, query rows) whose logits
    stay in the cache; the tile buffers are reused (no page faults, no fresh memory)."""
    batch, heads, tokens, dim = q.shape
    _, _, height, width, k_h = rel_h.shape
    k_w = rel_w.shape[-1]
    keys = k_h * k_w
    flat = batch * heads
    queries = (q * dim**-0.5).reshape(flat, tokens, dim)
    keys_t = k.reshape(flat, keys, dim).transpose(1, 2)
    values = v.reshape(flat, keys, dim)
    # Small grids (windows): the bias joins the matrix product, as extra query features
    # rel_h, rel_w against one-hot key row/column features (a few more multiply-adds
    # instead of two slow broadcast passes over the logits).
    augmented = k_h + k_w <= dim // 2
    if augmented:
        queries = torch.cat(
            [queries, rel_h.reshape(flat, tokens, k_h), rel_w.reshape(flat, tokens, k_w)], dim=-1
        )
        eye_h = torch.eye(k_h, dtype=q.dtype, device=q.device)
        eye_w = torch.eye(k_w, dtype=q.dtype, device=q.device)
        one_hot = torch.cat([eye_h.repeat_interleave(k_w, 0), eye_w.repeat(k_h, 1)], dim=1)
        keys_t = torch.cat([keys_t, one_hot.t().expand(flat, -1, -1)], dim=1)
    rel_h = rel_h.reshape(flat, height, width, k_h, 1)
    rel_w = rel_w.reshape(flat, height, width, 1, k_w)
    if tokens * keys <= _EXPLICIT_CHUNK:  # whole maps, several heads per tile
        group, rows = max(1, _EXPLICIT_CHUNK // (tokens * keys)), height
    else:  # one head, a few query rows per tile
        group, rows = 1, max(1, _EXPLICIT_CHUNK // (width * keys))
    out = q.new_empty((flat, tokens, dim))
    logits = q.new_empty((group, rows * width, keys))
    weights = torch.empty_like(logits)
    for h0 in range(0, flat, group):
        heads_part = slice(h0, min(h0 + group, flat))
        g = heads_part.stop - h0
        for r0, r1 in _row_chunks(height, rows):
            n = (r1 - r0) * width
            tile, probs = logits[:g, :n], weights[:g, :n]
            rows_part = slice(r0 * width, r1 * width)
            torch.bmm(queries[heads_part, rows_part], keys_t[heads_part], out=tile)
            if not augmented:
                grid = tile.view(g, r1 - r0, width, k_h, k_w)
                grid += rel_h[heads_part, r0:r1]
                grid += rel_w[heads_part, r0:r1]
            torch.softmax(tile, -1, out=probs)
            torch.bmm(probs, values[heads_part], out=out[heads_part, rows_part])
    return out.reshape(batch, heads, tokens, dim)
