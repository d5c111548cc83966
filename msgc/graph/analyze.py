"""The dimension analysis pass: run every node's rule over a traced graph.

The result (msgc/graph/dims.py's Analysis) holds one atom per dimension of every tensor,
their couplings, and what the growth passes need. Rules: msgc/graph/rules/.
"""

import torch
import torch.fx as fx

from msgc.graph.dims import Analysis, fetch_attr
from msgc.graph.rules import rule_for


def analyze_graph(gm: fx.GraphModule) -> Analysis:
    """Run every op's rule over the graph (shapes must be propagated first)."""
    analysis = Analysis(gm)
    for node in gm.graph.nodes:
        if node.op == "output":
            _output(analysis, node)
            continue
        if node.op == "placeholder":
            if "tensor_meta" in node.meta and hasattr(node.meta["tensor_meta"], "shape"):
                analysis.fresh(node, tags=("input",))
            continue
        if node.op == "get_attr":
            _get_attr(analysis, node)
            continue
        if not _produces_tensors(node):
            continue  # integer arithmetic on sizes, dtype/device reads
        rule_for(analysis, node)(analysis, node)
    return analysis


def _get_attr(analysis: Analysis, node: fx.Node) -> None:
    value = fetch_attr(analysis.gm, node.target)
    if not isinstance(value, torch.Tensor):
        return
    key = str(id(value))
    first = analysis.param_nodes.setdefault(key, node)
    if first is node:
        analysis.fresh(node, tags=("param",))
    else:  # a tied weight: the same tensor reached by another name
        analysis.dims[node] = analysis.dims[first]


def _output(analysis: Analysis, node: fx.Node) -> None:
    for value in torch.utils._pytree.tree_leaves(node.args):
        if analysis.is_tensor(value):
            for atom in analysis.of(value):
                analysis.atoms.tag(atom, "output")


def _produces_tensors(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return False
    if hasattr(meta, "shape"):
        return True
    return isinstance(meta, (tuple, list)) and all(hasattr(m, "shape") for m in meta)


