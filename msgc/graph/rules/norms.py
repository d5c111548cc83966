"""Norms: LayerNorm and RMSNorm over the last dims (masked statistics when they grow)."""

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc.graph.dims import Analysis
from msgc.graph.rules.registry import rule

aten = torch.ops.aten


@rule(F.layer_norm, aten.layer_norm.default)
def rule_layer_norm(a: Analysis, node: fx.Node) -> None:
    """layer_norm over the last dims: they may grow, with masked statistics."""
    _norm(a, node, weight_index=2, bias_index=3, zero_preserving=False)


@rule(F.rms_norm, aten.rms_norm.default)
def rule_rms_norm(a: Analysis, node: fx.Node) -> None:
    """rms_norm over the last dims: they may grow, with masked statistics; keeps 0 at 0."""
    _norm(a, node, weight_index=2, bias_index=None, zero_preserving=True)


def _norm(a: Analysis, node, weight_index, bias_index, zero_preserving) -> None:
    x, shape = node.args[:2]
    dims = a.of(x)
    out = a.fresh(node)
    k = len(shape)
    for d, atom in enumerate(dims):
        a.unify(atom, out[d], node)
    for index in (weight_index, bias_index):
        value = node.args[index] if index is not None and len(node.args) > index else None
        if a.is_tensor(value):
            for i, atom in enumerate(a.of(value)):
                a.unify(atom, dims[len(dims) - k + i], node)
    normalized = dims[len(dims) - k:]
    a.normalized[node] = normalized
    for i in range(k):
        a.size_arg(node, ("args", 1, i), normalized[i])
        a.need_zero(node, x, len(dims) - k + i)
    for d in range(len(dims)):
        if d < len(dims) - k or zero_preserving:
            a.carry(node, d, [(x, d)])
