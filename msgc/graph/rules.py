"""Dimension rules, one per op family, over (tensor, dim) pairs.

A rule gives its node's output dims (atoms), ties them to its inputs' dims, and records
what the passes need (see msgc/graph/dims.py). Rules are keyed by the callable (torch
functions and ATen overloads from torch.export share one rule) or the Tensor method name.
"""

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from msgc.errors import GraphError
from msgc.graph.dims import Analysis, Carry, SizeArg, linear_args, where
from msgc.ops import AttentionDropout

aten = torch.ops.aten


# --- elementwise -------------------------------------------------------------------------


def broadcast(a: Analysis, node: fx.Node, operands: list, mode: str) -> list[int]:
    """Output dims of a broadcasting op: operand dims aligned from the right."""
    out = a.fresh(node)
    sources: dict[int, list] = {d: [] for d in range(len(out))}
    for value in operands:
        if not a.is_tensor(value):
            if mode == "all":  # a scalar added to new entries makes them non-zero
                for d in sources:
                    sources[d].append(None)
            continue
        dims = a.of(value)
        offset = len(out) - len(dims)
        for d in range(len(out)):
            i = d - offset
            if i >= 0 and a.atoms.size(dims[i]) == a.atoms.size(out[d]):
                a.unify(dims[i], out[d], node)
                sources[d].append((value, i))
            elif mode == "all":
                sources[d].append(None)
    for d, src in sources.items():
        a.carry(node, d, src, mode)
    return out


def rule_add(a: Analysis, node: fx.Node) -> None:
    """add, sub, maximum, where: new entries are zero only where every operand's are."""
    broadcast(a, node, list(node.args[:2]), "all")
    a.push[node] = "branches"


def rule_where(a: Analysis, node: fx.Node) -> None:
    cond, x, y = node.args[:3]
    broadcast(a, node, [x, y], "all")
    if a.is_tensor(cond):
        _tie_broadcast(a, node, cond)


def rule_mul(a: Analysis, node: fx.Node) -> None:
    """mul: zero wherever either factor is zero."""
    broadcast(a, node, list(node.args[:2]), "any")
    a.push[node] = "first"


def rule_div(a: Analysis, node: fx.Node) -> None:
    """div: zero where the numerator is; the denominator only broadcasts."""
    num, den = node.args[:2]
    broadcast(a, node, [num], "any")
    if a.is_tensor(den):
        _tie_broadcast(a, node, den)
    a.push[node] = "first"


def _tie_broadcast(a: Analysis, node: fx.Node, value: fx.Node) -> None:
    out, dims = a.of(node), a.of(value)
    offset = len(out) - len(dims)
    for i, atom in enumerate(dims):
        if a.atoms.size(atom) == a.atoms.size(out[i + offset]):
            a.unify(atom, out[i + offset], node)


def rule_zero_unary(a: Analysis, node: fx.Node) -> None:
    """f(0) = 0 elementwise (activations, dropout, dtype casts): zeros pass through."""
    x = _first_tensor(a, node)
    out = a.fresh(node)
    for d, atom in enumerate(a.of(x)):
        a.unify(atom, out[d], node)
    a.carry_same(node, x, {d: d for d in range(len(out))})
    a.push[node] = "through"


def rule_unary(a: Analysis, node: fx.Node) -> None:
    """Elementwise with f(0) != 0 (exp, sigmoid, rsqrt, cos): new entries become non-zero."""
    x = _first_tensor(a, node)
    out = a.fresh(node)
    for d, atom in enumerate(a.of(x)):
        a.unify(atom, out[d], node)


def rule_pow(a: Analysis, node: fx.Node) -> None:
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if isinstance(exponent, (int, float)) and exponent > 0:
        rule_zero_unary(a, node)
    else:
        rule_unary(a, node)


def rule_clamp(a: Analysis, node: fx.Node) -> None:
    """clamp(x, min, max): keeps zeros only where 0 lies in [min, max] (literal bounds)."""
    names = ("clamp_min", "clamp_max", aten.clamp_min.default, aten.clamp_max.default)
    if node.target in names:
        low_high = (node.args[1], None) if "min" in str(node.target) else (None, node.args[1])
    else:
        low_high = (_dim_arg(node, 1, "min"), _dim_arg(node, 2, "max"))
    low, high = low_high
    literal = all(v is None or isinstance(v, (int, float)) for v in low_high)
    if literal and (low is None or low <= 0) and (high is None or high >= 0):
        rule_zero_unary(a, node)
    else:
        rule_unary(a, node)


def rule_masked_fill(a: Analysis, node: fx.Node) -> None:
    x, mask = node.args[:2]
    broadcast(a, node, [x, 0.0], "all")
    _tie_broadcast(a, node, mask)


