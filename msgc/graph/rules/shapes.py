"""Views and shapes: reshapes, permutations, expansions, splits, slices, concatenation.

These ops move entries without computing new ones: each ties output dims to the input dims
they come from, splits a dim into the pieces a reshape or a split makes of it, and records
the literal sizes (view shapes, split sizes, slice bounds) that growth must rewrite.
"""

import operator

import torch
import torch.fx as fx

from msgc.errors import GraphError
from msgc.graph.dims import Analysis, Carry, SizeArg, dim_arg, where
from msgc.graph.rules.refusals import fixed
from msgc.graph.rules.registry import rule

aten = torch.ops.aten
_FULL = (None, 0)
_END = (None, 2**63 - 1)
_SLICE_DEFAULTS = (0, None, None, 1)  # dim, start, end, step


@rule("view", "reshape", torch.reshape, aten.view.default, aten.reshape.default,
      aten._unsafe_view.default)
def rule_view(a: Analysis, node: fx.Node) -> None:
    """view / reshape: input and output dims matched by chunks of equal size."""
    x = node.args[0]
    out = a.fresh(node)
    _match_reshape(a, node, a.of(x), out)
    record_shape(a, node, out)


@rule("flatten", torch.flatten, aten.flatten.using_ints)
def rule_flatten(a: Analysis, node: fx.Node) -> None:
    """flatten / squeeze: a reshape (dims matched by chunks of equal size)."""
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


def record_shape(a: Analysis, node: fx.Node, out: list[int]) -> None:
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


@rule("transpose", "t", "swapaxes", torch.transpose, torch.t, aten.transpose.int, aten.t.default)
def rule_transpose(a: Analysis, node: fx.Node) -> None:
    """transpose / t: two dims swapped; every dim may grow."""
    x = node.args[0]
    dims = list(a.of(x))
    if len(node.args) > 1:
        d0, d1 = (int(v) % len(dims) for v in node.args[1:3])
    else:  # .t()
        d0, d1 = 0, len(dims) - 1
    order = list(range(len(dims)))
    order[d0], order[d1] = order[d1], order[d0]
    _permuted(a, node, x, order)


@rule("permute", torch.permute, aten.permute.default)
def rule_permute(a: Analysis, node: fx.Node) -> None:
    """permute: dims reordered; every dim may grow."""
    x = node.args[0]
    rest = node.args[1:] or (node.kwargs["dims"],)
    order = list(rest[0]) if isinstance(rest[0], (list, tuple)) else list(rest)
    _permuted(a, node, x, [int(d) % len(order) for d in order])


@rule(aten.numpy_T.default)
def rule_numpy_t(a: Analysis, node: fx.Node) -> None:
    """x.T: every dim reversed."""
    x = node.args[0]
    _permuted(a, node, x, list(reversed(range(len(a.of(x))))))


def _permuted(a: Analysis, node: fx.Node, x: fx.Node, order: list[int]) -> None:
    out = a.fresh(node)
    for d, src in enumerate(order):
        a.unify(a.of(x)[src], out[d], node)
    a.carry_same(node, x, dict(enumerate(order)))


@rule("unsqueeze", torch.unsqueeze, aten.unsqueeze.default)
def rule_unsqueeze(a: Analysis, node: fx.Node) -> None:
    """unsqueeze: a new size-1 dim; the others carried."""
    x = node.args[0]
    out = a.fresh(node)
    new = dim_arg(node, 1, "dim") % len(out)
    mapping = {d: d - (d > new) for d in range(len(out)) if d != new}
    for d, src in mapping.items():
        a.unify(a.of(x)[src], out[d], node)
    a.carry_same(node, x, mapping)


@rule("squeeze", torch.squeeze, aten.squeeze.dim, aten.squeeze.dims)
def rule_squeeze(a: Analysis, node: fx.Node) -> None:
    """squeeze: dropping size-1 dims is a reshape."""
    rule_flatten(a, node)


@rule("expand", aten.expand.default)
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
        record_shape(a, node, out)


@rule("expand_as")
def rule_expand_as(a: Analysis, node: fx.Node) -> None:
    """expand_as(x, other): other's dims, x's where sizes agree."""
    x, other = node.args[:2]
    out = a.fresh(node)
    for d, atom in enumerate(a.of(other)):
        a.unify(atom, out[d], node)
    dims = a.of(x)
    offset = len(out) - len(dims)
    for i, atom in enumerate(dims):
        if a.atoms.size(atom) == a.atoms.size(out[i + offset]):
            a.unify(atom, out[i + offset], node)


@rule("repeat_interleave", torch.repeat_interleave, aten.repeat_interleave.self_int)
def rule_repeat_interleave(a: Analysis, node: fx.Node) -> None:
    """repeat_interleave(x, r, dim): the dim becomes (old dim) x (r copies), row-major."""
    x = node.args[0]
    repeats = node.args[1] if len(node.args) > 1 else node.kwargs["repeats"]
    dim = dim_arg(node, 2, "dim")
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


@rule("repeat", aten.repeat.default)
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


@rule("split", "chunk", "unbind", "tensor_split", torch.split, torch.chunk, torch.unbind,
      aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int)
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
        dim = dim_arg(node, 1, "dim")
    else:
        dim = dim_arg(node, 2, "dim")
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


