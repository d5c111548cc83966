"""Dimension atoms: a union-find over tensor dimensions, with refinement.

Every tensor dimension in the graph is an atom. Ops that tie dimensions together unify
their atoms (the classes are the coupling groups). A dimension can also be *refined*:
a `prod` of child atoms (a view that splits 512 into 8 heads x 64, row-major) or a `sum`
(a split or cat: [q | k | v] along one dim). Refinement is per class, so every dim tied
to a refined one sees the same structure. Leaf classes are what growth resizes.
"""

from dataclasses import dataclass, field

from msgc.errors import GraphError


@dataclass
class Refinement:
    kind: str  # "prod" (row-major factors) or "sum" (concatenated segments)
    children: list[int]


@dataclass
class Atoms:
    parent: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    refinements: dict[int, Refinement] = field(default_factory=dict)
    tags: dict[int, set[str]] = field(default_factory=dict)

    def new(self, size: int) -> int:
        """A fresh atom of the given (pre-growth) size."""
        self.parent.append(len(self.parent))
        self.sizes.append(int(size))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def size(self, a: int) -> int:
        return self.sizes[self.find(a)]

    def tag(self, a: int, label: str) -> None:
        self.tags.setdefault(self.find(a), set()).add(label)

    def tags_of(self, a: int) -> set[str]:
        return self.tags.get(self.find(a), set())

    def refinement(self, a: int) -> Refinement | None:
        return self.refinements.get(self.find(a))

    # --- unification -----------------------------------------------------------------

    def unify(self, a: int, b: int, where: str) -> None:
        """Tie two dimensions: same size, same class, same structure."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.sizes[ra] != self.sizes[rb]:
            raise GraphError(
                f"{where}: dimensions of size {self.sizes[ra]} and {self.sizes[rb]} "
                "are tied by this op but differ in size"
            )
        self.parent[rb] = ra
        self.tags.setdefault(ra, set()).update(self.tags.pop(rb, set()))
        fa, fb = self.refinements.get(ra), self.refinements.pop(rb, None)
        if fb is None:
            return
        if fa is None:
            self.refinements[ra] = fb
        else:
            self.align(fa.kind, fa.children, fb.children, where)

    def refine(self, a: int, kind: str, children: list[int], where: str) -> None:
        """Declare that dimension `a` is the prod or sum of `children`."""
        children = [c for c in children if not (kind == "sum" and self.size(c) == 0)]
        if len(children) == 1:
            self.unify(a, children[0], where)
            return
        expected = _combine(kind, [self.size(c) for c in children])
        if expected != self.size(a):
            raise GraphError(f"{where}: a dimension of size {self.size(a)} cannot be the "
                             f"{kind} of sizes {[self.size(c) for c in children]}")
        self.align(kind, self.flatten(kind, a), self._flatten_all(kind, children), where)

    def flatten(self, kind: str, a: int) -> list[int]:
        """The leaves of `a` under nested refinements of one kind (other kinds are leaves)."""
        ref = self.refinement(a)
        if ref is None or ref.kind != kind:
            return [self.find(a)]
        return self._flatten_all(kind, ref.children)

    def _flatten_all(self, kind: str, atoms: list[int]) -> list[int]:
        return [leaf for c in atoms for leaf in self.flatten(kind, c)]

    def align(self, kind: str, left: list[int], right: list[int], where: str) -> None:
        """Tie two factorisations (or segmentations) of one dimension, chunk by chunk."""
        for chunk_left, chunk_right in _chunks(kind, left, right, self.size, where):
            if len(chunk_left) == 1 and len(chunk_right) == 1:
                self.unify(chunk_left[0], chunk_right[0], where)
            elif len(chunk_left) == 1 or len(chunk_right) == 1:
                single, many = (chunk_left, chunk_right)[::1 if len(chunk_left) == 1 else -1]
                self._set_refinement(single[0], kind, many, where)
            else:
                raise GraphError(
                    f"{where}: cannot match the {kind} of sizes "
                    f"{[self.size(a) for a in chunk_left]} with "
                    f"{[self.size(a) for a in chunk_right]}; reshape through one merged "
                    "dimension instead"
                )

    def _set_refinement(self, a: int, kind: str, children: list[int], where: str) -> None:
        root = self.find(a)
        existing = self.refinements.get(root)
        if existing is None:
            self.refinements[root] = Refinement(kind, list(children))
        elif existing.kind == kind:
            self.align(kind, self._flatten_all(kind, existing.children), children, where)
        else:
            raise GraphError(f"{where}: a dimension is split both as a {existing.kind} and "
                             f"as a {kind}; msgc cannot grow this layout")

    # --- reading the structure ----------------------------------------------------------

    def leaves(self, a: int) -> list[int]:
        """Leaf classes under `a`, in layout order."""
        ref = self.refinement(a)
        if ref is None:
            return [self.find(a)]
        return [leaf for c in ref.children for leaf in self.leaves(c)]


def _combine(kind: str, sizes: list[int]) -> int:
    total = 1 if kind == "prod" else 0
    for s in sizes:
        total = total * s if kind == "prod" else total + s
    return total


def _chunks(kind, left, right, size_of, where):
    """Split two lists into aligned chunks with equal products (or sums)."""
    identity = 1 if kind == "prod" else 0
    if kind == "prod":  # size-1 factors carry no layout (and would make cycles)
        left = [a for a in left if size_of(a) != 1] or left[:1]
        right = [a for a in right if size_of(a) != 1] or right[:1]
    i = j = 0
    while i < len(left) or j < len(right):
        if i == len(left) or j == len(right):
            rest = left[i:] + right[j:]
            if any(size_of(a) != identity for a in rest):
                raise GraphError(f"{where}: dimension structures do not line up")
            return
        chunk_l, chunk_r = [left[i]], [right[j]]
        acc_l, acc_r = size_of(left[i]), size_of(right[j])
        i, j = i + 1, j + 1
        while acc_l != acc_r:
            if acc_l < acc_r and i < len(left):
                acc_l = _combine(kind, [acc_l, size_of(left[i])])
                chunk_l.append(left[i])
                i += 1
            elif j < len(right):
                acc_r = _combine(kind, [acc_r, size_of(right[j])])
                chunk_r.append(right[j])
                j += 1
            else:
                raise GraphError(f"{where}: dimension structures do not line up")
        yield chunk_l, chunk_r
