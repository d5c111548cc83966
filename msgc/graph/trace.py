"""Frontends: any nn.Module + example inputs -> msgc's IR, a plain trainable GraphModule.

The IR has parameters as get_attr nodes under their original qualified names, the
torch.nn leaf layers (Linear, LayerNorm, ...) inlined as functional calls, dropout as
mode-aware modules, and a shape on every tensor node (node.meta["tensor_meta"]).
torch.fx.symbolic_trace is tried first; torch.export(strict=False) where it fails.
"""

import copy
import inspect
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from msgc.errors import GraphError
from msgc.ops import AttentionDropout

IR_MARK = "_msgc_ir"

aten = torch.ops.aten


def to_ir(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """Trace `model` into msgc's IR, with shapes propagated from `example_inputs`.

    The model itself is never modified; the IR holds its own copies of the weights.
    """
    example_inputs = tuple(example_inputs)
    if getattr(model, IR_MARK, False):
        gm = _copy_ir(model)
    else:
        gm = _trace(model, example_inputs)
        _inline_leaf_modules(gm)
        _mode_aware_dropout(gm)
        _drop_dead_code(gm)
        setattr(gm, IR_MARK, True)
    propagate_shapes(gm, example_inputs)
    return gm


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Fill node.meta["tensor_meta"] by running the inputs once (eval mode, no grad)."""
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as exc:  # the user's inputs do not run through the model
        raise GraphError(f"running the example inputs through the model failed: {exc}") from exc
    finally:
        gm.train(was_training)


def _copy_ir(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of an IR module with its own parameters and buffers."""
    new = copy.deepcopy(gm)
    setattr(new, IR_MARK, True)
    return new


def _trace(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    was_training = model.training
    model.train()  # dropout probabilities are literals only in train mode
    try:
        try:
            return _symbolic_trace(model, example_inputs)
        except Exception as fx_error:
            try:
                return _export(model, example_inputs)
            except Exception as export_error:
                raise GraphError(
                    f"cannot trace {type(model).__name__}: torch.fx.symbolic_trace failed "
                    f"({_first_line(fx_error)}) and torch.export(strict=False) failed "
                    f"({_first_line(export_error)}). Remove data-dependent control flow "
                    "from forward, or pass example inputs that run through the model."
                ) from export_error
    finally:
        model.train(was_training)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _symbolic_trace(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """symbolic_trace, with forward's unused optional arguments fixed to their defaults."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {
        p.name: p.default
        for p in params[len(example_inputs):]
        if p.default is not inspect.Parameter.empty
    }
    traced = fx.symbolic_trace(copy.deepcopy(model), concrete_args=concrete or None)
    return fx.GraphModule(traced, traced.graph, class_name=type(model).__name__)


def _export(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """torch.export with batch and sequence symbolic, unlifted into a trainable GraphModule."""
    dynamic = tuple(_dynamic_dims(x) for x in example_inputs)
    program = torch.export.export(
        copy.deepcopy(model), example_inputs, dynamic_shapes=dynamic, strict=False
    )
    unlifted = program.module()
    graph = unlifted.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    gm = fx.GraphModule(unlifted, graph, class_name=type(model).__name__)
    return gm


def _dynamic_dims(x):
    """Batch and sequence dims of an integer input are symbolic in the exported graph."""
    if not isinstance(x, torch.Tensor):
        return None
    names = ("batch", "seq")
    return {d: torch.export.Dim.AUTO for d in range(min(x.dim(), len(names)))}


# --- leaf modules -> functional calls -------------------------------------------------


def _inline_leaf_modules(gm: fx.GraphModule) -> None:
    """Replace call_module nodes of torch.nn leaf layers by functional calls + get_attr."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        inline = _INLINERS.get(type(module))
        if inline is None:
            continue
        with gm.graph.inserting_before(node):
            new = inline(gm.graph, node, module)
        if new is not None:
            new.meta = dict(node.meta)
        node.replace_all_uses_with(new if new is not None else node.args[0])
        gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.recompile()


def _param(graph: fx.Graph, node: fx.Node, module: nn.Module, name: str):
    if getattr(module, name, None) is None:
        return None
    attr = graph.get_attr(f"{node.target}.{name}")
    attr.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
    return attr


def _inline_linear(graph, node, m: nn.Linear):
    return graph.call_function(
        F.linear, (node.args[0], _param(graph, node, m, "weight"), _param(graph, node, m, "bias"))
    )


def _inline_embedding(graph, node, m: nn.Embedding):
    if m.max_norm is not None:
        raise GraphError(f"node {node.name}: nn.Embedding with max_norm is not supported")
    return graph.call_function(
        F.embedding, (node.args[0], _param(graph, node, m, "weight"), m.padding_idx)
    )


def _inline_layer_norm(graph, node, m: nn.LayerNorm):
    args = (
        node.args[0],
        tuple(m.normalized_shape),
        _param(graph, node, m, "weight"),
        _param(graph, node, m, "bias"),
        m.eps,
    )
    return graph.call_function(F.layer_norm, args)


def _inline_rms_norm(graph, node, m: nn.RMSNorm):
    args = (node.args[0], tuple(m.normalized_shape), _param(graph, node, m, "weight"), m.eps)
    return graph.call_function(F.rms_norm, args)


def _inline_conv2d(graph, node, m: nn.Conv2d):
    if m.padding_mode != "zeros":
        raise GraphError(f"node {node.name}: nn.Conv2d with padding_mode={m.padding_mode!r} "
                         "is not supported")
    args = (node.args[0], _param(graph, node, m, "weight"), _param(graph, node, m, "bias"),
            m.stride, m.padding, m.dilation, m.groups)
    return graph.call_function(F.conv2d, args)


def _inline_gelu(graph, node, m: nn.GELU):
    return graph.call_function(F.gelu, (node.args[0],), {"approximate": m.approximate})


def _inline_unary(function):
    def inline(graph, node, m):
        return graph.call_function(function, (node.args[0],))

    return inline


_INLINERS = {
    nn.Linear: _inline_linear,
    nn.Embedding: _inline_embedding,
    nn.LayerNorm: _inline_layer_norm,
    nn.RMSNorm: _inline_rms_norm,
    nn.Conv2d: _inline_conv2d,
    nn.GELU: _inline_gelu,
    nn.ReLU: _inline_unary(F.relu),
    nn.SiLU: _inline_unary(F.silu),
    nn.Tanh: _inline_unary(torch.tanh),
    nn.Sigmoid: _inline_unary(torch.sigmoid),
    nn.Identity: lambda graph, node, m: None,
}


# --- dropout follows train/eval --------------------------------------------------------

_DROPOUT_FUNCTIONS = {F.dropout, torch.dropout, aten.dropout.default}
_SDPA_FUNCTIONS = {F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default}
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _mode_aware_dropout(gm: fx.GraphModule) -> None:
    """Dropout traced in train mode becomes modules that honour .train()/.eval()."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _DROPOUT_FUNCTIONS:
            p = _arg(node, 1, "p", 0.5)
            module = nn.Dropout(p)
            args = (node.args[0],)
        elif node.target in _SDPA_FUNCTIONS:
            values = {name: _arg(node, i, name, None) for i, name in enumerate(_SDPA_ARGS)}
            p = values.pop("dropout_p") or 0.0
            if p == 0.0:
                continue
            module = AttentionDropout(p)
            args = (values.pop("query"), values.pop("key"), values.pop("value"))
        else:
            continue
        name = f"msgc_dropout_{count}"
        count += 1
        gm.add_submodule(name, module)
        with gm.graph.inserting_before(node):
            kwargs = {} if isinstance(module, nn.Dropout) else _present(values)
            new = gm.graph.call_module(name, args, kwargs)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.recompile()


def _arg(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _present(values: dict) -> dict:
    return {k: v for k, v in values.items() if v not in (None, False)}


def _drop_dead_code(gm: fx.GraphModule) -> None:
    """Remove nodes whose results are unused (size reads left behind by tracing)."""
    for node in reversed(list(gm.graph.nodes)):
        if node.op in ("call_function", "call_method", "get_attr") and not node.users:
            if node.target in (operator.setitem,) or _has_side_effects(node):
                continue
            gm.graph.erase_node(node)
    gm.recompile()


def _has_side_effects(node: fx.Node) -> bool:
    return node.op == "call_method" and str(node.target).endswith("_")
