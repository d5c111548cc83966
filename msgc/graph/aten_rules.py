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
from msgc.graph.rules import (
    RULES,
    _permuted,
    _segment,
    broadcast,
    rule_new_factory,
    rule_unary,
    rule_where,
    rule_zero_unary,
)

aten = torch.ops.aten
_FULL = (None, 0)
_END = (None, 2**63 - 1)
_SLICE_DEFAULTS = (0, None, None, 1)  # dim, start, end, step


def rule_slice(a: Analysis, node: fx.Node) -> None:
    """aten.slice(x, dim, start, end, step): other dims kept. A window with literal bounds of
    a dim of fixed size is a segment of it (rewritten on growth, as x[..., lo:hi]); any other
    partial slice fixes `dim`."""
    x = node.args[0]
    dim, start, end, step = (*node.args[1:], *_SLICE_DEFAULTS[len(node.args) - 1:])
    dims = a.of(x)
    dim %= len(dims)
    out = a.fresh(node)
    whole = start in _FULL and (end in _END or end == a.atoms.size(dims[dim])) and step == 1
    for d in range(len(dims)):
        if d != dim or whole:
            a.unify(dims[d], out[d], node)
            a.carry(node, d, [(x, d)])
    if whole:
        return
    if _static(x, dim) and all(isinstance(v, int) for v in (start, end)) and step == 1:
        lo, hi, _ = slice(start, end).indices(a.atoms.size(dims[dim]))
        _segment(a, node, dims[dim], lo, hi, out[dim], ("args", 2))
        a.carry(node, dim, [(x, dim)])
    else:
        a.forbid(node, dims[dim], "slicing")


def _static(x: fx.Node, dim: int) -> bool:
    """Whether torch.export kept `dim` of `x` a plain size (not batch or sequence)."""
    val = x.meta.get("val")
    return isinstance(val, torch.Tensor) and type(val.shape[dim]) is int


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
    """diff / gather / cumsum-like ops over `dim`: that dim never grows. gather's output has
    its index's shape."""
    x = node.args[0]
    dims = a.of(x)
    gather = node.target is aten.gather.default
    dim = node.args[1] if gather else node.kwargs.get(
        "dim", node.args[2] if len(node.args) > 2 else -1)
    out = a.fresh(node)
    if gather:
        for atom, index_atom in zip(out, a.of(node.args[2]), strict=True):
            a.unify(atom, index_atom, node)
    a.forbid(node, dims[int(dim) % len(dims)], str(node.target))


def rule_select(a: Analysis, node: fx.Node) -> None:
    """aten.select(x, dim, index): `dim` is dropped; it is an index space (Bloom's q/k/v of
    a fused projection), fixed."""
    x, dim = node.args[:2]
    dims = a.of(x)
    dim %= len(dims)
    out = a.fresh(node)
    mapping = {d: d + (d >= dim) for d in range(len(out))}
    for d, src in mapping.items():
        a.unify(dims[src], out[d], node)
    a.carry_same(node, x, mapping)
    a.atoms.tag(dims[dim], "index")
    a.forbid(node, dims[dim], "integer indexing")


def rule_pow_tensors(a: Analysis, node: fx.Node) -> None:
    """pow(x, y) of two tensors: broadcasting; pow(0, 0) = 1, so new entries become non-zero."""
    broadcast(a, node, list(node.args[:2]), "all")
    a.carries.pop(node, None)


def rule_numpy_t(a: Analysis, node: fx.Node) -> None:
    """x.T: every dim reversed."""
    x = node.args[0]
    _permuted(a, node, x, list(reversed(range(len(a.of(x))))))


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
for _target in (aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar):
    RULES[_target] = rule_where
RULES[aten.abs.default] = rule_zero_unary
RULES[aten.sign.default] = rule_zero_unary
RULES[aten.ceil.default] = rule_zero_unary
RULES[aten.floor.default] = rule_zero_unary
RULES[aten.pow.Scalar] = rule_unary  # pow(number, tensor)
RULES[aten.pow.Tensor_Tensor] = rule_pow_tensors
RULES[aten.numpy_T.default] = rule_numpy_t
RULES[aten.select.int] = rule_select
RULES[aten.lift_fresh_copy.default] = rule_zero_unary  # a constant made in forward
