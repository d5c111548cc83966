"""Deepen: add blocks, each a copy of an existing one, mixed in as c f(h) + (1 - c) h.

Blocks are the children of the model's repeated container (a ModuleList, found from the
module paths the tracer records: `<parent>.<index>`), each a subgraph with one output
that is used outside it. New blocks stack on top ([0..L-1, 0'..]) or interleave (the
copy of block i right after block i); blocks are renumbered in execution order.
"""

import copy

import torch
import torch.fx as fx
import torch.nn as nn

from msgc import ops
from msgc.errors import GraphError, GrowthError
from msgc.graph.blocks import Blocks, find_blocks
from msgc.passes.masks import MASKS, mask_bank
from msgc.passes.widen import ParamOrigin, entry_std


def deepen(gm: fx.GraphModule, layers: int, placement: str, init: str, init_std: float,
           seed: int, origins: dict[str, ParamOrigin]) -> dict[str, ParamOrigin]:
    """Grow the block stack to `layers` blocks; returns origins re-keyed by final names."""
    blocks = find_blocks(gm)
    if blocks is None:
        raise GrowthError("layers: the model has no repeated blocks (a ModuleList of layers) "
                          "to deepen")
    old = len(blocks.paths)
    if layers < old:
        raise GrowthError(f"layers: the model already has {old}; msgc never removes blocks")
    if layers == old:
        return origins
    sources = [k % old for k in range(layers - old)]
    order = _placement(old, sources, placement)
    mask_bank(gm)
    gate = gm.graph.get_attr(f"{MASKS}.value")
    gate.meta["nn_module_stack"] = {}
    _move_to_front(gm, gate)
    generator = torch.Generator().manual_seed(seed + 1)
    new_modules, copies = {}, 0
    outputs = {p: _block_output(blocks, p) for p in blocks.paths}
    for position, item in enumerate(order):
        if item[0] == "old":
            continue
        source_path = blocks.paths[item[1]]
        previous = order[position - 1]
        after = outputs[_path_of(blocks, previous, copies_so_far=copies)]
        temp_path = f"{blocks.parent}.new{copies}"
        module = copy.deepcopy(gm.get_submodule(source_path))
        _reinit(module, init, init_std, generator)
        new_modules[temp_path] = module
        gm.get_submodule(blocks.parent).add_module(f"new{copies}", module)
        outputs[temp_path] = _copy_block(gm, blocks, source_path, temp_path, after, gate)
        copies += 1
    return _renumber(gm, blocks, order, origins, new_modules)


def _placement(old: int, sources: list[int], placement: str) -> list[tuple[str, int]]:
    """Execution order of ("old", i) and ("new", source i) blocks."""
    if placement == "stack":
        return [("old", i) for i in range(old)] + [("new", s) for s in sources]
    order = []
    for i in range(old):
        order.append(("old", i))
        order.extend(("new", s) for s in sources if s == i)
    return order


def _path_of(blocks: Blocks, item: tuple[str, int], copies_so_far: int) -> str:
    if item[0] == "old":
        return blocks.paths[item[1]]
    return f"{blocks.parent}.new{copies_so_far - 1}"


def _block_output(blocks: Blocks, path: str) -> fx.Node:
    inside = set(blocks.nodes[path])
    leaving = [n for n in blocks.nodes[path] if any(u not in inside for u in n.users)
               and "tensor_meta" in n.meta]  # sizes (batch * heads) may be reused later
    if len(leaving) != 1:
        names = ", ".join(n.name for n in leaving) or "none"
        raise GraphError(f"block {path}: expected one output used after the block, found "
                         f"{names}; msgc can only deepen blocks with one residual output")
    return leaving[0]


def _residual_input(blocks: Blocks, path: str) -> fx.Node:
    inside = set(blocks.nodes[path])
    output_shape = _shape(_block_output(blocks, path))
    external = []
    for node in blocks.nodes[path]:
        for inp in node.all_input_nodes:
            if inp not in inside and inp.op != "get_attr" and inp not in external:
                external.append(inp)
    candidates = [n for n in external if _shape(n) == output_shape]
    if len(candidates) != 1:
        raise GraphError(f"block {path}: cannot tell which input is the residual stream "
                         f"(candidates: {[n.name for n in candidates]})")
    return candidates[0]


