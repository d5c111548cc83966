"""Llama: a pre-RMSNorm causal decoder with RoPE, SwiGLU and grouped-query attention.

Parameter names follow Hugging Face LlamaForCausalLM; RoPE uses its rotate-half layout.
No biases anywhere.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from msgc.errors import SpecError
from msgc.models.common import ModelConfig, init_residual, init_weights


def rope_tables(max_seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, ...]:
    """cos and sin tables, each (max_seq_len, head_dim), in rotate-half layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    t = torch.arange(max_seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hd / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hd) by position; cos, sin are (T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, nh, T, hd / 2)
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, nh, T, hd)
    return x * cos + rotated * sin


class LlamaAttention(nn.Module):
    """Causal grouped-query attention: heads query heads share kv_heads key/value heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.attn_dim = cfg.attn_dim
        self.n_rep = cfg.heads // cfg.kv_heads
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.hidden, cfg.attn_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.attn_dim, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.size()  # (B, T, C)
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim)  # (B, T, nkv, hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, n, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # query head h reads kv group h // n_rep
        k = k.repeat_interleave(self.n_rep, dim=1)  # (B, nh, T, hd)
        v = v.repeat_interleave(self.n_rep, dim=1)  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.attn_dim)  # (B, T, nh * hd)
        return self.o_proj(y)  # (B, T, C)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.ffn, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.ffn, bias=False)
        self.down_proj = nn.Linear(cfg.ffn, cfg.hidden, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.gate_proj(x)) * self.up_proj(x)  # (B, T, ffn)
        return self.down_proj(x)  # (B, T, C)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin))  # (B, T, C)
        x = x + self.dropout(self.mlp(self.post_attention_layernorm(x)))  # (B, T, C)
        return x


class Llama(nn.Module):
    """Token embeddings, decoder layers, final RMSNorm, LM head (untied by default)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.head_dim % 2:
            raise SpecError(f"model.head_dim must be even for llama (RoPE rotates pairs), "
                            f"got {cfg.head_dim}")
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden),
            drop=nn.Dropout(cfg.dropout),
            layers=nn.ModuleList([LlamaDecoderLayer(cfg) for _ in range(cfg.layers)]),
            norm=nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, hd)
        self.register_buffer("rope_sin", sin, persistent=False)  # (max_seq_len, hd)
        self.apply(init_weights)
        for layer in self.model.layers:
            init_residual(layer.self_attn.o_proj, cfg.layers)
            init_residual(layer.mlp.down_proj, cfg.layers)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T), T <= max_seq_len."""
        T = idx.size(1)
        # narrow, not [:T]: a traced T cannot sit inside a Python slice
        cos, sin = self.rope_cos.narrow(0, 0, T), self.rope_sin.narrow(0, 0, T)  # (T, hd)
        x = self.model.drop(self.model.embed_tokens(idx))  # (B, T, C)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)  # (B, T, C)
        return self.lm_head(x)  # (B, T, vocab)
