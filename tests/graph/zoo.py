"""A zoo of small Transformers written the way real code writes them.

None of these models is known to msgc: each is plain PyTorch in the style of a public
code base (nanoGPT, GPT-J, Llama, BERT, ...). The tests in test_zoo.py grow every one of
them along every dimension it has and check that growth preserves the function.
Sizes are tiny (hidden 16, 2 layers) so that the whole zoo runs in seconds on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

import msgc
from msgc.models import build_model

VOCAB = 32
BLOCK = 16  # max sequence length
BATCH, SEQ = 2, 8


def token_ids(seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


# --- 1. nanoGPT: fused qkv, split(n_embd), view(B, T, nh, C // nh), tied head -------------


class NanoCausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        assert n_embd % n_head == 0
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.n_embd = n_embd
        self.dropout = dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoMLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NanoBlock(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = NanoCausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = NanoMLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class NanoGPT(nn.Module):
    """karpathy/nanoGPT model.py, shrunk: wte/wpe, h.N, ln_f, tied lm_head."""

    def __init__(self, n_embd=16, n_head=2, n_layer=2, dropout=0.1):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(VOCAB, n_embd),
            wpe=nn.Embedding(BLOCK, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([NanoBlock(n_embd, n_head, dropout) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, VOCAB, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        device = idx.device
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)


# --- 2. separate q/k/v, manual attention with a causal-mask buffer; untied, no biases ------


class ManualAttention(nn.Module):
    def __init__(self, dim, n_heads, dropout):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.register_buffer(
            "bias", torch.tril(torch.ones(BLOCK, BLOCK)).view(1, 1, BLOCK, BLOCK)
        )

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_drop(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.o(y)


class ReluMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)))


class ManualBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn, dropout):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=False)
        self.attn = ManualAttention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim, bias=False)
        self.mlp = ReluMLP(dim, ffn)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ManualAttentionLM(nn.Module):
    """minGPT-style attention by hand; bias-free everywhere, untied LM head."""

    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2, dropout=0.1):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(BLOCK, dim)
        self.blocks = nn.ModuleList(
            [ManualBlock(dim, n_heads, ffn, dropout) for _ in range(n_layers)]
        )
        self.norm = nn.LayerNorm(dim, bias=False)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


# --- 3. GPT-J / PaLM parallel block: x + attn(ln(x)) + mlp(ln(x)), GELU-tanh -------------


class ParallelBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.fc_in = nn.Linear(dim, ffn)
        self.fc_out = nn.Linear(ffn, dim)

    def forward(self, x):
        B, T, C = x.shape
        h = self.ln(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = self.out(a.transpose(1, 2).reshape(B, T, C))
        m = self.fc_out(F.gelu(self.fc_in(h), approximate="tanh"))
        return x + a + m


class ParallelLM(nn.Module):
    """Tied embeddings, one shared LayerNorm per block, a final bias-free norm."""

    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList([ParallelBlock(dim, n_heads, ffn) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(dim, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for layer in self.layers:
            x = layer(x)
        return F.linear(self.ln_f(x), self.wte.weight)


# --- 4. Llama-like GQA: repeat_interleave, hand-written RMSNorm, fused gate_up + chunk ----


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        return self._norm(x.float()).type_as(x) * self.weight


class FusedSwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GQAAttention(nn.Module):
    """kv heads shared by groups of query heads; kv broadcast by repeat_interleave or expand."""

    def __init__(self, dim, n_heads, n_kv_heads, head_dim, broadcast="repeat_interleave",
                 use_sdpa_gqa=False):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.n_rep = n_heads // n_kv_heads
        self.broadcast = broadcast
        self.use_sdpa_gqa = use_sdpa_gqa
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, dim, bias=False)

    def _repeat_kv(self, x):
        # x: (B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd), query head h reads kv h // n_rep
        if self.broadcast == "repeat_interleave":
            return torch.repeat_interleave(x, self.n_rep, dim=1)
        B, n_kv, T, hd = x.shape
        x = x[:, :, None, :, :].expand(B, n_kv, self.n_rep, T, hd)
        return x.reshape(B, n_kv * self.n_rep, T, hd)

    def forward(self, x):
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim).transpose(1, 2)
        xk = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        xv = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.use_sdpa_gqa:
            out = F.scaled_dot_product_attention(xq, xk, xv, is_causal=True, enable_gqa=True)
        else:
            xk, xv = self._repeat_kv(xk), self._repeat_kv(xv)
            out = F.scaled_dot_product_attention(xq, xk, xv, is_causal=True)
        out = out.transpose(1, 2).contiguous().view(bsz, seqlen, -1)
        return self.wo(out)


class GQABlock(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, head_dim, ffn, fused_mlp=False, **attn):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = GQAAttention(dim, n_heads, n_kv_heads, head_dim, **attn)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = FusedSwiGLU(dim, ffn) if fused_mlp else SwiGLU(dim, ffn)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class GQALM(nn.Module):
    """Meta-Llama-style: tok_embeddings, layers, norm, output; no positions (causal mask only)."""

    def __init__(self, dim=16, n_heads=4, n_kv_heads=2, head_dim=4, ffn=32, n_layers=2, **attn):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(
            [GQABlock(dim, n_heads, n_kv_heads, head_dim, ffn, **attn) for _ in range(n_layers)]
        )
        self.norm = RMSNorm(dim)
        self.output = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h)).float()


# --- 6. post-LN BERT-like encoder with token types and a padding mask ---------------------


class EncoderSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.all_head_size = heads * self.attention_head_size
        self.query = nn.Linear(hidden, self.all_head_size)
        self.key = nn.Linear(hidden, self.all_head_size)
        self.value = nn.Linear(hidden, self.all_head_size)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, extended_mask):
        q = self.transpose_for_scores(self.query(hidden_states))
        k = self.transpose_for_scores(self.key(hidden_states))
        v = self.transpose_for_scores(self.value(hidden_states))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        scores = scores + extended_mask
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size()[:-2] + (self.all_head_size,))
        return self.LayerNorm(self.dropout(self.dense(context)) + hidden_states)


class EncoderLayer(nn.Module):
    def __init__(self, hidden, heads, intermediate):
        super().__init__()
        self.attention = EncoderSelfAttention(hidden, heads)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, extended_mask):
        x = self.attention(x, extended_mask)
        return self.LayerNorm(self.output(F.gelu(self.intermediate(x))) + x)


class PostLNEncoder(nn.Module):
    """HF-BERT-flavoured: token types, additive padding mask, tanh pooler, classifier."""

    def __init__(self, hidden=16, heads=2, intermediate=32, layers=2, labels=3):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, hidden)
        self.position_embeddings = nn.Embedding(BLOCK, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layer = nn.ModuleList(
            [EncoderLayer(hidden, heads, intermediate) for _ in range(layers)]
        )
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, labels)

    def forward(self, input_ids, token_type_ids, attention_mask):
        seq_length = input_ids.size(1)
        position_ids = torch.arange(seq_length, dtype=torch.long, device=input_ids.device)
        position_ids = position_ids.unsqueeze(0).expand_as(input_ids)
        emb = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
               + self.token_type_embeddings(token_type_ids))
        x = self.emb_norm(emb)
        extended = attention_mask[:, None, None, :].to(dtype=x.dtype)
        extended = (1.0 - extended) * -10000.0
        for layer_module in self.layer:
            x = layer_module(x, extended)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)


def encoder_inputs() -> tuple:
    ids = token_ids(1)
    types = torch.zeros_like(ids)
    types[:, SEQ // 2:] = 1
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # the second sequence is padded
    return ids, types, mask


# --- 8. heads read from a tensor's shape: view(b, t, -1, hd), reshape(B, T, -1) -------------


class ShapeHeadsAttention(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.head_dim = head_dim
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.to_qkv(x)
        q, k, v = qkv.split(qkv.shape[-1] // 3, dim=-1)
        q = q.view(b, t, -1, self.head_dim).transpose(1, 2)
        k = k.view(b, t, -1, self.head_dim).transpose(1, 2)
        v = v.view(b, t, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.proj(y)


class ShapeHeadsBlock(nn.Module):
    def __init__(self, dim, head_dim, ffn):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShapeHeadsAttention(dim, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(approximate="tanh"),
                                 nn.Linear(ffn, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ShapeHeadsLM(nn.Module):
    """Head count never stored: it is read from tensor shapes (-1 in view)."""

    def __init__(self, dim=16, head_dim=8, ffn=32, n_layers=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList([ShapeHeadsBlock(dim, head_dim, ffn) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(dim)
        self.unembed = nn.Linear(dim, VOCAB)

    def forward(self, idx):
        x = self.embed(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.unembed(self.norm(x))


# --- 9. not symbolically traceable: assert on T and torch.ones(T, T) -------------------------


class UntraceableAttention(nn.Module):
    def __init__(self, dim, n_heads, dropout):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        hd = C // self.n_heads
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, self.n_heads, hd).transpose(1, 2)
        k = k.view(B, T, self.n_heads, hd).transpose(1, 2)
        v = v.view(B, T, self.n_heads, hd).transpose(1, 2)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class UntraceableBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = UntraceableAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class UntraceableLM(nn.Module):
    """`assert T <= block_size` and torch.ones(T, T): symbolic_trace fails, export works."""

    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2, dropout=0.1):
        super().__init__()
        self.block_size = BLOCK
        self.emb = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(BLOCK, dim)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList([UntraceableBlock(dim, n_heads, ffn, dropout)
                                for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, idx):
        B, T = idx.shape
        assert T <= self.block_size, f"sequence of {T} exceeds block size {self.block_size}"
        x = self.drop(self.emb(idx) + self.pos(torch.arange(T, device=idx.device)))
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x))


# --- 10. pre-LN with a learned absolute position Parameter, ReLU MLP ------------------------


class AbsPosBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn):
        super().__init__()
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = torch.chunk(self.in_proj(self.ln_attn(x)), 3, dim=-1)
        q, k, v = [t.reshape(B, T, self.n_heads, C // self.n_heads).permute(0, 2, 1, 3)
                   for t in (q, k, v)]
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out_proj(y.permute(0, 2, 1, 3).reshape(B, T, C))
        return x + self.mlp(self.ln_mlp(x))


class AbsPosEncoder(nn.Module):
    """ViT/GPT-1 style: a (1, block, C) position Parameter added to token embeddings."""

    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2):
        super().__init__()
        self.token_emb = nn.Embedding(VOCAB, dim)
        self.pos_emb = nn.Parameter(torch.randn(1, BLOCK, dim) * 0.02)
        self.blocks = nn.ModuleList([AbsPosBlock(dim, n_heads, ffn) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, idx):
        T = idx.size(1)
        x = self.token_emb(idx) + self.pos_emb[:, :T, :]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


# --- 11. Hugging Face GPT-2 Conv1D (addmm, view(size_out)) ----------------------------------


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: a linear with the weight transposed."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class HFGPT2Attention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = n_heads, dim // n_heads, dim
        self.c_attn = Conv1D(3 * dim, dim)
        self.c_proj = Conv1D(dim, dim)

    def _split_heads(self, t):
        new_shape = t.size()[:-1] + (self.num_heads, self.head_dim)
        return t.view(new_shape).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(self.split_size, dim=2)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.permute(0, 2, 1, 3).contiguous()
        y = y.view(y.size()[:-2] + (self.num_heads * self.head_dim,))
        return self.c_proj(y)


class HFGPT2Block(nn.Module):
    def __init__(self, dim, n_heads, ffn):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = HFGPT2Attention(dim, n_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.c_fc = Conv1D(ffn, dim)
        self.c_proj = Conv1D(dim, ffn)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class HFGPT2(nn.Module):
    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim)
        self.wpe = nn.Embedding(BLOCK, dim)
        self.h = nn.ModuleList([HFGPT2Block(dim, n_heads, ffn) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids):
        position_ids = torch.arange(input_ids.size(-1), dtype=torch.long).unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(position_ids)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# --- the registry -----------------------------------------------------------------------------


def _family(name: str, **sizes):
    spec = SimpleNamespace(family=name, vocab_size=VOCAB, max_seq_len=BLOCK, hidden=16,
                           heads=2, kv_heads=2, head_dim=8, ffn=32, layers=2, dropout=0.1)
    for k, v in sizes.items():
        setattr(spec, k, v)
    return build_model(spec)


@dataclass
class Variant:
    """A zoo model, its example inputs, and the growth cases it supports.

    `cases` maps a case name to grow() targets: one case per dimension the model can grow,
    plus "combined" (all at once). `refused` maps a case to targets msgc must refuse, with
    a regex of the GrowthError's message.
    `regrow` is the second, small growth applied to the folded model.
    """

    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[], tuple]
    cases: dict[str, dict]
    refused: dict[str, tuple[dict, str]] = field(default_factory=dict)  # case -> (targets, why)
    regrow: dict = field(default_factory=lambda: {"ffn": 56})


def _ids() -> tuple:
    return (token_ids(),)


MHA = {
    "hidden": {"hidden": 24},
    "ffn": {"ffn": 48},
    "heads": {"heads": 3},
    "layers": {"layers": 3},
    "combined": {"hidden": 24, "ffn": 48, "heads": 3, "layers": 3},
}

GQA = {  # 2 kv heads x 2 query heads each
    "hidden": {"hidden": 24},
    "ffn": {"ffn": 48},
    "heads": {"heads": 6},  # 2 kv heads x 3 query heads each
    "kv_heads": {"kv_heads": 3, "heads": 6},  # 3 kv heads x 2 each
    "combined": {"hidden": 24, "ffn": 48, "heads": 9, "kv_heads": 3, "layers": 3},
    "layers": {"layers": 3},
}

MQA = {  # 1 kv head x 4 query heads; heads grow, the one kv head stays one
    "hidden": {"hidden": 24},
    "ffn": {"ffn": 48},
    "heads": {"heads": 6},
    "layers": {"layers": 3},
    "combined": {"hidden": 24, "ffn": 48, "heads": 6, "layers": 3},
}

# a size-1 dimension has no layout to grow: msgc refuses to add kv heads to MQA, and says why
MQA_KV_REFUSAL = r"shares one key/value head across all query heads \(MQA\); msgc cannot add"
MQA_REFUSED = {
    "kv_heads": ({"kv_heads": 2, "heads": 8}, MQA_KV_REFUSAL),
    "combined": ({"hidden": 24, "ffn": 48, "heads": 8, "kv_heads": 2, "layers": 3},
                 MQA_KV_REFUSAL),
}


VARIANTS: list[Variant] = [
    Variant("family_gpt2", lambda: _family("gpt2"), _ids, MHA),
    Variant("family_bert", lambda: _family("bert"),
            lambda: (token_ids(), torch.zeros_like(token_ids())), MHA),
    Variant("family_llama", lambda: _family("llama", heads=4, kv_heads=2, head_dim=4), _ids,
            GQA),
    Variant("nanogpt", NanoGPT, _ids, {**MHA, "ffn": {"ffn": 80},
                                       "combined": {**MHA["combined"], "ffn": 80}},
            regrow={"ffn": 96}),
    Variant("manual_attention_nobias", ManualAttentionLM, _ids, MHA),
    Variant("parallel_block_tied", ParallelLM, _ids, MHA),
    Variant("gqa_repeat_interleave", GQALM, _ids, GQA),
    Variant("gqa_expand", lambda: GQALM(broadcast="expand"), _ids, GQA),
    Variant("gqa_sdpa_enable_gqa", lambda: GQALM(use_sdpa_gqa=True), _ids, GQA),
    Variant("mqa_expand", lambda: GQALM(n_heads=4, n_kv_heads=1, broadcast="expand"), _ids,
            MQA, refused=MQA_REFUSED),
    Variant("mqa_repeat_interleave", lambda: GQALM(n_heads=4, n_kv_heads=1), _ids, MQA,
            refused=MQA_REFUSED),
    Variant("swiglu_fused_gate_up", lambda: GQALM(fused_mlp=True), _ids, GQA,
            regrow={"hidden": 32}),
    Variant("postln_encoder_token_types", PostLNEncoder, encoder_inputs, MHA),
    Variant("heads_from_shape", ShapeHeadsLM, _ids, MHA),
    Variant("untraceable_export", UntraceableLM, _ids, MHA),
    Variant("abs_pos_parameter_relu", AbsPosEncoder, _ids, MHA),
    Variant("hf_gpt2_conv1d", HFGPT2, _ids, MHA),
]

BY_NAME = {v.name: v for v in VARIANTS}


# --- 12. ALiBi: a per-head slope buffer biases the scores (a zeroed q still attends) --------


class AlibiAttention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        slopes = torch.tensor([2 ** (-8 * (i + 1) / n_heads) for i in range(n_heads)])
        self.register_buffer("slopes", slopes.view(n_heads, 1, 1))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        pos = torch.arange(T, device=x.device)
        distance = (pos[None, :] - pos[:, None]).clamp(max=0).to(x.dtype)  # (T, T), <= 0
        bias = self.slopes * distance  # (nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = q @ k.transpose(-2, -1) * self.head_dim ** -0.5 + bias
        att = att.masked_fill(causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.out(y)


class AlibiBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = AlibiAttention(dim, n_heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = ReluMLP(dim, ffn)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class AlibiLM(nn.Module):
    """BLOOM/MPT-style ALiBi: no position embeddings, slopes buffer shaped by heads."""

    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim)
        self.ln_emb = nn.LayerNorm(dim)
        self.h = nn.ModuleList([AlibiBlock(dim, n_heads, ffn) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, input_ids):
        x = self.ln_emb(self.wte(input_ids))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# --- 13. ViT: conv patch embedding, CLS token Parameter, position Parameter -----------------


class ViTBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, self.n_heads, C // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """timm-style VisionTransformer: 8x8 images, 2x2 patches, CLS token, class head."""

    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2, classes=5, img=8, patch=2,
                 conv=True):
        super().__init__()
        self.conv, self.patch = conv, patch
        if conv:
            self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        else:  # lucidrains/vit-pytorch: rearrange patches, then LayerNorm + Linear
            self.patch_norm = nn.LayerNorm(3 * patch * patch)
            self.patch_embed = nn.Linear(3 * patch * patch, dim)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([ViTBlock(dim, n_heads, ffn) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, images):
        if self.conv:
            x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, C)
        else:
            b, c, h, w = images.shape
            p = self.patch
            x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
            x = self.patch_embed(self.patch_norm(x.reshape(b, (h // p) * (w // p), p * p * c)))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def images() -> tuple:
    g = torch.Generator().manual_seed(3)
    return (torch.randn(BATCH, 3, 8, 8, generator=g),)





def found_sizes(model: nn.Module, inputs: tuple) -> dict[str, set[int]]:
    """hidden / ffn / heads / kv_heads / layers that msgc.analyze finds in `model` afresh,
    each the set of its sizes over the blocks (read from the graph, not a growth record)."""
    found: dict[str, set[int]] = {}
    kv = 0
    for report in msgc.analyze(model, example_inputs=inputs):
        name, size = report.name, report.size
        if name == "kv_heads":
            kv = size
        elif name == "group":  # reported right after its attention's kv_heads
            name, size = "heads", kv * size
        elif name == "heads":  # one key/value head per query head
            found.setdefault("kv_heads", set()).add(size)
        found.setdefault("layers" if name == "blocks" else name, set()).add(size)
    return found


# --- 14. rotary table built in forward (torch.outer) and a top-k Mixture of Experts --------


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryAttention(nn.Module):
    """Rotary embeddings computed in forward from arange and an inv_freq buffer; with
    `wrapped`, the table under @torch.no_grad() and attention under autocast(enabled=False),
    as Hugging Face's rotary classes write them."""

    def __init__(self, dim, n_heads, head_dim=8, wrapped=False):
        super().__init__()
        self.n_heads, self.head_dim, self.wrapped = n_heads, head_dim, wrapped
        self.qkv = nn.Linear(dim, 3 * n_heads * head_dim, bias=False)
        self.proj = nn.Linear(n_heads * head_dim, dim, bias=False)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _table(self, T, device):
        freqs = torch.outer(torch.arange(T, device=device).float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        return emb.cos(), emb.sin()

    @torch.no_grad()
    def _table_no_grad(self, T, device):
        return self._table(T, device)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        cos, sin = (self._table_no_grad if self.wrapped else self._table)(T, x.device)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.wrapped:
            with torch.autocast(x.device.type, enabled=False):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))