def rule_like(a: Analysis, node: fx.Node) -> None:
    """zeros_like, ones_like, full_like: same dims as the input, new values."""
    rule_unary(a, node)


# --- layout ------------------------------------------------------------------------------


def rule_view(a: Analysis, node: fx.Node) -> None:
    """view / reshape: input and output dims matched by chunks of equal size."""
    x = node.args[0]
    out = a.fresh(node)
    _match_reshape(a, node, a.of(x), out)
    _record_shape(a, node, out)


def rule_flatten(a: Analysis, node: fx.Node) -> None:
    x = node.args[0]
    out = a.fresh(node)
    _match_reshape(a, node, a.of(x), out)


def _match_reshape(a: Analysis, node: fx.Node, dims_in: list[int], dims_out: list[int]):
    """Tie dims across a reshape: each chunk of input dims is a product of output dims."""
    x = node.args[0]
    i = j = 0
    sizes_in = [a.atoms.size(d) for d in dims_in]
    sizes_out = [a.atoms.size(d) for d in dims_out]
    while i < len(dims_in) or j < len(dims_out):
        chunk_in, chunk_out = [], []
        prod_in = prod_out = 1
        while True:
            if prod_in <= prod_out and i < len(dims_in) and (
                not chunk_in or prod_in != prod_out or sizes_in[i] == 1
            ):
                chunk_in.append(i)
                prod_in *= sizes_in[i]
                i += 1
            elif j < len(dims_out) and (not chunk_out or prod_in != prod_out or sizes_out[j] == 1):
                chunk_out.append(j)
                prod_out *= sizes_out[j]
                j += 1
            else:
                break
            if prod_in == prod_out and chunk_in and chunk_out and not _next_is_one(
                sizes_in, i, sizes_out, j
            ):
                break
        if prod_in != prod_out:
            raise GraphError(f"{where(node)}: cannot match reshape {sizes_in} -> {sizes_out}")
        _tie_chunk(a, node, x, [dims_in[k] for k in chunk_in], chunk_in,
                   [dims_out[k] for k in chunk_out], chunk_out)


def _next_is_one(sizes_in, i, sizes_out, j) -> bool:
    return (i < len(sizes_in) and sizes_in[i] == 1) or (j < len(sizes_out) and sizes_out[j] == 1)


def _tie_chunk(a, node, x, atoms_in, idx_in, atoms_out, idx_out) -> None:
    big_in = [t for t in atoms_in if a.atoms.size(t) != 1]
    big_out = [t for t in atoms_out if a.atoms.size(t) != 1]
    if len(big_in) == 1:
        a.atoms.refine(big_in[0], "prod", big_out or atoms_out[:1], where(node))
    elif len(big_out) == 1:
        a.atoms.refine(big_out[0], "prod", big_in, where(node))
    elif big_in or big_out:
        a.atoms.align("prod", big_in, big_out, where(node))
    sources = [(x, k) for k in idx_in]
    for k in idx_out:
        a.carry(node, k, sources, "all")


def _record_shape(a: Analysis, node: fx.Node, out: list[int]) -> None:
    """Record a shape argument's sizes (view, reshape, expand, new_*) against `out`'s dims.

    The shape is literals and size nodes, or one computed torch.Size such as Hugging Face's
    `x.size()[:-1] + (heads, head_dim)`: its entries read from a tensor's size are that
    tensor's dims (tied), its literals are size args where they sit (in the `+` node).
    """
    rest = node.args[1:]
    shape = node.kwargs.get("size", node.kwargs.get("shape"))
    if shape is None and len(rest) == 1:
        shape = rest[0]
    if isinstance(shape, fx.Node):
        elements = _size_elements(a, shape)
        if elements is not None and len(elements) == len(out):
            for d, (kind, holder, where_) in enumerate(elements):
                if kind == "dim":
                    a.unify(a.of(holder)[where_], out[d], node)
                else:
                    a.size_arg(holder, where_, out[d])
            return
        if len(out) != 1:  # a computed shape msgc cannot read: its dims cannot grow
            for atom in out:
                a.forbid(node, atom, f"a shape computed by {shape.name}, which msgc cannot read,")
            return
    for path, d in _shape_arg_paths(node, len(out)):
        a.size_arg(node, path, out[d])


