"""GPT-2: a pre-LN causal decoder, after karpathy/nanoGPT's model.py.

Parameter names follow nanoGPT (and so Hugging Face GPT2LMHeadModel, whose Conv1D weights
are the transposes of these Linear weights).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from msgc.models.common import ModelConfig, init_residual, init_weights, make_activation


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused q/k/v projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.attn_dim = cfg.attn_dim
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.hidden, 3 * cfg.attn_dim)
        self.c_proj = nn.Linear(cfg.attn_dim, cfg.hidden)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.size()  # (B, T, C)
        q, k, v = self.c_attn(x).split(self.attn_dim, dim=2)  # 3 x (B, T, nh * hd)
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.attn_dim)  # (B, T, nh * hd)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    """Position-wise feed-forward: hidden -> ffn -> hidden."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden, cfg.ffn)
        self.act = make_activation(cfg.activation)
        self.c_proj = nn.Linear(cfg.ffn, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c_fc(x))  # (B, T, ffn)
        return self.dropout(self.c_proj(x))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(nn.Module):
    """Token + learned position embeddings, pre-LN blocks, final LayerNorm, LM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.hidden),
            wpe=nn.Embedding(cfg.max_seq_len, cfg.hidden),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.layers)]),
            ln_f=nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(init_weights)
        for block in self.transformer.h:
            init_residual(block.attn.c_proj, cfg.layers)
            init_residual(block.mlp.c_proj, cfg.layers)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T), T <= max_seq_len."""
        pos = torch.arange(idx.size(1), dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)  # (B, T, C)
        return self.lm_head(x)  # (B, T, vocab)
