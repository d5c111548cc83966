"""Widen: grow every parameter and buffer along its grown dims, and rewrite size literals.

Old weights are copied into their positions in the grown layout (the leading block of a
plain dim; per head or per segment for composite dims); new entries of matrices are
initialised by `init`: normal (N(0, init_std)), match (N(0, s), s the standard deviation of
the matrix's old entries), zeros, or copy. New entries of vectors start where a fresh
layer starts: 1 for a scale (a norm's weight, a factor in a product), 0 for anything else
(biases), unless `init` is copy. Tied weights stay one tensor. Buffers' new entries copy
existing entries (there is no sensible random value for, e.g., ALiBi slopes).
"""

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from msgc.errors import GraphError, GrowthError
from msgc.graph.dims import fetch_attr, where
from msgc.graph.plan import Plan


@dataclass
class ParamOrigin:
    """Where a grown model's parameter came from: its old name and old entries' positions."""

    source: str
    positions: list[torch.Tensor | None]  # per dim: old entries' positions, None if unchanged
    fresh: bool = False  # a new block's parameter: it starts with empty optimizer state


def widen_parameters(gm: fx.GraphModule, plan: Plan, init: str, init_std: float,
                     seed: int) -> dict[str, ParamOrigin]:
    """Replace each grown tensor of `gm` in place; return the origin of every parameter."""
    a = plan.analysis
    generator = torch.Generator().manual_seed(seed)
    origins: dict[str, ParamOrigin] = {}
    grown_by_id: dict[int, torch.Tensor] = {}
    targets = {n.target: n for n in gm.graph.nodes if n.op == "get_attr"}  # one per name
    for target in sorted(targets):
        node = targets[target]
        old = fetch_attr(gm, target)
        if not isinstance(old, torch.Tensor) or node not in a.dims:
            continue
        dims = a.of(node)
        positions = [plan.old_positions(d) if plan.grows(d) else None for d in dims]
        if id(old) not in grown_by_id:
            if any(p is not None for p in positions):
                shape = [plan.new_size(d) for d in dims]
                mode = init if isinstance(old, nn.Parameter) else "copy"
                if mode != "copy" and old.dim() == 1:
                    mode = "ones" if _is_scale(node) else "zeros"
                grown_by_id[id(old)] = _grown(old, shape, positions, mode, init_std, generator)
            else:
                grown_by_id[id(old)] = old
        new = grown_by_id[id(old)]
        if new is not old:
            _assign(gm, node.target, new)
        if isinstance(old, nn.Parameter):
            origins[node.target] = ParamOrigin(node.target, positions)
    return origins


aten = torch.ops.aten
_PRODUCTS = {operator.mul, torch.mul, aten.mul.Tensor, "mul"}
_NORM_WEIGHT_ARG = {F.layer_norm: 2, aten.layer_norm.default: 2, F.rms_norm: 2,
                    aten.rms_norm.default: 2, F.group_norm: 2, aten.group_norm.default: 2}
_CASTS = {"to", "float", "type_as", aten._to_copy.default, aten.to.dtype}


def _is_scale(node: fx.Node) -> bool:
    """Whether the vector `node` reads multiplies activations: it is a norm's weight or a
    factor of a product (through dtype casts); 1 is then its neutral value, not 0."""
    for user in node.users:
        if user.target in _PRODUCTS or (user.target in _CASTS and _is_scale(user)):
            return True
        index = _NORM_WEIGHT_ARG.get(user.target)
        if index is not None and (node in user.args[index:index + 1]
                                  or user.kwargs.get("weight") is node):
            return True
    return False


def entry_std(weight: torch.Tensor) -> float:
    """The standard deviation of `weight`'s entries (init "match" draws new ones with it)."""
    return float(weight.detach().float().std())