def _size_elements(a: Analysis, value) -> list[tuple] | None:
    """The entries of a computed torch.Size: ("dim", tensor, d) or ("arg", node, path)."""
    if not isinstance(value, fx.Node):
        return None
    source = None
    if value.op == "call_method" and value.target == "size" and len(value.args) == 1:
        source = value.args[0]
    elif value.op == "call_function" and value.target is getattr and value.args[1:] == ("shape",):
        source = value.args[0]
    if source is not None:
        return [("dim", source, d) for d in range(len(a.of(source)))] if a.is_tensor(
            source) else None
    if value.op != "call_function":
        return None
    if value.target is operator.getitem and isinstance(value.args[1], slice):
        index = value.args[1]
        elements = _size_elements(a, value.args[0])
        literal = all(isinstance(v, (int, type(None))) for v in (index.start, index.stop,
                                                                  index.step))
        return elements[index] if elements is not None and literal else None
    if value.target is operator.add:
        elements = []
        for k, side in enumerate(value.args[:2]):
            if isinstance(side, (list, tuple)):
                elements += [("arg", value, ("args", k, i)) for i in range(len(side))]
            else:
                part = _size_elements(a, side)
                if part is None:
                    return None
                elements += part
        return elements
    return None


def _shape_arg_paths(node: fx.Node, rank: int):
    """(path, out_dim) for each literal of a shape argument: view(*s), view(s), reshape(x, s)."""
    if "size" in node.kwargs or "shape" in node.kwargs:
        key = "size" if "size" in node.kwargs else "shape"
        return [(("kwargs", key, d), d) for d in range(rank)]
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        return [(("args", 1, d), d) for d in range(rank)]
    return [(("args", 1 + d), d) for d in range(rank)]


def rule_transpose(a: Analysis, node: fx.Node) -> None:
    x = node.args[0]
    dims = list(a.of(x))
    if len(node.args) > 1:
        d0, d1 = (int(v) % len(dims) for v in node.args[1:3])
    else:  # .t()
        d0, d1 = 0, len(dims) - 1
    order = list(range(len(dims)))
    order[d0], order[d1] = order[d1], order[d0]
    _permuted(a, node, x, order)


def rule_permute(a: Analysis, node: fx.Node) -> None:
    x = node.args[0]
    rest = node.args[1:] or (node.kwargs["dims"],)
    order = list(rest[0]) if isinstance(rest[0], (list, tuple)) else list(rest)
    _permuted(a, node, x, [int(d) % len(order) for d in order])


def _permuted(a: Analysis, node: fx.Node, x: fx.Node, order: list[int]) -> None:
    out = a.fresh(node)
    for d, src in enumerate(order):
        a.unify(a.of(x)[src], out[d], node)
    a.carry_same(node, x, dict(enumerate(order)))


def rule_unsqueeze(a: Analysis, node: fx.Node) -> None:
    x = node.args[0]
    out = a.fresh(node)
    new = _dim_arg(node, 1, "dim") % len(out)
    mapping = {d: d - (d > new) for d in range(len(out)) if d != new}
    for d, src in mapping.items():
        a.unify(a.of(x)[src], out[d], node)
    a.carry_same(node, x, mapping)


def rule_squeeze(a: Analysis, node: fx.Node) -> None:
    rule_flatten(a, node)  # dropping size-1 dims is a reshape


def rule_expand(a: Analysis, node: fx.Node) -> None:
    """expand: size-1 dims become new dims (e.g. the query-group dim of GQA)."""
    x = node.args[0]
    out = a.fresh(node)
    dims = a.of(x)
    offset = len(out) - len(dims)
    for i, atom in enumerate(dims):
        if a.atoms.size(atom) == a.atoms.size(out[i + offset]):
            a.unify(atom, out[i + offset], node)
            a.carry(node, i + offset, [(x, i)])
        else:  # copies of one entry: with a reshape after it, a repeat (GQA's group dim)
            a.atoms.tag(out[i + offset], "group")
    if node.target in ("expand", aten.expand.default):
        _record_shape(a, node, out)


def rule_expand_as(a: Analysis, node: fx.Node) -> None:
    x, other = node.args[:2]
    out = a.fresh(node)
    for d, atom in enumerate(a.of(other)):
        a.unify(atom, out[d], node)
    dims = a.of(x)
    offset = len(out) - len(dims)
    for i, atom in enumerate(dims):
        if a.atoms.size(atom) == a.atoms.size(out[i + offset]):
            a.unify(atom, out[i + offset], node)


def rule_repeat_interleave(a: Analysis, node: fx.Node) -> None:
    """repeat_interleave(x, r, dim): the dim becomes (old dim) x (r copies), row-major."""
    x = node.args[0]
    repeats = node.args[1] if len(node.args) > 1 else node.kwargs["repeats"]
    dim = _dim_arg(node, 2, "dim")
    if not isinstance(repeats, int) or dim is None:
        raise GraphError(f"{where(node)}: repeat_interleave needs an integer repeat and a dim")
    out = a.fresh(node)
    dims = a.of(x)
    dim %= len(dims)
    group = a.atoms.new(repeats)
    a.atoms.tag(group, "group")
    for d, atom in enumerate(dims):
        if d == dim:
            a.atoms.refine(out[d], "prod", [atom, group], where(node))
        else:
            a.unify(atom, out[d], node)
    a.carry_same(node, x, {d: d for d in range(len(out))})
    path = ("args", 1) if len(node.args) > 1 else ("kwargs", "repeats")
    a.size_arg(node, path, group)


