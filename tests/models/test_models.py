"""Reference families: shapes, hand-counted parameters, fx tracing, causality, dropout, GQA."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from msgc.errors import SpecError
from msgc.models import GPT2, Bert, Llama, ModelConfig, build_model, count_parameters
from msgc.models.llama import apply_rope

FAMILIES = ("gpt2", "bert", "llama")
CAUSAL = ("gpt2", "llama")


def make_spec(family: str, **overrides) -> SimpleNamespace:
    sizes = dict(
        family=family, vocab_size=97, max_seq_len=16, hidden=32, heads=4, kv_heads=4,
        head_dim=8, ffn=64, layers=2, dropout=0.0, tie_embeddings=True, norm_eps=1e-5,
        activation="gelu", type_vocab_size=2,
    )
    if family == "llama":
        sizes.update(kv_heads=2, activation="silu", tie_embeddings=False)
    sizes.update(overrides)
    return SimpleNamespace(**sizes)


def build(family: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(make_spec(family, **overrides))


def tokens(B: int = 2, T: int = 8, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def hand_count(s: SimpleNamespace) -> int:
    """Parameters of each family written out from the sizes."""
    V, P, C, F_, L = s.vocab_size, s.max_seq_len, s.hidden, s.ffn, s.layers
    A = s.heads * s.head_dim  # query / output width
    Akv = s.kv_heads * s.head_dim  # key / value width
    untied_head = 0 if s.tie_embeddings else V * C
    if s.family == "gpt2":
        block = (
            2 * C  # ln_1
            + C * 3 * A + 3 * A  # c_attn
            + A * C + C  # attn c_proj
            + 2 * C  # ln_2
            + C * F_ + F_  # c_fc
            + F_ * C + C  # mlp c_proj
        )
        return V * C + P * C + L * block + 2 * C + untied_head
    if s.family == "bert":
        embeddings = V * C + P * C + s.type_vocab_size * C + 2 * C
        layer = (
            3 * (C * A + A)  # query, key, value
            + A * C + C  # out
            + 2 * C  # attn_norm
            + C * F_ + F_  # fc
            + F_ * C + C  # proj
            + 2 * C  # mlp_norm
        )
        head = C * C + C + 2 * C + V + untied_head  # dense, norm, output bias, decoder
        return embeddings + L * layer + head
    layer = (
        C  # input_layernorm
        + C * A + 2 * C * Akv + A * C  # q, k, v, o
        + C  # post_attention_layernorm
        + 3 * C * F_  # gate, up, down
    )
    return V * C + L * layer + C + untied_head


SIZE_CASES = [
    pytest.param(dict(head_dim=8), id="hd8"),
    pytest.param(dict(head_dim=12), id="attn_width_ne_hidden"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sizes", SIZE_CASES)
@pytest.mark.parametrize("tie", [True, False])
def test_shapes_and_parameter_count(family, sizes, tie):
    spec = make_spec(family, tie_embeddings=tie, **sizes)
    torch.manual_seed(0)
    model = build_model(spec)
    logits = model(tokens(B=3, T=7))
    assert logits.shape == (3, 7, spec.vocab_size)
    assert count_parameters(model) == hand_count(spec)
    if family == "bert":
        shared = model.head.decoder.weight is model.embeddings.word_embeddings.weight
    elif family == "gpt2":
        shared = model.lm_head.weight is model.transformer.wte.weight
    else:
        shared = model.lm_head.weight is model.model.embed_tokens.weight
    assert shared == tie


def test_build_model_dispatch_and_errors():
    assert isinstance(build("gpt2"), GPT2)
    assert isinstance(build("bert"), Bert)
    assert isinstance(build("llama"), Llama)
    with pytest.raises(SpecError, match="family"):
        build_model(make_spec("t5"))
    with pytest.raises(SpecError, match="kv_heads"):
        ModelConfig.from_spec(make_spec("llama", heads=4, kv_heads=3))


@pytest.mark.parametrize("family", FAMILIES)
def test_init_is_deterministic_and_gpt2_like(family):
    a, b, c = build(family, seed=0), build(family, seed=0), build(family, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    for m in a.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    emb = next(m for m in a.modules() if isinstance(m, nn.Embedding))
    assert emb.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sizes", SIZE_CASES)
def test_fx_trace_matches_eager_with_symbolic_sizes(family, sizes):
    model = build(family, **sizes).eval()
    concrete = {"token_type_ids": None, "predict": None} if family == "bert" else None
    gm = torch.fx.symbolic_trace(model, concrete_args=concrete)
    # batch and sequence sizes stay symbolic: other sizes than any seen run through
    for B, T in [(2, 8), (3, 5), (1, 16)]:
        idx = tokens(B=B, T=T)
        torch.testing.assert_close(gm(idx), model(idx), rtol=0, atol=0)
    names = {n for n, _ in gm.named_parameters()}
    assert names == {n for n, _ in model.named_parameters()}


def test_bert_token_types():
    model = build("bert").eval()
    idx = tokens()
    zeros = torch.zeros_like(idx)
    ones = torch.ones_like(idx)
    torch.testing.assert_close(model(idx), model(idx, zeros), rtol=0, atol=0)
    assert not torch.allclose(model(idx), model(idx, ones))


def test_bert_masked_head_scores_the_predicted_positions_alone():
    model = build("bert").eval()
    idx = tokens()
    predict = torch.rand(idx.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    logits = model(idx, torch.zeros_like(idx), predict)
    assert logits.shape == (int(predict.sum()), 97)
    torch.testing.assert_close(logits, model(idx)[predict])


@pytest.mark.parametrize("family", CAUSAL)
def test_causal_models_ignore_the_future(family):
    model = build(family).eval()
    idx = tokens(T=10)
    out = model(idx)
    for t in (0, 4, 8):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 97
        out2 = model(changed)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out2[:, t + 1:], out[:, t + 1:])


def test_bert_is_bidirectional():
    model = build("bert").eval()
    idx = tokens(T=10)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 97
    assert not torch.allclose(model(idx)[:, 0], model(changed)[:, 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_only_in_train_mode(family):
    model = build(family, dropout=0.1)
    idx = tokens()
    model.train()
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    # eval mode equals the same weights built without dropout
    plain = build(family, dropout=0.0).eval()
    torch.testing.assert_close(model(idx), plain(idx), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tie", [True, False])
def test_backward_gives_finite_grads_everywhere(family, tie):
    model = build(family, tie_embeddings=tie, dropout=0.1).train()
    idx = tokens()
    logits = model(idx)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens(seed=2).reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_activation_is_selectable():
    model = build("gpt2", activation="relu")
    assert isinstance(model.transformer.h[0].mlp.act, nn.ReLU)
    model = build("bert", activation="gelu_tanh")
    assert model.layers[0].mlp.act.approximate == "tanh"
    assert model.head.act.approximate == "tanh"


def test_gqa_single_kv_head_projection_shapes():
    model = build("llama", heads=4, kv_heads=1, head_dim=8)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (8, 32)
    assert attn.v_proj.weight.shape == (8, 32)
    assert attn.q_proj.weight.shape == (32, 32)
    assert attn.o_proj.weight.shape == (32, 32)
    assert model(tokens()).shape == (2, 8, 97)


def reference_rope(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate pairs (i, i + hd/2) of x (B, n, T, hd) by angle t / theta^(2i/hd), via complex."""
    T, hd = x.size(2), x.size(3)
    inv_freq = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # (hd/2,)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, hd/2)
    z = torch.complex(x[..., : hd // 2].double(), x[..., hd // 2:].double())
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def test_rope_matches_complex_rotation():
    model = build("llama")
    x = torch.randn(2, 3, 16, 8)
    y = apply_rope(x, model.rope_cos, model.rope_sin)
    torch.testing.assert_close(y, reference_rope(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 8), (6, 3, 4), (4, 1, 12)])
def test_gqa_query_head_h_uses_kv_group_h_over_rep(heads, kv_heads, head_dim):
    model = build("llama", heads=heads, kv_heads=kv_heads, head_dim=head_dim).eval()
    attn = model.model.layers[0].self_attn
    B, T, C = 2, 6, 32
    x = torch.randn(B, T, C)
    out = attn(x, model.rope_cos[:T], model.rope_sin[:T])
    q = (x @ attn.q_proj.weight.T).view(B, T, heads, head_dim).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(B, T, kv_heads, head_dim).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T).view(B, T, kv_heads, head_dim).transpose(1, 2)
    q, k = reference_rope(q), reference_rope(k)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    ys = []
    for h in range(heads):
        g = h // (heads // kv_heads)
        scores = q[:, h] @ k[:, g].transpose(-1, -2) / math.sqrt(head_dim)  # (B, T, T)
        ys.append(scores.masked_fill(future, float("-inf")).softmax(-1) @ v[:, g])
    expected = torch.cat(ys, dim=-1) @ attn.o_proj.weight.T  # (B, T, C)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