@rule(aten.slice.Tensor)
def rule_slice(a: Analysis, node: fx.Node) -> None:
    """aten.slice(x, dim, start, end, step): other dims kept. A window with literal bounds of
    a dim of fixed size is a segment of it (rewritten on growth, as x[..., lo:hi]); any other
    partial slice fixes `dim`."""
    x = node.args[0]
    dim, start, end, step = (*node.args[1:], *_SLICE_DEFAULTS[len(node.args) - 1:])
    dims = a.of(x)
    dim %= len(dims)
    out = a.fresh(node)
    whole = start in _FULL and (end in _END or end == a.atoms.size(dims[dim])) and step == 1
    for d in range(len(dims)):
        if d != dim or whole:
            a.unify(dims[d], out[d], node)
            a.carry(node, d, [(x, d)])
    if whole:
        return
    if _static(x, dim) and all(isinstance(v, int) for v in (start, end)) and step == 1:
        lo, hi, _ = slice(start, end).indices(a.atoms.size(dims[dim]))
        segment(a, node, dims[dim], lo, hi, out[dim], ("args", 2))
        a.carry(node, dim, [(x, dim)])
    else:
        a.forbid(node, dims[dim], "slicing")


def _static(x: fx.Node, dim: int) -> bool:
    """Whether torch.export kept `dim` of `x` a plain size (not batch or sequence)."""
    val = x.meta.get("val")
    return isinstance(val, torch.Tensor) and type(val.shape[dim]) is int


def tie_index(a, node, x, d_in, d_out) -> None:
    a.unify(a.of(x)[d_in], a.of(node)[d_out], node)
    a.carry(node, d_out, [(x, d_in)])



def slice_dim(a, node, x, d_in, d_out, item: slice, path: tuple) -> None:
    full = a.atoms.size(a.of(x)[d_in])
    start, stop, step = item.start, item.stop, item.step
    if start in (None, 0) and stop is None and step in (None, 1):
        tie_index(a, node, x, d_in, d_out)
        return
    if not all(isinstance(v, (int, type(None))) for v in (start, stop)) or step not in (None, 1):
        a.forbid(node, a.of(x)[d_in], "slicing with computed bounds or a step")
        return
    lo, hi, _ = slice(start, stop).indices(full)
    segment(a, node, a.of(x)[d_in], lo, hi, a.of(node)[d_out], path + ("slice",))
    a.carry(node, d_out, [(x, d_in)])


def segment(a, node, whole: int, lo: int, hi: int, piece: int, path: tuple) -> None:
    """`piece` is entries [lo, hi) of dimension `whole`: whole = sum(before, piece, after)."""
    full = a.atoms.size(whole)
    before = a.atoms.new(lo)
    after = a.atoms.new(full - hi)
    a.atoms.refine(whole, "sum", [before, piece, after], where(node))
    a.size_args.append(_slice_arg(node, path, piece, whole))


def _slice_arg(node, path, piece, whole):
    return SizeArg(node, path, piece, kind="slice", within=whole)


@rule("narrow", torch.narrow, aten.narrow.default)
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


@rule(aten.select.int)
def rule_select(a: Analysis, node: fx.Node) -> None:
    """aten.select(x, dim, index): `dim` is dropped; it is an index space (Bloom's q/k/v of
    a fused projection), fixed."""
    x, dim = node.args[:2]
    dims = a.of(x)
    dim %= len(dims)
    out = a.fresh(node)
    mapping = {d: d + (d >= dim) for d in range(len(out))}
    for d, src in mapping.items():
        a.unify(dims[src], out[d], node)
    a.carry_same(node, x, mapping)
    a.atoms.tag(dims[dim], "index")
    a.forbid(node, dims[dim], "integer indexing")


@rule(torch.cat, torch.concat, aten.cat.default)
def rule_cat(a: Analysis, node: fx.Node) -> None:
    """cat along a dim: that dim is the sum of the pieces (each may grow)."""
    tensors = node.args[0]
    if not isinstance(tensors, (list, tuple)):  # cat(x.split(...)): the tuple itself
        fixed("a cat of a whole tuple (write torch.cat(list(pieces)) to let it grow),")(a, node)
        return
    out = a.fresh(node)
    dim = (dim_arg(node, 1, "dim") or 0) % len(out)
    for t in tensors:
        for d, atom in enumerate(a.of(t)):
            if d != dim:
                a.unify(atom, out[d], node)
    a.atoms.refine(out[dim], "sum", [a.of(t)[dim] for t in tensors], where(node))
    for d in range(len(out)):
        a.carry(node, d, [(t, d) for t in tensors], "all")


@rule(torch.stack, aten.stack.default)
def rule_stack(a: Analysis, node: fx.Node) -> None:
    """stack: a new index dim (never grows); the others tied."""
    tensors = node.args[0]
    out = a.fresh(node)
    dim = (dim_arg(node, 1, "dim") or 0) % len(out)
    a.atoms.tag(out[dim], "index")
    for t in tensors:
        for d, atom in enumerate(a.of(t)):
            a.unify(atom, out[d + (d >= dim)], node)
