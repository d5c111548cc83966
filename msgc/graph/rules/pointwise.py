"""Pointwise ops: one broadcasting rule, and which ops keep 0 at 0.

An ATen op tagged ``torch.Tag.pointwise`` that has no rule of its own gets
:func:`rule_pointwise`: its tensor operands broadcast into the output, and new entries stay
zero only for the ops in ``ZERO_AT_ZERO`` (f(0) = 0). The rules below are the pointwise ops
whose zeros, or non-tensor operands, need saying more precisely.
"""

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from msgc.graph.dims import Analysis, dim_arg, first_tensor
from msgc.graph.rules.refusals import fixed
from msgc.graph.rules.registry import module_rule, rule

aten = torch.ops.aten


def broadcast(a: Analysis, node: fx.Node, operands: list, mode: str) -> list[int]:
    """Output dims of a broadcasting op: operand dims aligned from the right."""
    out = a.fresh(node)
    sources: dict[int, list] = {d: [] for d in range(len(out))}
    for value in operands:
        if not a.is_tensor(value):
            if mode == "all":  # a scalar added to new entries makes them non-zero
                for d in sources:
                    sources[d].append(None)
            continue
        dims = a.of(value)
        offset = len(out) - len(dims)
        for d in range(len(out)):
            i = d - offset
            if i >= 0 and a.atoms.size(dims[i]) == a.atoms.size(out[d]):
                a.unify(dims[i], out[d], node)
                sources[d].append((value, i))
            elif mode == "all":
                sources[d].append(None)
    for d, src in sources.items():
        a.carry(node, d, src, mode)
    return out


def _tie_broadcast(a: Analysis, node: fx.Node, value: fx.Node) -> None:
    out, dims = a.of(node), a.of(value)
    offset = len(out) - len(dims)
    for i, atom in enumerate(dims):
        if a.atoms.size(atom) == a.atoms.size(out[i + offset]):
            a.unify(atom, out[i + offset], node)


@rule("add", "sub", "add_", "sub_", operator.add, operator.sub, operator.iadd, operator.isub,
      torch.add, torch.sub, torch.maximum, torch.minimum, aten.add.Tensor, aten.sub.Tensor,
      aten.add.Scalar, aten.sub.Scalar, aten.maximum.default, aten.minimum.default,
      aten.rsub.Scalar)
def rule_add(a: Analysis, node: fx.Node) -> None:
    """add, sub, maximum, where: new entries are zero only where every operand's are."""
    broadcast(a, node, list(node.args[:2]), "all")
    a.push[node] = "branches"


@rule(torch.where, aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf,
      aten.where.Scalar)
def rule_where(a: Analysis, node: fx.Node) -> None:
    """where(cond, x, y): x and y broadcast; new entries are zero where both are."""
    if len(node.args) < 3:  # where(cond): the indices of its non-zero entries
        fixed("where(cond), the indices of the true entries, which depend on the data,")(a, node)
        return
    cond, x, y = node.args[:3]
    broadcast(a, node, [x, y], "all")
    if a.is_tensor(cond):
        _tie_broadcast(a, node, cond)


@rule("mul", "mul_", operator.mul, operator.imul, torch.mul, aten.mul.Tensor, aten.mul.Scalar)
def rule_mul(a: Analysis, node: fx.Node) -> None:
    """mul: zero wherever either factor is zero."""
    broadcast(a, node, list(node.args[:2]), "any")
    a.push[node] = "first"


@rule("div", "div_", operator.truediv, torch.div, aten.div.Tensor, aten.div.Scalar,
      aten.div.Tensor_mode, aten.div.Scalar_mode)
def rule_div(a: Analysis, node: fx.Node) -> None:
    """div: zero where the numerator is; the denominator only broadcasts."""
    num, den = node.args[:2]
    broadcast(a, node, [num], "any")
    if a.is_tensor(den):
        _tie_broadcast(a, node, den)
    a.push[node] = "first"


@rule(F.relu, F.gelu, F.silu, torch.relu, torch.tanh, torch.neg, operator.neg, torch.sin,
      torch.sqrt, torch.abs, torch.erf, torch.clone, F.tanh, torch.triu, torch.tril, "triu", "tril",
      aten.triu.default, aten.tril.default, "relu", "gelu", "silu", "tanh", "neg", "sin", "sqrt",
      "abs", "erf", "contiguous", "clone", "detach", "float", "half", "bfloat16", "double", "to",
      "type_as", "type", "relu_", aten.relu.default, aten.gelu.default, aten.silu.default,
      aten.tanh.default, aten.neg.default, aten.sin.default, aten.sqrt.default, aten.clone.default,
      aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device,
      aten.contiguous.default, aten.alias.default, aten.detach.default, aten.type_as.default,
      aten.abs.default, aten.sign.default, aten.ceil.default, aten.floor.default,
      aten.trunc.default, aten.round.default, aten.lift_fresh_copy.default)
@module_rule(nn.Dropout)
def rule_zero_unary(a: Analysis, node: fx.Node) -> None:
    """f(0) = 0 elementwise (activations, dropout, dtype casts): zeros pass through."""
    x = first_tensor(a, node)
    out = a.fresh(node)
    for d, atom in enumerate(a.of(x)):
        a.unify(atom, out[d], node)
    a.carry_same(node, x, {d: d for d in range(len(out))})
    a.push[node] = "through"