def rule_repeat(a: Analysis, node: fx.Node) -> None:
    """Tensor.repeat(*sizes): each dim becomes (copies) x (old dim), row-major."""
    x = node.args[0]
    out = a.fresh(node)
    dims = a.of(x)
    offset = len(out) - len(dims)
    paths = _shape_arg_paths(node, len(out))
    for d in range(len(out)):
        i = d - offset
        copies = a.atoms.size(out[d]) // (a.atoms.size(dims[i]) if i >= 0 else 1)
        if i >= 0 and copies == 1:
            a.unify(dims[i], out[d], node)
            continue
        group = a.atoms.new(copies)
        a.size_arg(node, paths[d][0], group)
        if i >= 0:
            a.atoms.refine(out[d], "prod", [group, dims[i]], where(node))
        else:
            a.unify(group, out[d], node)


def rule_split(a: Analysis, node: fx.Node) -> None:
    """split / chunk / unbind / tensor_split: the dim is a sum of the pieces."""
    x = node.args[0]
    dims = a.of(x)
    metas = node.meta["tensor_meta"]
    dim = _split_dim(node, len(dims))
    pieces = [[a.atoms.new(int(s)) for s in meta.shape] for meta in metas]
    unbind = _is_unbind(node)
    carries = []
    for piece in pieces:
        sources = {d: _source_dim(d, dim, unbind) for d in range(len(piece))}
        for d, src in sources.items():
            if src != dim:  # the split dim itself is refined into the pieces below
                a.unify(dims[src], piece[d], node)
        carries.append({d: Carry([(x, src)], "any") for d, src in sources.items()})
    if unbind:
        a.atoms.tag(dims[dim], "index")
    else:
        a.atoms.refine(dims[dim], "sum", [p[dim] for p in pieces], where(node))
        _record_split_sizes(a, node, [p[dim] for p in pieces])
    a.dims[node] = pieces
    a.element_carries[node] = carries


def _source_dim(d: int, dim: int, unbind: bool) -> int:
    """The input dim a piece's dim `d` comes from (unbind drops `dim`)."""
    return d + 1 if unbind and d >= dim else d


def _is_unbind(node: fx.Node) -> bool:
    return node.target in ("unbind", torch.unbind, aten.unbind.int)


def _split_dim(node: fx.Node, rank: int) -> int:
    if _is_unbind(node):
        dim = _dim_arg(node, 1, "dim")
    else:
        dim = _dim_arg(node, 2, "dim")
    return (0 if dim is None else dim) % rank


def _record_split_sizes(a: Analysis, node: fx.Node, pieces: list[int]) -> None:
    sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size")
    if node.target in ("split", torch.split, aten.split.Tensor, aten.split_with_sizes.default):
        if isinstance(sizes, (int, fx.Node)):
            for p in pieces:  # one size for all pieces: they must all grow alike
                a.size_arg(node, ("args", 1), p)
        elif isinstance(sizes, (list, tuple)):
            for k, p in enumerate(pieces):
                a.size_arg(node, ("args", 1, k), p)


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
    dims = a.of(x)
    a.fresh(node)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    d_in = d_out = 0
    for k, item in enumerate(index):
        if item is Ellipsis:
            skip = len(dims) - n_real
            for _ in range(skip):
                _tie_index(a, node, x, d_in, d_out)
                d_in, d_out = d_in + 1, d_out + 1
        elif item is None:
            d_out += 1
        elif isinstance(item, slice):
            _slice_dim(a, node, x, d_in, d_out, item, ("args", 1, k) if len(index) > 1 or
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
                             "supported; use slices, None, integers or a boolean mask")
    while d_in < len(dims):
        _tie_index(a, node, x, d_in, d_out)
        d_in, d_out = d_in + 1, d_out + 1


def _is_bool_mask(item) -> bool:
    """An index that is a traced boolean tensor (its shape propagated as bool)."""
    meta = item.meta.get("tensor_meta") if isinstance(item, fx.Node) else None
    return getattr(meta, "dtype", None) is torch.bool


def _tie_index(a, node, x, d_in, d_out) -> None:
    a.unify(a.of(x)[d_in], a.of(node)[d_out], node)
    a.carry(node, d_out, [(x, d_in)])


