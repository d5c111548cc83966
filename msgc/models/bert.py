"""BERT: a post-LN bidirectional encoder with a masked-language-model head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from msgc.models.common import ModelConfig, init_weights, make_activation


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_seq_len, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), dtype=torch.long, device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids)  # (B, T, C)
        x = x + self.position_embeddings(pos)  # (B, T, C) + (T, C)
        x = x + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        return self.dropout(self.norm(x))  # (B, T, C)


class BertSelfAttention(nn.Module):
    """Bidirectional multi-head attention with separate q/k/v and an output projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.attn_dim = cfg.attn_dim
        self.dropout = cfg.dropout
        self.query = nn.Linear(cfg.hidden, cfg.attn_dim)
        self.key = nn.Linear(cfg.hidden, cfg.attn_dim)
        self.value = nn.Linear(cfg.hidden, cfg.attn_dim)
        self.out = nn.Linear(cfg.attn_dim, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.size()  # (B, T, C)
        q = self.query(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.key(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = self.value(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.attn_dim)  # (B, T, nh * hd)
        return self.out(y)  # (B, T, C)


class BertMLP(nn.Module):
    """Position-wise feed-forward: hidden -> ffn -> hidden."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.hidden, cfg.ffn)
        self.act = make_activation(cfg.activation)
        self.proj = nn.Linear(cfg.ffn, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))  # (B, T, ffn) -> (B, T, C)


class BertLayer(nn.Module):
    """Post-LN block: ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = BertSelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = BertMLP(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x)))  # (B, T, C)
        x = self.mlp_norm(x + self.dropout(self.mlp(x)))  # (B, T, C)
        return x


class BertMLMHead(nn.Module):
    """dense + activation + LayerNorm, then a decoder to the vocabulary plus its own bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = make_activation(cfg.activation)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.decoder = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.dense(x)))  # (B, T, C)
        return self.decoder(x) + self.bias  # (B, T, vocab)


class Bert(nn.Module):
    """Embeddings, post-LN encoder layers and the MLM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.layers)])
        self.head = BertMLMHead(cfg)
        if cfg.tie_embeddings:
            self.head.decoder.weight = self.embeddings.word_embeddings.weight
        self.apply(init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        predict: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLM logits (B, T, vocab); token_type_ids (B, T) default to all zeros.

        With `predict`, a bool (B, T) mask of the positions to score, the head runs at those
        positions alone and the logits are (N, vocab) in row-major order of the mask, as in
        the original BERT (the head is most of a small model's compute)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # (B, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x)
        if predict is not None:
            x = x[predict]  # (N, C)
        return self.head(x)  # (B, T, vocab) or (N, vocab)
