"""Factories: tensors made from sizes (ones, zeros, full, arange, new_*, *_like) and
constants made in forward. Their dims are fresh; literal sizes are rewritten on growth."""

import torch
import torch.fx as fx

from msgc.graph.dims import Analysis
from msgc.graph.rules.pointwise import rule_unary
from msgc.graph.rules.registry import rule
from msgc.graph.rules.shapes import record_shape

aten = torch.ops.aten


@rule(torch.ones, torch.zeros, torch.full, torch.empty, torch.arange, aten.ones.default,
      aten.zeros.default, aten.full.default, aten.empty.memory_format, aten.arange.default,
      aten.arange.start, aten.arange.start_step, aten.scalar_tensor.default)
def rule_factory(a: Analysis, node: fx.Node) -> None:
    """ones/zeros/full/empty/arange: fresh dims; literal sizes are rewritten on growth."""
    out = a.fresh(node)
    if node.target in (torch.arange, aten.arange.default, aten.arange.start,
      aten.arange.start_step, aten.scalar_tensor.default):
        if node.target is not aten.arange.start and len(node.args) == 1 and isinstance(
                node.args[0], int):
            a.size_arg(node, ("args", 0), out[0])  # arange(n), n a literal: n entries
        return
    sizes = node.args[0] if node.args and isinstance(node.args[0], (list, tuple)) else None
    for d in range(len(out)):
        path = ("args", 0, d) if sizes is not None else ("args", d)
        a.size_arg(node, path, out[d])


@rule("new_ones", "new_zeros", "new_empty", "new_full", aten.new_ones.default,
      aten.new_zeros.default)
def rule_new_factory(a: Analysis, node: fx.Node) -> None:
    """x.new_ones(shape) and kin: fresh dims; literal sizes are rewritten on growth."""
    out = a.fresh(node)
    record_shape(a, node, out)


@rule(torch.ones_like, torch.zeros_like, torch.full_like, torch.empty_like, aten.ones_like.default,
      aten.zeros_like.default, aten.full_like.default, aten.fill.Scalar)
def rule_like(a: Analysis, node: fx.Node) -> None:
    """zeros_like, ones_like, full_like: same dims as the input, new values."""
    rule_unary(a, node)
