"""Functional ops that msgc's passes insert into graphs, in plain torch.

These are the reference semantics of MSG's masked operators (shared/reference/msg.md).
The fuse pass may swap them for the Triton kernels in msgc.kernels; fold removes them.
Masks are schedule values: they take no gradient.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def masked_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """LayerNorm over the last dim with statistics weighted by `mask` (n,); eps unscaled."""
    mask = mask.to(x.dtype)
    count = mask.sum()  # d_old + c * (d_new - d_old)
    mean = (x * mask).sum(-1, keepdim=True) / count  # (..., 1)
    centered = x - mean
    var = (centered * centered * mask).sum(-1, keepdim=True) / count  # (..., 1)
    y = centered * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def masked_rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, mask: torch.Tensor, eps: float | None
) -> torch.Tensor:
    """RMSNorm over the last dim: x / sqrt(sum(m x^2) / sum(m) + eps) * weight."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps  # F.rms_norm's default
    mask = mask.to(x.dtype)
    mean_square = (x * x * mask).sum(-1, keepdim=True) / mask.sum()  # (..., 1)
    y = x * torch.rsqrt(mean_square + eps)
    return y * weight if weight is not None else y


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int, keepdim: bool = False
) -> torch.Tensor:
    """mean over `dim` with entries weighted by `mask`, broadcast-shaped for that dim."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(dim, keepdim=keepdim) / mask.sum()


def depth_mix(block_out: torch.Tensor, block_in: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """A new block's output blended in: gate * f(h) + (1 - gate) * h (exact at 0 and at 1)."""
    gate = gate.to(block_out.dtype)
    return gate * block_out + (1 - gate) * block_in


class AttentionDropout(nn.Module):
    """scaled_dot_product_attention whose dropout follows the module's train/eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        p = self.p if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}"
