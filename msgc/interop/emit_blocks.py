"""The model's repeated blocks as classes, and the model's forward that loops over them.

Each block (msgc.graph.blocks) is a region: its nodes, the tensors under its module path,
its inputs (the residual stream it carries first) and its one output. Blocks whose class
source is the same share one class; consecutive blocks of a class that pass the residual
stream on are one `for block in self.<container>:` loop.
"""

from dataclasses import dataclass

import torch.fx as fx

from msgc.graph.blocks import Blocks
from msgc.interop.emit_body import BlockCall, Body, Key, Source
from msgc.interop.emit_expr import identifier
from msgc.interop.emit_layout import Decl, access, init_lines, tensor_decl

NAME = "\0name\0"
CLASS = """class {name}(nn.Module):
    \"\"\"One block of {container}.\"\"\"

    def __init__(self):
        super().__init__()
{init}

    def forward(self, {params}):
{body}
"""


@dataclass
class Region:
    """One block: where it lives, what it reads and what it passes on."""

    path: str
    index: int
    kind: str  # its module's class name
    nodes: list[fx.Node]  # statements-to-be, graph order
    inside: set[fx.Node]
    tensors: list[str]  # targets under its path, graph order
    inputs: list[Key]  # the residual stream first where `carried`
    carried: bool
    output: fx.Node
    cls: str = ""


def block_regions(src: Source, blocks: Blocks | None) -> tuple[str, list[Region]]:
    """The block container's path and its blocks; ("", []) where they cannot be classes (a
    block with several outputs, a container with more than its blocks) or there are none."""
    if blocks is None:
        return "", []
    targets = targets_of(src.gm)
    if any(t.startswith(blocks.parent + ".") and not any(t.startswith(p + ".")
                                                          for p in blocks.paths)
           for t in targets):
        return "", []  # the container holds more than its blocks
    regions, previous = [], None
    for path in blocks.paths:
        region = _region(src, path, blocks.nodes[path], targets, previous)
        if region is None:
            return "", []
        regions.append(region)
        previous = region.output
    if sorted(r.index for r in regions) != list(range(len(regions))):
        return "", []
    for region in regions:
        if region.carried:
            src.forced[region.inputs[0]] = "x"
        src.forced[region.output] = "x"
    return blocks.parent, regions


def targets_of(gm: fx.GraphModule) -> list[str]:
    """The tensors the graph reads, in graph order."""
    return list(dict.fromkeys(str(n.target) for n in gm.graph.find_nodes(op="get_attr")))


def _region(src: Source, path: str, members: list[fx.Node], targets: list[str],
            previous: fx.Node | None) -> Region | None:
    inside = set(members)
    nodes = [n for n in members if n.op not in ("get_attr", "placeholder")
             and n not in src.aliases]
    outputs = [n for n in nodes if any(u not in inside for u in src.users_of(n))]
    if len(outputs) != 1:
        return None
    inputs: list[Key] = []
    for node in nodes:
        for arg in node.all_input_nodes:
            arg = src.resolve(arg)
            key: Key = str(arg.target) if arg.op == "get_attr" else arg
            internal = key.startswith(path + ".") if isinstance(key, str) else arg in inside
            if not internal and key not in inputs:
                inputs.append(key)
    carried = _carried(src, inputs, outputs[0], previous)
    if carried is not None:
        inputs.remove(carried)
        inputs.insert(0, carried)
    return Region(path, int(path.rpartition(".")[2]), _kind(members, path), nodes, inside,
                  [t for t in targets if t.startswith(path + ".")], inputs,
                  carried is not None, outputs[0])


def _carried(src: Source, inputs: list[Key], output: fx.Node,
             previous: fx.Node | None) -> fx.Node | None:
    """The residual stream: the previous block's output, else the one input shaped like the
    block's output."""
    if previous is not None and previous in inputs:
        return previous
    shape = src.summaries.get(output)
    same = [k for k in inputs if isinstance(k, fx.Node) and src.summaries.get(k) == shape]
    return same[0] if len(same) == 1 and shape is not None else None


