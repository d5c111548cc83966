"""Fold: at c = 1 every mask is 1, so remove the masks and masked statistics.

Mask multiplications disappear, masked norms and means become the plain ops, new blocks'
mixing becomes the block's own output, and the mask buffers go. The result is a plain
GraphModule of the grown size that computes the same function as the grown one at c = 1.
"""

import operator

import torch.fx as fx
import torch.nn.functional as F

from msgc import kernels, ops
from msgc.graph.dims import fetch_attr
from msgc.passes.masks import MASKS


def fold_masks(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite `gm` in place into a plain graph (its masks must be at 1)."""
    graph = gm.graph
    for node in list(graph.nodes):
        replacement = _plain(gm, node)
        if replacement is None:
            continue
        if isinstance(replacement, fx.Node) and replacement is not node:
            replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op == "get_attr" and str(node.target).startswith(MASKS + ".") and not node.users:
            graph.erase_node(node)
    if hasattr(gm, MASKS):
        delattr(gm, MASKS)
    graph.lint()
    gm.recompile()
    return gm


def _plain(gm: fx.GraphModule, node: fx.Node):
    graph = gm.graph
    if node.op != "call_function":
        return None
    if node.target is operator.mul and is_mask(node.args[1]):
        return node.args[0]
    if node.target is ops.depth_mix:
        return node.args[0]
    if node.target is ops.masked_layer_norm:
        x, weight, bias, mask, eps = node.args
        shape = (fetch_attr(gm, mask.target).shape[0],)
        return _call(graph, node, F.layer_norm, (x, shape, weight, bias, eps))
    if node.target is ops.masked_rms_norm:
        x, weight, mask, eps = node.args
        shape = (fetch_attr(gm, mask.target).shape[0],)
        return _call(graph, node, F.rms_norm, (x, shape, weight, eps))
    if node.target is kernels.masked_linear:
        x, weight, bias = node.args[:3]
        linear = _call(graph, node, F.linear, (x, weight, bias))
        act = node.kwargs.get("act")
        if act is None:
            return linear
        function, kwargs = _ACTIVATIONS[act]
        return _call(graph, node, function, (linear,), kwargs)
    if node.target is kernels.masked_norm:
        x, weight, bias, mask, eps, kind = node.args
        shape = (fetch_attr(gm, mask.target).shape[0],)
        if kind == "rms":
            return _call(graph, node, F.rms_norm, (x, shape, weight, eps))
        return _call(graph, node, F.layer_norm, (x, shape, weight, bias, eps))
    if node.target is ops.masked_mean:
        x, _, dim, keepdim = node.args
        with graph.inserting_before(node):
            return graph.call_method("mean", (x, dim), {"keepdim": keepdim})
    return None


_ACTIVATIONS = {
    "gelu": (F.gelu, {}),
    "gelu_tanh": (F.gelu, {"approximate": "tanh"}),
    "silu": (F.silu, {}),
    "relu": (F.relu, {}),
}


def _call(graph: fx.Graph, node: fx.Node, function, args, kwargs=None) -> fx.Node:
    """A call of `function` before `node`, with `node`'s meta (its module path included, so
    block detection still places it in its block)."""
    with graph.inserting_before(node):
        call = graph.call_function(function, args, kwargs)
    call.meta = dict(node.meta)
    return call


def is_mask(value) -> bool:
    return (isinstance(value, fx.Node) and value.op == "get_attr"
            and str(value.target).startswith(MASKS + "."))

