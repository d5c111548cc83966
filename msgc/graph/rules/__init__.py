"""Dimension rules, one per op, in files by kind, and the op table they make.

Each kind's file registers its rules with ``@rule(...)`` (msgc/graph/rules/registry.py):
pointwise, shapes (views and shapes), reductions, contractions, attention, norms,
indexing, factories; refusals lists the ops whose dims cannot grow and why. An op with no
entry runs as it is and fixes the dims it touches (msgc/graph/rules/refusals.py).
"""

import torch
import torch.fx as fx

from msgc.graph.dims import Analysis
from msgc.graph.rules import (  # noqa: F401  (each file registers its rules)
    attention,
    contractions,
    factories,
    indexing,
    norms,
    pointwise,
    reductions,
    refusals,
    shapes,
)
from msgc.graph.rules.pointwise import is_pointwise, rule_pointwise
from msgc.graph.rules.refusals import NO_RULE, fixed
from msgc.graph.rules.registry import MODULE_RULES, REFUSALS, RULES, Rule

__all__ = ["MODULE_RULES", "REFUSALS", "RULES", "Rule", "is_pointwise", "rule_for"]


def rule_for(a: Analysis, node: fx.Node) -> Rule:
    """The rule of a node's op: its own, the generic pointwise one, or a fixed one."""
    if node.op == "call_module":
        found = MODULE_RULES.get(type(a.gm.get_submodule(node.target)))
    else:
        found = RULES.get(node.target)
        if found is None and isinstance(node.target, torch._ops.OpOverload):
            found = RULES.get(str(node.target))  # a library's op, registered by its name
        if found is None and is_pointwise(node.target):
            found = rule_pointwise
    return found if found is not None else fixed(REFUSALS.get(node.target, NO_RULE))