def _slice_dim(a, node, x, d_in, d_out, item: slice, path: tuple) -> None:
    full = a.atoms.size(a.of(x)[d_in])
    start, stop, step = item.start, item.stop, item.step
    if start in (None, 0) and stop is None and step in (None, 1):
        _tie_index(a, node, x, d_in, d_out)
        return
    if not all(isinstance(v, (int, type(None))) for v in (start, stop)) or step not in (None, 1):
        a.forbid(node, a.of(x)[d_in], "slicing with computed bounds or a step")
        return
    lo, hi, _ = slice(start, stop).indices(full)
    _segment(a, node, a.of(x)[d_in], lo, hi, a.of(node)[d_out], path + ("slice",))
    a.carry(node, d_out, [(x, d_in)])


def _segment(a, node, whole: int, lo: int, hi: int, piece: int, path: tuple) -> None:
    """`piece` is entries [lo, hi) of dimension `whole`: whole = sum(before, piece, after)."""
    full = a.atoms.size(whole)
    before = a.atoms.new(lo)
    after = a.atoms.new(full - hi)
    a.atoms.refine(whole, "sum", [before, piece, after], where(node))
    a.size_args.append(_slice_arg(node, path, piece, whole))


def _slice_arg(node, path, piece, whole):
    return SizeArg(node, path, piece, kind="slice", within=whole)


def rule_narrow(a: Analysis, node: fx.Node) -> None:
    """narrow(x, dim, start, length): a window of one dim (dynamic lengths stay dynamic)."""
    x, dim = node.args[:2]
    dims = a.of(x)
    dim %= len(dims)
    out = a.fresh(node)
    for d in range(len(dims)):
        if d != dim:
            a.unify(dims[d], out[d], node)
            a.carry(node, d, [(x, d)])
    a.forbid(node, dims[dim], "narrow")


def rule_cat(a: Analysis, node: fx.Node) -> None:
    tensors = node.args[0]
    out = a.fresh(node)
    dim = (_dim_arg(node, 1, "dim") or 0) % len(out)
    for t in tensors:
        for d, atom in enumerate(a.of(t)):
            if d != dim:
                a.unify(atom, out[d], node)
    a.atoms.refine(out[dim], "sum", [a.of(t)[dim] for t in tensors], where(node))
    for d in range(len(out)):
        a.carry(node, d, [(t, d) for t in tensors], "all")


def rule_stack(a: Analysis, node: fx.Node) -> None:
    tensors = node.args[0]
    out = a.fresh(node)
    dim = (_dim_arg(node, 1, "dim") or 0) % len(out)
    a.atoms.tag(out[dim], "index")
    for t in tensors:
        for d, atom in enumerate(a.of(t)):
            a.unify(atom, out[d + (d >= dim)], node)


# --- contractions --------------------------------------------------------------------------


def rule_linear(a: Analysis, node: fx.Node) -> None:
    """linear(x, W, b): x[-1] ~ W[1] (contracted), out[-1] ~ W[0] ~ b[0]."""
    x, weight, bias = linear_args(node)
    _contract(a, node, x, weight, in_dim=1, out_dim=0, bias=bias)


def rule_addmm(a: Analysis, node: fx.Node) -> None:
    """addmm(b, x, W) (Hugging Face Conv1D): x[-1] ~ W[0], out[-1] ~ W[1] ~ b."""
    bias, x, weight = node.args[:3]
    _contract(a, node, x, weight, in_dim=0, out_dim=1, bias=bias)


def _contract(a: Analysis, node, x, weight, in_dim: int, out_dim: int, bias) -> None:
    out = a.fresh(node)
    xd, wd = a.of(x), a.of(weight)
    a.unify(xd[-1], wd[in_dim], node)
    a.unify(out[-1], wd[out_dim], node)
    a.atoms.tag(wd[out_dim], "linear_out")
    if a.is_tensor(bias):
        a.unify(a.of(bias)[-1], out[-1], node)
    for d in range(len(out) - 1):
        a.unify(xd[d], out[d], node)
        a.carry(node, d, [(x, d)])
    a.need_zero(node, x, -1)


def rule_conv2d(a: Analysis, node: fx.Node) -> None:
    """conv2d(x, W, b): x[1] ~ W[1] (contracted), out[1] ~ W[0] ~ b; spatial dims new."""
    x, weight = node.args[:2]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    out = a.fresh(node)
    xd, wd = a.of(x), a.of(weight)
    a.unify(xd[0], out[0], node)
    a.carry(node, 0, [(x, 0)])
    if groups != 1:  # grouped channels: neither channel dim can grow
        a.forbid(node, xd[1], "a grouped convolution")
        a.forbid(node, out[1], "a grouped convolution")
        return
    a.unify(xd[1], wd[1], node)
    a.unify(out[1], wd[0], node)
    a.atoms.tag(wd[0], "linear_out")
    if a.is_tensor(bias):
        a.unify(a.of(bias)[0], out[1], node)
    a.need_zero(node, x, 1)


