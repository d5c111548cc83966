"""Fuse: rewrite the grown graph's mask patterns into msgc's fused kernels.

    linear -> * m [-> act]            =>  kernels.masked_linear(x, W, b, m, act)
    masked_layer_norm -> * m          =>  kernels.masked_norm(x, w, b, m, eps, "layer")
    masked_rms_norm -> * m            =>  kernels.masked_norm(x, w, None, m, eps, "rms")

A pattern fuses only where each intermediate has the next op as its sole user and the
mask runs along the last dim. Fold turns the fused ops back into plain ones at c = 1.
"""

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc import kernels, ops
from msgc.graph.dims import fetch_attr, linear_args
from msgc.passes.masks import MASKS

aten = torch.ops.aten
_LINEAR = {F.linear, aten.linear.default}
_ACTIVATIONS = {
    F.relu: "relu", torch.relu: "relu", F.silu: "silu", "relu": "relu", "silu": "silu",
    aten.relu.default: "relu", aten.silu.default: "silu",
}


def fuse_masks(gm: fx.GraphModule) -> int:
    """Rewrite every fusable mask pattern in place; returns how many were fused."""
    fused = 0
    for node in list(gm.graph.nodes):
        mask = _last_dim_mask(gm, node)
        if mask is None:
            continue
        source = node.args[0]
        if len(source.users) != 1:
            continue
        if source.op == "call_function" and source.target in _LINEAR:
            fused += _fuse_linear(gm, source, node, mask)
        elif source.op == "call_function" and source.target is ops.masked_layer_norm:
            x, weight, bias, norm_mask, eps = source.args
            fused += _fuse_norm(gm, source, node, mask, norm_mask, (x, weight, bias), eps, "layer")
        elif source.op == "call_function" and source.target is ops.masked_rms_norm:
            x, weight, norm_mask, eps = source.args
            fused += _fuse_norm(gm, source, node, mask, norm_mask, (x, weight, None), eps, "rms")
    gm.graph.lint()
    gm.recompile()
    return fused


def _last_dim_mask(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The mask get_attr of `x * mask` when the mask runs along x's last dim."""
    if node.op != "call_function" or node.target is not operator.mul:
        return None
    mask = node.args[1]
    if not (isinstance(mask, fx.Node) and mask.op == "get_attr"
            and str(mask.target).startswith(MASKS + ".")):
        return None
    return mask if fetch_attr(gm, mask.target).dim() == 1 else None


def _fuse_linear(gm, linear: fx.Node, mul: fx.Node, mask: fx.Node) -> int:
    x, weight, bias = linear_args(linear)
    act, last = _activation_after(mul)
    with gm.graph.inserting_before(last):
        new = gm.graph.call_function(kernels.masked_linear, (x, weight, bias, mask),
                                     {"act": act, "mask_before_act": True})
    _replace(gm, last, new, [linear, mul] + ([last] if last is not mul else []))
    return 1


def _activation_after(mul: fx.Node) -> tuple[str | None, fx.Node]:
    """The activation right after the mask, if it is the mask's only user."""
    if len(mul.users) != 1:
        return None, mul
    user = next(iter(mul.users))
    target = user.target
    if user.op in ("call_function", "call_method") and target in _ACTIVATIONS:
        return _ACTIVATIONS[target], user
    if target in (F.gelu, "gelu", aten.gelu.default):
        approximate = user.kwargs.get("approximate", "none")
        return ("gelu_tanh" if approximate == "tanh" else "gelu"), user
    return None, mul


def _fuse_norm(gm, norm, mul, mask, norm_mask, tensors, eps, kind) -> int:
    if norm_mask.target != mask.target:
        return 0
    x, weight, bias = tensors
    with gm.graph.inserting_before(mul):
        new = gm.graph.call_function(kernels.masked_norm, (x, weight, bias, mask, eps, kind))
    _replace(gm, mul, new, [norm, mul])
    return 1


def _replace(gm, last: fx.Node, new: fx.Node, removed: list[fx.Node]) -> None:
    new.meta = dict(last.meta)
    last.replace_all_uses_with(new)
    for node in reversed(removed):
        if not node.users:
            gm.graph.erase_node(node)
