"""What the emitted classes declare in __init__: torch.nn layers, parameters and buffers.

A linear, embedding or norm call whose parameters are exactly those of one module path
becomes that torch.nn layer (`nn.Linear(256, 704, bias=False)`), called as a module; every
other tensor is a parameter or buffer under its own name. Declarations nest under their
module paths in ModuleDicts and ModuleLists, so the state dict keys are the graph's names.
"""

import keyword
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc import ops
from msgc.errors import GraphError

aten = torch.ops.aten
LINEAR = {F.linear, aten.linear.default}
LAYER_NORM = {F.layer_norm, aten.layer_norm.default}
RMS_NORM = {F.rms_norm, aten.rms_norm.default}


@dataclass(frozen=True)
class Decl:
    """One declaration: a module's constructor source, or a parameter's or buffer's."""

    kind: str  # "module", "parameter" or "buffer"
    source: str


@dataclass
class Layers:
    """The torch.nn layers found: constructor per module path, and the calls that use them."""

    decls: dict[str, Decl] = field(default_factory=dict)
    calls: dict[fx.Node, str] = field(default_factory=dict)  # node -> module path it calls
    tensors: set[str] = field(default_factory=set)  # targets the layers hold


def find_layers(gm: fx.GraphModule, reserved: set[str]) -> Layers:
    """Layers for the graph's calls; `reserved` module paths (block lists) never are one."""
    targets = {str(n.target) for n in gm.graph.find_nodes(op="get_attr")}
    layers = Layers()
    for node in gm.graph.nodes:
        found = _layer(gm, node) if node.op == "call_function" else None
        if found is None:
            continue
        owner, source, held, is_call = found
        if owner in reserved or not _holds_exactly(owner, held, targets):
            continue
        if layers.decls.setdefault(owner, Decl("module", source)).source != source:
            continue
        layers.tensors |= held
        if is_call:
            layers.calls[node] = owner
    return layers


def _layer(gm: fx.GraphModule, node: fx.Node) -> tuple[str, str, set[str], bool] | None:
    """(module path, constructor, targets it holds, whether the call is its forward)."""
    fn, args = node.target, node.args
    if fn in LINEAR and 2 <= len(args) <= 3 and not node.kwargs:
        weight, bias = args[1], args[2] if len(args) == 3 else None
        shape = _shape(gm, weight)
        if shape is None or len(shape) != 2:
            return None
        extra = "" if bias is not None else ", bias=False"
        return _owned(gm, weight, bias, f"nn.Linear({shape[1]}, {shape[0]}{extra})", True)
    if fn is F.embedding and len(args) <= 3 and not node.kwargs:
        return _embedding(gm, args[1], args[2] if len(args) == 3 else None)
    if fn is aten.embedding.default and len(args) == 2 and not node.kwargs:
        return _embedding(gm, args[0], None)
    if fn in LAYER_NORM and len(args) == 5 and not node.kwargs:
        return _norm(gm, "LayerNorm", args[2], args[3], args[1], args[4], 1e-5, True)
    if fn in RMS_NORM and len(args) == 4 and not node.kwargs:
        return _norm(gm, "RMSNorm", args[2], None, args[1], args[3], None, True)
    if fn is ops.masked_layer_norm:  # declared as the layer, called as msgc's op
        weight, bias, eps = args[1], args[2], args[4]
        return _norm(gm, "LayerNorm", weight, bias, _shape(gm, weight), eps, 1e-5, False)
    if fn is ops.masked_rms_norm:
        weight, eps = args[1], args[3]
        return _norm(gm, "RMSNorm", weight, None, _shape(gm, weight), eps, None, False)
    return None


def _embedding(gm, weight, padding_idx) -> tuple | None:
    shape = _shape(gm, weight)
    if shape is None or len(shape) != 2:
        return None
    extra = "" if padding_idx is None else f", padding_idx={padding_idx}"
    return _owned(gm, weight, None, f"nn.Embedding({shape[0]}, {shape[1]}{extra})", True)


def _norm(gm, kind: str, weight, bias, shape, eps, default_eps, is_call: bool) -> tuple | None:
    if _shape(gm, weight) is None or _shape(gm, weight) != tuple(shape):
        return None
    shape = tuple(shape)
    options = "" if eps == default_eps else f", eps={eps!r}"
    if kind == "LayerNorm" and bias is None:
        options += ", bias=False"
    size = shape[0] if len(shape) == 1 else shape
    return _owned(gm, weight, bias, f"nn.{kind}({size}{options})", is_call)


