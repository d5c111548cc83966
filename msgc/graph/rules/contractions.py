"""Contractions: linear layers, matmuls and convolutions.

A contracted dim may grow when the new entries of the operand are zero at mask 0 (the
rule records that need); the output dim of a weight is where new rows come from.
"""

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc.errors import GraphError
from msgc.graph.dims import Analysis, linear_args, where
from msgc.graph.rules.registry import rule

aten = torch.ops.aten


@rule(F.linear, aten.linear.default)
def rule_linear(a: Analysis, node: fx.Node) -> None:
    """linear(x, W, b): x[-1] ~ W[1] (contracted), out[-1] ~ W[0] ~ b[0]."""
    x, weight, bias = linear_args(node)
    _contract(a, node, x, weight, in_dim=1, out_dim=0, bias=bias)


@rule(torch.addmm, aten.addmm.default)
def rule_addmm(a: Analysis, node: fx.Node) -> None:
    """addmm(b, x, W) (Hugging Face Conv1D): x[-1] ~ W[0], out[-1] ~ W[1] ~ b."""
    bias, x, weight = node.args[:3]
    _contract(a, node, x, weight, in_dim=0, out_dim=1, bias=bias)


def _contract(a: Analysis, node, x, weight, in_dim: int, out_dim: int, bias) -> None:
    out = a.fresh(node)
    xd, wd = a.of(x), a.of(weight)
    a.unify(xd[-1], wd[in_dim], node)
    a.unify(out[-1], wd[out_dim], node)
    a.atoms.tag(wd[out_dim], "linear_out")
    if a.is_tensor(bias):
        a.unify(a.of(bias)[-1], out[-1], node)
    for d in range(len(out) - 1):
        a.unify(xd[d], out[d], node)
        a.carry(node, d, [(x, d)])
    a.need_zero(node, x, -1)


@rule(F.conv2d, aten.conv2d.default)
def rule_conv2d(a: Analysis, node: fx.Node) -> None:
    """conv2d(x, W, b): x[1] ~ W[1] (contracted), out[1] ~ W[0] ~ b; spatial dims new."""
    x, weight = node.args[:2]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    out = a.fresh(node)
    xd, wd = a.of(x), a.of(weight)
    a.unify(xd[0], out[0], node)
    a.carry(node, 0, [(x, 0)])
    if groups != 1:  # grouped channels: neither channel dim can grow
        a.forbid(node, xd[1], "a grouped convolution")
        a.forbid(node, out[1], "a grouped convolution")
        return
    a.unify(xd[1], wd[1], node)
    a.unify(out[1], wd[0], node)
    a.atoms.tag(wd[0], "linear_out")
    if a.is_tensor(bias):
        a.unify(a.of(bias)[0], out[1], node)
    a.need_zero(node, x, 1)


@rule("matmul", "bmm", torch.matmul, torch.bmm, operator.matmul, aten.matmul.default,
      aten.bmm.default, aten.mm.default)
def rule_matmul(a: Analysis, node: fx.Node) -> None:
    """matmul: batch dims broadcast, x[-1] ~ y[-2] contracted, out = (.., x[-2], y[-1])."""
    x, y = node.args[:2]
    xd, yd = a.of(x), a.of(y)
    if len(xd) < 2 or len(yd) < 2:
        raise GraphError(f"{where(node)}: matmul with a 1-D operand is not supported")
    out = a.fresh(node)
    for dims in (xd, yd):
        batch = dims[:-2]
        offset = len(out) - 2 - len(batch)
        for i, atom in enumerate(batch):
            if a.atoms.size(atom) == a.atoms.size(out[i + offset]):
                a.unify(atom, out[i + offset], node)
    a.unify(xd[-1], yd[-2], node)
    a.unify(xd[-2], out[-2], node)
    a.unify(yd[-1], out[-1], node)
    for d in range(len(out) - 2):
        a.carry(node, d, [(x, d - (len(out) - len(xd)))] if d >= len(out) - len(xd) else [])
    a.carry(node, len(out) - 2, [(x, len(xd) - 2)])
    a.carry(node, len(out) - 1, [(y, len(yd) - 1)])
    params = {n for n in (x, y) if n.op == "get_attr"}
    if not params:  # attention: both operands are activations
        a.atoms.tag(xd[-1], "head_dim")
        a.atoms.tag(yd[-1], "head_dim")
        for atom in out[:-2]:
            a.atoms.tag(atom, "attn_batch")
    a.need_zero(node, y if x in params else x, -1 if x not in params else -2)


@rule("transformers.grouped_mm_fallback.default", "transformers.grouped_mm.default")
def rule_grouped_mm(a: Analysis, node: fx.Node) -> None:
    """grouped_mm(x, W, offs) of Mixture-of-Experts FFNs (transformers' op): x (S, K),
    W (E, K, N): x[-1] ~ W[1] contracted, out[-1] ~ W[2]; the expert dim E is fixed."""
    x, weight = node.args[:2]
    _contract(a, node, x, weight, in_dim=1, out_dim=2, bias=None)
    a.atoms.tag(a.of(weight)[0], "index")
