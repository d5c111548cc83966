"""The op table: every core ATen op has an entry, the docs page is current, `msgc ops`
prints it, and the claims the pointwise rules make about zeros hold for the real ops."""

from pathlib import Path

import pytest
import torch

from msgc.cli import main
from msgc.graph import op_table
from msgc.graph.rules import RULES
from msgc.graph.rules.pointwise import ZERO_AT_ZERO, is_pointwise, rule_zero_unary

ROOT = Path(__file__).resolve().parents[2]
aten = torch.ops.aten


def test_every_core_aten_op_has_an_entry() -> None:
    """Fails when torch adds a core op msgc has neither a rule nor a refusal for."""
    missing = [str(op) for op in op_table.core_aten_ops() if op_table.describe(op) is None]
    assert not missing, f"core ATen ops without an entry in msgc/graph/rules/: {missing}"
    assert len(op_table.core_aten_ops()) >= 193  # torch 2.13's core opset


def test_docs_page_is_current() -> None:
    page = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    assert page == op_table.markdown(), "run `python -m msgc.graph.op_table > docs/ops.md`"


def test_msgc_ops_prints_the_table(capsys) -> None:
    assert main(["ops", "--core", "--kind", "contractions"]) == 0
    out = capsys.readouterr().out
    assert "aten.addmm.default" in out and "aten.mm.default" in out
    assert "aten.sort.default" not in out
    assert main(["ops", "--kind", "fast"]) == 2
    assert "--kind fast: no such kind" in capsys.readouterr().err


def _zero_claims() -> list:
    """ATen overloads whose rule says new entries that are zero stay zero."""
    ops = {t for t, r in RULES.items()
           if r is rule_zero_unary and isinstance(t, torch._ops.OpOverload)}
    ops |= {op for op in op_table.core_aten_ops()
            if is_pointwise(op) and op.overloadpacket in ZERO_AT_ZERO}
    return sorted(ops, key=str)


# the extra arguments an op needs beside its input
EXTRA_ARGS = {aten.to.dtype: (torch.float64,), aten.to.dtype_layout: (),
              aten.to.device: ("cpu", torch.float32)}


@pytest.mark.parametrize("op", _zero_claims(), ids=str)
def test_zero_at_zero_claims_hold(op) -> None:
    """Extend the last dim with zero entries: they stay zero, the old entries do not move."""
    g = torch.Generator().manual_seed(0)
    old = torch.rand(3, 4, 5, generator=g) * 0.8 + 0.1  # in (0, 1): asin, atanh, sqrt real
    grown = torch.cat([old, torch.zeros(3, 4, 2)], dim=-1)
    kwargs = {"dtype": torch.float64} if op is aten.to.dtype_layout else {}
    if op is aten.type_as.default:
        args_old, args_grown = (old, old.double()), (grown, grown.double())
    else:
        extra = EXTRA_ARGS.get(op, ())
        args_old, args_grown = (old, *extra), (grown, *extra)
    y_old, y_grown = op(*args_old, **kwargs), op(*args_grown, **kwargs)
    if op in (aten.triu.default, aten.tril.default):  # positions move with the width
        assert (y_grown[..., 5:] == 0).all()
        return
    torch.testing.assert_close(y_grown[..., :5], y_old)
    assert (y_grown[..., 5:] == 0).all(), f"{op}: f(0) != 0"
