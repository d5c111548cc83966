"""Blocks: the model's stack of repeated layers, found from module paths.

Blocks are the children of the model's repeated container (a ModuleList: module paths
`<parent>.<index>` recorded by the tracer in node.meta["nn_module_stack"]); the stack with
the most nodes is the main one. Exported graphs read parameters outside module scopes, so
get_attr nodes join the block their qualified name lies in.
"""

from dataclasses import dataclass

import torch.fx as fx


@dataclass
class Blocks:
    parent: str  # module path of the container, e.g. "transformer.h"
    paths: list[str]  # "transformer.h.0", ... in execution order
    nodes: dict[str, list[fx.Node]]  # per block, its nodes in graph order


def find_blocks(gm: fx.GraphModule) -> Blocks | None:
    """The model's main stack of repeated blocks, or None if it has none."""
    owners: dict[str, dict[str, list[fx.Node]]] = {}
    for node in gm.graph.nodes:
        path = _block_path(node)
        if path is not None:
            parent = path.rpartition(".")[0]
            owners.setdefault(parent, {}).setdefault(path, []).append(node)
    if not owners:
        return None
    parent = max(owners, key=lambda p: len(owners[p]))
    blocks = owners[parent]
    for node in gm.graph.nodes:  # exported graphs read parameters outside module scopes
        if node.op == "get_attr" and _block_path(node) is None:
            path = _owning_block(str(node.target), blocks)
            if path is not None:
                blocks[path].append(node)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for path in blocks:
        blocks[path].sort(key=order.__getitem__)
    paths = sorted(blocks, key=lambda p: min(order[n] for n in blocks[p] if n.op != "get_attr"))
    return Blocks(parent, paths, blocks)


def _owning_block(target: str, blocks: dict[str, list[fx.Node]]) -> str | None:
    prefix = target.rpartition(".")[0]
    while prefix:
        if prefix in blocks:
            return prefix
        prefix = prefix.rpartition(".")[0]
    return None


def _block_path(node: fx.Node) -> str | None:
    """The outermost `<parent>.<digits>` module path a node belongs to."""
    for value in (node.meta.get("nn_module_stack") or {}).values():
        path = value[0] if isinstance(value, tuple) else str(value)
        last = path.rpartition(".")[2]
        if last.isdigit() and "." in path:
            return path
    return None
