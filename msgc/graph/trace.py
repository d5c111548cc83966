"""Frontends: any nn.Module + example inputs -> msgc's IR, a plain trainable GraphModule.

The IR has parameters as get_attr nodes under their original qualified names, the
torch.nn leaf layers (Linear, LayerNorm, ...) inlined as functional calls, dropout as
mode-aware modules, and a shape on every tensor node (node.meta["tensor_meta"]).
torch.fx.symbolic_trace is tried first; torch.export(strict=False) where it fails, with batch
and sequence sizes symbolic. Hugging Face models go straight to torch.export, as a copy with the
KV cache off and the output reduced to the logits. Exported graphs are brought to the ops the
analysis has rules for: in-place ops on temporaries made functional, x @ W.T as linear.
"""

import copy
import functools
import inspect
import operator
import sys

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
        _functional_inplace(gm)
        _canonical_ops(gm)
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
    model = _traceable_copy(model)
    model.train()  # dropout probabilities are literals only in train mode
    if _is_hf_model(model):  # HF forwards never symbolic_trace (decorators, control flow)
        try:
            return _export(model, example_inputs)
        except Exception as export_error:
            raise _trace_error(model, f"torch.export(strict=False) failed "
                               f"({_first_line(export_error)})") from export_error
    try:
        return _symbolic_trace(model, example_inputs)
    except Exception as fx_error:
        try:
            return _export(model, example_inputs)
        except Exception as export_error:
            raise _trace_error(model, f"torch.fx.symbolic_trace failed ({_first_line(fx_error)}) "
                               f"and torch.export(strict=False) failed "
                               f"({_first_line(export_error)})") from export_error


def _trace_error(model: nn.Module, why: str) -> GraphError:
    return GraphError(f"cannot trace {type(model).__name__}: {why}. Remove data-dependent "
                      "control flow from forward, or pass example inputs that run through "
                      "the model.")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --- Hugging Face models as constructed -------------------------------------------------


def _is_hf_model(module: nn.Module) -> bool:
    """A transformers PreTrainedModel (transformers is never imported for this)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def _traceable_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` that tracing can carry; the user's model and config stay as they are.

    In every Hugging Face model inside it the KV cache is off (a DynamicCache is no tensor);
    a top-level HF model's output is reduced to its logits, in the same ModelOutput class
    (`past_key_values`, `hidden_states`, ... are None): the grown model returns that.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        config = getattr(module, "config", None)
        if _is_hf_model(module) and getattr(config, "use_cache", False):
            config.use_cache = False
    if _is_hf_model(model):
        model.forward = _logits_only(model.forward)
    return model


def _logits_only(forward):
    @functools.wraps(forward)
    def logits_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        model_output = sys.modules["transformers"].utils.ModelOutput
        if isinstance(out, model_output) and out.get("logits") is not None:
            return type(out)(logits=out["logits"])
        return out

    return logits_forward


def _symbolic_trace(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """symbolic_trace, with forward's unused optional arguments fixed to their defaults."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {
        p.name: p.default
        for p in params[len(example_inputs):]
        if p.default is not inspect.Parameter.empty
    }
    traced = fx.symbolic_trace(model, concrete_args=concrete or None)
    return fx.GraphModule(traced, traced.graph, class_name=type(model).__name__)