class TopKMoE(nn.Module):
    """Softmax router, top-k, renormalised gates scattered back; every expert computed."""

    def __init__(self, dim, hidden, n_experts=4, k=2):
        super().__init__()
        self.k = k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList([Expert(dim, hidden) for _ in range(n_experts)])

    def forward(self, x):
        probs = self.router(x).softmax(dim=-1)  # (B, T, E)
        weights, chosen = probs.topk(self.k, dim=-1)  # (B, T, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(-1, chosen, weights)  # (B, T, E)
        out = 0
        for e, expert in enumerate(self.experts):
            out = out + gates[..., e : e + 1] * expert(x)
        return out


class SparseMoE(nn.Module):
    """Mixtral's eager loop: route, then per expert take its tokens by index and index_add_
    its outputs back. msgc has no rule for indexing by a tensor of indices: the hidden size
    cannot grow through it (refused), the rest grows."""

    def __init__(self, dim, hidden, n_experts=4, k=2):
        super().__init__()
        self.k, self.n_experts = k, n_experts
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList([Expert(dim, hidden) for _ in range(n_experts)])

    def forward(self, x):
        B, T, C = x.shape
        x = x.view(-1, C)  # (N, C)
        weights = F.softmax(self.gate(x), dim=-1, dtype=torch.float)
        weights, chosen = torch.topk(weights, self.k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros((B * T, C), dtype=x.dtype, device=x.device)
        mask = F.one_hot(chosen, num_classes=self.n_experts).permute(2, 1, 0)  # (E, k, N)
        for e in range(self.n_experts):
            slot, token = torch.where(mask[e])
            y = self.experts[e](x[None, token].reshape(-1, C)) * weights[token, slot, None]
            out.index_add_(0, token, y)
        return out.reshape(B, T, C)


class RotaryMoEBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn, wrapped=False, sparse=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = RotaryAttention(dim, n_heads, wrapped=wrapped)
        self.ln_2 = nn.LayerNorm(dim)
        self.moe = SparseMoE(dim, ffn) if sparse else TopKMoE(dim, ffn)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.moe(self.ln_2(x))


class RotaryMoELM(nn.Module):
    """`wrapped`: no_grad/autocast regions and an assert on the length (so torch.export,
    which wraps those regions in higher-order ops, traces it)."""

    def __init__(self, dim=16, n_heads=2, ffn=32, n_layers=2, wrapped=False, sparse=False):
        super().__init__()
        self.wrapped = wrapped
        self.wte = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList([RotaryMoEBlock(dim, n_heads, ffn, wrapped, sparse)
                                     for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, idx):
        if self.wrapped:
            assert idx.shape[1] <= BLOCK, "sequence longer than the block size"
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


VARIANTS += [
    Variant("alibi_slopes_buffer", AlibiLM, _ids, MHA),
    Variant("vit_linear_patches_cls", lambda: TinyViT(conv=False), images, MHA),
    Variant("vit_conv_patches_cls", TinyViT, images, MHA),
    Variant("rotary_outer_topk_moe", RotaryMoELM, _ids, MHA),
    Variant("export_no_grad_autocast_rotary", lambda: RotaryMoELM(wrapped=True), _ids, MHA),
    Variant("sparse_moe_index_add", lambda: RotaryMoELM(sparse=True), _ids,
            {case: MHA[case] for case in ("ffn", "heads", "layers")},
            refused={"hidden": ({"hidden": 24}, r"indexing with a tensor of indices")}),
]
BY_NAME = {v.name: v for v in VARIANTS}
