"""The public compiler API: analyze, grow, fold.

    grown = msgc.grow(model, example_inputs=(ids,), hidden=256, heads=8, layers=6)
    grown.set_masks(0.0)      # grown(ids) == model(ids)
    plain = msgc.fold(grown)  # at c = 1: a plain GraphModule without masks
"""

import copy
from dataclasses import dataclass, field

import torch.fx as fx
import torch.nn as nn

from msgc.errors import GrowthError
from msgc.graph.analyze import analyze_graph
from msgc.graph.blocks import find_blocks
from msgc.graph.dims import Analysis
from msgc.graph.plan import Groups, find_groups, plan_sizes
from msgc.graph.trace import IR_MARK, to_ir
from msgc.passes.deepen import deepen
from msgc.passes.fold import fold_masks
from msgc.passes.fuse import fuse_masks
from msgc.passes.masks import MASKS, insert_masks
from msgc.passes.norms import mask_norms
from msgc.passes.verify import run_eval, verify_new_paths, verify_preservation
from msgc.passes.widen import ParamOrigin, rewrite_sizes, widen_parameters
from msgc.report import GroupReport, describe_groups

INITS = ("normal", "match", "zeros", "copy")


@dataclass
class GrowthRecord:
    """What one growth did: targets, sizes before and after, masks inserted, error at c=0."""

    targets: dict[str, int]
    before: dict[str, int]
    after: dict[str, int] = field(default_factory=dict)
    masks: int = 0
    norms: int = 0
    preservation_error: float | None = None
    fused: int = 0


class GrownModule(fx.GraphModule):
    """A grown model: a GraphModule whose new structures sit behind masks at value c."""

    origins: dict[str, ParamOrigin]
    record: GrowthRecord
    example_inputs: tuple  # what it was grown with (batch and sequence stay dynamic)

    def set_masks(self, c: float) -> None:
        """Set every new structure's mask (and new blocks' mixing) to c in [0, 1]."""
        if not 0.0 <= float(c) <= 1.0:
            raise GrowthError(f"mask value must be in [0, 1], got {c}")
        getattr(self, MASKS).set_value(float(c))

    @property
    def mask_value(self) -> float:
        return float(getattr(self, MASKS).value)

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        res.add_submodule(MASKS, copy.deepcopy(getattr(self, MASKS), memo))
        res.origins = copy.deepcopy(self.origins, memo)
        res.record = copy.deepcopy(self.record, memo)
        res.example_inputs = self.example_inputs
        return res


def analyze(model: nn.Module, example_inputs: tuple) -> list[GroupReport]:
    """The dimension groups msgc finds in a model (hidden, ffn, heads, kv heads, blocks)."""
    gm = to_ir(_plain_model(model), tuple(example_inputs))
    analysis = analyze_graph(gm)
    return describe_groups(gm, analysis, find_groups(analysis))


def grow(
    model: nn.Module,
    example_inputs: tuple,
    hidden: int | None = None,
    ffn: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    layers: int | None = None,
    init: str = "normal",
    init_std: float = 0.02,
    seed: int = 0,
    depth_placement: str = "stack",
    verify: bool = True,
    rtol: float = 1e-5,
) -> GrownModule:
    """A larger copy of `model` that computes the same function while its masks are 0.

    Sizes are targets for every block; any subset may be given. `heads` keeps head_dim.
    The model is not modified; the grown module holds its own weights. A transformers model
    is taken as constructed (KV cache on): the grown module returns the original's
    ModelOutput class with the logits only (no cache), for any batch and sequence length.
    """
    if init not in INITS:
        raise GrowthError(f"init: must be one of {', '.join(INITS)}, got {init!r}")
    if depth_placement not in ("stack", "interleave"):
        raise GrowthError(f"depth_placement: must be stack or interleave, got {depth_placement!r}")
    example_inputs = tuple(example_inputs)
    model = _plain_model(model)
    gm = to_ir(model, example_inputs)
    expected = run_eval(gm, example_inputs) if verify else None
    analysis = analyze_graph(gm)
    groups = find_groups(analysis)
    targets = {k: v for k, v in dict(hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv_heads,
                                     layers=layers).items() if v is not None}
    record = GrowthRecord(targets=targets, before=measured_sizes(gm, analysis, groups))
    plan = plan_sizes(analysis, groups, hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv_heads)
    origins = widen_parameters(gm, plan, init, init_std, seed)
    rewrite_sizes(plan)
    sites = insert_masks(gm, plan)
    record.masks = len(sites.sites)
    record.norms = mask_norms(gm, sites)
    if layers is not None:
        origins = deepen(gm, layers, depth_placement, init, init_std, seed, origins)
    gm.graph.lint()
    gm.recompile()
    grown = _as_grown(gm, origins, record)
    grown.example_inputs = tuple(x.detach().cpu() if hasattr(x, "detach") else x
                                 for x in example_inputs)
    grown.set_masks(0.0)
    if verify:
        record.preservation_error = verify_preservation(expected, grown, example_inputs, rtol)
        verify_new_paths(expected, grown, example_inputs)
    record.after = _grown_sizes(record.before, targets)
    return grown


