"""Mask insertion: put a mask wherever new entries could leak into old outputs.

New entries leak through contractions (a linear's input, a matmul's inner dim) and
statistics (norms, means). At each such place the input must be zero at the new entries
while c = 0. Where it is not, a mask goes at the op that makes it non-zero, pushed back
through residual adds to each writer (so every residual-stream writer masks its output),
through activations with f(0) = 0 to the linear before them (act(z * m), as the paper),
and to the first factor of a product (SwiGLU: silu(gate * m) * up). Attention outputs,
norms, embeddings and linears are where masks land.

Masks are buffers in the `msgc_masks` submodule: `m<i>` holds the values (1 on old entries,
c on new ones), `new<i>` marks the new entries, `value` holds c.
"""

import operator
import sys

import torch
import torch.fx as fx
import torch.nn as nn

from msgc.errors import GraphError
from msgc.graph.dims import Dim, where
from msgc.graph.plan import Plan

MASKS = "msgc_masks"


class MaskBank(nn.Module):
    """The mask buffers of a grown model; set_value(c) rewrites them all."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(()))
        self.count = 0

    def add(self, is_new: torch.Tensor, shape: tuple[int, ...]) -> str:
        """Register a mask of `shape` (broadcastable) with new entries `is_new`; its name."""
        name = f"m{self.count}"
        self.count += 1
        is_new = is_new.reshape(shape)
        self.register_buffer(f"new{name[1:]}", is_new, persistent=False)
        self.register_buffer(name, torch.where(is_new, self.value, 1.0))
        return name

    def set_value(self, c: float) -> None:
        with torch.no_grad():
            self.value.fill_(c)
            for i in range(self.count):
                getattr(self, f"m{i}").copy_(torch.where(getattr(self, f"new{i}"), c, 1.0))

    def extra_repr(self) -> str:
        return f"masks={self.count}, value={float(self.value):g}"


class MaskSites:
    """Decides where masks go (zero-at-new analysis) and inserts them."""

    def __init__(self, gm: fx.GraphModule, plan: Plan):
        self.gm, self.plan, self.a = gm, plan, plan.analysis
        self.memo: dict[Dim, bool] = {}
        self.sites: list[Dim] = []
        self.bank = mask_bank(gm)
        self.mask_names: dict[tuple, str] = {}

    # --- where -------------------------------------------------------------------------------

    def zero(self, node: fx.Node, dim: int) -> bool:
        """Are the new entries of (node, dim) zero at c = 0?"""
        if not self.plan.grows(self.a.of(node)[dim]):
            return True
        key = (node, dim)
        if key not in self.memo:
            carry = self.a.carries.get(node, {}).get(dim)
            if carry is None or not carry.sources:
                result = False
            else:
                found = [s is not None and self.zero(*s) for s in carry.sources]
                result = any(found) if carry.mode == "any" else all(found)
            self.memo[key] = result
        return self.memo[key]

    def ensure_zero(self, node: fx.Node, dim: int) -> None:
        """Make (node, dim) zero at new entries, pushing the mask back where it belongs."""
        if self.zero(node, dim):
            return
        carry = self.a.carries.get(node, {}).get(dim)
        policy = self.a.push.get(node)
        sources = carry.sources if carry is not None else []
        if policy in ("through", "first") and sources and sources[0] is not None:
            self.ensure_zero(*sources[0])
        elif policy == "branches" and sources and None not in sources:
            nonzero = [s for s in sources if not self.zero(*s)]
            if len(nonzero) == len(sources) and len(sources) > 1:
                self.sites.append((node, dim))  # mask the sum once, not every term
            else:
                for s in nonzero:
                    self.ensure_zero(*s)
        else:
            self.sites.append((node, dim))
        self.memo[(node, dim)] = True

    def find(self) -> list[Dim]:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20 * len(self.gm.graph.nodes) + 1000))
        try:
            for _, (source, dim) in self.a.needs_zero:
                self.ensure_zero(source, dim)
        finally:
            sys.setrecursionlimit(limit)
        return self.sites

    # --- insert ------------------------------------------------------------------------------

    def mask_attr(self, atom: int, rank: int, dim: int) -> str:
        """The qualified name of the mask buffer for a dim layout, broadcast at `dim`."""
        is_new = self.plan.is_new(atom)
        shape = (is_new.numel(),) + (1,) * (rank - 1 - dim)
        key = (tuple(is_new.tolist()), shape)
        if key not in self.mask_names:
            self.mask_names[key] = f"{MASKS}.{self.bank.add(is_new, shape)}"
        return self.mask_names[key]

    def insert(self) -> int:
        graph = self.gm.graph
        for node, dim in self.sites:
            rank = len(self.a.of(node))
            target = self.mask_attr(self.a.of(node)[dim], rank, dim)
            with graph.inserting_after(node):
                mask = graph.get_attr(target)
            with graph.inserting_after(mask):
                masked = graph.call_function(operator.mul, (node, mask))
            _copy_meta(node, mask, masked)
            node.replace_all_uses_with(masked, delete_user_cb=lambda u, m=masked: u is not m)
        return len(self.sites)


def mask_bank(gm: fx.GraphModule) -> MaskBank:
    if not hasattr(gm, MASKS):
        gm.add_submodule(MASKS, MaskBank())
    return getattr(gm, MASKS)


def _copy_meta(node: fx.Node, *new: fx.Node) -> None:
    for n in new:
        n.meta["nn_module_stack"] = dict(node.meta.get("nn_module_stack", {}))
    new[-1].meta["tensor_meta"] = node.meta.get("tensor_meta")


def check_forbidden(plan: Plan) -> None:
    """Ops that cannot take a growing dim (softmax, max, integer indexing...) stop growth."""
    for node, atom, why in plan.analysis.forbidden:
        if plan.grows(atom):
            raise GraphError(f"{where(node)}: {why} on a dimension that grows; msgc cannot "
                             "keep the function exact there. Grow other dimensions.")


def insert_masks(gm: fx.GraphModule, plan: Plan) -> MaskSites:
    """Find and insert every mask the plan needs; returns the sites (for norms to reuse)."""
    check_forbidden(plan)
    sites = MaskSites(gm, plan)
    sites.find()
    sites.insert()
    return sites
