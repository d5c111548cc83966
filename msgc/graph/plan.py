"""From dimension classes to named groups (hidden, ffn, heads, kv-heads) and a growth plan.

Classes are named by structure only: `hidden` is the class most often normalised (the
residual stream), `heads` are the head dims of attention ops (with the GQA group dim
from repeat_interleave or enable_gqa), `ffn` are the remaining widths produced by
linear layers. Classes touching graph inputs or outputs, embedding index spaces and
attention head_dim never grow.
"""

from dataclasses import dataclass, field

import torch

from msgc.errors import GrowthError
from msgc.graph.atoms import Atoms
from msgc.graph.blocks import find_blocks
from msgc.graph.dims import Analysis, flat_atoms

FIXED_TAGS = {"input", "output", "index", "head_dim"}


@dataclass
class HeadGroup:
    """One attention op's heads: `kv` leaf and `group` leaf (GQA), or a single `heads` leaf.

    Under MQA `kv` is a size-1 atom of its own: the analysis drops size-1 factors (they carry
    no layout), so the one shared key/value head is not a leaf of the heads dimension.
    """

    node: str
    heads: int | None = None  # MHA: the one heads leaf
    kv: int | None = None  # GQA: kv-heads leaf
    group: int | None = None  # GQA: query heads per kv head


@dataclass
class Groups:
    """The growable dimension groups of a model (leaf class roots)."""

    hidden: int | None
    ffn: list[int]
    heads: list[HeadGroup]
    fixed: set[int]
    blocks: list[str] = field(default_factory=list)
    # linear widths an op fixes (a router's expert count under softmax): leaf -> why
    ffn_fixed: dict[int, str] = field(default_factory=dict)
    hidden_sliced_by: str | None = None  # a node that slices the residual stream


def find_groups(a: Analysis) -> Groups:
    """Name the leaf classes of an analysed graph."""
    at = a.atoms
    inherited = _inherited_tags(a)
    fixed = {leaf for leaf, tags in inherited.items() if tags & FIXED_TAGS}
    hidden = _hidden(a, fixed)
    heads = _head_groups(a, fixed)
    head_leaves = {x for h in heads for x in (h.heads, h.kv, h.group) if x is not None}
    in_blocks = _block_leaves(a)
    widths = sorted(
        leaf for leaf, tags in inherited.items()
        if "linear_out" in tags and leaf not in fixed and leaf != hidden
        and leaf not in head_leaves and at.size(leaf) > 1
        and (in_blocks is None or leaf in in_blocks)
    )
    forbidden = _forbidden_leaves(a)
    ffn = [leaf for leaf in widths if leaf not in forbidden]
    ffn_fixed = {leaf: forbidden[leaf] for leaf in widths if leaf in forbidden}
    return Groups(hidden=hidden, ffn=ffn, heads=heads, fixed=fixed, ffn_fixed=ffn_fixed,
                  hidden_sliced_by=_sliced_hidden(a, hidden))


def _forbidden_leaves(a: Analysis) -> dict[int, str]:
    """Leaf classes some op cannot take growing (softmax over them, top-k...): leaf -> why."""
    found: dict[int, str] = {}
    for node, atom, why in a.forbidden:
        for leaf in a.atoms.leaves(atom):
            found.setdefault(leaf, f"node {node.name}: {why}")
    return found


def _block_leaves(a: Analysis) -> set[int] | None:
    """Leaf classes shaping some parameter inside the block stack (None: no blocks).

    ffn is a per-block width: a pooler or a projection outside the blocks is not one.
    """
    blocks = find_blocks(a.gm)
    if blocks is None:
        return None
    prefixes = tuple(path + "." for path in blocks.paths)
    return {
        leaf
        for node in a.param_nodes.values() if str(node.target).startswith(prefixes)
        for atom in a.of(node) for leaf in a.atoms.leaves(atom)
    }


