"""A custom Transformer that msgc grows without knowing it: parallel attention + SwiGLU
blocks (GPT-J / PaLM style), RMSNorm, no biases, learned positions, tied embeddings.

Nothing here mentions msgc. The spec next to this file names the factory `build`:

    msgc train examples/parallel-tiny.yaml --out runs/parallel-tiny

msgc traces the model, finds its growable dimensions (hidden, ffn, heads, blocks) and grows
them on the spec's schedule; the run ends with `runs/parallel-tiny/model/model.py`, this
model at its final size as plain PyTorch.
"""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()  # (B, T, 1)
        return x * rms * self.weight


class ParallelBlock(nn.Module):
    """x + Attn(norm(x)) + SwiGLU(norm(x)): both branches read the same normed input."""

    def __init__(self, hidden: int, heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * heads * head_dim, bias=False)
        self.attn_out = nn.Linear(heads * head_dim, hidden, bias=False)
        self.gate_up = nn.Linear(hidden, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        h = self.norm(x)  # (B, T, C)
        q, k, v = (t.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
                   for t in self.qkv(h).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        a = self.attn_out(a.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))
        gate, up = self.gate_up(h).chunk(2, dim=-1)  # (B, T, F) each
        return x + a + self.down(F.silu(gate) * up)


class ParallelGPT(nn.Module):
    def __init__(self, vocab_size: int, max_seq_len: int, hidden: int, heads: int,
                 head_dim: int, ffn: int, layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, hidden)
        self.positions = nn.Embedding(max_seq_len, hidden)
        self.blocks = nn.ModuleList(
            [ParallelBlock(hidden, heads, head_dim, ffn) for _ in range(layers)])
        self.norm = RMSNorm(hidden)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.size(1), device=ids.device)  # (T,)
        x = self.tokens(ids) + self.positions(positions)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.tokens.weight)  # (B, T, V): tied head


def build(vocab_size: int = 4096, max_seq_len: int = 128, hidden: int = 128, heads: int = 2,
          head_dim: int = 64, ffn: int = 256, layers: int = 2) -> ParallelGPT:
    """The model at the spec's starting size."""
    return ParallelGPT(vocab_size, max_seq_len, hidden, heads, head_dim, ffn, layers)
