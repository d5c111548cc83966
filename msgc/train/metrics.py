"""The metrics log: one JSON object per optimizer step, kept in memory and appended to a file.

Every row has ``step`` (0-based optimizer step, trained with ``spec.arch_at(step)``), ``loss``
(mean training loss of the step's micro-batches), ``time`` (training seconds so far, evaluation
excluded, growth included), ``tokens`` and ``flops`` (totals after the step), ``lr``, ``stage``
(growth events so far), ``mask`` (the mask value c of the ramping structures, 1 when the
model is plain) and ``params``. Evaluation rows add ``val_loss`` and ``val_bpb``; the row of a
growth step adds ``loss_before`` and ``loss_after`` (the same batch, eval mode, fp32, just
before and just after growing) and ``grow_seconds``; the last row adds ``test_loss`` and
``test_bpb``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_metrics"]


class MetricsLog:
    """Rows in memory, each also appended (and flushed) to ``path`` as a JSON line."""

    def __init__(self, path: Path | None = None, rows: list[dict[str, Any]] | None = None):
        self.path = path
        self.rows: list[dict[str, Any]] = list(rows or [])

    def append(self, row: dict[str, Any]) -> None:
        """Add `row` (non-finite floats are written as null)."""
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(_finite(row)) + "\n")

    def last(self, key: str) -> Any:
        """The value of `key` in the latest row that has it (None if none does)."""
        return next((row[key] for row in reversed(self.rows) if key in row), None)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in row.items()}