def rule_matmul(a: Analysis, node: fx.Node) -> None:
    """matmul: batch dims broadcast, x[-1] ~ y[-2] contracted, out = (.., x[-2], y[-1])."""
    x, y = node.args[:2]
    xd, yd = a.of(x), a.of(y)
    if len(xd) < 2 or len(yd) < 2:
        raise GraphError(f"{where(node)}: matmul with a 1-D operand is not supported")
    out = a.fresh(node)
    for dims in (xd, yd):
        batch = dims[:-2]
        offset = len(out) - 2 - len(batch)
        for i, atom in enumerate(batch):
            if a.atoms.size(atom) == a.atoms.size(out[i + offset]):
                a.unify(atom, out[i + offset], node)
    a.unify(xd[-1], yd[-2], node)
    a.unify(xd[-2], out[-2], node)
    a.unify(yd[-1], out[-1], node)
    for d in range(len(out) - 2):
        a.carry(node, d, [(x, d - (len(out) - len(xd)))] if d >= len(out) - len(xd) else [])
    a.carry(node, len(out) - 2, [(x, len(xd) - 2)])
    a.carry(node, len(out) - 1, [(y, len(yd) - 1)])
    params = {n for n in (x, y) if n.op == "get_attr"}
    if not params:  # attention: both operands are activations
        a.atoms.tag(xd[-1], "head_dim")
        a.atoms.tag(yd[-1], "head_dim")
        for atom in out[:-2]:
            a.atoms.tag(atom, "attn_batch")
    a.need_zero(node, y if x in params else x, -1 if x not in params else -2)


def rule_sdpa(a: Analysis, node: fx.Node) -> None:
    """scaled_dot_product_attention(q, k, v): heads stay, head_dim fixed, GQA via groups."""
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    qd, kd, vd = a.of(q), a.of(k), a.of(v)
    out = a.fresh(node)
    a.unify(qd[-1], kd[-1], node)
    a.unify(kd[-2], vd[-2], node)
    a.unify(out[-1], vd[-1], node)
    a.unify(out[-2], qd[-2], node)
    for atom in (qd[-1], vd[-1]):
        a.atoms.tag(atom, "head_dim")
    for i in range(len(qd) - 3):
        for other in (kd, vd, out):
            a.unify(qd[i], other[i], node)
    if len(qd) >= 3:
        _heads(a, node, qd[-3], kd[-3], vd[-3], out[-3])
    if a.is_tensor(mask):
        md = a.of(mask)
        scores = qd[:-2] + [qd[-2], kd[-2]]
        for i, atom in enumerate(md):
            target = scores[len(scores) - len(md) + i]
            if a.atoms.size(atom) == a.atoms.size(target):
                a.unify(atom, target, node)
    for d in range(len(out) - 3):
        a.carry(node, d, [(q, d)])


