"""A model split before its LM head, so the head and the loss can run as one fused op.

``head_split(model, example_inputs)`` returns a module that shares `model`'s parameters and
buffers and runs everything but the final linear layer: its forward returns
``HeadInputs(hidden, weight, bias)``, what that layer would have read. The loss then runs
``msgc.train.linear_cross_entropy`` on them instead of a cross-entropy on (N, V) logits.

It works on msgc's IR (a grown or folded model is one already; anything else is traced
with ``to_ir`` and re-pointed at the model's own parameters and buffers) whenever the graph
ends in ``linear(hidden, weight, bias)`` on a parameter weight: GPT-2, LLaMA, BERT's masked
head, and custom models of that shape. Anything else gives None, and the caller keeps the
plain model. The split is a view: rebuild it whenever the model's structure changes.
"""

from __future__ import annotations

import copy
import operator
from typing import NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from msgc.errors import MsgcError
from msgc.graph.dims import linear_args
from msgc.graph.trace import IR_MARK, to_ir

__all__ = ["HeadInputs", "head_split"]

LINEARS = (F.linear, torch.ops.aten.linear.default)
ADDS = (operator.add, torch.add, torch.ops.aten.add.Tensor)


class HeadInputs(NamedTuple):
    """What a model's final linear layer reads, in place of its logits."""

    hidden: torch.Tensor          # (..., d)
    weight: torch.Tensor          # (V, d)
    bias: torch.Tensor | None     # (V,)


def head_split(model: nn.Module, example_inputs: tuple) -> fx.GraphModule | None:
    """`model` without its final linear layer, returning `HeadInputs` (None if the model
    does not end in one, or cannot be traced)."""
    ir = model if getattr(model, IR_MARK, False) else _shared_ir(model, example_inputs)
    if ir is None:
        return None
    graph = copy.deepcopy(ir.graph)
    output = next(node for node in graph.nodes if node.op == "output")
    logits = output.args[0]
    head = _head_inputs(logits)
    if head is None or len(logits.users) != 1:  # the logits feed the output alone
        return None
    with graph.inserting_before(output):
        inputs = graph.call_function(HeadInputs, head)
    output.args = (inputs,)
    _erase_unused(graph, logits)  # the head's linear (and BERT's bias add)
    graph.lint()
    return fx.GraphModule(ir, graph, class_name="HeadSplit")


def _head_inputs(node) -> tuple | None:
    """(hidden, weight, bias) nodes of the graph's result `node` if it is ``linear(hidden,
    weight, bias)`` or ``linear(hidden, weight) + bias`` (BERT's decoder) on parameters."""
    bias = None
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target in ADDS \
            and len(node.args) == 2 and not node.kwargs:
        node, bias = node.args
        if not (_is_attr(bias) and _is_linear(node) and linear_args(node)[2] is None
                and len(node.users) == 1):
            return None
    if not _is_linear(node):
        return None
    hidden, weight, linear_bias = linear_args(node)
    if not _is_attr(weight) or (linear_bias is not None and not _is_attr(linear_bias)):
        return None
    return hidden, weight, bias if bias is not None else linear_bias


def _erase_unused(graph: fx.Graph, node: fx.Node) -> None:
    """Erase `node` and the calls that fed only it."""
    feeding = [n for n in node.all_input_nodes if n.op == "call_function"]
    graph.erase_node(node)
    for n in feeding:
        if not n.users:
            _erase_unused(graph, n)


def _is_linear(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in LINEARS


def _is_attr(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _shared_ir(model: nn.Module, example_inputs: tuple) -> fx.GraphModule | None:
    """`model` traced into the IR, its parameters and buffers `model`'s own (not copies);
    None if it cannot be traced or holds parameters the model does not name."""
    try:
        ir = to_ir(model, example_inputs)
    except MsgcError:
        return None
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    for node in ir.graph.nodes:
        if node.op != "get_attr":
            continue
        owner_path, _, name = node.target.rpartition(".")
        owner = ir.get_submodule(owner_path)
        if node.target in params:
            setattr(owner, name, params[node.target])
        elif node.target in buffers:
            owner.register_buffer(name, buffers[node.target])
        elif isinstance(getattr(owner, name), nn.Parameter):
            return None  # a weight the model does not name: training it would train a copy
    return ir
