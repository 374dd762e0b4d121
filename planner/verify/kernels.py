"""The torch runner's compute kernels; `planner calibrate` times these same functions.

Weights and the KV cache are stored in bf16, as the plan's precision says, so memory use and
bytes read match the cost model. Math runs in the device's compute dtype: bf16 on a GPU; fp32 on
a CPU, whose AVX2/AVX-512F units have no bf16 FMA (a bf16 matmul there measured about 20x slower
than fp32). Large weights are up-cast in row blocks that stay in cache, as CPU engines do
(llama.cpp converts half-precision tiles on the fly), instead of materialising an fp32 copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention

STORE = torch.bfloat16  # weights, KV cache and activations sent between processes
CAST_ROWS = 2048  # up-cast block: 2048 rows x 256-wide fp32 = 2 MiB, about an L2/L3 slice


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device has bf16 math units (GPUs), else fp32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y = x @ w.T with `w` [n, k] stored in bf16 and `x` in the compute dtype."""
    if w.dtype == x.dtype:
        return F.linear(x, w)
    n = w.shape[0]
    if n <= CAST_ROWS:
        return F.linear(x, w.to(x.dtype))
    out = x.new_empty(*x.shape[:-1], n)
    for a in range(0, n, CAST_ROWS):
        out[..., a:a + CAST_ROWS] = F.linear(x, w[a:a + CAST_ROWS].to(x.dtype))
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), w.to(x.dtype), eps)


def rope_tables(max_pos: int, head_dim: int, theta: float, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [max_pos, head_dim/2] of rotary position embeddings (Llama convention)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(max_pos, device=device, dtype=torch.float32), inv)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [tokens, heads, d] by per-token `cos`/`sin` [tokens, d/2] (rotate-half form)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Causal GQA attention of a prompt chunk: `q` [n, H, d] at positions start..start+n-1 over
    `k`, `v` [start+n, KV, d]; returns [n, H*d]."""
    n, heads, d = q.shape
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None].to(q.dtype), v.transpose(0, 1)[None].to(q.dtype)
    if start == 0:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    else:
        keys = torch.arange(start + n, device=q.device)
        mask = keys[None, :] <= (start + torch.arange(n, device=q.device))[:, None]
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=True)
    return out[0].transpose(0, 1).reshape(n, heads * d)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """One new token per sequence: `q` [B, H, d] over cached `k`, `v` [B, KV, L, d] (bf16) of which
    the first `lengths[b]` positions are valid; returns [B, H*d]."""
    b, heads, d = q.shape
    span = k.shape[2]
    mask = (torch.arange(span, device=q.device)[None, :] < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q[:, :, None, :], k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                         enable_gqa=True)
    return out.reshape(b, heads * d)

