"""Indexing, gathering and embedding lookups.

The dims an index addresses are index spaces: they never grow (a new row would move what
every index means). The dims an index leaves whole are carried through.
"""

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc.errors import GraphError
from msgc.graph.dims import Analysis, where
from msgc.graph.rules.refusals import fixed
from msgc.graph.rules.registry import rule
from msgc.graph.rules.shapes import slice_dim, tie_index

aten = torch.ops.aten


@rule(operator.getitem)
def rule_getitem(a: Analysis, node: fx.Node) -> None:
    """getitem: an element of a split's tuple, or tensor indexing with slices, None, ints
    or one boolean mask."""
    source, index = node.args[:2]
    if source in a.element_carries:
        a.dims[node] = a.dims[source][index]
        a.carries[node] = a.element_carries[source][index]
        a.push[node] = "through"
        return
    _index_tensor(a, node, source, index if isinstance(index, tuple) else (index,))


def _index_tensor(a: Analysis, node: fx.Node, x: fx.Node, index: tuple) -> None:
    if any(isinstance(i, fx.Node) and not _is_bool_mask(i) for i in index):
        fixed("indexing with a tensor of indices (x[idx]), which msgc has no rule for,")(a, node)
        return
    dims = a.of(x)
    a.fresh(node)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    d_in = d_out = 0
    for k, item in enumerate(index):
        if item is Ellipsis:
            skip = len(dims) - n_real
            for _ in range(skip):
                tie_index(a, node, x, d_in, d_out)
                d_in, d_out = d_in + 1, d_out + 1
        elif item is None:
            d_out += 1
        elif isinstance(item, slice):
            slice_dim(a, node, x, d_in, d_out, item, ("args", 1, k) if len(index) > 1 or
                       isinstance(node.args[1], tuple) else ("args", 1))
            d_in, d_out = d_in + 1, d_out + 1
        elif isinstance(item, int):
            a.forbid(node, dims[d_in], "integer indexing")
            d_in += 1
        elif _is_bool_mask(item):  # x[mask]: the mask's k dims become one (N,) dim
            for j, mask_atom in enumerate(a.of(item)):
                a.unify(mask_atom, dims[d_in + j], node)
                a.forbid(node, dims[d_in + j], "boolean-mask indexing")
            d_in, d_out = d_in + len(a.of(item)), d_out + 1
        else:
            raise GraphError(f"{where(node)}: indexing with {type(item).__name__} is not "
                             "supported; use slices, None, integers or tensors")
    while d_in < len(dims):
        tie_index(a, node, x, d_in, d_out)
        d_in, d_out = d_in + 1, d_out + 1


def _is_bool_mask(item) -> bool:
    """An index that is a traced boolean tensor (its shape propagated as bool)."""
    meta = item.meta.get("tensor_meta") if isinstance(item, fx.Node) else None
    return getattr(meta, "dtype", None) is torch.bool


@rule(aten.index.Tensor)
def rule_index(a: Analysis, node: fx.Node) -> None:
    """aten.index(x, [idx or None, ...]): leading un-indexed dims kept, indexed dims fixed."""
    x, indices = node.args[:2]
    dims = a.of(x)
    out = a.fresh(node)
    for d, index in enumerate(indices):
        if index is None:
            if d < len(out):
                a.unify(dims[d], out[d], node)
        else:
            a.forbid(node, dims[d], "advanced indexing")
    tail = len(dims) - len(indices)
    for k in range(1, tail + 1):
        a.unify(dims[-k], out[-k], node)


@rule(aten.diff.default, aten.gather.default)
def rule_gather_like(a: Analysis, node: fx.Node) -> None:
    """diff / gather / cumsum-like ops over `dim`: that dim never grows. gather's output has
    its index's shape."""
    x = node.args[0]
    dims = a.of(x)
    gather = node.target is aten.gather.default
    dim = node.args[1] if gather else node.kwargs.get(
        "dim", node.args[2] if len(node.args) > 2 else -1)
    out = a.fresh(node)
    if gather:
        for atom, index_atom in zip(out, a.of(node.args[2]), strict=True):
            a.unify(atom, index_atom, node)
    a.forbid(node, dims[int(dim) % len(dims)], str(node.target))


@rule(F.embedding, aten.embedding.default)
def rule_embedding(a: Analysis, node: fx.Node) -> None:
    """embedding(idx, W): out = idx dims + W[1]; W[0] is an index space (never grows)."""
    idx, weight = node.args[:2]
    if node.target is aten.embedding.default:
        weight, idx = node.args[:2]
    out = a.fresh(node)
    wd = a.of(weight)
    a.atoms.tag(wd[0], "index")
    a.unify(out[-1], wd[1], node)
    a.atoms.tag(wd[1], "linear_out")
    for d, atom in enumerate(a.of(idx)):
        a.unify(atom, out[d], node)
