"""Dimension analysis: which tensor dimensions of a traced graph must grow together.

Each op has a rule (msgc/graph/rules/) over (tensor, dim) pairs. Running every rule over
the graph (msgc/graph/analyze.py) gives, per node, one atom per output dimension; the
union-find classes of the atoms are the coupling groups. Besides couplings, rules record
what later passes need:
- `carries`: where each output dim takes its values from (for the zero-at-new analysis
  that decides where masks go),
- `needs_zero`: (input, dim) pairs that are contracted or normalised, so new entries
  there must be zero at mask 0,
- `size_args`: integer literals that encode a dimension's size (view shapes, split sizes,
  repeat counts, normalized_shape), rewritten when that dimension grows,
- `normalized`: norms and means whose statistics need masking,
- `forbidden`: dims an op cannot handle growing (softmax over them, max, ...).
"""

from dataclasses import dataclass, field

import torch.fx as fx

from msgc.errors import GraphError
from msgc.graph.atoms import Atoms

Dim = tuple[fx.Node, int]  # (tensor-valued node, dimension index)


@dataclass
class Carry:
    """Output dim `dim` of a node takes its values from `sources` (None: from nowhere)."""

    sources: list[Dim | None]
    mode: str  # "any": zero where any source is zero; "all": zero where all are


@dataclass
class SizeArg:
    """A literal in node.args/kwargs (reached by `path`) that equals a dim's size."""

    node: fx.Node
    path: tuple
    atom: int
    kind: str = "size"  # "size": the dim's size; "start"/"stop": slice bounds in `within`
    within: int | None = None


@dataclass
class Analysis:
    gm: fx.GraphModule
    atoms: Atoms = field(default_factory=Atoms)
    dims: dict[fx.Node, list] = field(default_factory=dict)  # tensor -> atoms; tuple -> lists
    carries: dict[fx.Node, dict[int, Carry]] = field(default_factory=dict)
    element_carries: dict[fx.Node, list[dict[int, Carry]]] = field(default_factory=dict)
    push: dict[fx.Node, str] = field(default_factory=dict)
    needs_zero: list[tuple[fx.Node, Dim]] = field(default_factory=list)
    size_args: list[SizeArg] = field(default_factory=list)
    normalized: dict[fx.Node, list[int]] = field(default_factory=dict)
    forbidden: list[tuple[fx.Node, int, str]] = field(default_factory=list)
    param_nodes: dict[str, fx.Node] = field(default_factory=dict)  # tensor id -> get_attr

    # --- reading shapes -----------------------------------------------------------------

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise GraphError(f"node {node.name} ({op_name(node)}) has no tensor shape")
        return tuple(int(s) for s in meta.shape)

    def is_tensor(self, value) -> bool:
        return isinstance(value, fx.Node) and value in self.dims and _is_flat(self.dims[value])

    def of(self, node: fx.Node) -> list[int]:
        """The atoms of a tensor-valued node's dimensions."""
        if not self.is_tensor(node):
            raise GraphError(f"node {node.name} is used as a tensor but is not one")
        return self.dims[node]

    # --- recording ----------------------------------------------------------------------

    def fresh(self, node: fx.Node, tags: tuple[str, ...] = ()) -> list[int]:
        atoms = [self.atoms.new(s) for s in self.shape(node)]
        for a in atoms:
            for t in tags:
                self.atoms.tag(a, t)
        self.dims[node] = atoms
        return atoms

    def unify(self, a: int, b: int, node: fx.Node) -> None:
        self.atoms.unify(a, b, where=where(node))

    def carry(self, node: fx.Node, dim: int, sources: list[Dim | None], mode: str = "any"):
        self.carries.setdefault(node, {})[dim] = Carry(list(sources), mode)

    def carry_same(self, node: fx.Node, source: fx.Node, mapping: dict[int, int]) -> None:
        """Output dims taken one-to-one from `source` dims (out dim -> source dim)."""
        for out_dim, in_dim in mapping.items():
            self.carry(node, out_dim, [(source, in_dim)])

    def need_zero(self, node: fx.Node, source: fx.Node, dim: int) -> None:
        self.needs_zero.append((node, (source, dim % len(self.of(source)))))

    def forbid(self, node: fx.Node, atom: int, why: str) -> None:
        self.forbidden.append((node, atom, why))

    def size_arg(self, node: fx.Node, path: tuple, atom: int) -> None:
        self.size_args.append(SizeArg(node, path, atom))


def flat_atoms(dims: list) -> list[int]:
    """The atoms of a node's dims: a tensor's, or every piece's of a tuple of tensors."""
    return [x for d in dims for x in (d if isinstance(d, list) else [d])]


def _is_flat(dims: list) -> bool:
    return all(isinstance(d, int) for d in dims)


def fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def linear_args(node: fx.Node) -> tuple:
    """(input, weight, bias) of a ``linear`` call, whichever way they were passed (bias
    None when absent)."""
    args = list(node.args) + [None] * (3 - len(node.args))
    names = ("input", "weight", "bias")
    return tuple(node.kwargs.get(name, arg) for name, arg in zip(names, args, strict=True))


def op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        return f"module {node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or str(target)
    return f"{module}.{name}" if module and not str(target).startswith("aten") else str(target)


def where(node: fx.Node) -> str:
    return f"node {node.name} ({op_name(node)})"



def first_tensor(a: Analysis, node: fx.Node) -> fx.Node:
    """The first tensor among a node's positional arguments."""
    for value in node.args:
        if a.is_tensor(value):
            return value
    raise GraphError(f"{where(node)}: expected a tensor argument")


def dim_arg(node: fx.Node, index: int, name: str):
    """An argument given by position ``index`` or by keyword ``name`` (None if absent)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name)