def _export(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """torch.export with batch and sequence symbolic, unlifted into a trainable GraphModule."""
    dynamic = tuple(_dynamic_dims(x) for x in example_inputs)
    program = torch.export.export(model, example_inputs, dynamic_shapes=dynamic, strict=False)
    unlifted = program.module()
    graph = unlifted.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    gm = fx.GraphModule(unlifted, graph, class_name=type(model).__name__)
    _inline_wrapped_regions(gm)
    return gm


# torch.export's higher-order ops for a region under torch.no_grad() / torch.autocast:
# (the index of the body submodule in the node's args, whether it is a grad region)
_WRAPPED_REGIONS = {
    torch.ops.higher_order.wrap_with_set_grad_enabled: (1, True),
    torch.ops.higher_order.wrap_with_autocast: (4, False),
}


def _inline_wrapped_regions(gm: fx.GraphModule) -> None:
    """Inline the bodies of no_grad and autocast regions so the analysis sees their ops.

    A ``no_grad`` region's outputs are detached (the same values and gradients); an
    autocast region's ops run under the caller's autocast setting.
    """
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _WRAPPED_REGIONS:
            continue
        body_at, grad_region = _WRAPPED_REGIONS[node.target]
        body = getattr(gm, node.args[body_at].target)
        operands = node.args[body_at + 1:]
        no_grad = grad_region and not node.args[0]
        with gm.graph.inserting_before(node):
            outputs = _copy_body(gm.graph, body.graph, operands, node)
            if no_grad:
                outputs = [_call(gm.graph, node, aten.detach.default, (out,)) for out in outputs]
        for user in list(node.users):  # getitem(region, i)
            user.replace_all_uses_with(outputs[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _copy_body(graph: fx.Graph, body: fx.Graph, operands: tuple,
               call: fx.Node) -> list[fx.Node]:
    """Copy a region's body into `graph` (placeholders bound to `operands`), each node
    placed in the module of the `call` (a body shared by several calls has one); its
    outputs."""
    env = dict(zip([n for n in body.nodes if n.op == "placeholder"], operands, strict=True))
    for n in body.nodes:
        if n.op == "output":
            return list(torch.utils._pytree.tree_leaves(fx.map_arg(n.args[0], env.get)))
        if n.op != "placeholder":
            env[n] = graph.node_copy(n, env.get)
            env[n].meta["nn_module_stack"] = dict(call.meta.get("nn_module_stack", {}))
    raise GraphError("a wrapped region without an output")  # torch.export always gives one


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


# --- in-place ATen ops on temporaries become functional --------------------------------


def _functional_inplace(gm: fx.GraphModule) -> None:
    """`x.add_(y)` on a temporary x (no view, input or weight) becomes `z = x + y`, and the
    nodes after it read z: what torch.export keeps of `mlp_output += attention_output`."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        functional = _functional_op(node)
        target = node.args[0] if node.args else None
        if functional is None or not _owns_storage(target):
            continue
        node.target = functional
        for user in list(target.users):
            if order[user] > order[node]:
                user.replace_input_with(target, node)
    gm.recompile()


def _functional_op(node: fx.Node):
    """The out-of-place overload of an in-place ATen op (aten.add_.Tensor -> aten.add.Tensor)."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return None
    arguments = op._schema.arguments
    alias = arguments[0].alias_info if arguments else None
    name = op._schema.name.split("::")[-1]
    if alias is None or not alias.is_write or not name.endswith("_"):
        return None
    return getattr(getattr(aten, name[:-1], None), op._overloadname, None)


def _owns_storage(node) -> bool:
    """A result of an ATen op that is no view of another tensor."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    op = node.target
    return isinstance(op, torch._ops.OpOverload) and all(
        r.alias_info is None for r in op._schema.returns)


# --- ATen ops as the ops msgc has rules for ----------------------------------------------


def _canonical_ops(gm: fx.GraphModule) -> None:
    """x @ W.T as linear (Falcon), baddbmm (Bloom's ALiBi scores) and arange(start, end) in
    terms of simpler ops."""
    for node in list(gm.graph.nodes):
        rewrite = _REWRITES.get(node.target) if node.op == "call_function" else None
        if rewrite is None:
            continue
        with gm.graph.inserting_before(node):
            new = rewrite(gm.graph, node)
        if new is None:
            continue
        new.meta = dict(node.meta)  # the same value, computed by other ops
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.recompile()


def _matmul_weight(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    """x @ W.T, W a weight matrix: linear(x, W)."""
    x, y = node.args[:2]
    transposes = (aten.numpy_T.default, aten.t.default)
    if not (isinstance(y, fx.Node) and y.target in transposes and y.args[0].op == "get_attr"):
        return None
    return graph.call_function(aten.linear.default, (x, y.args[0]))


def _baddbmm(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """baddbmm(x, b1, b2, beta, alpha) = beta * x + alpha * (b1 @ b2)."""
    x, b1, b2 = node.args[:3]
    beta = _arg(node, 3, "beta", 1)
    alpha = _arg(node, 4, "alpha", 1)
    product = _call(graph, node, aten.bmm.default, (b1, b2))
    if alpha != 1:
        product = _call(graph, node, aten.mul.Tensor, (product, alpha))
    if beta == 0:
        return product
    if beta != 1:
        x = _call(graph, node, aten.mul.Tensor, (x, beta))
    return graph.call_function(aten.add.Tensor, (x, product))


def _arange_from(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    """arange(start, end) with literal ints = arange(end - start) + start: its length is one
    literal, which growth can rewrite (ALiBi's head slopes)."""
    start, end = node.args[:2]
    if not (isinstance(start, int) and isinstance(end, int)):
        return None
    length = _call(graph, node, aten.arange.default, (end - start,), dict(node.kwargs))
    return graph.call_function(aten.add.Tensor, (length, start))


def _call(graph: fx.Graph, like: fx.Node, target, args: tuple, kwargs: dict | None = None):
    new = graph.call_function(target, args, kwargs or {})
    new.meta = {k: v for k, v in like.meta.items() if k in ("nn_module_stack", "stack_trace")}
    return new


_REWRITES = {aten.matmul.default: _matmul_weight, aten.baddbmm.default: _baddbmm,
             aten.arange.start: _arange_from}


def _drop_dead_code(gm: fx.GraphModule) -> None:
    """Remove nodes whose results are unused (size reads left behind by tracing)."""
    for node in reversed(list(gm.graph.nodes)):
        if node.op in ("call_function", "call_method", "get_attr") and not node.users:
            if node.target in (operator.setitem,) or _has_side_effects(node):
                continue
            gm.graph.erase_node(node)
    gm.recompile()


def _has_side_effects(node: fx.Node) -> bool:
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target._schema.is_mutable  # an in-place ATen op left as it is
    return node.op == "call_method" and str(node.target).endswith("_")
