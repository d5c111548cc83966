"""Tests for msgc.train.lm_head: the split before a model's head, and training through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import msgc
from msgc.models import build_model
from msgc.spec import FamilyModelSpec
from msgc.train.lm_head import HeadInputs, head_split

SIZES = {
    "gpt2": dict(hidden=32, heads=2, head_dim=16, ffn=64, layers=2),
    "llama": dict(hidden=32, heads=4, kv_heads=2, head_dim=8, ffn=64, layers=2),
    "bert": dict(hidden=32, heads=2, head_dim=16, ffn=64, layers=2),
}


def family_model(family: str, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    spec = FamilyModelSpec(family=family, vocab_size=97, max_seq_len=16, dropout=dropout,
                           **SIZES[family])
    return build_model(spec).train()


def example(family: str) -> tuple:
    """The model's inputs: ids (2, 8), and for bert token types and a predict mask."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 8), generator=generator)
    if family != "bert":
        return (ids,)
    return ids, torch.zeros_like(ids), torch.rand(2, 8, generator=generator) < 0.4


def logits_of(view: nn.Module, inputs: tuple) -> torch.Tensor:
    out = view(*inputs)
    assert isinstance(out, HeadInputs)
    return F.linear(*out)


@pytest.mark.parametrize("family", list(SIZES))
def test_the_split_shares_the_models_parameters_and_computes_its_logits(family):
    model, inputs = family_model(family), example(family)
    view = head_split(model, inputs)
    out = view(*inputs)
    assert torch.equal(F.linear(*out), model(*inputs))
    own = {id(p) for p in model.parameters()}
    assert {id(p) for p in view.parameters()} == own  # the model's own weights, no copies
    assert any(out.weight is p for p in model.parameters())
    assert (out.bias is not None) == (family == "bert")  # BERT's decoder bias is added apart
    view.zero_grad()
    F.linear(*out).sum().backward()  # gradients land on the model's parameters
    assert all(p.grad is not None for p in model.parameters())


def test_a_tied_head_returns_the_embedding_weight():
    model = family_model("gpt2")
    out = head_split(model, example("gpt2"))(*example("gpt2"))
    assert out.weight is model.transformer.wte.weight


@pytest.mark.parametrize("family", list(SIZES))
def test_a_grown_fused_model_splits_and_follows_its_masks(family):
    model, inputs = family_model(family), example(family)
    grown = msgc.fuse(msgc.grow(model, inputs, hidden=48, ffn=96, layers=3))
    grown.set_masks(0.3)
    view = head_split(grown, inputs)
    at_03 = logits_of(view, inputs)
    assert torch.equal(at_03, grown(*inputs))
    grown.set_masks(0.8)  # the split reads the same mask buffers
    at_08 = logits_of(view, inputs)
    assert torch.equal(at_08, grown(*inputs))
    assert not torch.allclose(at_08, at_03)  # so the split did follow the masks
    grown.set_masks(1.0)
    folded = msgc.fold(grown)
    assert torch.equal(logits_of(head_split(folded, inputs), inputs), folded(*inputs))


def test_dropout_follows_the_splits_mode():
    model, inputs = family_model("gpt2", dropout=0.5), example("gpt2")
    view = head_split(model, inputs)
    torch.manual_seed(0)
    assert not torch.equal(logits_of(view.train(), inputs), logits_of(view, inputs))
    view.eval()
    assert torch.equal(logits_of(view, inputs), model.eval()(*inputs))


class ScaledHead(nn.Module):
    """Logits that are not a linear layer's output: nothing to split."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(97, 16), nn.Linear(16, 97)

    def forward(self, ids):
        return self.head(self.emb(ids)) * 2.0


class FunctionalHead(nn.Module):
    """A head whose weight is a computed tensor, not a parameter."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(97, 16)

    def forward(self, ids):
        return F.linear(self.emb(ids), self.emb.weight * 0.5)


class TwoOutputs(nn.Module):
    """Returns the logits and another tensor (a z-loss-like term): not logits alone."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(97, 16), nn.Linear(16, 97)

    def forward(self, ids):
        logits = self.head(self.emb(ids))
        return logits, logits.logsumexp(-1)


@pytest.mark.parametrize("model", [ScaledHead(), FunctionalHead(), TwoOutputs()],
                         ids=lambda m: type(m).__name__)
def test_models_not_ending_in_a_parameter_linear_are_not_split(model):
    assert head_split(model, example("gpt2")) is None
