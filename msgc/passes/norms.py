"""Masked norms: statistics over a grown dim count the new entries with weight c.

LayerNorm and RMSNorm become msgc.ops.masked_layer_norm / masked_rms_norm (eps exact,
unscaled); a mean over a grown dim becomes msgc.ops.masked_mean. At c = 0 they compute
the old statistics; at c = 1 they are the plain ops again (fold puts those back).
"""

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc import ops
from msgc.errors import GraphError
from msgc.graph.dims import where
from msgc.passes.masks import MaskSites

aten = torch.ops.aten
_LAYER_NORM = {F.layer_norm, aten.layer_norm.default}
_RMS_NORM = {F.rms_norm, aten.rms_norm.default}


def mask_norms(gm: fx.GraphModule, sites: MaskSites) -> int:
    """Rewrite each norm and mean whose statistics run over a grown dim; how many."""
    plan, count = sites.plan, 0
    for node, atoms in list(plan.analysis.normalized.items()):
        if not any(plan.grows(a) for a in atoms):
            continue
        if len(atoms) != 1:
            raise GraphError(f"{where(node)}: statistics over several dims of which one grows "
                             "are not supported")
        x = node.args[0]
        rank = len(x.meta["tensor_meta"].shape)
        dim = _normalized_dim(node, rank)
        with gm.graph.inserting_before(node):
            mask = gm.graph.get_attr(sites.mask_attr(atoms[0], rank, dim))
            new = gm.graph.call_function(*_masked_call(node, mask, dim))
        new.meta = dict(node.meta)
        mask.meta["nn_module_stack"] = dict(node.meta.get("nn_module_stack", {}))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        count += 1
    return count


def _normalized_dim(node: fx.Node, rank: int) -> int:
    if node.target in _LAYER_NORM or node.target in _RMS_NORM:
        return rank - 1
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dim = dim[0] if isinstance(dim, (list, tuple)) else dim
    return int(dim) % rank


def _masked_call(node: fx.Node, mask: fx.Node, dim: int):
    args = list(node.args) + [None] * 5
    if node.target in _LAYER_NORM:
        x, _, weight, bias, eps = args[:5]
        eps = node.kwargs.get("eps", 1e-5 if eps is None else eps)
        return ops.masked_layer_norm, (x, weight, bias, mask, eps)
    if node.target in _RMS_NORM:
        x, _, weight, eps = args[:4]
        return ops.masked_rms_norm, (x, weight, mask, node.kwargs.get("eps", eps))
    keepdim = node.kwargs.get("keepdim", args[2] if len(node.args) > 2 else False)
    return ops.masked_mean, (node.args[0], mask, dim, bool(keepdim))