def _inherited_tags(a: Analysis) -> dict[int, set[str]]:
    """Tags of every leaf class, including those of the composite dims above it."""
    at = a.atoms
    leaf_tags: dict[int, set[str]] = {}
    for atom in {at.find(x) for dims in a.dims.values() for x in flat_atoms(dims)}:
        tags = at.tags_of(atom)
        for leaf in at.leaves(atom):
            leaf_tags.setdefault(leaf, set()).update(
                tags if leaf == atom else tags & (FIXED_TAGS | {"heads", "linear_out"})
            )
    return leaf_tags


def _hidden(a: Analysis, fixed: set[int]) -> int | None:
    counts: dict[int, int] = {}
    for atoms in a.normalized.values():
        for atom in atoms:
            for leaf in a.atoms.leaves(atom):
                if leaf not in fixed:
                    counts[leaf] = counts.get(leaf, 0) + 1
    if counts:
        return max(counts, key=lambda leaf: (counts[leaf], -leaf))
    return None


def _sliced_hidden(a: Analysis, hidden: int | None) -> str | None:
    """Where the residual stream is cut into pieces (a slice of it), if it is: growing one
    piece would not grow the whole."""
    if hidden is None:
        return None
    for atoms in a.normalized.values():
        for atom in atoms:
            leaves = [x for x in a.atoms.leaves(atom) if a.atoms.size(x) > 0]
            if hidden not in leaves or len(leaves) < 2:
                continue
            for arg in a.size_args:
                if arg.kind == "slice" and a.atoms.find(arg.within) == a.atoms.find(atom):
                    return arg.node.name
    return None


def _head_groups(a: Analysis, fixed: set[int]) -> list[HeadGroup]:
    at = a.atoms
    seen, groups = set(), []
    for node, dims in a.dims.items():
        for atom in flat_atoms(dims):
            root = at.find(atom)
            if root in seen or not ({"heads", "attn_batch"} & at.tags_of(root)):
                continue
            seen.add(root)
            leaves = [x for x in at.leaves(root) if x not in fixed and at.size(x) > 1]
            if not leaves:
                continue
            group = [x for x in leaves if "group" in at.tags_of(x)]
            kv = [x for x in leaves if x not in group]
            if len(group) == 1 and len(kv) == 1:
                groups.append(HeadGroup(node.name, kv=kv[0], group=group[0]))
            elif len(group) == 1 and not kv and at.size(root) == at.size(group[0]):
                groups.append(HeadGroup(node.name, group=group[0]))  # MQA: kv made below
            elif len(leaves) == 1 and not group:
                groups.append(HeadGroup(node.name, heads=leaves[0]))
    groups = _dedupe_heads(groups)
    for g in groups:
        if g.heads is None and g.kv is None:
            g.kv = _shared_kv(at)
    return groups


def _shared_kv(at: Atoms) -> int:
    """A size-1 kv-heads atom for MQA, where every query head reads one key/value head."""
    kv = at.new(1)
    at.tag(kv, "kv_heads")
    return kv


def _dedupe_heads(groups: list[HeadGroup]) -> list[HeadGroup]:
    out, keys = [], set()
    for g in groups:
        key = (g.heads, g.kv, g.group)
        if key not in keys:
            keys.add(key)
            out.append(g)
    return out


# --- sizes -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """New sizes of leaf classes, and the layout maths for every (possibly composite) dim."""

    analysis: Analysis
    new_sizes: dict[int, int]

    def grows(self, atom: int) -> bool:
        return any(self.new_sizes.get(leaf, self.analysis.atoms.size(leaf)) !=
                   self.analysis.atoms.size(leaf) for leaf in self.analysis.atoms.leaves(atom))

    def new_size(self, atom: int) -> int:
        at = self.analysis.atoms
        ref = at.refinement(atom)
        if ref is None:
            root = at.find(atom)
            return self.new_sizes.get(root, at.size(root))
        sizes = [self.new_size(c) for c in ref.children]
        total = 1 if ref.kind == "prod" else 0
        for s in sizes:
            total = total * s if ref.kind == "prod" else total + s
        return total

    def old_positions(self, atom: int) -> torch.Tensor:
        """Where the old entries of a dim sit in the grown dim (a LongTensor of old size)."""
        at = self.analysis.atoms
        ref = at.refinement(atom)
        if ref is None:
            return torch.arange(at.size(atom))
        if ref.kind == "sum":
            parts, offset = [], 0
            for child in ref.children:
                parts.append(self.old_positions(child) + offset)
                offset += self.new_size(child)
            return torch.cat(parts)
        positions = torch.zeros(1, dtype=torch.long)
        for child in ref.children:
            positions = (positions[:, None] * self.new_size(child)
                         + self.old_positions(child)[None, :]).reshape(-1)
        return positions

    def is_new(self, atom: int) -> torch.Tensor:
        """A bool vector over the grown dim: True at the new entries."""
        new = torch.ones(self.new_size(atom), dtype=torch.bool)
        new[self.old_positions(atom)] = False
        return new


