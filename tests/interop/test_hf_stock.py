"""Stock Hugging Face models, exactly as transformers constructs them, grown by msgc.

The stock tests grow models with the KV cache on and dict outputs: the user's model and
config stay untouched, the grown model returns the original's ModelOutput class with the
logits, and batch and sequence sizes stay dynamic. The matrix grows every family of
tests/interop/hf_zoo.py in every dimension its config expresses and checks each case against
the original model's logits computed here (grow's own check is off), or checks that msgc
refuses it with the error FAILS names. docs/hf-families.md must show the same matrix.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import msgc
from msgc.errors import MsgcError, PreservationError
from msgc.graph.trace import to_ir
from tests.interop.hf_zoo import (
    BY_NAME,
    FAILS,
    OTHER_SHAPE,
    TARGETS,
    cases,
    markdown_table,
    token_ids,
)

transformers = pytest.importorskip("transformers")
RTOL = 1e-5
DOCS = Path(__file__).resolve().parents[2] / "docs" / "hf-families.md"


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(ids).logits


# --- stock models: cache on, dict outputs ------------------------------------------------


def test_grow_a_stock_model() -> None:
    model = BY_NAME["llama"].build()
    assert model.config.use_cache
    config = model.config.to_dict()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids, other = token_ids(), token_ids(OTHER_SHAPE, seed=1)
    with torch.no_grad():
        original = model(ids)
    assert original.past_key_values is not None  # the cache is on
    grown = msgc.grow(model, (ids,), ffn=160, layers=3, init_std=0.5).eval()
    assert model.config.to_dict() == config and model.config.use_cache
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model.training
    with torch.no_grad():
        out = grown(ids)
    assert type(out) is type(original) and list(out.keys()) == ["logits"]
    assert rel_err(out.logits, original.logits) <= RTOL
    assert rel_err(logits(grown, other), logits(model, other)) <= RTOL  # other batch and length
    grown.set_masks(1.0)
    folded = msgc.fold(grown).eval()
    with torch.no_grad():
        assert type(folded(other)) is type(original)
        assert rel_err(folded(other).logits, grown(other).logits) <= RTOL


def test_grow_the_trainers_logits_wrapper() -> None:
    """msgc train's HFLogits: an HF model (cache on) inside a plain module, logits out."""
    from msgc.interop.hf_models import HFLogits

    model = HFLogits(BY_NAME["gpt2"].build()).eval()
    ids, other = token_ids(), token_ids(OTHER_SHAPE, seed=1)
    grown = msgc.grow(model, (ids,), hidden=48, heads=6).eval()
    with torch.no_grad():
        assert rel_err(grown(other), model(other)) <= RTOL
    assert model.hf.config.use_cache


# --- the family matrix -------------------------------------------------------------------


@functools.cache
def traced(name: str):
    """A family's model and msgc's IR of it (what grow traces), built once per run."""
    model = BY_NAME[name].build()
    return model, to_ir(model, (token_ids(),))


def grow_case(name: str, dim: str):
    model, ir = traced(name)
    return model, msgc.grow(ir, (token_ids(),), **TARGETS[dim], init_std=0.5, verify=False)


GROWS = [pytest.param(*case, id="-".join(case)) for case in cases() if case not in FAILS]
REFUSED = [pytest.param(*case, id="-".join(case)) for case in cases() if case in FAILS]


@pytest.mark.parametrize("name,dim", GROWS)
def test_family_grows(name: str, dim: str) -> None:
    """Preserved at mask 0 on the example and on another batch and length; changed at 1;
    fold at 1 computes the grown model; the output is the original's ModelOutput class."""
    model, grown = grow_case(name, dim)
    for ids in (token_ids(), token_ids(OTHER_SHAPE, seed=1)):
        assert rel_err(logits(grown, ids), logits(model, ids)) <= RTOL, ids.shape
    ids = token_ids()
    assert type(grown.eval()(ids)) is type(model(ids))
    grown.set_masks(1.0)
    assert rel_err(logits(grown, ids), logits(model, ids)) > 1e-3
    folded = msgc.fold(grown)
    assert rel_err(logits(folded, ids), logits(grown, ids)) <= RTOL


@pytest.mark.parametrize("name,dim", REFUSED)
def test_family_refuses(name: str, dim: str) -> None:
    """An msgc error that says why, raised before any wrong graph is built."""
    pattern, _ = FAILS[(name, dim)]
    with pytest.raises(MsgcError, match=pattern) as info:
        grow_case(name, dim)
    assert not isinstance(info.value, PreservationError)


def test_docs_show_the_matrix() -> None:
    """docs/hf-families.md holds `python -m tests.interop.hf_zoo`'s table."""
    assert markdown_table() in DOCS.read_text(encoding="utf-8")