def _kind(members: list[fx.Node], path: str) -> str:
    """The class name of the block's module, from the tracer's module stack."""
    for node in members:
        for value in (node.meta.get("nn_module_stack") or {}).values():
            if isinstance(value, tuple) and value[0] == path:
                kind = value[1]
                name = kind.__name__ if isinstance(kind, type) else str(kind).rpartition(".")[2]
                return identifier(name) if name else "Block"
    return "Block"


# --- classes ---------------------------------------------------------------------------------


def block_classes(src: Source, container: str, regions: list[Region]) -> list[str]:
    """The source of one class per distinct block; sets each region's class name."""
    sources: dict[str, str] = {}
    taken: set[str] = set()
    for region in regions:
        text = _class_source(src, container, region)
        if text not in sources:
            name, count = region.kind, 1
            while name in taken:
                count += 1
                name = f"{region.kind}{count}"
            taken.add(name)
            sources[text] = name
        region.cls = sources[text]
    return [text.replace(NAME, name) for text, name in sources.items()]


def _class_source(src: Source, container: str, region: Region) -> str:
    """The block's class, its name left as NAME."""
    params = _params(src, region)
    body = Body(src, region.path, params, region.nodes, " " * 8)
    body.result = region.output
    init = init_lines(region_decls(src, region.tensors, region.path), " " * 8)
    return CLASS.format(name=NAME, container=access("self", container.split(".")),
                        init="\n".join(init), params=", ".join(name for _, name in params),
                        body="\n".join(body.lines()))


def _params(src: Source, region: Region) -> list[tuple[Key, str]]:
    params, used = [], set()
    for i, key in enumerate(region.inputs):
        if i == 0 and region.carried:
            base = "x"
        else:
            base = src.base(key) if isinstance(key, fx.Node) else identifier(src.attr_base(key))
        name, count = base, 0
        while name in used or (name == "x" and params and i > 0):
            count += 1
            name = f"{base}_{count}"
        used.add(name)
        params.append((key, name))
    return params


def region_decls(src: Source, tensors: list[str], prefix: str) -> dict[str, Decl]:
    """Declarations for tensors (targets), layers where they are one, relative to prefix."""
    decls: dict[str, Decl] = {}
    for target in tensors:
        if target in src.layers.tensors:
            owner = target.rpartition(".")[0]
            decls.setdefault(owner[len(prefix) + 1:] if prefix else owner,
                             src.layers.decls[owner])
        else:
            name = target[len(prefix) + 1:] if prefix else target
            decls[name] = tensor_decl(src.tensor(target))
    return decls


# --- the model's forward ---------------------------------------------------------------------


def top_items(src: Source, container: str, regions: list[Region]) -> list:
    """The model forward's nodes in order, each block's nodes replaced by a call of it."""
    region_of = {n: r for r in regions for n in r.inside}
    items: list = []
    for node in src.gm.graph.nodes:
        region = region_of.get(node)
        if region is not None:
            if node is region.output:
                items.append(_call(container, region, len(regions)))
        elif node.op not in ("placeholder", "get_attr") and node not in src.aliases:
            items.append(node)
    return _loops(src, items, {r.index: r for r in regions})


def _call(container: str, region: Region, size: int) -> BlockCall:
    return BlockCall(container, [region.index], False, list(region.inputs), region.carried,
                     region.output, set(region.inside), size)


def _loops(src: Source, items: list, regions: dict[int, Region]) -> list:
    """Runs of calls that pass the residual stream on, merged into loops."""
    out: list = []
    for item in items:
        last = out[-1] if out else None
        if isinstance(item, BlockCall) and isinstance(last, BlockCall) and _continues(
                src, last, item, regions):
            last.indices += item.indices
            last.output = item.output
            last.members |= item.members
            last.loop = True
        else:
            out.append(item)
    for item in out:
        if isinstance(item, BlockCall) and item.size == 1 and item.carried:
            item.loop = True
    return out


def _continues(src: Source, run: BlockCall, call: BlockCall, regions: dict[int, Region]) -> bool:
    first, nxt = regions[run.indices[0]], regions[call.indices[0]]
    return (first.cls == nxt.cls and run.carried and call.carried
            and call.indices[0] == run.indices[-1] + 1 and call.inputs[0] is run.output
            and call.inputs[1:] == run.inputs[1:]
            and all(u in nxt.inside for u in src.users_of(run.output)))