def plan_sizes(a: Analysis, groups: Groups, hidden=None, ffn=None, heads=None,
               kv_heads=None) -> Plan:
    """Resolve size targets (every block) into new sizes of leaf classes."""
    at = a.atoms
    new: dict[int, int] = {}
    if hidden is not None:
        if groups.hidden is None:
            raise GrowthError("hidden: no hidden (residual stream) dimension was found; the "
                              "model has no normalised dimension to grow")
        if groups.hidden_sliced_by is not None:
            raise GrowthError(f"hidden: node {groups.hidden_sliced_by} slices the residual "
                              "stream into pieces; msgc cannot grow a sliced residual stream "
                              "yet: grow other dimensions")
        _set(new, groups.hidden, at.size(groups.hidden), hidden, "hidden")
    if ffn is not None:
        if not groups.ffn and groups.ffn_fixed:
            why = next(iter(groups.ffn_fixed.values())).rstrip(",")
            raise GrowthError(f"ffn: the model's feed-forward widths cannot grow ({why} on "
                              "one); grow other dimensions")
        if not groups.ffn:
            raise GrowthError("ffn: the model has no feed-forward width to grow")
        for leaf in groups.ffn:
            _set(new, leaf, at.size(leaf), ffn, "ffn")
    if heads is not None or kv_heads is not None:
        if not groups.heads:
            raise GrowthError("heads: no attention op with a heads dimension was found")
        for g in groups.heads:
            _plan_heads(at, new, g, heads, kv_heads)
    return Plan(a, new)


def _plan_heads(at, new, g: HeadGroup, heads, kv_heads) -> None:
    if g.heads is not None:  # every query head has its own key/value head
        old = at.size(g.heads)
        if kv_heads is not None and heads is not None and kv_heads != heads:
            raise GrowthError(f"kv_heads: attention {g.node} has one key/value head per query "
                              f"head; set kv_heads equal to heads ({heads}) or leave it out")
        _set(new, g.heads, old, heads if heads is not None else kv_heads, "heads")
        return
    old_kv, old_group = at.size(g.kv), at.size(g.group)
    target_kv = kv_heads if kv_heads is not None else old_kv
    if old_kv == 1 and target_kv != 1:
        raise GrowthError(f"kv_heads: attention {g.node} shares one key/value head across all "
                          "query heads (MQA); msgc cannot add key/value heads to it (a size-1 "
                          "dimension has no layout to grow): leave kv_heads out or set it to 1")
    target_heads = heads if heads is not None else old_kv * old_group
    if target_heads % target_kv:
        raise GrowthError(f"heads: {target_heads} query heads do not divide into {target_kv} "
                          "key/value heads; make heads a multiple of kv_heads")
    group = target_heads // target_kv
    if group < old_group:
        raise GrowthError(
            f"kv_heads: attention {g.node} has {old_group} query heads per key/value head; "
            f"{target_heads} heads over {target_kv} kv heads would shrink that; grow heads "
            f"to at least {target_kv * old_group}"
        )
    _set(new, g.kv, old_kv, target_kv, "kv_heads")
    _set(new, g.group, old_group, group, "heads")


def _set(new: dict, leaf: int, old: int, target: int, name: str) -> None:
    if target < old:
        raise GrowthError(f"{name}: the model already has {old}; msgc grows, it never shrinks "
                          f"(asked for {target})")
    previous = new.get(leaf)
    if previous is not None and previous != target:
        raise GrowthError(f"{name}: one dimension is asked to be both {previous} and {target}")
    new[leaf] = target
