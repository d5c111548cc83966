"""The op table: each op's dimension rule or refusal, registered beside its code.

A rule is a function ``rule(analysis, node)`` that records how a node's output dims relate
to its inputs' (msgc/graph/dims.py); ``@rule(*targets)`` registers it for every spelling
of its op (ATen overloads, torch functions, Tensor method names). ``refuse(why, *ops)``
registers ops that are computed as they are but whose dims cannot grow, and why.
"""

from collections.abc import Callable

import torch.fx as fx

from msgc.graph.dims import Analysis

Rule = Callable[[Analysis, fx.Node], None]

RULES: dict[object, Rule] = {}
MODULE_RULES: dict[type, Rule] = {}
REFUSALS: dict[object, str] = {}


def rule(*targets) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of each of ``targets``."""

    def register(fn: Rule) -> Rule:
        for target in targets:
            if target in RULES or target in REFUSALS:
                raise RuntimeError(f"two entries for {target}")  # a bug in msgc
            RULES[target] = fn
        return fn

    return register


def module_rule(*module_types: type) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of calls of these module types."""

    def register(fn: Rule) -> Rule:
        for module_type in module_types:
            MODULE_RULES[module_type] = fn
        return fn

    return register


def refuse(why: str, *targets) -> None:
    """Ops whose dims cannot grow: computed as they are, refused where a growing dim
    reaches them, with ``why`` (which says what to do instead)."""
    for target in targets:
        if target in RULES or target in REFUSALS:
            raise RuntimeError(f"two entries for {target}")
        REFUSALS[target] = why
