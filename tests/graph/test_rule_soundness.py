"""Each rule's claim, tested on the real op: put the op on the residual stream of a tiny
model, grow the hidden size with large random new weights, and require either the same
function at mask 0 (the rule was right) or an msgc error before anything is returned (the
op was refused). A grown model that runs and computes something else is a wrong rule.
The expectations say which ops must grow, so refusing everything cannot pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import msgc
from msgc.errors import MsgcError
from tests.graph.test_errors import TinyLM
from tests.graph.zoo import token_ids

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-5

# name -> (f(x) with x (B, T, 16), whether growing the hidden size must succeed)
OPS = {
    # pointwise
    "abs": (torch.abs, True),
    "neg": (lambda x: -x, True),
    "exp": (torch.exp, True),
    "sigmoid": (torch.sigmoid, True),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), True),
    "scale": (lambda x: x * 2.0, True),
    "shift": (lambda x: x + 1.0, True),
    "divide": (lambda x: x / 3.0, True),
    "clamp_around_0": (lambda x: x.clamp(-0.5, 0.5), True),
    "clamp_above_0": (lambda x: x.clamp(0.5, 1.0), True),
    "square": (lambda x: x.pow(2), True),
    "two_to_the_x": (lambda x: torch.pow(2.0, x), True),
    "where": (lambda x: torch.where(x > 0, x, 0.0), True),
    "masked_fill": (lambda x: x.masked_fill(x < 0, 0.5), True),
    "maximum": (lambda x: torch.maximum(x, torch.zeros_like(x)), True),
    # views and shapes
    "view_heads": (lambda x: x.view(*x.shape[:2], 4, 4).reshape(*x.shape[:2], 16), True),
    "transpose_twice": (lambda x: x.transpose(1, 2).transpose(1, 2), True),
    "permute_twice": (lambda x: x.permute(2, 0, 1).permute(1, 2, 0), True),
    "unsqueeze_squeeze": (lambda x: x.unsqueeze(2).squeeze(2), True),
    # one split size for a dim that grows would change the number of pieces
    "split_cat": (lambda x: torch.cat(x.split(8, dim=-1), dim=-1), False),
    "split_in_halves_cat": (lambda x: torch.cat(list(x.chunk(2, dim=-1)), dim=-1), True),
    "halves_swapped": (lambda x: torch.cat(x.chunk(2, dim=-1)[::-1], dim=-1), False),
    "expand_sum": (lambda x: x[:, :, None, :].expand(*x.shape[:2], 2, 16).sum(2), True),
    "flip": (lambda x: x.flip(-1), False),
    # reductions
    "mean_centred": (lambda x: x - x.mean(-1, keepdim=True), True),
    "times_sum": (lambda x: x * x.sum(-1, keepdim=True), True),
    "softmax": (lambda x: F.softmax(x, dim=-1), False),
    "minus_max": (lambda x: x - x.amax(-1, keepdim=True), False),
    "cumsum": (lambda x: torch.cumsum(x, dim=-1), False),
    "var": (lambda x: x * x.var(-1, keepdim=True), False),
    # contractions
    # a product of two activations is read as attention, whose contracted dim is a head
    # dim, which never grows
    "self_attention_like": (lambda x: (x @ x.transpose(-1, -2)) @ x / 16, False),
    "einsum": (lambda x: torch.einsum("btc,btc->btc", x, x), False),
    # indexing and selection over the hidden dim
    "gather": (lambda x: torch.gather(x, -1, torch.zeros_like(x, dtype=torch.long)), False),
    "sort": (lambda x: x.sort(dim=-1).values, False),
    "times_top1": (lambda x: x * x.topk(1, dim=-1).values, False),
    # a slice of the residual stream: refused (growing one piece of it is not growing it)
    "first_channel": (lambda x: x * x[..., 0:1], False),
    "last_channel": (lambda x: x * x[..., -1:], False),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", OPS)
def test_rule_is_exact_or_refuses(name: str) -> None:
    op, must_grow = OPS[name]
    torch.manual_seed(0)
    model, ids = TinyLM(op).eval(), token_ids()
    with torch.no_grad():
        expected = model(ids)
    try:
        grown = msgc.grow(model, (ids,), hidden=24, init_std=1.0, verify=False)
    except MsgcError:
        assert not must_grow, f"{name}: refused, but its rule should let the hidden size grow"
        return
    assert must_grow, f"{name}: grew, but growing through it cannot be exact"
    with torch.no_grad():
        assert rel_err(grown.eval()(ids), expected) <= RTOL
        grown.set_masks(1.0)
        assert rel_err(grown(ids), expected) > 1e-3  # the new paths are live
