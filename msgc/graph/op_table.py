"""The op table: for each ATen op, the rule kind msgc has for it and what it does with a
growing dimension. `msgc ops` prints it; docs/ops.md is this table, generated:

    python -m msgc.graph.op_table > docs/ops.md

tests/graph/test_op_table.py fails when torch's core ATen opset holds an op with no entry,
and when docs/ops.md is not the current table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msgc.graph.rules import MODULE_RULES, REFUSALS, RULES, is_pointwise
from msgc.graph.rules.pointwise import ZERO_AT_ZERO

aten = torch.ops.aten
KINDS = ("pointwise", "shapes", "reductions", "contractions", "attention", "norms", "indexing",
         "factories", "refused", "none")
"""Rule kinds: the files of msgc/graph/rules/, then refusals and ops with no entry."""

HEADER = """\
# Ops and their growth rules

<!-- Generated from msgc/graph/rules/ by `python -m msgc.graph.op_table > docs/ops.md`; do
not edit. -->

What msgc does with each ATen op when a dimension grows: the rule kind (the file in
`msgc/graph/rules/` that holds its rule) and, in a line, what the rule does with a growing
dimension. **refused** ops run as they are; a growing dimension that reaches one stops
growth with an error that names the node. An op in no row runs as it is too, under the
same refusal. So ops that only touch dimensions that never grow (position tables, rotary
tables, attention masks, routing) need no rule. `msgc ops` prints this table.
"""


@dataclass(frozen=True)
class OpRow:
    """One op: its name, whether it is in the core ATen opset, its rule kind and effect."""

    op: str
    core: bool
    kind: str
    effect: str


def core_aten_ops() -> list[torch._ops.OpOverload]:
    """Every overload torch tags ``core`` (the closed opset export decomposes to), from the
    full schema registry (``dir(torch.ops.aten)`` lists only the packets loaded so far)."""
    ops = set()
    for schema in torch._C._jit_get_all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        packet = getattr(aten, schema.name.removeprefix("aten::"), None)
        op = getattr(packet, schema.overload_name or "default", None) if packet else None
        if isinstance(op, torch._ops.OpOverload) and torch.Tag.core in op.tags:
            ops.add(op)
    return sorted(ops, key=str)


def describe(op) -> tuple[str, str] | None:
    """(kind, effect) of an op's entry, or None where it has none."""
    if op in RULES:
        rule = RULES[op]
        doc = (rule.__doc__ or "").strip().split("\n\n")[0]
        return rule.__module__.rsplit(".", 1)[-1], " ".join(doc.split())
    if op in REFUSALS:
        why = REFUSALS[op].rstrip(",")
        return "refused", why[0].upper() + why[1:] + "."
    if is_pointwise(op):
        keeps = "keeps 0 at 0" if op.overloadpacket in ZERO_AT_ZERO else "new entries non-zero"
        return "pointwise", f"Operands broadcast; every dim may grow; {keeps}."
    return None


def op_rows() -> list[OpRow]:
    """The core ATen ops, then the other ATen ops msgc has an entry for, by name."""
    core = set(core_aten_ops())
    others = {op for op in [*RULES, *REFUSALS] if isinstance(op, torch._ops.OpOverload)}
    rows = []
    for op in sorted(core | others, key=str):
        entry = describe(op)
        kind, effect = entry if entry else ("none", "Runs as it is; refused where a dim grows.")
        rows.append(OpRow(str(op), op in core, kind, effect))
    return rows


def other_spellings() -> int:
    """How many torch functions, Tensor methods and modules share the ATen ops' rules."""
    return sum(not isinstance(t, torch._ops.OpOverload) for t in RULES) + len(MODULE_RULES)


def markdown() -> str:
    """docs/ops.md: the header, a summary line and the table."""
    rows = op_rows()
    core = [r for r in rows if r.core]
    covered = sum(r.kind != "none" for r in core)
    lines = [HEADER, f"Core ATen: {covered} of {len(core)} overloads have an entry "
             f"({sum(r.kind == 'refused' for r in core)} of them refused); "
             f"{len(rows) - len(core)} more ATen overloads have one, and "
             f"{other_spellings()} torch functions, Tensor methods and modules share these "
             "rules.\n", "| op | core | kind | with a growing dimension |", "|---|---|---|---|"]
    lines += [f"| `{r.op}` | {'yes' if r.core else ''} | {r.kind} | {r.effect} |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: list[OpRow]) -> str:
    """The rows as aligned plain text (what `msgc ops` prints)."""
    width = max(len(r.op) for r in rows)
    return "\n".join(f"{r.op:<{width}}  {r.kind:<12}  {r.effect}" for r in rows)


def main() -> None:
    print(markdown(), end="")


if __name__ == "__main__":
    main()
