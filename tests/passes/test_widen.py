"""Widen: new entries of vectors start where a fresh layer's do (norm scales 1, biases 0).

Exactness never depends on it (the masks hide new entries), but training does: a norm
weight whose new entries start near 0 silences the new channels after every norm until
AdamW has pushed them up to about 1, hundreds of steps at a usual learning rate.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import msgc
from tests.graph.zoo import BY_NAME, token_ids

GROWN_HIDDEN, GROWN_FFN = 24, 48  # from 16 and 32


def is_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("Norm")  # LayerNorm and hand-written RMSNorms


def new_entries_by_kind(model: nn.Module, grown: nn.Module) -> dict[str, torch.Tensor]:
    """The new entries of every vector of `model`, keyed "scale" (norm weights) or
    "other", concatenated (hidden and FFN are plain dims: new entries come last)."""
    norm_weights = {f"{name}.weight" for name, m in model.named_modules() if is_norm(m)}
    grown_params = dict(grown.named_parameters())
    found: dict[str, list[torch.Tensor]] = {"scale": [], "other": []}
    for name, old in model.named_parameters():
        if old.dim() == 1 and grown_params[name].numel() > old.numel():
            kind = "scale" if name in norm_weights else "other"
            found[kind].append(grown_params[name].detach()[old.numel():])
    return {kind: torch.cat(entries) for kind, entries in found.items() if entries}


@pytest.mark.parametrize("name", [
    "family_gpt2",  # F.layer_norm through torch.fx
    "family_llama",  # RMSNorm
    "gqa_repeat_interleave",  # a hand-written RMSNorm: x * rsqrt(...) * weight, cast first
    "untraceable_export",  # the torch.export frontend (aten ops)
])
@pytest.mark.parametrize("init", ["normal", "zeros"])
def test_new_norm_scales_start_at_one_and_biases_at_zero(name: str, init: str) -> None:
    torch.manual_seed(0)
    model = BY_NAME[name].make().eval()
    grown = msgc.grow(model, (token_ids(),), hidden=GROWN_HIDDEN, ffn=GROWN_FFN, init=init)
    entries = new_entries_by_kind(model, grown)
    assert torch.equal(entries["scale"], torch.ones_like(entries["scale"]))
    if "other" in entries:  # the llama family and the RMSNorm zoo model have no biases
        assert torch.equal(entries["other"], torch.zeros_like(entries["other"]))


class OffsetScaleLM(nn.Module):
    """A Gemma-style norm scales by (1 + weight): its neutral weight is 0, not 1."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.weight = nn.Parameter(torch.zeros(dim))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, C)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight)
        return self.head(x)


def test_a_vector_added_before_it_scales_starts_at_zero() -> None:
    torch.manual_seed(0)
    model = OffsetScaleLM()
    grown = msgc.grow(model, (token_ids(),), hidden=GROWN_HIDDEN)
    weight = dict(grown.named_parameters())["weight"]
    assert torch.equal(weight.detach()[16:], torch.zeros(8))


def test_copy_init_copies_vectors_too() -> None:
    torch.manual_seed(0)
    model = BY_NAME["family_gpt2"].make().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # trained-looking vectors, not the fresh 1s and 0s
    grown = msgc.grow(model, (token_ids(),), hidden=GROWN_HIDDEN, init="copy")
    old = dict(model.named_parameters())["transformer.ln_f.weight"].detach()
    new = dict(grown.named_parameters())["transformer.ln_f.weight"].detach()
    assert torch.equal(new, old[torch.arange(GROWN_HIDDEN) % 16])


def scaled_gpt2(scale: float) -> nn.Module:
    """The zoo's gpt2 with every matrix at `scale` times its init (a "trained" scale)."""
    torch.manual_seed(0)
    model = BY_NAME["family_gpt2"].make().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


@pytest.mark.parametrize("init,expected", [("match", "old"), ("normal", "init_std")])
def test_match_init_draws_new_entries_at_each_matrixs_own_scale(init: str,
                                                                expected: str) -> None:
    model = scaled_gpt2(5.0)
    grown = msgc.grow(model, (token_ids(),), ffn=GROWN_FFN, layers=3, init=init)
    old = dict(model.named_parameters())
    new = dict(grown.named_parameters())
    checks = {  # parameter -> its new entries
        "transformer.h.0.mlp.c_proj.weight": new["transformer.h.0.mlp.c_proj.weight"][:, 32:],
        "transformer.h.0.mlp.c_fc.weight": new["transformer.h.0.mlp.c_fc.weight"][32:],
        # the new block (stacked on top) re-draws its copy of block 0's matrices
        "transformer.h.0.attn.c_attn.weight": new["transformer.h.2.attn.c_attn.weight"],
    }
    for name, entries in checks.items():
        target = float(old[name].std()) if expected == "old" else 0.02
        assert float(entries.std()) == pytest.approx(target, rel=0.15), name