def _heads(a, node, q_heads, k_heads, v_heads, out_heads) -> None:
    a.unify(k_heads, v_heads, node)
    a.unify(q_heads, out_heads, node)
    a.atoms.tag(q_heads, "heads")
    a.atoms.tag(k_heads, "kv_heads")
    if a.atoms.size(q_heads) == a.atoms.size(k_heads):
        a.unify(q_heads, k_heads, node)
    else:  # enable_gqa: query head h reads kv head h // group
        group = a.atoms.new(a.atoms.size(q_heads) // a.atoms.size(k_heads))
        a.atoms.tag(group, "group")
        a.atoms.refine(q_heads, "prod", [k_heads, group], where(node))


def rule_attention_module(a: Analysis, node: fx.Node) -> None:
    rule_sdpa(a, node)


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


def rule_layer_norm(a: Analysis, node: fx.Node) -> None:
    _norm(a, node, weight_index=2, bias_index=3, zero_preserving=False)


def rule_rms_norm(a: Analysis, node: fx.Node) -> None:
    _norm(a, node, weight_index=2, bias_index=None, zero_preserving=True)


def _norm(a: Analysis, node, weight_index, bias_index, zero_preserving) -> None:
    x, shape = node.args[:2]
    dims = a.of(x)
    out = a.fresh(node)
    k = len(shape)
    for d, atom in enumerate(dims):
        a.unify(atom, out[d], node)
    for index in (weight_index, bias_index):
        value = node.args[index] if index is not None and len(node.args) > index else None
        if a.is_tensor(value):
            for i, atom in enumerate(a.of(value)):
                a.unify(atom, dims[len(dims) - k + i], node)
    normalized = dims[len(dims) - k:]
    a.normalized[node] = normalized
    for i in range(k):
        a.size_arg(node, ("args", 1, i), normalized[i])
        a.need_zero(node, x, len(dims) - k + i)
    for d in range(len(dims)):
        if d < len(dims) - k or zero_preserving:
            a.carry(node, d, [(x, d)])


def rule_reduce(a: Analysis, node: fx.Node) -> None:
    """sum / mean over dims: mean needs masked statistics, both need zeros at new entries."""
    x = node.args[0]
    dims = a.of(x)
    reduced = _reduced_dims(node, len(dims))
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    out = a.fresh(node)
    kept = [d for d in range(len(dims)) if d not in reduced or keepdim]
    for o, d in enumerate(kept):
        if d not in reduced:
            a.unify(dims[d], out[o], node)
            a.carry(node, o, [(x, d)])
    for d in reduced:
        a.need_zero(node, x, d)
    if _reduce_kind(node) == "mean":
        a.normalized[node] = [dims[d] for d in reduced]


def rule_reduce_forbidden(a: Analysis, node: fx.Node) -> None:
    """softmax, max, var, cumsum ... over a dim: that dim cannot grow."""
    x = node.args[0]
    dims = a.of(x)
    reduced = _reduced_dims(node, len(dims))
    if len(a.shape(node)) == len(dims):
        rule_unary(a, node)
    else:
        out = a.fresh(node)
        kept = [d for d in range(len(dims)) if d not in reduced]
        for o, d in enumerate(kept):
            a.unify(dims[d], out[o], node)
    for d in reduced:
        a.forbid(node, dims[d], f"{_reduce_kind(node)} over it")


def _reduced_dims(node: fx.Node, rank: int) -> list[int]:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dim is None:
        return list(range(rank))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return sorted(int(d) % rank for d in dims)


def _reduce_kind(node: fx.Node) -> str:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return str(name).split(".")[0]


# --- factories ----------------------------------------------------------------------------


def rule_factory(a: Analysis, node: fx.Node) -> None:
    """ones/zeros/full/empty/arange: fresh dims; literal sizes are rewritten on growth."""
    out = a.fresh(node)
    if node.target in (torch.arange, aten.arange.default, aten.arange.start):
        if node.target is not aten.arange.start and len(node.args) == 1 and isinstance(
                node.args[0], int):
            a.size_arg(node, ("args", 0), out[0])  # arange(n), n a literal: n entries
        return
    sizes = node.args[0] if node.args and isinstance(node.args[0], (list, tuple)) else None
    for d in range(len(out)):
        path = ("args", 0, d) if sizes is not None else ("args", d)
        a.size_arg(node, path, out[d])


def rule_new_factory(a: Analysis, node: fx.Node) -> None:
    out = a.fresh(node)
    _record_shape(a, node, out)


def _first_tensor(a: Analysis, node: fx.Node) -> fx.Node:
    for value in node.args:
        if a.is_tensor(value):
            return value
    raise GraphError(f"{where(node)}: expected a tensor argument")


def _dim_arg(node: fx.Node, index: int, name: str):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name)


# --- the table ----------------------------------------------------------------------------

_ADD = ["add", "sub", "add_", "sub_", operator.add, operator.sub, operator.iadd, operator.isub,
        torch.add, torch.sub, torch.maximum, torch.minimum, aten.add.Tensor, aten.sub.Tensor,
        aten.maximum.default, aten.minimum.default, aten.rsub.Scalar]
_MUL = ["mul", "mul_", operator.mul, operator.imul, torch.mul, aten.mul.Tensor]
_DIV = ["div", "div_", operator.truediv, torch.div, aten.div.Tensor]
_ZERO_UNARY = [
    F.relu, F.gelu, F.silu, torch.relu, torch.tanh, torch.neg, operator.neg, torch.sin,
    torch.sqrt, torch.abs, torch.erf, torch.clone, torch.triu, torch.tril, F.tanh,
    "relu", "gelu", "silu", "tanh", "neg", "sin", "sqrt", "abs", "erf", "contiguous",
    "clone", "detach", "float", "half", "bfloat16", "double", "to", "type_as", "type",
    "triu", "tril", "relu_",
    aten.relu.default, aten.gelu.default, aten.silu.default, aten.tanh.default,
    aten.neg.default, aten.sin.default, aten.sqrt.default, aten.clone.default,
    aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device,
    aten.contiguous.default, aten.alias.default, aten.triu.default, aten.tril.default,
    aten.detach.default, aten.type_as.default,
]
_UNARY = [torch.sigmoid, F.sigmoid, torch.exp, torch.cos, torch.rsqrt, torch.log, torch.reciprocal,
          "sigmoid", "exp", "cos", "rsqrt", "log", "reciprocal",
          aten.sigmoid.default, aten.exp.default, aten.cos.default, aten.rsqrt.default,
          aten.log.default, aten.reciprocal.default]
