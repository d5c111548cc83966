"""Compiler cases found while writing the README example: shared modules, dynamic sizes."""

import torch
import torch.nn as nn
import torch.nn.functional as F

import msgc


class SharedNormBlock(nn.Module):
    """Parallel block reusing one LayerNorm; split and view sizes read from x.size()."""

    def __init__(self, d: int, nh: int):
        super().__init__()
        self.ln, self.qkv, self.out = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down, self.nh = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nh

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(self.ln(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.nh, C // self.nh).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln(x))))


class Tiny(nn.Module):
    def __init__(self, vocab=50, d=16, nh=2, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(SharedNormBlock(d, nh) for _ in range(layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _check(model, ids, **sizes):
    grown = msgc.grow(model, (ids,), init_std=1.0, **sizes)
    grown.eval()
    with torch.no_grad():
        expected = model.eval()(ids)
        torch.testing.assert_close(grown(ids), expected, rtol=1e-5, atol=1e-5)
        grown.set_masks(1.0)
        assert (grown(ids) - expected).abs().max() > 1e-3
    return grown


def test_shared_module_grows_once():
    torch.manual_seed(0)
    model, ids = Tiny(), torch.randint(0, 50, (2, 8))
    grown = _check(model, ids, hidden=32, heads=4, ffn=128, layers=3)
    assert grown.get_parameter("blocks.0.ln.weight").shape == (32,)


def test_hidden_only_with_sizes_from_x_size():
    """C comes from x.size(): after hidden growth the q/k/v width must not follow it."""
    torch.manual_seed(0)
    model, ids = Tiny(), torch.randint(0, 50, (2, 8))
    grown = _check(model, ids, hidden=32)
    assert grown.get_parameter("blocks.0.qkv.weight").shape == (48, 32)


class MaskedHeadLM(Tiny):
    """Tiny whose head runs at the positions of a boolean mask alone: x[predict] is (N, d)."""

    def forward(self, ids, predict):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x[predict])  # (N, vocab)


def test_boolean_mask_indexing_grows_and_keeps_any_mask():
    torch.manual_seed(0)
    model, ids = MaskedHeadLM(), torch.randint(0, 50, (2, 8))
    predict = torch.rand(2, 8) < 0.3
    grown = msgc.grow(model, (ids, predict), init_std=1.0, hidden=32, heads=4, ffn=128,
                      layers=3)
    assert grown.get_parameter("head.weight").shape == (50, 32)
    other = torch.rand(2, 8) < 0.6  # a different number of positions than traced
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(ids, other), model.eval()(ids, other),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grown(ids, other), grown(ids, torch.ones_like(other))[
            other.flatten()], rtol=1e-5, atol=1e-5)
