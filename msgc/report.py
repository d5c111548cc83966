"""Readable reports of the dimension groups msgc finds in a model."""

from dataclasses import dataclass

import torch.fx as fx

from msgc.graph.blocks import find_blocks
from msgc.graph.dims import Analysis
from msgc.graph.plan import Groups


@dataclass
class GroupReport:
    name: str  # hidden | ffn | heads | kv_heads | group | blocks
    size: int
    members: list[str]  # parameters whose shape involves the group
    growth: str  # what growing it does

    def as_row(self) -> tuple[str, str, str, str]:
        members = ", ".join(self.members[:4]) + (" ..." if len(self.members) > 4 else "")
        return self.name, str(self.size), members, self.growth


_GROWTH = {
    "hidden": "widen the residual stream; mask every writer, masked statistics in norms",
    "ffn": "add neurons; mask their pre-activation (or the activation's output)",
    "heads": "add query heads (head_dim fixed); mask the new heads' attention output",
    "kv_heads": "add key/value groups, each with its own query heads",
    "group": "add query heads inside each kv group (interleaved, keeps the head->kv map)",
    "blocks": "add blocks mixed in as c f(h) + (1 - c) h",
}


def describe_groups(gm: fx.GraphModule, a: Analysis, groups: Groups) -> list[GroupReport]:
    """One report per group: hidden, each block's ffn and heads, and the block stack."""
    members = _param_members(a)
    reports = []
    named = [("hidden", groups.hidden)] if groups.hidden is not None else []
    named += [("ffn", leaf) for leaf in groups.ffn]
    for h in groups.heads:
        if h.heads is not None:
            named.append(("heads", h.heads))
        else:
            named += [("kv_heads", h.kv), ("group", h.group)]
    for name, leaf in named:
        reports.append(GroupReport(name, a.atoms.size(leaf), members.get(leaf, []), _GROWTH[name]))
    blocks = find_blocks(gm)
    if blocks is not None:
        reports.append(GroupReport("blocks", len(blocks.paths), blocks.paths, _GROWTH["blocks"]))
    return reports


def _param_members(a: Analysis) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for node in a.param_nodes.values():
        for atom in a.of(node):
            for leaf in a.atoms.leaves(atom):
                names = out.setdefault(leaf, [])
                if node.target not in names:
                    names.append(node.target)
    return out
