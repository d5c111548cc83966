"""Reductions: sums and means over a dim, and the reductions a growing dim cannot enter.

A sum or mean over a growing dim stays exact when the new entries are zero (a mean then
needs masked statistics); softmax, max, variance, cumulative sums and differences over a
dim fix that dim.
"""

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc.graph.dims import Analysis
from msgc.graph.rules.pointwise import rule_unary
from msgc.graph.rules.registry import rule

aten = torch.ops.aten


@rule("sum", "mean", torch.sum, torch.mean, aten.sum.dim_IntList, aten.mean.dim, aten.sum.default,
      aten.mean.default)
def rule_reduce(a: Analysis, node: fx.Node) -> None:
    """sum / mean over dims: mean needs masked statistics, both need zeros at new entries."""
    x = node.args[0]
    dims = a.of(x)
    reduced = _reduced_dims(node, len(dims))
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    out = a.fresh(node)
    kept = [d for d in range(len(dims)) if d not in reduced or keepdim]
    for o, d in enumerate(kept):
        if d not in reduced:
            a.unify(dims[d], out[o], node)
            a.carry(node, o, [(x, d)])
    for d in reduced:
        a.need_zero(node, x, d)
    if _reduce_kind(node) == "mean":
        a.normalized[node] = [dims[d] for d in reduced]


@rule("softmax", "log_softmax", "amax", "max", "var", "std", "cumsum", "logsumexp", F.softmax,
      F.log_softmax, torch.softmax, torch.amax, torch.var, torch.std, torch.cumsum, torch.logsumexp,
      aten._softmax.default, aten.softmax.int, aten.amax.default, aten.amin.default,
      aten.var.correction, aten.var.dim, aten.cumsum.default, aten._log_softmax.default,
      aten.log_softmax.int, aten.prod.dim_int, aten.any.dim, aten.any.dims)
def rule_reduce_forbidden(a: Analysis, node: fx.Node) -> None:
    """softmax, max, var, cumsum ... over a dim: that dim cannot grow."""
    x = node.args[0]
    dims = a.of(x)
    reduced = _reduced_dims(node, len(dims))
    if len(a.shape(node)) == len(dims):
        rule_unary(a, node)
    else:
        out = a.fresh(node)
        kept = [d for d in range(len(dims)) if d not in reduced]
        for o, d in enumerate(kept):
            a.unify(dims[d], out[o], node)
    for d in reduced:
        a.forbid(node, dims[d], f"{_reduce_kind(node)} over it")


def _reduced_dims(node: fx.Node, rank: int) -> list[int]:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dim is None:
        return list(range(rank))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return sorted(int(d) % rank for d in dims)


def _reduce_kind(node: fx.Node) -> str:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return str(name).split(".")[0]
