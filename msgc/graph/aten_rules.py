"""Dimension rules for ATen ops that only torch.export graphs contain.

Hugging Face models exported with torch.export build their attention masks and position
ids from ATen ops (slice, index, comparisons, cumsum, diff, gather). These ops run over
batch and sequence dims, which never grow; the rules tie what they keep and forbid growth
of the dims they index, so a model where they would touch a grown dim stops with an error
instead of a wrong graph.
"""

import torch
import torch.fx as fx

from msgc.graph.dims import Analysis
from msgc.graph.rules import RULES, broadcast, rule_new_factory

aten = torch.ops.aten
_FULL = (None, 0)
_END = (None, 2**63 - 1)


def rule_slice(a: Analysis, node: fx.Node) -> None:
    """aten.slice(x, dim, start, end, step): other dims kept; a partial slice fixes `dim`."""
    x = node.args[0]
    dim, start, end, step = (list(node.args[1:]) + [0, None, None, 1])[:4]
    dims = a.of(x)
    dim %= len(dims)
    out = a.fresh(node)
    whole = start in _FULL and (end in _END or end == a.atoms.size(dims[dim])) and step == 1
    for d in range(len(dims)):
        if d != dim or whole:
            a.unify(dims[d], out[d], node)
            a.carry(node, d, [(x, d)])
    if not whole:
        a.forbid(node, dims[dim], "slicing")


def rule_index(a: Analysis, node: fx.Node) -> None:
    """aten.index(x, [idx or None, ...]): leading un-indexed dims kept, indexed dims fixed."""
    x, indices = node.args[:2]
    dims = a.of(x)
    out = a.fresh(node)
    for d, index in enumerate(indices):
        if index is None:
            if d < len(out):
                a.unify(dims[d], out[d], node)
        else:
            a.forbid(node, dims[d], "advanced indexing")
    tail = len(dims) - len(indices)
    for k in range(1, tail + 1):
        a.unify(dims[-k], out[-k], node)


def rule_compare(a: Analysis, node: fx.Node) -> None:
    """Comparisons and boolean logic: broadcasting, no zeros kept."""
    broadcast(a, node, list(node.args[:2]), "all")


def rule_gather_like(a: Analysis, node: fx.Node) -> None:
    """diff / gather / cumsum-like ops over `dim`: that dim never grows."""
    x = node.args[0]
    dims = a.of(x)
    dim = node.args[1] if node.target is aten.gather.default else node.kwargs.get(
        "dim", node.args[2] if len(node.args) > 2 else -1)
    a.fresh(node)
    a.forbid(node, dims[int(dim) % len(dims)], str(node.target))


_COMPARE = [aten.__and__.Tensor, aten.__or__.Tensor, aten.eq.Tensor, aten.eq.Scalar,
            aten.ne.Tensor, aten.ne.Scalar, aten.le.Tensor, aten.le.Scalar, aten.lt.Tensor,
            aten.lt.Scalar, aten.ge.Tensor, aten.ge.Scalar, aten.gt.Tensor, aten.gt.Scalar,
            aten.logical_and.default, aten.logical_or.default, aten.logical_not.default,
            aten.bitwise_not.default, aten.bitwise_and.Tensor, aten.bitwise_or.Tensor]

for _target in _COMPARE:
    RULES[_target] = rule_compare
RULES[aten.slice.Tensor] = rule_slice
RULES[aten.index.Tensor] = rule_index
RULES[aten.diff.default] = rule_gather_like
RULES[aten.gather.default] = rule_gather_like
RULES[aten.new_ones.default] = rule_new_factory
RULES[aten.new_zeros.default] = rule_new_factory