def _owned(gm, weight, bias, source: str, is_call: bool) -> tuple | None:
    """The module path holding `weight` (and `bias`) as float32 parameters, if it does."""
    tensors = [t for t in (weight, bias) if t is not None]
    if not all(isinstance(t, fx.Node) and t.op == "get_attr" for t in tensors):
        return None
    owner, _, leaf = str(weight.target).rpartition(".")
    if not owner or leaf != "weight" or (bias is not None and str(bias.target) != f"{owner}.bias"):
        return None
    for t in tensors:
        value = _tensor(gm, str(t.target))
        if not isinstance(value, torch.nn.Parameter) or value.dtype != torch.float32:
            return None
    return owner, source, {str(t.target) for t in tensors}, is_call


def _holds_exactly(owner: str, held: set[str], targets: set[str]) -> bool:
    return {t for t in targets if t.startswith(owner + ".")} == held


def _shape(gm: fx.GraphModule, node) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = _tensor(gm, str(node.target))
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _tensor(gm: fx.GraphModule, target: str):
    owner, _, leaf = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, leaf, None)


def tensor_decl(value: torch.Tensor) -> Decl:
    """A parameter or buffer of `value`'s shape and dtype (its values come from the weights)."""
    dims = ", ".join(str(d) for d in value.shape) or "()"
    dtype = "" if value.dtype == torch.float32 else f", dtype={value.dtype}"
    source = f"torch.zeros({dims}{dtype})"
    if isinstance(value, torch.nn.Parameter):
        grad = "" if value.requires_grad else ", requires_grad=False"
        return Decl("parameter", f"nn.Parameter({source}{grad})")
    return Decl("buffer", source)


# --- __init__ source --------------------------------------------------------------------------


def init_lines(decls: dict[str, Decl], indent: str) -> list[str]:
    """`self.<name> = ...` lines declaring `decls` (module paths relative to self)."""
    tree: dict = {}
    for path, decl in decls.items():
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if isinstance(node, Decl):
                raise GraphError(f"emit: {path} lies inside the layer {part}")
        node[leaf] = decl
    lines: list[str] = []
    for name, value in tree.items():
        if isinstance(value, Decl) and value.kind != "module":
            continue
        text = _module_source(value, indent)
        lines += f"{indent}{access('self', [name])} = {text}".split("\n")
    return lines + _tensor_lines(tree, ["self"], indent)


def _module_source(value, indent: str) -> str:
    """A module's constructor, containers spread over lines as nanoGPT writes them."""
    if isinstance(value, Decl):
        return value.source.replace("\n", "\n" + indent)
    children = {k: v for k, v in value.items() if not isinstance(v, Decl) or v.kind == "module"}
    if not children:
        return "nn.Module()"
    inner = indent + "    "
    if sorted(children) == [str(i) for i in range(len(children))] and len(children) == len(value):
        items = [f"{inner}{_module_source(children[str(i)], inner)}," for i in range(len(children))]
        return "nn.ModuleList([\n" + "\n".join(items) + f"\n{indent}])"
    for key in children:
        if not key.isidentifier() or keyword.iskeyword(key):
            raise GraphError(f"emit: cannot declare a module named {key!r}")
    items = [f"{inner}{k}={_module_source(v, inner)}," for k, v in children.items()]
    return "nn.ModuleDict(dict(\n" + "\n".join(items) + f"\n{indent}))"


def _tensor_lines(tree: dict, path: list[str], indent: str) -> list[str]:
    lines = []
    for name, value in tree.items():
        if isinstance(value, dict):
            lines += _tensor_lines(value, path + [name], indent)
        elif value.kind == "parameter":
            lines.append(f"{indent}{access(path[0], path[1:] + [name])} = {value.source}")
        elif value.kind == "buffer":
            owner = access(path[0], path[1:])
            lines.append(f'{indent}{owner}.register_buffer("{name}", {value.source})')
    return lines


def access(root: str, parts: list[str]) -> str:
    """`self.model.layers[0].mlp`: attribute access, list indexing for digits."""
    text = root
    for part in parts:
        if part.isdigit():
            text += f"[{part}]"
        elif part.isidentifier() and not keyword.iskeyword(part):
            text += f".{part}"
        else:
            raise GraphError(f"emit: cannot write the module path {'.'.join(parts)!r}")
    return text