def _grown(old: torch.Tensor, shape: list[int], positions, mode: str, std: float,
           generator: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        if mode == "copy":
            new = _cyclic_copy(old, shape, positions)
        else:
            new = torch.empty(shape, dtype=old.dtype)
            if mode in ("normal", "match"):
                new.normal_(0.0, entry_std(old) if mode == "match" else std,
                            generator=generator)
            else:
                new.fill_(1.0 if mode == "ones" else 0.0)
            axes = [p if p is not None else torch.arange(s)
                    for p, s in zip(positions, old.shape, strict=True)]
            index = torch.meshgrid(*axes, indexing="ij")
            new[index] = old.detach().cpu()
        new = new.to(old.device)
    if isinstance(old, nn.Parameter):
        return nn.Parameter(new, requires_grad=old.requires_grad)
    return new


def _cyclic_copy(old: torch.Tensor, shape: list[int], positions) -> torch.Tensor:
    """New entries repeat old ones (index j takes old j mod old size); old ones stay."""
    new = old.detach().cpu()
    for d, pos in enumerate(positions):
        if pos is None:
            continue
        source = torch.arange(shape[d]) % old.shape[d]
        source[pos] = torch.arange(old.shape[d])
        new = new.index_select(d, source)
    return new.clone()


def _assign(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if isinstance(value, nn.Parameter):
        setattr(owner, name, value)
    else:
        persistent = name not in getattr(owner, "_non_persistent_buffers_set", set())
        delattr(owner, name)
        owner.register_buffer(name, value, persistent=persistent)


# --- size literals ---------------------------------------------------------------------------


def rewrite_sizes(plan: Plan) -> None:
    """Set every literal that encodes a grown dimension's size to the new size."""
    a = plan.analysis
    for arg in a.size_args:
        if arg.kind == "slice":
            _rewrite_slice(plan, arg)
            continue
        leaves = a.atoms.leaves(arg.atom)
        current = _get(arg.node, arg.path)
        dynamic = _input_size(current) or any("input" in a.atoms.tags_of(leaf) for leaf in leaves)
        if current == -1:  # inferred by torch from the other sizes
            continue
        if dynamic:
            if plan.grows(arg.atom):
                raise GraphError(f"{where(arg.node)}: a shape argument mixes batch or sequence "
                                 "sizes with a dimension that grows; reshape them separately")
            continue
        if isinstance(current, fx.Node) and not plan.grows(arg.atom):
            # a size computed from another dim (e.g. C // n_head): pin it, it may have grown
            _set(arg.node, arg.path, a.atoms.size(arg.atom))
        elif isinstance(current, (int, fx.Node)):
            _set(arg.node, arg.path, plan.new_size(arg.atom))
    _check_shared_split_sizes(plan)


def _input_size(value) -> bool:
    """A size computed at run time from a graph input's sizes (batch, sequence, batch * heads):
    it stays symbolic."""
    if not isinstance(value, fx.Node) or "tensor_meta" in value.meta:
        return False
    if value.target in (torch.ops.aten.sym_size.int, "size"):
        return value.args[0].op == "placeholder"
    return any(_input_size(v) for v in value.all_input_nodes)


def _rewrite_slice(plan: Plan, arg) -> None:
    a = plan.analysis
    if not plan.grows(arg.within):
        return
    segments = a.atoms.flatten("sum", arg.within)
    piece = a.atoms.find(arg.atom)
    if piece not in segments:
        raise GraphError(f"{where(arg.node)}: cannot place a slice in a grown dimension")
    k = segments.index(piece)
    start = sum(plan.new_size(s) for s in segments[:k])
    stop = start + plan.new_size(piece)
    if arg.node.target is torch.ops.aten.slice.Tensor:  # slice(x, dim, start, end, step)
        arg.node.args = (*arg.node.args[:2], start, stop, *arg.node.args[4:])
        return
    old = _get(arg.node, arg.path[:-1])
    _set(arg.node, arg.path[:-1], slice(start, stop, old.step))


def _check_shared_split_sizes(plan: Plan) -> None:
    a = plan.analysis
    by_path: dict[tuple, set[int]] = {}
    for arg in a.size_args:
        if arg.kind == "size":
            by_path.setdefault((arg.node, arg.path), set()).add(plan.new_size(arg.atom))
    for (node, _), sizes in by_path.items():
        if len(sizes) > 1:
            raise GrowthError(f"{where(node)}: one split size is shared by pieces that would "
                              f"grow to different sizes {sorted(sizes)}")


def _get(node: fx.Node, path: tuple):
    value = node.args if path[0] == "args" else node.kwargs
    for key in path[1:]:
        if key == "slice":
            return value
        value = value[key]
    return value


def _set(node: fx.Node, path: tuple, new) -> None:
    if path[-1] == "slice":
        path = path[:-1]
    root = node.args if path[0] == "args" else node.kwargs
    updated = _replaced(root, path[1:], new)
    if path[0] == "args":
        node.args = updated
    else:
        node.kwargs = updated


def _replaced(container, path: tuple, new):
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(container, dict):
        out = dict(container)
        out[key] = _replaced(container[key], rest, new)
        return out
    items = list(container)
    items[key] = _replaced(items[key], rest, new)
    return type(container)(items) if isinstance(container, tuple) else items