_POW = ["pow", operator.pow, torch.pow, aten.pow.Tensor_Scalar]
_VIEW = ["view", "reshape", torch.reshape, aten.view.default, aten.reshape.default,
         aten._unsafe_view.default]
_FLATTEN = ["flatten", torch.flatten, aten.flatten.using_ints]
_TRANSPOSE = ["transpose", "t", "swapaxes", torch.transpose, torch.t, aten.transpose.int,
              aten.t.default]
_PERMUTE = ["permute", torch.permute, aten.permute.default]
_SPLIT = ["split", "chunk", "unbind", "tensor_split", torch.split, torch.chunk, torch.unbind,
          aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int]
_REDUCE = ["sum", "mean", torch.sum, torch.mean, aten.sum.dim_IntList, aten.mean.dim,
           aten.sum.default, aten.mean.default]
_FORBID = ["softmax", "log_softmax", "amax", "max", "var", "std", "cumsum", "logsumexp",
           F.softmax, F.log_softmax, torch.softmax, torch.amax, torch.var, torch.std,
           torch.cumsum, torch.logsumexp, aten._softmax.default, aten.softmax.int,
           aten.amax.default, aten.var.correction, aten.cumsum.default,
           aten._log_softmax.default, aten.log_softmax.int]
_FACTORY = [torch.ones, torch.zeros, torch.full, torch.empty, torch.arange,
            aten.ones.default, aten.zeros.default, aten.full.default, aten.empty.memory_format,
            aten.arange.default, aten.arange.start]
_NEW_FACTORY = ["new_ones", "new_zeros", "new_empty", "new_full"]
_LIKE = [torch.ones_like, torch.zeros_like, torch.full_like, torch.empty_like,
         aten.ones_like.default, aten.zeros_like.default, aten.full_like.default]

RULES: dict = {}
for _targets, _rule in (
    (_ADD, rule_add), (_MUL, rule_mul), (_DIV, rule_div), (_ZERO_UNARY, rule_zero_unary),
    (_UNARY, rule_unary), (_POW, rule_pow), (_VIEW, rule_view), (_FLATTEN, rule_flatten),
    (["clamp", "clamp_min", "clamp_max", "clip", torch.clamp, torch.clip, aten.clamp.default,
      aten.clamp_min.default, aten.clamp_max.default], rule_clamp),
    (_TRANSPOSE, rule_transpose), (_PERMUTE, rule_permute), (_SPLIT, rule_split),
    (_REDUCE, rule_reduce), (_FORBID, rule_reduce_forbidden), (_FACTORY, rule_factory),
    (_NEW_FACTORY, rule_new_factory), (_LIKE, rule_like),
    (["unsqueeze", torch.unsqueeze, aten.unsqueeze.default], rule_unsqueeze),
    (["squeeze", torch.squeeze, aten.squeeze.dim, aten.squeeze.dims], rule_squeeze),
    (["expand", aten.expand.default], rule_expand),
    (["expand_as"], rule_expand_as),
    (["repeat_interleave", torch.repeat_interleave, aten.repeat_interleave.self_int],
     rule_repeat_interleave),
    (["repeat", aten.repeat.default], rule_repeat),
    ([operator.getitem], rule_getitem),
    (["narrow", torch.narrow, aten.narrow.default], rule_narrow),
    ([torch.cat, torch.concat, aten.cat.default], rule_cat),
    ([torch.stack, aten.stack.default], rule_stack),
    ([F.linear, aten.linear.default], rule_linear),
    ([torch.addmm, aten.addmm.default], rule_addmm),
    ([F.conv2d, aten.conv2d.default], rule_conv2d),
    (["matmul", "bmm", torch.matmul, torch.bmm, operator.matmul, aten.matmul.default,
      aten.bmm.default], rule_matmul),
    ([F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default], rule_sdpa),
    ([F.embedding, aten.embedding.default], rule_embedding),
    ([F.layer_norm, aten.layer_norm.default], rule_layer_norm),
    ([F.rms_norm, aten.rms_norm.default], rule_rms_norm),
    (["masked_fill", torch.masked_fill, aten.masked_fill.Scalar], rule_masked_fill),
    ([torch.where, aten.where.self], rule_where),
):
    for _target in _targets:
        RULES[_target] = _rule

_MODULE_RULES = {nn.Dropout: rule_zero_unary, AttentionDropout: rule_attention_module}


def rule_for(a: Analysis, node: fx.Node):
    """The rule of a node's op, or None where msgc has none."""
    if node.op == "call_module":
        module = a.gm.get_submodule(node.target)
        return _MODULE_RULES.get(type(module))
    return RULES.get(node.target)