def _shape(node: fx.Node):
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _copy_block(gm, blocks: Blocks, source: str, target: str, after: fx.Node,
                gate: fx.Node) -> fx.Node:
    """Copy `source`'s nodes after `after`, reading `after` as its residual input."""
    graph = gm.graph
    residual = _residual_input(blocks, source)
    env = {residual: after}
    cursor = after
    copied = []
    for node in blocks.nodes[source]:
        with graph.inserting_after(cursor):
            new = graph.node_copy(node, lambda n: env.get(n, n))
        if new.op == "get_attr" and new.target.startswith(source + "."):
            new.target = target + new.target[len(source):]
        new.meta = _retargeted_meta(node.meta, source, target)
        env[node] = new
        copied.append(new)
        cursor = new
    block_out = env[_block_output(blocks, source)]
    with graph.inserting_after(cursor):
        mixed = graph.call_function(ops.depth_mix, (block_out, after, gate))
    mixed.meta = dict(block_out.meta)
    keep = set(copied) | {mixed}
    after.replace_all_uses_with(mixed, delete_user_cb=lambda user: user not in keep)
    blocks.nodes[target] = copied + [mixed]
    return mixed


def _retargeted_meta(meta: dict, source: str, target: str) -> dict:
    meta = dict(meta)
    stack = {}
    for key, value in (meta.get("nn_module_stack") or {}).items():
        path = value[0] if isinstance(value, tuple) else str(value)
        if path == source or path.startswith(source + "."):
            path = target + path[len(source):]
            value = (path,) + tuple(value[1:]) if isinstance(value, tuple) else path
            key = path
        stack[key] = value
    meta["nn_module_stack"] = stack
    return meta


def _reinit(module: nn.Module, init: str, std: float, generator: torch.Generator) -> None:
    """Fresh weights for a new block's matrices unless init is "copy" ("match": with each
    copied matrix's own standard deviation)."""
    if init == "copy":
        return
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                if init == "zeros":
                    p.zero_()
                else:
                    p.normal_(0.0, entry_std(p) if init == "match" else std,
                              generator=generator)


def _move_to_front(gm: fx.GraphModule, node: fx.Node) -> None:
    first = next(iter(gm.graph.nodes))
    while first.op == "placeholder":
        first = first.next
    first.prepend(node)


def _renumber(gm, blocks: Blocks, order, origins, new_modules) -> dict[str, ParamOrigin]:
    """Name blocks <parent>.0 .. <parent>.L'-1 in execution order; re-key the origins."""
    container = gm.get_submodule(blocks.parent)
    renamed: dict[str, str] = {}
    copies = 0
    final = nn.Module()
    for index, (kind, i) in enumerate(order):
        if kind == "old":
            old_path = blocks.paths[i]
        else:
            old_path = f"{blocks.parent}.new{copies}"
            copies += 1
        renamed[old_path] = f"{blocks.parent}.{index}"
        final.add_module(str(index), container.get_submodule(old_path.rpartition(".")[2]))
    for name, child in container.named_children():
        if not name.isdigit() and not name.startswith("new"):
            final.add_module(name, child)
    _replace_module(gm, blocks.parent, final)
    for node in gm.graph.nodes:
        node.meta = _renamed_meta(node.meta, renamed)
        if node.op in ("get_attr", "call_module"):
            node.target = _renamed(node.target, renamed)
    result: dict[str, ParamOrigin] = {}
    for name, origin in origins.items():
        result[_renamed(name, renamed)] = origin
    for old_path in new_modules:
        source_path = _source_of(order, blocks, old_path)
        for pname, p in new_modules[old_path].named_parameters():
            result[f"{renamed[old_path]}.{pname}"] = ParamOrigin(
                f"{source_path}.{pname}", [None] * p.dim(), fresh=True
            )
    return result


def _source_of(order, blocks: Blocks, new_path: str) -> str:
    k = int(new_path.rpartition(".new")[2])
    sources = [i for kind, i in order if kind == "new"]
    return blocks.paths[sources[k]]


def _renamed(target: str, renamed: dict[str, str]) -> str:
    for old, new in renamed.items():
        if target == old or target.startswith(old + "."):
            return new + target[len(old):]
    return target


def _renamed_meta(meta: dict, renamed: dict[str, str]) -> dict:
    stack = meta.get("nn_module_stack")
    if not stack:
        return meta
    out = {}
    for key, value in stack.items():
        if isinstance(value, tuple):
            value = (_renamed(value[0], renamed),) + tuple(value[1:])
        out[_renamed(key, renamed)] = value
    meta = dict(meta)
    meta["nn_module_stack"] = out
    return meta


def _replace_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    owner_path, _, name = path.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    setattr(owner, name, module)