@rule(torch.sigmoid, F.sigmoid, torch.exp, torch.cos, torch.rsqrt, torch.log, torch.reciprocal,
      "sigmoid", "exp", "cos", "rsqrt", "log", "reciprocal", aten.sigmoid.default, aten.exp.default,
      aten.cos.default, aten.rsqrt.default, aten.log.default, aten.reciprocal.default,
      aten.pow.Scalar)
def rule_unary(a: Analysis, node: fx.Node) -> None:
    """Elementwise with f(0) != 0 (exp, sigmoid, rsqrt, cos): new entries become non-zero."""
    x = first_tensor(a, node)
    out = a.fresh(node)
    for d, atom in enumerate(a.of(x)):
        a.unify(atom, out[d], node)


@rule("pow", operator.pow, torch.pow, aten.pow.Tensor_Scalar)
def rule_pow(a: Analysis, node: fx.Node) -> None:
    """x ** p: keeps 0 at 0 for a literal p > 0; otherwise new entries become non-zero."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if isinstance(exponent, (int, float)) and exponent > 0:
        rule_zero_unary(a, node)
    else:
        rule_unary(a, node)


@rule(aten.pow.Tensor_Tensor)
def rule_pow_tensors(a: Analysis, node: fx.Node) -> None:
    """pow(x, y) of two tensors: broadcasting; pow(0, 0) = 1, so new entries become non-zero."""
    broadcast(a, node, list(node.args[:2]), "all")
    a.carries.pop(node, None)


@rule("clamp", "clamp_min", "clamp_max", "clip", torch.clamp, torch.clip, aten.clamp.default,
      aten.clamp.Tensor, aten.clamp_min.default, aten.clamp_max.default)
def rule_clamp(a: Analysis, node: fx.Node) -> None:
    """clamp(x, min, max): keeps zeros only where 0 lies in [min, max] (literal bounds)."""
    names = ("clamp_min", "clamp_max", aten.clamp_min.default, aten.clamp_max.default)
    if node.target in names:
        low_high = (node.args[1], None) if "min" in str(node.target) else (None, node.args[1])
    else:
        low_high = (dim_arg(node, 1, "min"), dim_arg(node, 2, "max"))
    low, high = low_high
    literal = all(v is None or isinstance(v, (int, float)) for v in low_high)
    if literal and (low is None or low <= 0) and (high is None or high >= 0):
        rule_zero_unary(a, node)
    else:
        rule_unary(a, node)


@rule("masked_fill", torch.masked_fill, aten.masked_fill.Scalar)
def rule_masked_fill(a: Analysis, node: fx.Node) -> None:
    """masked_fill(x, mask, value): the filled value makes new entries non-zero."""
    x, mask = node.args[:2]
    broadcast(a, node, [x, 0.0], "all")
    _tie_broadcast(a, node, mask)


@rule(aten.__and__.Tensor, aten.__or__.Tensor, aten.eq.Tensor, aten.eq.Scalar, aten.ne.Tensor,
      aten.ne.Scalar, aten.le.Tensor, aten.le.Scalar, aten.lt.Tensor, aten.lt.Scalar,
      aten.ge.Tensor, aten.ge.Scalar, aten.gt.Tensor, aten.gt.Scalar, aten.logical_and.default,
      aten.logical_or.default, aten.logical_not.default, aten.bitwise_not.default,
      aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, operator.gt, operator.lt, operator.ge,
      operator.le, operator.eq, operator.ne, operator.and_, operator.or_, operator.invert,
      torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.logical_and,
      torch.logical_or, torch.logical_not, "gt", "lt", "ge", "le", "eq", "ne",
      "logical_and", "logical_or", "logical_not")
def rule_compare(a: Analysis, node: fx.Node) -> None:
    """Comparisons and boolean logic: broadcasting, no zeros kept."""
    broadcast(a, node, list(node.args[:2]), "all")


# Pointwise ATen packets with f(0) = 0 in their tensor operand (for any other arguments).
ZERO_AT_ZERO = frozenset({
    aten.abs, aten.asin, aten.asinh, aten.atan, aten.atanh, aten.ceil, aten.elu, aten.erf,
    aten.expm1, aten.floor, aten.gelu, aten.hardtanh, aten.leaky_relu, aten.log1p, aten.neg,
    aten.relu, aten.round, aten.sign, aten.silu, aten.sin, aten.sinh, aten.sqrt, aten.tan,
    aten.tanh, aten.trunc,
})


def is_pointwise(target) -> bool:
    """An ATen overload tagged pointwise (elementwise, broadcasting)."""
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags


def rule_pointwise(a: Analysis, node: fx.Node) -> None:
    """Any other pointwise op: operands broadcast; keeps 0 at 0 only if in ZERO_AT_ZERO."""
    if node.target.overloadpacket in ZERO_AT_ZERO:
        broadcast(a, node, [v for v in node.args if a.is_tensor(v)], "any")
        a.push[node] = "through"
        return
    broadcast(a, node, list(node.args), "all")
    a.carries.pop(node, None)