def fold(grown: nn.Module) -> fx.GraphModule:
    """The plain model of a grown one whose masks are at 1: no mask ops, same Parameters."""
    if not isinstance(grown, GrownModule):
        raise GrowthError("fold: expected a model returned by msgc.grow")
    if grown.mask_value != 1.0:
        raise GrowthError(f"fold: masks are at {grown.mask_value:g}; ramp them to 1 "
                          "(grown.set_masks(1.0)) before folding")
    plain = fx.GraphModule(grown, copy.deepcopy(grown.graph), class_name=_class_name(grown))
    fold_masks(plain)
    setattr(plain, IR_MARK, True)
    plain.example_inputs = grown.example_inputs
    plain.train(grown.training)
    return plain


def fuse(grown: GrownModule) -> GrownModule:
    """Swap the grown graph's mask patterns for msgc's fused kernels (in place)."""
    if not isinstance(grown, GrownModule):
        raise GrowthError("fuse: expected a model returned by msgc.grow")
    grown.record.fused = fuse_masks(grown)
    return grown


def _plain_model(model: nn.Module) -> nn.Module:
    """A grown model is folded first (its masks must be at 1) before growing again."""
    if isinstance(model, GrownModule):
        if model.mask_value != 1.0:
            raise GrowthError(f"grow: this model is mid-growth (masks at {model.mask_value:g}); "
                              "ramp its masks to 1 and fold it before growing again")
        return fold(model)
    return model


def _as_grown(gm: fx.GraphModule, origins, record) -> GrownModule:
    grown = GrownModule(gm, gm.graph, class_name=_class_name(gm))
    grown.add_submodule(MASKS, getattr(gm, MASKS))
    setattr(grown, IR_MARK, True)
    grown.origins = origins
    grown.record = record
    grown.train(gm.training)
    return grown


def _class_name(gm: nn.Module) -> str:
    name = type(gm).__name__
    return name if name.isidentifier() and name != "GraphModuleImpl" else "GrownModel"


def measured_sizes(gm: fx.GraphModule, a: Analysis, groups: Groups) -> dict[str, int]:
    """hidden / ffn / heads / kv_heads / layers of an analysed graph (first block's)."""
    sizes = {}
    if groups.hidden is not None:
        sizes["hidden"] = a.atoms.size(groups.hidden)
    if groups.ffn:
        sizes["ffn"] = a.atoms.size(groups.ffn[0])
    if groups.heads:
        g = groups.heads[0]
        if g.heads is not None:
            sizes["heads"] = sizes["kv_heads"] = a.atoms.size(g.heads)
        else:
            sizes["kv_heads"] = a.atoms.size(g.kv)
            sizes["heads"] = sizes["kv_heads"] * a.atoms.size(g.group)
    blocks = find_blocks(gm)
    if blocks is not None:
        sizes["layers"] = len(blocks.paths)
    return sizes


def _grown_sizes(before: dict[str, int], targets: dict[str, int]) -> dict[str, int]:
    after = dict(before)
    after.update(targets)
    if "heads" in targets and "kv_heads" not in targets and before.get("heads") == before.get(
        "kv_heads"
    ):
        after["kv_heads"] = targets["heads"]
    return after
